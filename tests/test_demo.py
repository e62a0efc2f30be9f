"""The quickstart demo, shortened (a few steps on a few files), end to end; and the shapes world it runs on."""

from __future__ import annotations

import json
import pathlib

import pytest
from PIL import Image

from configs import shapes_tiny
from data_pipelines.shapes.media import BACKGROUND, COLORS
from data_pipelines.shapes.tokenizer import write_tokenizer
from data_pipelines.shapes.world import ShapesSpec, color_question as shape_color_question, generate
from tests.cli_run import in_process
from vllava_jax.processing.processor import Processor

SMALL = ShapesSpec(train_videos=3, train_images=3, eval_videos=2, eval_images=2)


def test_shapes_world_is_deterministic(tmp_path):
    a, b = generate(tmp_path / "a", seed=3, spec=SMALL), generate(tmp_path / "b", seed=3, spec=SMALL)
    root = pathlib.Path(a.root)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert len(files) == 3 + 3 + 2 + 2 + 4 + 4  # media, four annotation files, two eval sets of two files
    for name in files:
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    other = generate(tmp_path / "c", seed=4, spec=SMALL)
    assert (other.root / "stage2_videos.json").read_text() != (a.root / "stage2_videos.json").read_text()


def test_shapes_annotations_follow_the_llava_format(tmp_path):
    data = generate(tmp_path, seed=0, spec=SMALL)
    video_qa = json.loads(data.stage2[0].read_text())[0]
    assert video_qa["video"].endswith(".mp4") and (data.root / video_qa["video"]).exists()
    first, answer = video_qa["conversations"][:2]
    assert first["value"].startswith("<video>\nWhich direction does the ")
    assert answer["value"] in ("left", "right", "up", "down")
    caption = json.loads(data.stage1[1].read_text())[0]["conversations"]
    assert caption[0]["value"] == "<image>\n" and " on the left and a " in caption[1]["value"]
    questions = json.loads((data.video_eval / "test_q.json").read_text())
    answers = json.loads((data.video_eval / "test_a.json").read_text())
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert (data.video_eval / "videos" / f"{questions[0]['video_name']}.mp4").exists()


def test_tokenizer_files_load_with_the_placeholders(tmp_path):
    ids = write_tokenizer(tmp_path, shapes_tiny.SP_VOCAB_SIZE)
    (tmp_path / "config.json").write_text(json.dumps(shapes_tiny.model_config()))
    proc = Processor.from_pretrained(tmp_path)
    assert (proc.image_token_id, proc.video_token_id, proc.tokenizer.pad_token_id) == (
        ids["<image>"], ids["<video>"], ids["<pad>"])
    encoded = proc.tokenizer.encode("<video>\nWhich direction does the red circle move?")
    assert encoded[:2] == [1, ids["<video>"]] and len(encoded) < 16
    assert proc.decode(encoded, skip_special_tokens=True) == "\nWhich direction does the red circle move?"


def test_image_qa_asks_each_shapes_color_and_eval_images_hold_two_colors(tmp_path):
    data = generate(tmp_path, seed=1, spec=SMALL)
    entries = json.loads(data.stage2[1].read_text())
    captions = json.loads(data.stage1[1].read_text())
    assert len(entries) == 2 * len(captions)
    for caption in captions:
        left, right = caption["conversations"][1]["value"][2:-len(" on the right.")].split(" on the left and a ")
        (left_color, left_shape), (right_color, right_shape) = left.split(), right.split()
        turns = [[t["value"] for t in e["conversations"]] for e in entries if e["image"] == caption["image"]]
        # one entry per shape: its color, then the shape on the other side
        assert sorted(turns) == sorted([
            [f"<image>\n{shape_color_question(left_shape)}", left_color, "What shape is on the right?", right_shape],
            [f"<image>\n{shape_color_question(right_shape)}", right_color, "What shape is on the left?", left_shape]])
    truth = json.loads((data.image_eval / "annotations.json").read_text())
    half = SMALL.canvas // 2
    for line in (data.image_eval / "questions.jsonl").read_text().splitlines():
        question = json.loads(line)
        with Image.open(data.image_eval / "images" / question["image"]) as image:
            pixels = image.convert("RGB")
        # one shape per half (a shape may touch the middle columns), two different colors: the
        # asked shape's color is one of two present ones
        left = {pixels.getpixel((x, y)) for x in range(half - 1) for y in range(SMALL.canvas)} - {BACKGROUND}
        right = {pixels.getpixel((x, y)) for x in range(half + 1, SMALL.canvas) for y in range(SMALL.canvas)}
        right -= {BACKGROUND}
        assert len(left) == len(right) == 1 and left != right
        present = {c for c, rgb in COLORS.items() if rgb in left | right}
        assert len(present) == 2 and truth[question["question_id"]]["answer"] in present


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    """Through `python -m vllava_jax.demo`'s entry and the CLI wrapper, as the Quickstart runs it: exit 0."""
    from vllava_jax.demo.__main__ import entry

    result = in_process(entry, ["--workdir", tmp_path, "--stage1-steps", "2", "--stage2-steps", "2", "--train-videos",
                                "4", "--train-images", "4", "--eval-videos", "3", "--eval-images", "3"], capsys)
    assert result.code == 0, result.err[-2000:]
    assert "[5/5] one answer from python -m vllava_jax.generate" in result.out and "accuracy:" in result.out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"video_direction", "image_color"}
    assert metrics["steps"] == {"stage1": 2, "stage2": 2}
    for stage in ("init", "stage1", "stage2"):
        assert (tmp_path / "checkpoints" / stage / "model.safetensors").exists()
        assert (tmp_path / "checkpoints" / stage / "tokenizer.model").exists()
    for kind in ("video_direction", "image_color"):
        assert len((tmp_path / "eval" / kind / "predictions.jsonl").read_text().splitlines()) == 3
    with Image.open(tmp_path / "plot.png") as plot:
        assert plot.format == "PNG" and plot.size == (900, 420)
