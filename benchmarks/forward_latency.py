"""Forward (prefill) latency: ours vs transformers' VideoLlavaForConditionalGeneration, same weights.

    python benchmarks/forward_latency.py [--runs 5] [--batch 1]

Both sides float32 on the CPU, one process, the same random weights (saved by transformers, loaded
by us), warm-up excluded, `block_until_ready` before the clock stops. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

import vllava_jax

VOCAB = 32064


def small_config(image_size: int) -> VideoLlavaConfig:
    """ViT 12x384 towers, LLaMA 12x768: the small config of the performance issues."""
    return VideoLlavaConfig(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                           image_size=image_size, patch_size=14),
        text_config=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         vocab_size=VOCAB, max_position_embeddings=4096),
        image_token_index=32000, video_token_index=32001)


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up (compiles ours)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (median reported)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per batch, each one 8-frame video")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens around the video")
    args = parser.parse_args()

    config = small_config(args.image_size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        reference = VideoLlavaForConditionalGeneration(config).eval()
        reference.save_pretrained(tmp)
        ours = vllava_jax.load_pretrained(tmp)
    per_video = 8 * ((args.image_size // 14) ** 2 + 1)
    half = args.text_tokens // 2
    row = np.concatenate([rng.integers(3, 32000, half), np.full(per_video, 32001), rng.integers(3, 32000, half)])
    ids = np.tile(row, (args.batch, 1))
    videos = rng.standard_normal((args.batch, 8, 3, args.image_size, args.image_size)).astype(np.float32)

    def run_ours():
        jax.block_until_ready(ours(ids, pixel_values_videos=videos).logits)

    t_ids, t_videos = torch.as_tensor(ids), torch.as_tensor(videos)

    def run_reference():
        with torch.inference_mode():
            reference(input_ids=t_ids, pixel_values_videos=t_videos)

    ours_s = median_seconds(run_ours, args.runs)
    ref_s = median_seconds(run_reference, args.runs)
    print(f"forward of batch {args.batch} x {ids.shape[1]} tokens (8 frames at {args.image_size}px), float32, "
          f"CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, median of {args.runs}")
    print(f"| figure | ours (s) | transformers (s) | ours/ref |")
    print(f"| --- | --- | --- | --- |")
    print(f"| prefill latency | {ours_s:.3f} | {ref_s:.3f} | {ours_s / ref_s:.2f} |")


if __name__ == "__main__":
    main()
