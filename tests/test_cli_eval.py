"""`python -m vllava_jax.eval`: a user's mistakes end in one `error:` line, and a fixed rerun resumes."""

from __future__ import annotations

import json

from tests.cli_run import assert_user_error, in_process
from tests.test_cli_generate import write_png_with_icc
from tests.test_eval_run import write_video_set
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from vllava_jax.eval import runner
from vllava_jax.eval.__main__ import main


def eval_args(model, data, output, *extra):
    return ["--task", "msvd_qa", "--model", model, "--data", data, "--output", output, "--max-new-tokens", "2",
            *extra]


def test_mistyped_model_interrupt_and_rerun_resume(checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    model, _ = checkpoint
    data = write_video_set(tmp_path / "msvd", ["a", "b", "photo"], missing=("photo",))
    write_png_with_icc(data / "videos" / "photo.mp4")  # a renamed PNG in the set: that question, not the run, fails
    out = tmp_path / "out"
    result = in_process(main, eval_args(tmp_path / "modle", data, out), capsys, resumable=True)
    assert_user_error(result, 1, "modle")
    assert not out.exists()  # outputs appear only once the inputs passed

    generate, calls = runner.generate_answers, [0]

    def interrupted(*args):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return generate(*args)

    monkeypatch.setattr(runner, "generate_answers", interrupted)
    result = in_process(main, eval_args(model, data, out), capsys, resumable=True)
    assert result.code == 130 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1

    monkeypatch.setattr(runner, "generate_answers", generate)
    result = in_process(main, eval_args(f"{model}/", f"{data}/", f"{out}/"), capsys, resumable=True)
    assert result.code == 0, result.err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["questions"] == 3 and doc["missing_media"] == 1
    assert "still image" in result.err


def test_bad_output_and_bad_sets_name_the_fault(checkpoint, tmp_path, capsys):  # noqa: F811
    model, _ = checkpoint
    data = write_video_set(tmp_path / "msvd", ["a"])
    (tmp_path / "file").write_text("x")
    assert_user_error(in_process(main, eval_args(model, data, tmp_path / "file"), capsys), 2, "--output", "file")
    assert_user_error(in_process(main, eval_args(model, data, tmp_path / "file" / "o"), capsys), 2, "--output")
    assert (tmp_path / "file").read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("test_q.json", "test_a.json"):
        (empty / name).write_text("[]")
    assert_user_error(in_process(main, eval_args(model, empty, tmp_path / "o1"), capsys), 1, str(empty),
                      "no questions")
    questions = json.loads((data / "test_q.json").read_text())
    questions[0]["video_name"] = None
    (data / "test_q.json").write_text(json.dumps(questions))
    assert_user_error(in_process(main, eval_args(model, data, tmp_path / "o2"), capsys), 1, "test_q.json",
                      "'video_name'")
    assert_user_error(in_process(main, eval_args(model, data, tmp_path / "o3", "--limit", "0"), capsys), 2,
                      "--limit")
