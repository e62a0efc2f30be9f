"""Peak resident memory of `python -m vllava_jax.convert` on a few-GB checkpoint: bounded by the largest tensor?

Writes a random multi-shard transformers checkpoint (a wide-but-shallow LLaMA: 7B's width and
vocabulary, few layers, tiny towers) with our streamed writer, converts it to ours and back to
transformers in fresh subprocesses, and prints each one's peak RSS (ru_maxrss) next to the fixed
overhead (the same conversion of a tiny model) and the largest tensor. Cleans up after itself.

    python -m benchmarks.convert_memory [--layers 2] [--workdir /tmp/convert_memory]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import numpy as np
from etils import epath

from vllava_jax.checkpoint.streamed import Streamed, is_stacked
from vllava_jax.checkpoint.write import write_hf
from vllava_jax.modeling.video_llava import parameter_shapes
from vllava_jax.config import TextConfig, VideoLlavaConfig, VisionConfig

_MEASURE = ("import resource, sys; from vllava_jax import convert; rc = convert.main(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def make_config(layers: int, wide: bool) -> VideoLlavaConfig:
    vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=28, patch_size=14)
    text = TextConfig(num_hidden_layers=layers) if wide else TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16)
    return VideoLlavaConfig(vision_config=vision, text_config=text, image_token_index=text.vocab_size - 2,
                            video_token_index=text.vocab_size - 1)


def write_random(directory: epath.Path, config: VideoLlavaConfig) -> None:
    """A transformers checkpoint of random float32 weights, itself written one tensor at a time."""
    rng = np.random.default_rng(0)
    shapes = parameter_shapes(config)
    leaves = {p: Streamed(s, np.dtype(np.float32), is_stacked(p),
                                lambda i, s=s, p=p: rng.standard_normal(s[1:] if is_stacked(p) else s, np.float32))
              for p, s in shapes.items()}
    write_hf(directory, config, leaves, max_shard_bytes=10**9)


def peak_rss_mb(*args: str) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    peak = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KB"))
    return peak / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the wide model (each ~0.8 GB float32)")
    p.add_argument("--workdir", default="/tmp/convert_memory", help="scratch dir, removed at the end")
    args = p.parse_args()
    work = epath.Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        rows = []
        for name, wide in (("tiny (fixed overhead)", False), ("wide", True)):
            config = make_config(args.layers, wide)
            shapes = parameter_shapes(config)
            layer_bytes = [4 * int(np.prod(s[1:] if is_stacked(p) else s)) for p, s in shapes.items()]
            total = sum(4 * int(np.prod(s)) for s in shapes.values())
            src, ours, back = work / f"{name[:4]}_hf", work / f"{name[:4]}_ours", work / f"{name[:4]}_back"
            write_random(src, config)
            shards = len(list(src.glob("*.safetensors")))
            to_ours = peak_rss_mb("--src", str(src), "--dst", str(ours))
            to_hf = peak_rss_mb("--src", str(ours), "--dst", str(back), "--to", "hf", "--max-shard-size", "1GB")
            rows.append((name, total, max(layer_bytes), shards, to_ours, to_hf))
            for d in (src, ours, back):
                shutil.rmtree(d)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_ours, base_hf = rows[0][4][0], rows[0][5][0]
    print("| model | total float32 | largest tensor | source shards | hf -> ours peak RSS (s) | ours -> hf peak RSS (s) "
          "| (peak - overhead) / largest tensor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, total, largest, shards, (ours_mb, ours_s), (hf_mb, hf_s) in rows:
        ratio = f"{(ours_mb - base_ours) * 2**20 / largest:.2f} / {(hf_mb - base_hf) * 2**20 / largest:.2f}"
        print(f"| {name} | {total / 1e9:.2f} GB | {largest / 1e6:.0f} MB | {shards} | {ours_mb:.0f} MB ({ours_s:.0f}) "
              f"| {hf_mb:.0f} MB ({hf_s:.0f}) | {ratio} |")


if __name__ == "__main__":
    main()
