"""`python -m vllava_jax.eval` end to end on generated benchmarks in each annotation layout, with a
tiny random model: outputs written, resume after a kill, batch size never changes an answer, bad
input reported."""

from __future__ import annotations

import json
import numpy as np
import pytest
from PIL import Image

import vllava_jax
from tests import media
from tests.cli_run import assert_user_error, in_process
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from vllava_jax.eval import runner
from vllava_jax.eval.__main__ import main
from vllava_jax.eval.runner import RunConfig
from vllava_jax.errors import DataError

MAX_NEW = 3


@pytest.fixture(scope="module")
def model_dir(checkpoint):
    """The generate CLI tests' tiny random transformers checkpoint with a trained tokenizer."""
    return checkpoint[0]


@pytest.fixture(scope="module")
def loaded(model_dir):
    """One model instance for every run in this file: its compiled programs are reused."""
    return vllava_jax.load_pretrained(model_dir), vllava_jax.Processor.from_pretrained(model_dir)


def write_video_set(root, names, missing=(), activitynet=False):
    """test_q.json/test_a.json + clips; ActivityNet's files get the `v_` prefix its annotations lack."""
    folder = root / ("videos/all" if activitynet else "videos")
    folder.mkdir(parents=True)
    questions, answers = [], []
    for i, name in enumerate(names):
        if name not in missing:
            ext, codec = (".avi", "mpeg4") if i % 2 else (".mp4", "libx264")
            media.write_clip(folder / (("v_" if activitynet else "") + name + ext), num_frames=10 + i, codec=codec)
        questions.append({"video_name": name, "question": f"what is happening {i}", "question_id": f"q{i}"})
        answers.append({"answer": ["guitar", "cooking", "dog", "cat"][i % 4], "type": 0, "question_id": f"q{i}"})
    (root / "test_q.json").write_text(json.dumps(questions))
    (root / "test_a.json").write_text(json.dumps(answers))
    return root


def write_image(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (30 + seed, 40, 3), dtype=np.uint8)).save(path)


