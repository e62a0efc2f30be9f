"""Do images help video QA? The paper's joint-training claim, in miniature, on the shapes world.

    python -m benchmarks.shapes_ablation --workdir /tmp/shapes_ablation [--seeds 0 1 2] [--stage2-steps N]

For each seed: the demo's data and random init (`vllava_jax.demo.prepare`, written once per seed),
then the demo's two stages twice with the same steps, batch size and learning rate, once on the
videos' captions and QA only and once on videos + images (the demo's mix: even in stage 1, 30/70
in stage 2), and held-out video direction accuracy (offline judge) for each. Same steps means the
mixed arm sees fewer clips: its rows are shared with images. Prints a markdown table: one row per
seed, then the mean, and writes it with the settings to WORKDIR/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from etils import epath

from configs import shapes_tiny
from data_pipelines.shapes import ShapesSpec
from vllava_jax.demo import evaluate, prepare, train_stage

MIXES = ("videos only", "images + videos")


def run_mix(mix: str, data, init: epath.Path, seed: int, out: epath.Path, stage1_steps: int | None,
            stage2_steps: int | None) -> float:
    """Video direction accuracy after both stages on `mix`, with everything under `out`."""
    videos_only = mix == MIXES[0]
    stage1, _ = train_stage("stage1", init, data.stage1[:1] if videos_only else data.stage1, data.root, out, seed,
                            stage1_steps)
    stage2, _ = train_stage("stage2", stage1, data.stage2[:1] if videos_only else data.stage2, data.root, out, seed,
                            stage2_steps, weights=None if videos_only else shapes_tiny.STAGE2_MIX)
    return evaluate(stage2, data, out / "eval", kinds=("video_direction",))["video_direction"]["metrics"]["accuracy"]


def table(seeds: list[int], results: dict[str, list[float]]) -> str:
    lines = ["| seed | " + " | ".join(f"video direction accuracy, {m}" for m in MIXES) + " |",
             "| --- | " + " | ".join("---" for _ in MIXES) + " |"]
    lines += [f"| {seed} | " + " | ".join(f"{100 * results[m][i]:.0f}%" for m in MIXES) + " |"
              for i, seed in enumerate(seeds)]
    lines.append("| mean | " + " | ".join(f"{100 * statistics.mean(results[m]):.1f}%" for m in MIXES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="data, checkpoints and eval outputs of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of data, init and order")
    parser.add_argument("--stage1-steps", type=int, help="stage 1 steps of every run (default: shapes_tiny's)")
    parser.add_argument("--stage2-steps", type=int, help="stage 2 steps of every run (default: shapes_tiny's)")
    parser.add_argument("--eval-videos", type=int, default=ShapesSpec.eval_videos, help="held-out clips per seed")
    args = parser.parse_args(argv)
    workdir = epath.Path(args.workdir)
    spec = ShapesSpec(eval_videos=args.eval_videos)
    results = {mix: [] for mix in MIXES}
    began = time.perf_counter()
    for seed in args.seeds:
        data, init = prepare(workdir / f"seed{seed}", seed, spec)
        for mix in MIXES:
            out = workdir / f"seed{seed}" / mix.replace(" ", "").replace("+", "_")
            results[mix].append(run_mix(mix, data, init, seed, out, args.stage1_steps, args.stage2_steps))
            print(f"seed {seed}, {mix}: video direction {100 * results[mix][-1]:.0f}%", file=sys.stderr)
    text = table(args.seeds, results)
    doc = {"settings": {k: v for k, v in vars(args).items() if k != "workdir"}, "accuracy": results,
           "seconds": round(time.perf_counter() - began), "table": text}
    (workdir / "ablation.json").write_text(json.dumps(doc, indent=2))
    print("\n" + text)
    return doc


if __name__ == "__main__":
    main()
