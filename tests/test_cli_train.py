"""`python -m vllava_jax.train` and `python -m vllava_jax.train.export`: a user's mistakes end in one
`error:` line; an interrupted run resumes with one log line per step; a run exports to a model dir."""

from __future__ import annotations

import json
import os

import numpy as np

import vllava_jax
from tests.cli_run import ROOT, assert_user_error, in_process, subprocess_cli
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from tests.test_train import tiny
from vllava_jax.train import export
from vllava_jax.train.build import build_model_config
from vllava_jax.train.loop import train
from vllava_jax.train.partition import preset
from vllava_jax.train.synthetic import SyntheticBatches

CONFIG = os.path.join(ROOT, "configs/train_tiny.py")


def test_readme_command_with_list_overrides_and_no_usable_media_stops(checkpoint, tmp_path):  # noqa: F811
    model, _ = checkpoint
    conversations = [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "A dog."}]
    (tmp_path / "chat.json").write_text(json.dumps([{"id": str(i), "video": f"clip{i}.mp4",
                                                     "conversations": conversations} for i in range(3)]))
    result = subprocess_cli("vllava_jax.train", "--config", CONFIG, "--workdir", tmp_path / "run",
                            f"--config.init_checkpoint={model}", "--config.data.kind=annotations",
                            f"--config.data.annotations=[\"{tmp_path / 'chat.json'}\"]",
                            "--config.data.media_roots=[\"/nope\"]", "--config.max_length=128")
    assert_user_error(result, 1, "all skipped", "missing_media 6", "/nope/clip")


def test_flag_mistakes_and_help(tmp_path):
    result = subprocess_cli("vllava_jax.train", "--config", CONFIG, "--workdir", tmp_path / "run",
                            "--config.trainable=('[',)")
    assert_user_error(result, 1, "config.trainable", "'['")
    assert not (tmp_path / "run").exists()
    result = subprocess_cli("vllava_jax.train", "--help")
    assert result.code == 0 and "--workdir" in result.out and "--config" in result.out


def test_config_files_that_do_not_load(tmp_path):
    """A missing config file, one that is not Python, one without get_config, and an override of a
    key the config lacks: one `error:` line each, nothing written."""
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "empty.py").write_text("x = 1\n")
    for config, extra, words in [(tmp_path / "nope.py", [], ("--config does not load", "nope.py")),
                                 (tmp_path / "broken.py", [], ("--config does not load", "broken.py")),
                                 (tmp_path / "empty.py", [], ("get_config",)),
                                 (CONFIG, ["--config.nokey=1"], ("nokey",))]:
        result = subprocess_cli("vllava_jax.train", "--config", config, "--workdir", tmp_path / "run", *extra)
        assert_user_error(result, 2, *words)
    assert not (tmp_path / "run").exists()


class InterruptAt(SyntheticBatches):
    """Ctrl-C while step `at` fetches its batch: the steps before it are logged, the last one not saved."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def __next__(self):
        if self.index == self.at:
            raise KeyboardInterrupt
        return super().__next__()


def test_interrupt_resume_schedule_change_and_export(tmp_path, capsys):
    config = tiny(total_steps=4, checkpoint_every=2)
    model_config = build_model_config(config)
    batches = lambda: SyntheticBatches(model_config, rows=2, length=32)  # noqa: E731
    (tmp_path / "file").write_text("x")
    result = in_process(lambda argv: train(config, tmp_path / "file", None), [], capsys)
    assert_user_error(result, 2, "--workdir", "file")

    workdir = tmp_path / "run"
    data = InterruptAt(model_config, rows=2, length=32, at=3)
    result = in_process(lambda argv: train(config, workdir, data), [], capsys, resumable=True)
    assert result.code == 130 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"

    longer = tiny(total_steps=5, checkpoint_every=2)
    resumed = train(longer, workdir, batches())
    assert "warning: resuming" in capsys.readouterr().err  # the schedule changes (4 -> 5 steps), and says so
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # step 3 ran twice (its checkpoint was never written) but is logged once
    result = in_process(lambda argv: train(tiny(total_steps=6, trainable=preset("stage1")), workdir, None), [], capsys)
    assert_user_error(result, 1, "config.trainable", "language_model")

    assert_user_error(in_process(export.main, ["--workdir", tmp_path, "--dst", tmp_path / "m"], capsys), 1,
                      "train_config.json")
    assert_user_error(in_process(export.main, ["--workdir", workdir, "--step", 3, "--dst", tmp_path / "m"], capsys),
                      1, "--step 3", "holds steps")
    assert in_process(export.main, ["--workdir", workdir, "--dst", tmp_path / "m"], capsys).code == 0
    exported = vllava_jax.load_pretrained(tmp_path / "m")
    ids = np.arange(1, 9)[None]
    expected = export.trained_model(longer, resumed)(ids).logits
    np.testing.assert_array_equal(np.asarray(exported(ids).logits), np.asarray(expected))
