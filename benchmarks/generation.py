"""Generation speed: prefill latency and decode tokens/s, ours vs transformers' `generate`.

    python -m benchmarks.generation [--batches 1 8] [--new-tokens 64] [--runs 3]

Same random weights on both sides (saved by transformers, loaded by us), float32, CPU, one
process; greedy, EOS disabled so every run decodes exactly --new-tokens. Decode time is a whole
generate's time minus a prefill's (ours also through `stream`, the CLI's token-by-token path);
medians after a warm-up (which compiles ours).
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import torch

from benchmarks.common import median_seconds, model_pair, small_config, synchronize, video_prompt
from vllava_jax import generation


def prefill_inputs(ours, ids: np.ndarray, videos: np.ndarray, new_tokens: int):
    """(sampling, padded ids, mask): greedy with EOS disabled, the prompt laid out as `generate` lays it."""
    sampling = generation.SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=0)
    padded, mask, _ = generation.prepare_prompt(ours, ids, None, None, videos, sampling, 64)
    return sampling, padded, mask


def generation_timers(ours, reference, ids: np.ndarray, videos: np.ndarray, new_tokens: int) -> dict:
    """Closures running one prefill or one whole greedy generate (EOS disabled) on each side, each
    returning once the device is done."""
    sampling, padded, mask = prefill_inputs(ours, ids, videos, new_tokens)
    device = next(reference.parameters()).device
    t_ids, t_videos = torch.as_tensor(ids, device=device), torch.as_tensor(videos, device=device)
    t_videos = t_videos.to(next(reference.parameters()).dtype)

    def ours_prefill():
        jax.block_until_ready(generation.prefill(ours, padded, mask, None, videos, sampling=sampling,
                                                 key=jax.random.key(0)))

    def ours_generate():
        generation.generate(ours, ids, None, None, videos, sampling=sampling)

    def ours_stream():
        for _ in generation.stream(ours, ids, None, None, videos, sampling=sampling):
            pass

    def ref_prefill():
        with torch.inference_mode():
            reference(input_ids=t_ids, pixel_values_videos=t_videos, use_cache=True)
        synchronize()

    def ref_generate():
        with torch.inference_mode():
            reference.generate(input_ids=t_ids, pixel_values_videos=t_videos, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        synchronize()

    return {"ours_prefill": ours_prefill, "ours_generate": ours_generate, "ours_stream": ours_stream,
            "ref_prefill": ref_prefill, "ref_generate": ref_generate}


def decode_rate(batch: int, new_tokens: int, generate_s: float, prefill_s: float) -> float:
    """Decoded tokens/s: a generate's time minus a prefill's (the first new token comes out of prefill)."""
    return batch * (new_tokens - 1) / (generate_s - prefill_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per prompt")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens around the video")
    args = parser.parse_args()

    reference, ours = model_pair(small_config(args.image_size))
    rows = []
    for batch in args.batches:
        ids, videos = video_prompt(np.random.default_rng(batch), batch, args.image_size, args.text_tokens)
        timers = generation_timers(ours, reference, ids, videos, args.new_tokens)
        timings = {name: median_seconds(fn, args.runs) for name, fn in timers.items()}
        rates = {name: decode_rate(batch, args.new_tokens, timings[f"{side}_{whole}"], timings[f"{side}_prefill"])
                 for name, side, whole in [("ours", "ours", "generate"), ("stream", "ours", "stream"),
                                           ("ref", "ref", "generate")]}
        rows.append((batch, ids.shape[1], timings, rates))

    print(f"float32, CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, {args.new_tokens} new "
          f"tokens, 8 frames at {args.image_size}px, median of {args.runs}")
    print("| batch | prompt | prefill ours (s) | prefill ref (s) | ours/ref | decode ours (tok/s) | "
          "decode ref (tok/s) | ours/ref | stream ours (tok/s) | stream/generate |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, length, t, r in rows:
        print(f"| {batch} | {length} | {t['ours_prefill']:.3f} | {t['ref_prefill']:.3f} | "
              f"{t['ours_prefill'] / t['ref_prefill']:.2f} | {r['ours']:.1f} | {r['ref']:.1f} | "
              f"{r['ours'] / r['ref']:.2f} | {r['stream']:.1f} | {r['stream'] / r['ours']:.2f} |")


if __name__ == "__main__":
    main()
