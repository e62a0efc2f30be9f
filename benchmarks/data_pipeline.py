"""Training-data throughput: examples/s per worker process from ArrayRecord, video and image samples.

Writes clips with PyAV (8 frames sampled from 10-60 s, 360p-720p H.264) and JPEG images, builds a
TFDS ArrayRecord dataset of each, and times the whole Grain pipeline (read record, decode, CLIP
transform at 224 px, template, tokenize, batch) with 1 and 2 worker processes. Target: 4 video
samples/s per core, so that 16 host cores feed one 7B training accelerator (about 4 video
samples/s per H100 at 40% MFU); the margin printed is per-core throughput / 4.

    python benchmarks/data_pipeline.py [--examples 48] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import grain
import numpy as np
from PIL import Image

from data_pipelines.batching import BatchSpec
from data_pipelines.pipeline import make_dataset
from data_pipelines.tfds_builder import TfdsSource, build
from data_pipelines.transforms import ExampleTransform
from tests.media import save_tokenizer_checkpoint, write_clip
from vllava_jax.processing.processor import Processor

CLIPS = [(10, 640, 360), (30, 854, 480), (60, 1280, 720)]  # seconds, width, height at 30 fps
TARGET = 4.0  # video samples/s one H100 consumes


def write_media(root: pathlib.Path) -> dict[str, list[dict]]:
    """One annotation list per kind, cycling over a few distinct media files."""
    (root / "media").mkdir(parents=True, exist_ok=True)
    question = [{"from": "human", "value": "<{}>\nWhat is happening?"},
                {"from": "gpt", "value": "A man plays the guitar on a stage."}]
    videos, images = [], []
    for seconds, width, height in CLIPS:
        name = f"media/{seconds}s_{height}p.mp4"
        if not (root / name).exists():
            write_clip(root / name, num_frames=seconds * 30, width=width, height=height, fps=30, gop=250,
                       bframes=False)
        videos.append(name)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(640, 480), (1024, 768), (500, 375)]):
        name = f"media/{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / name, quality=90)
        images.append(name)
    conv = lambda kind: [dict(t, value=t["value"].format(kind)) for t in question]  # noqa: E731
    return {"video": [{"id": str(i), "video": v, "conversations": conv("video")} for i, v in enumerate(videos)],
            "image": [{"id": str(i), "image": m, "conversations": conv("image")} for i, m in enumerate(images)]}


def throughput(source, ckpt: pathlib.Path, workers: int, examples: int) -> float:
    proc = Processor.from_pretrained(ckpt)
    spec = BatchSpec.for_processor(proc, rows=1, max_length=2200)
    ds = make_dataset([source], ExampleTransform(ckpt, max_length=2200), spec, num_epochs=None,
                      shard=grain.sharding.NoSharding(), num_workers=workers, worker_buffer_size=2)
    it = iter(ds)
    for _ in range(2 * max(workers, 1)):  # warm-up: worker start, first decodes
        next(it)
    start = time.perf_counter()
    for _ in range(examples):
        next(it)
    rate = examples / (time.perf_counter() - start)
    if workers:
        it.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=48, help="timed examples per row of the table")
    parser.add_argument("--workdir", default=None, help="where clips, checkpoint and ArrayRecords go (kept)")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="data_bench_"))
    ckpt = root / "ckpt"
    if not (ckpt / "config.json").exists():
        save_tokenizer_checkpoint(ckpt, image_size=224)
    rows = []
    for kind, entries in write_media(root).items():
        (root / f"{kind}.json").write_text(json.dumps(entries))
        build(root / f"{kind}.json", root, root / f"tfds_{kind}")
        source = TfdsSource(root / f"tfds_{kind}")
        for workers in (1, 2):
            rate = throughput(source, ckpt, workers, args.examples)
            rows.append((kind, workers, rate, rate / workers))
    print("| samples | workers | examples/s | examples/s per worker | margin vs 4 video/s per core |")
    print("| --- | --- | --- | --- | --- |")
    for kind, workers, rate, per in rows:
        margin = f"{per / TARGET:.2f}x" if kind == "video" else "-"
        print(f"| {kind} | {workers} | {rate:.2f} | {per:.2f} | {margin} |")
    video_per_core = max(per for kind, _, _, per in rows if kind == "video")
    print(f"video: {video_per_core:.2f} samples/s per core ({video_per_core / TARGET:.2f}x the 4/s per core target); "
          f"16 cores give {16 * video_per_core:.1f}/s = {16 * video_per_core / TARGET:.1f}x what one H100 consumes")


if __name__ == "__main__":
    main()
