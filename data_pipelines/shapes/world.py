"""A synthetic video + image QA world small enough to learn on a laptop CPU in minutes.

Clips show one shape (circle, square, triangle) of one color (red, green, blue, yellow) sliding
left, right, up or down; images show two different shapes of different colors, one per half.
`generate` writes the media and, in the formats the real pipeline reads:

- stage 1 (`plain` template) captions: `stage1_videos.json`, `stage1_images.json`;
- stage 2 multi-turn QA (`llava_v1`): `stage2_videos.json` ("Which direction does the red circle
  move?", "What color is the circle?"), `stage2_images.json` (two entries per image, one per
  shape: "What color is the square?" with LLaVA's short-answer line, then "What shape is on the
  left?" about the other side);
- held-out evaluation: `eval/video_direction/` in MSVD-QA's `test_q.json`/`test_a.json` layout
  (`--task msvd_qa`) and `eval/image_color/` in GQA's `questions.jsonl`/`annotations.json` layout
  (`--task gqa`, exact match), drawn from a different random stream than the training media.

Everything is a function of `seed`: the same seed writes the same files.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath
from tqdm import tqdm

from data_pipelines.shapes.media import COLORS, DIRECTIONS, SHAPES, render, write_moving_clip

SHORT_ANSWER = "Answer the question using a single word or phrase."  # as LLaVA's short-answer data


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    """How much to write and at what size (pixels; `travel` is how far a clip's shape moves)."""

    train_videos: int = 1500
    train_images: int = 6000
    eval_videos: int = 100
    eval_images: int = 100
    canvas: int = 64
    size: int = 24
    frames: int = 16
    travel: int = 36


@dataclasses.dataclass(frozen=True)
class ShapesData:
    """Where `generate` put things; media paths in the annotation files are relative to `root`."""

    root: epath.Path

    @property
    def stage1(self) -> list[epath.Path]:
        return [self.root / "stage1_videos.json", self.root / "stage1_images.json"]

    @property
    def stage2(self) -> list[epath.Path]:
        return [self.root / "stage2_videos.json", self.root / "stage2_images.json"]

    @property
    def video_eval(self) -> epath.Path:
        return self.root / "eval" / "video_direction"

    @property
    def image_eval(self) -> epath.Path:
        return self.root / "eval" / "image_color"


def _video_scene(rng: np.random.Generator, spec: ShapesSpec) -> dict:
    shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    margin = spec.size / 2 + 2
    lo, hi = margin, spec.canvas - margin
    dx, dy = DIRECTIONS[direction]
    # the start leaves room for the whole travel inside the canvas
    x = rng.uniform(lo + max(-dx, 0) * spec.travel, hi - max(dx, 0) * spec.travel)
    y = rng.uniform(lo + max(-dy, 0) * spec.travel, hi - max(dy, 0) * spec.travel)
    return {"shape": shape, "color": color, "direction": direction, "start": (float(x), float(y))}


def _image_scene(rng: np.random.Generator, spec: ShapesSpec) -> dict:
    shapes = rng.choice(len(SHAPES), 2, replace=False)
    colors = rng.choice(len(COLORS), 2, replace=False)
    margin, half = spec.size / 2 + 2, spec.canvas / 2
    centers = [(rng.uniform(margin, half - spec.size / 2), rng.uniform(margin, spec.canvas - margin)),
               (rng.uniform(half + spec.size / 2, spec.canvas - margin), rng.uniform(margin, spec.canvas - margin))]
    objects = [(SHAPES[s], list(COLORS)[c], (float(x), float(y))) for s, c, (x, y) in zip(shapes, colors, centers)]
    return {"objects": objects}


def _write_video(root: epath.Path, relpath: str, scene: dict, spec: ShapesSpec) -> None:
    write_moving_clip(root / relpath, scene["shape"], scene["color"], scene["start"], scene["direction"],
                      spec.canvas, spec.size, spec.frames, spec.travel)


def _write_image(root: epath.Path, relpath: str, scene: dict, spec: ShapesSpec) -> None:
    render(scene["objects"], spec.canvas, spec.size).save(root / relpath)


def direction_question(scene: dict) -> str:
    return f"Which direction does the {scene['color']} {scene['shape']} move?"


def color_question(shape: str) -> str:
    return f"What color is the {shape}?\n{SHORT_ANSWER}"


def _turns(*pairs: tuple[str, str], media: str) -> list[dict]:
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns += [{"from": "human", "value": f"{media}\n{question}" if i == 0 else question},
                  {"from": "gpt", "value": answer}]
    return turns


def video_entries(relpath: str, scene: dict, index: int) -> tuple[dict, dict]:
    """(stage 1 caption entry, stage 2 QA entry) for one clip."""
    caption = f"A {scene['color']} {scene['shape']} moves {scene['direction']}."
    qa = _turns((direction_question(scene), scene["direction"]),
                (f"What color is the {scene['shape']}?", scene["color"]), media="<video>")
    return ({"id": f"video_caption_{index}", "video": relpath, "conversations": _turns(("", caption), media="<video>")},
            {"id": f"video_qa_{index}", "video": relpath, "conversations": qa})


def image_entries(relpath: str, scene: dict, index: int) -> tuple[dict, list[dict]]:
    """(stage 1 caption entry, stage 2 QA entries) for one image: one QA per shape, asking its color
    and then the shape on the other side.

    Asking each image about both of its shapes is what teaches the model to read the asked shape:
    with one color question per image it learns which colors are present (and, on few images,
    each image's answer) instead; README "The demo" has the runs.
    """
    left, right = scene["objects"]
    caption = f"A {left[1]} {left[0]} on the left and a {right[1]} {right[0]} on the right."
    qa = []
    for (shape, color, _), other_side, (other_shape, _, _) in ((left, "right", right), (right, "left", left)):
        turns = _turns((color_question(shape), color), (f"What shape is on the {other_side}?", other_shape),
                       media="<image>")
        qa.append({"id": f"image_qa_{index}_{shape}", "image": relpath, "conversations": turns})
    return ({"id": f"image_caption_{index}", "image": relpath, "conversations": _turns(("", caption), media="<image>")},
            qa)


def _dump(path: epath.Path, doc) -> None:
    path.write_text(json.dumps(doc, indent=1))


def write_train(data: ShapesData, spec: ShapesSpec, rng: np.random.Generator, bar: tqdm) -> None:
    root = data.root
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    stage1_videos, stage2_videos, stage1_images, stage2_images = [], [], [], []
    for i in range(spec.train_videos):
        scene, relpath = _video_scene(rng, spec), f"videos/train_{i:05d}.mp4"
        _write_video(root, relpath, scene, spec)
        caption, qa = video_entries(relpath, scene, i)
        stage1_videos.append(caption)
        stage2_videos.append(qa)
        bar.update()
    for i in range(spec.train_images):
        scene, relpath = _image_scene(rng, spec), f"images/train_{i:05d}.png"
        _write_image(root, relpath, scene, spec)
        caption, qa = image_entries(relpath, scene, i)
        stage1_images.append(caption)
        stage2_images.extend(qa)
        bar.update()
    for path, doc in zip(data.stage1 + data.stage2, (stage1_videos, stage1_images, stage2_videos, stage2_images)):
        _dump(path, doc)


def write_eval(data: ShapesData, spec: ShapesSpec, rng: np.random.Generator, bar: tqdm) -> None:
    videos, images = data.video_eval / "videos", data.image_eval / "images"
    videos.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    questions, answers = [], []
    for i in range(spec.eval_videos):
        scene, name = _video_scene(rng, spec), f"clip_{i:04d}"
        _write_video(videos, f"{name}.mp4", scene, spec)
        questions.append({"video_name": name, "question": direction_question(scene), "question_id": f"v{i}"})
        answers.append({"answer": scene["direction"], "type": "direction", "question_id": f"v{i}"})
        bar.update()
    _dump(data.video_eval / "test_q.json", questions)
    _dump(data.video_eval / "test_a.json", answers)
    rows, truth = [], {}
    for i in range(spec.eval_images):
        scene, name = _image_scene(rng, spec), f"image_{i:04d}.png"
        _write_image(images, name, scene, spec)
        shape, color, _ = scene["objects"][rng.integers(2)]
        rows.append(json.dumps({"question_id": f"i{i}", "image": name, "text": color_question(shape)}))
        truth[f"i{i}"] = {"answer": color, "type": "color"}
        bar.update()
    (data.image_eval / "questions.jsonl").write_text("\n".join(rows) + "\n")
    _dump(data.image_eval / "annotations.json", truth)


def generate(root: epath.PathLike, seed: int = 0, spec: ShapesSpec = ShapesSpec()) -> ShapesData:
    """Write the whole world under `root` (training and held-out media from separate random streams)."""
    data = ShapesData(epath.Path(root))
    data.root.mkdir(parents=True, exist_ok=True)
    train_rng, eval_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    total = spec.train_videos + spec.train_images + spec.eval_videos + spec.eval_images
    with tqdm(total=total, desc="shapes data", unit="file") as bar:
        write_train(data, spec, train_rng, bar)
        write_eval(data, spec, eval_rng, bar)
    return data


def corpus() -> list[str]:
    """Every kind of sentence the world produces, for training its tokenizer."""
    lines = [SHORT_ANSWER, "Which direction does the", "move?", "What color is the", "What shape is on the",
             "on the left and a", "on the right.", "moves", "left", "right", "up", "down"]
    lines += [f"A {c} {s} moves {d}." for c in COLORS for s in SHAPES for d in DIRECTIONS]
    lines += [f"What color is the {s}? {c}" for c in COLORS for s in SHAPES]
    return lines
