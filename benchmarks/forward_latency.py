"""Forward (prefill) latency: ours vs transformers' VideoLlavaForConditionalGeneration, same weights.

    python -m benchmarks.forward_latency [--runs 5] [--batch 1]

Both sides float32 on the CPU, one process, the same random weights (saved by transformers, loaded
by us), warm-up excluded, `block_until_ready` before the clock stops. Prints medians.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import torch

from benchmarks.common import median_seconds, model_pair, small_config, video_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (median reported)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per batch, each one 8-frame video")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens around the video")
    args = parser.parse_args()

    reference, ours = model_pair(small_config(args.image_size))
    ids, videos = video_prompt(np.random.default_rng(0), args.batch, args.image_size, args.text_tokens)
    t_ids, t_videos = torch.as_tensor(ids), torch.as_tensor(videos)

    def run_ours():
        jax.block_until_ready(ours(ids, pixel_values_videos=videos).logits)

    def run_reference():
        with torch.inference_mode():
            reference(input_ids=t_ids, pixel_values_videos=t_videos)

    ours_s = median_seconds(run_ours, args.runs)
    ref_s = median_seconds(run_reference, args.runs)
    print(f"forward of batch {args.batch} x {ids.shape[1]} tokens (8 frames at {args.image_size}px), float32, "
          f"CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, median of {args.runs}")
    print("| figure | ours (s) | transformers (s) | ours/ref |")
    print("| --- | --- | --- | --- |")
    print(f"| prefill latency | {ours_s:.3f} | {ref_s:.3f} | {ours_s / ref_s:.2f} |")


if __name__ == "__main__":
    main()
