"""Eval throughput with visual features reused across an image's or video's questions.

    python -m benchmarks.eval_features [--clips 4] [--questions-per-clip 5] [--batch 5] [--new-tokens 16]

An MSVD-QA-shaped set (several questions per clip, 6-9 s 240p H.264 files), the small
config (ViT 12x384 towers at 112 px, LLaMA 12x768), float32, one process. Before: every question
decodes its clip and runs the towers inside prefill (the eval runner until issue 18). After: the
runner's path, `FeatureCache` (clips hashed, decoded and encoded once, features passed to prefill).
Both arms batch the questions in file order, greedy, EOS disabled so each decodes --new-tokens;
medians over --runs passes of each arm, interleaved, after a warm-up pass (compilation), in wall
seconds and in CPU seconds of the process (the figure to trust on a shared machine). The answers
of both arms are compared token for token.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import model_pair, small_config, video_prompt
from benchmarks.video_decode import write_clip
from vllava_jax import generation
from vllava_jax.features import FeatureCache
from vllava_jax.processing import video as video_lib


def pixels_of(path: pathlib.Path, size: int) -> np.ndarray:
    return video_lib.transform_hf(video_lib.read_frames(path, 8), size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--questions-per-clip", type=int, default=5)
    parser.add_argument("--batch", type=int, default=5, help="questions per generate call")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    _, model = model_pair(small_config(args.image_size))
    sampling = generation.SamplingConfig(max_new_tokens=args.new_tokens, eos_token_ids=(), pad_token_id=0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for c in range(args.clips):
            clips.append(pathlib.Path(tmp) / f"clip{c}.mp4")
            write_clip(clips[-1], seconds=6 + c, height=240, gop=250)  # distinct content per clip
        questions = [(clip, video_prompt(rng, 1, args.image_size, 32)[0][0])
                     for clip in clips for _ in range(args.questions_per_clip)]
        batches = [questions[i:i + args.batch] for i in range(0, len(questions), args.batch)]

        def before():
            out = []
            for batch in batches:
                pixels = np.stack([pixels_of(clip, args.image_size) for clip, _ in batch])
                out.append(generation.generate(model, np.stack([ids for _, ids in batch]), None,
                                               pixel_values_videos=pixels, sampling=sampling))
            return out

        def after():
            cache, out = FeatureCache(model), []
            for batch in batches:
                keys, fresh = [cache.key("video", str(clip)) for clip, _ in batch], {}
                for key, (clip, _) in zip(keys, batch):
                    if key not in cache and key not in fresh:
                        fresh[key] = pixels_of(clip, args.image_size)
                if fresh:
                    cache.add("video", list(fresh), np.stack(list(fresh.values())))
                out.append(generation.generate(model, np.stack([ids for _, ids in batch]), None,
                                               pixel_values_videos=cache.batch(keys), sampling=sampling))
            assert cache.tower_runs == args.clips
            return out

        arms = [("before: towers per question", before), ("after: towers per clip", after)]
        answers = [fn() for _, fn in arms]                      # warm-up: compiles both
        wall, cpu = [[], []], [[], []]
        for _ in range(args.runs):                              # interleaved, so load swings hit both arms
            for i, (_, fn) in enumerate(arms):
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[i].append(time.perf_counter() - start_wall)
                cpu[i].append(time.process_time() - start_cpu)
    same = all(np.array_equal(a, b) for a, b in zip(*answers))
    print(f"{args.clips} clips x {args.questions_per_clip} questions, batch {args.batch}, {args.new_tokens} new "
          f"tokens; answers identical: {same}")
    print("| arm | questions/s (wall) | questions per CPU-second |\n| --- | --- | --- |")
    rates = [(len(questions) / statistics.median(w), len(questions) / statistics.median(c)) for w, c in zip(wall, cpu)]
    for (name, _), (per_wall, per_cpu) in zip(arms, rates):
        print(f"| {name} | {per_wall:.3f} | {per_cpu:.3f} |")
    print(f"| after / before | {rates[1][0] / rates[0][0]:.2f}x | {rates[1][1] / rates[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
