"""Do images help video QA? The paper's joint-training claim, in miniature, on the shapes world.

    python benchmarks/shapes_ablation.py --workdir /tmp/shapes_ablation [--seeds 0 1 2]

For each seed: the demo's data and random init (`vllava_jax.demo.prepare`), then the demo's two
stages twice with the same number of steps and batch size, once on the videos' captions and QA
only and once on videos + images (mixed evenly), and held-out video direction accuracy (offline
judge) for each. Prints a markdown table: one row per seed, then the mean.
"""

from __future__ import annotations

import argparse
import statistics

from etils import epath

from data_pipelines.shapes import ShapesSpec
from vllava_jax.demo import evaluate, prepare, train_stage

MIXES = ("videos only", "images + videos")


def run_mix(mix: str, seed: int, workdir: epath.Path, stage1_steps: int | None, stage2_steps: int | None) -> float:
    """Video direction accuracy after both stages on `mix`, in `workdir/seed<k>/<mix>`."""
    data, init = prepare(workdir / f"seed{seed}", seed, ShapesSpec())
    videos_only = mix == MIXES[0]
    out = workdir / f"seed{seed}" / mix.replace(" ", "").replace("+", "_")
    stage1, _ = train_stage("stage1", init, data.stage1[:1] if videos_only else data.stage1, data.root, out, seed,
                            stage1_steps)
    stage2, _ = train_stage("stage2", stage1, data.stage2[:1] if videos_only else data.stage2, data.root, out, seed,
                            stage2_steps)
    return evaluate(stage2, data, out / "eval", kinds=("video_direction",))["video_direction"]["metrics"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="data, checkpoints and eval outputs of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of data, init and order")
    parser.add_argument("--stage1-steps", type=int, help="stage 1 steps of every run (default: shapes_tiny's)")
    parser.add_argument("--stage2-steps", type=int, help="stage 2 steps of every run (default: shapes_tiny's)")
    args = parser.parse_args()
    workdir = epath.Path(args.workdir)
    results = {mix: [] for mix in MIXES}
    for seed in args.seeds:
        for mix in MIXES:
            results[mix].append(run_mix(mix, seed, workdir, args.stage1_steps, args.stage2_steps))
    print("\n| seed | " + " | ".join(f"video direction accuracy, {m}" for m in MIXES) + " |")
    print("| --- | " + " | ".join("---" for _ in MIXES) + " |")
    for i, seed in enumerate(args.seeds):
        print(f"| {seed} | " + " | ".join(f"{100 * results[m][i]:.1f}%" for m in MIXES) + " |")
    print("| mean | " + " | ".join(f"{100 * statistics.mean(results[m]):.1f}%" for m in MIXES) + " |")


if __name__ == "__main__":
    main()
