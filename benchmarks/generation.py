"""Generation speed: prefill latency and decode tokens/s, ours vs transformers' `generate`.

    python -m benchmarks.generation [--batches 1 8] [--new-tokens 64] [--runs 3]

Same random weights on both sides (saved by transformers, loaded by us), float32, CPU, one
process; greedy, EOS disabled so every run decodes exactly --new-tokens. Decode time is a whole
generate's time minus a prefill's; medians after a warm-up (which compiles ours).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import median_seconds, model_pair, small_config, video_prompt
from vllava_jax import generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per prompt")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens around the video")
    args = parser.parse_args()

    reference, ours = model_pair(small_config(args.image_size))
    sampling = generation.SamplingConfig(max_new_tokens=args.new_tokens, eos_token_ids=(), pad_token_id=0)
    rows = []
    for batch in args.batches:
        ids, videos = video_prompt(np.random.default_rng(batch), batch, args.image_size, args.text_tokens)
        t_ids, t_videos = torch.as_tensor(ids), torch.as_tensor(videos)
        padded, mask, _ = generation.prepare_prompt(ours, ids, None, None, videos, sampling, 64)

        def ours_prefill():
            out = generation._prefill_jit(ours.graphdef, ours.state, jnp.asarray(padded), jnp.asarray(mask), None,
                                          jnp.asarray(videos), padded.shape[1] + args.new_tokens)
            jax.block_until_ready(out)

        def ours_generate():
            generation.generate(ours, ids, None, None, videos, sampling=sampling)

        def ref_prefill():
            with torch.inference_mode():
                reference(input_ids=t_ids, pixel_values_videos=t_videos, use_cache=True)

        def ref_generate():
            with torch.inference_mode():
                reference.generate(input_ids=t_ids, pixel_values_videos=t_videos, max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

        timings = {name: median_seconds(fn, args.runs) for name, fn in
                   [("ours_prefill", ours_prefill), ("ours_generate", ours_generate),
                    ("ref_prefill", ref_prefill), ("ref_generate", ref_generate)]}
        decoded = batch * (args.new_tokens - 1)  # the first new token comes out of prefill
        ours_tps = decoded / (timings["ours_generate"] - timings["ours_prefill"])
        ref_tps = decoded / (timings["ref_generate"] - timings["ref_prefill"])
        rows.append((batch, ids.shape[1], timings, ours_tps, ref_tps))

    print(f"float32, CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, {args.new_tokens} new "
          f"tokens, 8 frames at {args.image_size}px, median of {args.runs}")
    print("| batch | prompt | prefill ours (s) | prefill ref (s) | ours/ref | decode ours (tok/s) | "
          "decode ref (tok/s) | ours/ref |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, length, t, ours_tps, ref_tps in rows:
        print(f"| {batch} | {length} | {t['ours_prefill']:.3f} | {t['ref_prefill']:.3f} | "
              f"{t['ours_prefill'] / t['ref_prefill']:.2f} | {ours_tps:.1f} | {ref_tps:.1f} | {ours_tps / ref_tps:.2f} |")


if __name__ == "__main__":
    main()
