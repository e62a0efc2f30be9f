"""Training-data throughput from ArrayRecord, video and image samples, both TFDS storage modes.

Writes clips with PyAV (8 frames sampled from 10-60 s, 360p-720p H.264) and JPEG images, builds a
TFDS ArrayRecord dataset of each (videos twice: encoded files, and 8 frames pre-sampled at build
time), and times the whole Grain pipeline (read record, decode, CLIP transform at 224 px, template,
tokenize, batch): in-process (0 workers) as examples per CPU second of this process, which is the
per-core figure and barely moved by other jobs on a shared machine, and with 1 and 2 worker
processes as wall-clock examples/s. Target: 4 video samples/s per core, so that 16 host cores feed
one 7B training accelerator (about 4 video samples/s per H100 at 40% MFU); the margin printed is
per-core (or per-worker) throughput / 4.

    python -m benchmarks.data_pipeline [--examples 48] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import av
import grain
import numpy as np
from PIL import Image

from data_pipelines.batching import BatchSpec
from data_pipelines.pipeline import make_dataset
from data_pipelines.shapes.tokenizer import write_tokenizer
from data_pipelines.tfds_builder import TfdsSource, build
from data_pipelines.transforms import ExampleTransform
from vllava_jax.config import TextConfig, VideoLlavaConfig, VisionConfig
from vllava_jax.processing.processor import Processor

CLIPS = [(10, 640, 360), (30, 854, 480), (60, 1280, 720)]  # seconds, width, height at 30 fps
TARGET = 4.0  # video samples/s one H100 consumes
SP_VOCAB = 500  # the shapes tokenizer's corpus fills this many pieces


def write_clip(path: pathlib.Path, seconds: int, width: int, height: int, fps: int = 30) -> None:
    """H.264 with a 250-frame keyframe interval and no B-frames (exact sampling then decodes from
    each sample's keyframe); gray levels plus a moving checker texture, so no frame repeats."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": "250", "bf": "0", "preset": "ultrafast"}
        for i in range(seconds * fps):
            gray = ((i * 37) % 200 + 20 + ((x + 3 * i) // 8 + y // 8) % 2 * 30).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=-1), format="rgb24")))
        out.mux(stream.encode())


def write_checkpoint(path: pathlib.Path) -> None:
    """What the pipeline reads of a checkpoint: tokenizer files and a config.json with 224-px towers
    (the weights are never loaded)."""
    ids = write_tokenizer(path, SP_VOCAB)
    tower = VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         image_size=224)
    text = TextConfig(vocab_size=SP_VOCAB + len(ids), hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=12)
    config = VideoLlavaConfig(vision_config=tower, text_config=text, image_token_index=ids["<image>"],
                              video_token_index=ids["<video>"], pad_token_id=ids["<pad>"])
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))


def write_media(root: pathlib.Path) -> dict[str, list[dict]]:
    """One annotation list per kind, cycling over a few distinct media files."""
    (root / "media").mkdir(parents=True, exist_ok=True)
    question = [{"from": "human", "value": "<{}>\nWhat is happening?"},
                {"from": "gpt", "value": "A man plays the guitar on a stage."}]
    videos, images = [], []
    for seconds, width, height in CLIPS:
        name = f"media/{seconds}s_{height}p.mp4"
        if not (root / name).exists():
            write_clip(root / name, seconds, width, height)
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
    """Examples/s: per CPU second of this process with 0 workers, per wall-clock second with workers."""
    proc = Processor.from_pretrained(ckpt)
    spec = BatchSpec.for_processor(proc, rows=1, max_length=2200)
    ds = make_dataset([source], ExampleTransform(ckpt, max_length=2200), spec, num_epochs=None,
                      shard=grain.sharding.NoSharding(), num_workers=workers, worker_buffer_size=2,
                      read_threads=1 if workers else 0)  # in-process: nothing computed ahead of the clock
    it = iter(ds)
    for _ in range(2 * max(workers, 1)):  # warm-up: worker start, first decodes
        next(it)
    clock = time.perf_counter if workers else time.process_time
    start = clock()
    for _ in range(examples):
        next(it)
    rate = examples / (clock() - start)
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
        write_checkpoint(ckpt)
    rows, sizes = [], {}
    for kind, entries in write_media(root).items():
        (root / f"{kind}.json").write_text(json.dumps(entries))
        modes = (("encoded", None), ("pre-sampled frames", 8)) if kind == "video" else (("encoded", None),)
        for storage, frames in modes:
            data_dir = root / f"tfds_{kind}_{frames or 'encoded'}"
            path = build(root / f"{kind}.json", root, data_dir, video_frames=frames, overwrite=True)
            sizes[kind, storage] = sum(f.stat().length for f in path.glob("*.array_record-*")) / len(entries)
            source = TfdsSource(data_dir)
            for workers in (0, 1, 2):
                rate = throughput(source, ckpt, workers, args.examples)
                rows.append((kind, storage, workers, rate, rate / max(workers, 1)))
    print("| samples | storage (MB per sample on disk) | workers | examples/s | per core or worker | "
          "margin vs 4 video/s per core |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, storage, workers, rate, per in rows:
        margin = f"{per / TARGET:.2f}x" if kind == "video" else "-"
        clock = "0 (in-process, per CPU second)" if workers == 0 else str(workers)
        size = sizes[kind, storage] / 1e6
        print(f"| {kind} | {storage} ({size:.2f}) | {clock} | {rate:.2f} | {per:.2f} | {margin} |")
    for storage in ("encoded", "pre-sampled frames"):
        per_core = next(per for kind, st, workers, _, per in rows if kind == "video" and st == storage and not workers)
        print(f"video, {storage}: {per_core:.2f} samples per CPU second ({per_core / TARGET:.2f}x the 4/s per core "
              f"target); 16 cores give {16 * per_core:.1f}/s = {16 * per_core / TARGET:.1f}x what one H100 consumes")


if __name__ == "__main__":
    main()