def write_vqav2_set(root, count=3):
    questions, annotations = [], []
    for i in range(count):
        write_image(root / "images" / f"COCO_{i}.jpg", i)
        questions.append({"question_id": 100 + i, "image": f"COCO_{i}.jpg",
                          "text": f"How many dogs are there {i}?\nAnswer the question using a single word or phrase.",
                          "category": "default"})
        annotations.append({"question_id": 100 + i, "answers": [{"answer": "2", "answer_id": j} for j in range(10)]})
    (root / "llava_vqav2_mscoco_val2014.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def run(model_and_processor, **kwargs) -> dict:
    model, processor = model_and_processor
    config = RunConfig(**{"model": "tiny", "max_new_tokens": MAX_NEW} | kwargs)
    return runner.run(config, model=model, processor=processor)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_qa_end_to_end_with_a_missing_video(loaded, tmp_path, capsys):
    data = write_video_set(tmp_path / "msvd", ["clipa", "clipb", "clipc"], missing=("clipc",))
    out = tmp_path / "out"
    doc = run(loaded, task="msvd_qa", data=str(data), output=str(out), batch_size=2)
    preds = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in preds] == ["q0", "q1", "q2"]
    assert {"id", "question", "answer", "pred"} <= set(preds[0])
    assert preds[2]["missing"] and preds[2]["pred"] == "" and "clipc" in preds[2]["error"]
    assert "missing video: clipc" in capsys.readouterr().err
    judged = read_jsonl(out / "judged.jsonl")
    assert [j["judge"] for j in judged] == ["offline", "offline", "missing-media"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["count"] == 3          # the missing one stays in the denominator
    assert metrics["missing_media"] == 1 and metrics["missing_media_names"] == ["clipc"]
    assert {"model", "task", "judge", "config", "date"} <= set(metrics)
    report = (out / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") == 2 * 4 and "clipc" in report
    assert doc["metrics"] == metrics["metrics"]


def test_activitynet_prefix_and_folders(loaded, tmp_path):
    data = write_video_set(tmp_path / "anet", ["abc", "def"], activitynet=True)
    doc = run(loaded, task="activitynet_qa", data=str(data), output=str(tmp_path / "out"), batch_size=2)
    assert doc["missing_media"] == 0


@pytest.mark.slow
def test_batch_size_never_changes_an_answer(loaded, tmp_path):
    data = write_video_set(tmp_path / "msvd", ["a", "b", "c"])
    preds = {}
    for batch in (1, 3):
        run(loaded, task="msvd_qa", data=str(data), output=str(tmp_path / f"b{batch}"), batch_size=batch)
        preds[batch] = [p["pred"] for p in read_jsonl(tmp_path / f"b{batch}" / "predictions.jsonl")]
    assert preds[1] == preds[3]
    assert any(preds[1])


def test_kill_and_rerun_resumes(loaded, tmp_path, monkeypatch):
    data = write_vqav2_set(tmp_path / "vqav2", count=3)
    out = tmp_path / "out"
    reference = run(loaded, task="vqav2", data=str(data), output=str(tmp_path / "whole"), batch_size=1)

    calls = []
    real = runner.generate_answers

    def dies_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_answers", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(loaded, task="vqav2", data=str(data), output=str(out), batch_size=1)
    assert len(read_jsonl(out / "predictions.jsonl")) == 1
    with open(out / "predictions.jsonl", "a") as f:  # a kill in the middle of writing a line
        f.write('{"id": "101", "quest')
    monkeypatch.setattr(runner, "generate_answers", real)
    resumed = run(loaded, task="vqav2", data=str(data), output=str(out), batch_size=1)
    ids = [p["id"] for p in read_jsonl(out / "predictions.jsonl")]
    assert sorted(ids) == ["100", "101", "102"] and len(ids) == len(set(ids))
    assert resumed["metrics"] == reference["metrics"]
    assert read_jsonl(out / "judged.jsonl") == read_jsonl(tmp_path / "whole" / "judged.jsonl")


def test_image_layouts_end_to_end(loaded, tmp_path):
    """GQA, POPE and ScienceQA-IMG files as released; each gives predictions, metrics and a report."""
    gqa = tmp_path / "gqa"
    write_image(gqa / "images" / "n1.jpg", 1)
    (gqa / "llava_gqa_testdev_balanced.jsonl").write_text(json.dumps(
        {"question_id": "201", "image": "n1.jpg", "text": "Is the sky blue?\nAnswer the question using a single word "
         "or phrase."}) + "\n")
    (gqa / "testdev_balanced_questions.json").write_text(json.dumps({"201": {"imageId": "n1", "answer": "yes"}}))

    pope = tmp_path / "pope"
    write_image(pope / "val2014" / "COCO_val2014_1.jpg", 2)
    for category in ("adversarial", "popular", "random"):
        rows = [{"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog in the image?",
                 "label": "yes"},
                {"question_id": 2, "image": "COCO_val2014_9.jpg", "text": "Is there a cat in the image?",
                 "label": "no"}]
        (pope / f"coco_pope_{category}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    sqa = tmp_path / "sqa"
    write_image(sqa / "images" / "test" / "7" / "image.png", 3)
    (sqa / "llava_test_CQM-A.json").write_text(json.dumps([
        {"id": "7", "image": "7/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: N/A\nQuestion: Which is warmer?\nOptions: (A) ice (B) tea"},
            {"from": "gpt", "value": "B"}]},
        {"id": "8", "conversations": [{"from": "human", "value": "No image here"}]}]))
    (sqa / "problems.json").write_text(json.dumps({"7": {"choices": ["ice", "tea"], "answer": 1},
                                                   "8": {"choices": ["x", "y"], "answer": 0}}))

    for task, data, count in (("gqa", gqa, 1), ("pope", pope, 6), ("sqa_img", sqa, 1)):
        out = tmp_path / f"out_{task}"
        doc = run(loaded, task=task, data=str(data), output=str(out), batch_size=2)
        assert doc["questions"] == count and len(read_jsonl(out / "predictions.jsonl")) == count
        assert (out / "report.html").exists() and json.loads((out / "metrics.json").read_text())["task"] == task
    pope_doc = json.loads((tmp_path / "out_pope" / "metrics.json").read_text())
    assert pope_doc["missing_media"] == 3                   # the cat questions' image is missing: counted wrong
    assert pope_doc["metrics"]["random"]["tp"] + pope_doc["metrics"]["random"]["fn"] == 1
    assert pope_doc["metrics"]["random"]["fp"] == 1


def test_mismatched_question_and_answer_files(tmp_path):
    data = write_video_set(tmp_path / "msvd", ["a", "b"], missing=("a", "b"))
    answers = json.loads((data / "test_a.json").read_text())
    (data / "test_a.json").write_text(json.dumps(answers[:1]))
    with pytest.raises(DataError, match=r"2 questions but .*test_a.json has 1 answers"):
        run((None, None), task="msvd_qa", data=str(data), output=str(tmp_path / "out"))
    answers[1]["question_id"] = "other"
    (data / "test_a.json").write_text(json.dumps(answers))
    with pytest.raises(DataError, match=r"entry 1: .* question_id 'q1' but .* has 'other'"):
        run((None, None), task="msvd_qa", data=str(data), output=str(tmp_path / "out"))


def test_cli_errors_and_summary(model_dir, tmp_path, capsys):
    result = in_process(main, ["--task", "msvd_qa", "--model", model_dir, "--data", tmp_path, "--output",
                               tmp_path / "o"], capsys)
    assert_user_error(result, 1, "test_q.json: question file")
    data = write_video_set(tmp_path / "msvd", ["a"], missing=("a",))
    main(["--task", "msvd_qa", "--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "o2")])
    assert "msvd_qa: accuracy 0.00%" in capsys.readouterr().out
    result = in_process(main, ["--task", "msvd_qa", "--model", model_dir, "--data", data, "--output", tmp_path / "o2",
                               "--max-new-tokens", "5"], capsys)
    assert_user_error(result, 1, "other settings")


def write_clip_questions(root, clips, per_clip):
    """MSVD-style: several questions about each clip."""
    (root / "videos").mkdir(parents=True)
    questions, answers = [], []
    for c, name in enumerate(clips):
        media.write_clip(root / "videos" / f"{name}.avi", num_frames=10 + c, codec="mpeg4")
        for q in range(per_clip):
            qid = f"{name}-{q}"
            questions.append({"video_name": name, "question": f"what is shown {q}", "question_id": qid})
            answers.append({"answer": ["dog", "cat"][q % 2], "type": 0, "question_id": qid})
    (root / "test_q.json").write_text(json.dumps(questions))
    (root / "test_a.json").write_text(json.dumps(answers))
    return root


def test_towers_run_once_per_video_and_answers_match_the_pixel_path(loaded, tmp_path):
    model, processor = loaded
    data = write_clip_questions(tmp_path / "msvd", ["clipa", "clipb"], per_clip=3)
    doc = run(loaded, task="msvd_qa", data=str(data), output=str(tmp_path / "out"), batch_size=2)
    assert doc["visual_features"] == {"tower_runs": 2, "reused": 4}
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    sampling = vllava_jax.generation.sampling_config(model.config, MAX_NEW)
    task = runner.registry()["msvd_qa"]
    for p in preds[:4]:   # each question alone, towers run on its pixels inside prefill
        sample = next(s for s in task.load(data) if s.id == p["id"])
        frames = vllava_jax.processing.video.read_frames(sample.media, processor.num_frames)
        batch = processor(text=[runner.prompt_of(task, sample)], videos=[frames], padding=True)
        ids = vllava_jax.generation.generate(model, batch["input_ids"], batch["attention_mask"],
                                             pixel_values_videos=batch["pixel_values_videos"], sampling=sampling)
        row = ids[0, batch["input_ids"].shape[1]:]
        stops = np.flatnonzero(np.isin(row, sampling.eos_token_ids))
        assert processor.decode(row[: stops[0] if stops.size else len(row)], skip_special_tokens=True).strip() == \
            p["pred"]


def test_two_shards_merged_equal_one_run(loaded, tmp_path):
    data = write_clip_questions(tmp_path / "msvd", ["clipa", "clipb", "clipc"], per_clip=2)
    whole = run(loaded, task="msvd_qa", data=str(data), output=str(tmp_path / "whole"), batch_size=2)
    out = tmp_path / "sharded"
    for index in (1, 0):
        doc = run(loaded, task="msvd_qa", data=str(data), output=str(out), batch_size=2, shard=(index, 2))
        assert doc["questions"] == 3 and doc["shard"] == f"{index}/2"
        if index == 1:
            with pytest.raises(DataError, match=r"no output from shard\(s\) 0-of-2"):
                run((None, None), task="msvd_qa", data=str(data), output=str(out), merge=True)
    assert not (out / "predictions.jsonl").exists()
    merged = run((None, None), task="msvd_qa", data=str(data), output=str(out), merge=True)  # no model needed
    assert merged["metrics"] == whole["metrics"] and merged["questions"] == 6
    for name in ("predictions.jsonl", "judged.jsonl"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_merge_refuses_a_lost_question(loaded, tmp_path):
    data = write_clip_questions(tmp_path / "msvd", ["clipa"], per_clip=2)
    out = tmp_path / "sharded"
    for index in (0, 1):
        run(loaded, task="msvd_qa", data=str(data), output=str(out), shard=(index, 2))
    shard = out / "shards" / "1-of-2" / "predictions.jsonl"
    shard.write_text("")                                    # shard 1's only answer lost
    with pytest.raises(DataError, match=r"1 question\(s\) unanswered"):
        run((None, None), task="msvd_qa", data=str(data), output=str(out), merge=True)


def test_vqav2_test_dev_writes_the_submission(loaded, tmp_path, capsys):
    data = tmp_path / "vqav2"
    write_image(data / "test2015" / "COCO_test2015_000000262144.jpg", 4)
    row = {"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg",
           "text": "Is the ball flying?\nAnswer the question using a single word or phrase.", "category": "default"}
    (data / "llava_vqav2_mscoco_test-dev2015.jsonl").write_text(json.dumps(row) + "\n")
    (data / "llava_vqav2_mscoco_test2015.jsonl").write_text(
        json.dumps(row) + "\n" + json.dumps(row | {"question_id": 5}) + "\n")
    doc = run(loaded, task="vqav2", data=str(data), output=str(tmp_path / "out"))
    upload = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert [u["question_id"] for u in upload] == [262144000, 5] and upload[1]["answer"] == ""
    assert doc["metrics"] == {"count": 1, "server_scored": True}
    assert "server-scored" in runner.summary_line(doc, str(tmp_path / "out"))
