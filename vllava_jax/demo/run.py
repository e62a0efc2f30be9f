"""The quickstart job: the whole Video-LLaVA recipe on a synthetic shapes world, on a laptop CPU.

    python -m vllava_jax.demo --workdir /tmp/vllava_demo

1. writes clips and images of colored shapes (PyAV/Pillow) with LLaVA-format captions and QA,
   and held-out eval sets (data_pipelines/shapes/), a sentencepiece tokenizer and a randomly
   initialized tiny Video-LLaVA checkpoint (configs/shapes_tiny.py);
2. stage 1 trains the projector on captions, stage 2 everything (projector, LLM and towers) on
   QA, with the real trainer and Grain pipeline; each stage is exported as a transformers-format
   checkpoint;
3. evaluates the final checkpoint with `vllava_jax.eval` (offline judge) on held-out video
   direction questions (MSVD-QA layout) and image color questions (GQA layout);
4. answers one held-out clip as `python -m vllava_jax.generate` does (`generate.ask`);
5. writes metrics.json (accuracy per question kind) and plot.png (loss curves, accuracies).

Unlike the paper, whose towers are pretrained and stay frozen, ours start random; frozen random
towers left the answers near chance, so stage 2 tunes them too (configs/shapes_tiny.py).
"""

from __future__ import annotations

import argparse
import json
import time

from etils import epath

import vllava_jax
from configs import shapes_tiny
from data_pipelines.shapes.tokenizer import write_tokenizer
from data_pipelines.shapes.world import ShapesData, ShapesSpec, generate
from vllava_jax import cli
from vllava_jax.checkpoint.write import save_hf


def prepare(workdir: epath.Path, seed: int, spec: ShapesSpec) -> tuple[ShapesData, epath.Path]:
    """The shapes data and a random-init checkpoint dir (config, weights, tokenizer files)."""
    data = generate(workdir / "data", seed=seed, spec=spec)
    tokenizer = workdir / "tokenizer"
    write_tokenizer(tokenizer, shapes_tiny.SP_VOCAB_SIZE)
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(shapes_tiny.model_config())
    init = save_hf(vllava_jax.VideoLlava.random(config, seed=seed), workdir / "checkpoints" / "init", overwrite=True,
                   side_files_from=tokenizer)
    return data, init


def train_stage(stage: str, init: epath.Path, annotations: list[epath.Path], media_root: epath.Path,
                workdir: epath.Path, seed: int, steps: int | None = None,
                weights: tuple[float, ...] | None = None) -> tuple[epath.Path, list[float]]:
    """Train one stage from `init` on `annotations` mixed by `weights` (default: evenly); returns its
    exported checkpoint and losses."""
    from vllava_jax.train.data import make_data
    from vllava_jax.train.export import export_run
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.loop import train

    config = shapes_tiny.get_config(stage)
    config.init_checkpoint = str(init)
    config.seed = seed
    if steps is not None:
        config.total_steps = config.checkpoint_every = steps
    config.data.annotations = [str(a) for a in annotations]
    config.data.media_roots = [str(media_root)] * len(annotations)
    config.data.weights = list(weights or [1.0 / len(annotations)] * len(annotations))
    run_dir = workdir / "runs" / stage
    result = train(config, run_dir, make_data(config, build_model_config(config)))
    losses = result.losses
    earlier = config.total_steps - len(losses)
    if earlier:  # a resumed run: train() returns the steps it ran, the earlier ones are in its log
        logged = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = logged[:earlier] + losses
    return export_run(config, result, workdir / "checkpoints" / stage, init), losses


def evaluate(model: epath.Path, data: ShapesData, out: epath.Path, kinds=("video_direction", "image_color"),
             batch_size: int = 25) -> dict[str, dict]:
    """`vllava_jax.eval` on the held-out sets: {kind: its metrics document}."""
    from vllava_jax.eval.runner import RunConfig, run, summary_line

    tasks = {"video_direction": ("msvd_qa", data.video_eval), "image_color": ("gqa", data.image_eval)}
    docs = {}
    for kind in kinds:
        task, folder = tasks[kind]
        config = RunConfig(task=task, model=str(model), data=str(folder), output=str(out / kind), judge="offline",
                           batch_size=batch_size, max_new_tokens=8)
        docs[kind] = run(config)
        print(summary_line(docs[kind], config.output))
    return docs


def example_answer(model: epath.Path, data: ShapesData) -> tuple[str, str, str, str]:
    """(clip, question, truth, answer) for the first held-out clip, answered as the generate CLI does."""
    from vllava_jax import generate

    question = json.loads((data.video_eval / "test_q.json").read_text())[0]
    truth = json.loads((data.video_eval / "test_a.json").read_text())[0]["answer"]
    clip = str(data.video_eval / "videos" / f"{question['video_name']}.mp4")
    answer = generate.ask(model, question["question"], videos=[clip], max_new_tokens=8)
    return clip, question["question"], truth, answer.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m vllava_jax.demo", description=__doc__)
    parser.add_argument("--workdir", required=True, help="where data, checkpoints, runs, eval outputs, "
                        "metrics.json and plot.png go (created; a rerun overwrites the data and checkpoints, "
                        "and the trainer resumes finished runs instead of retraining)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the random init and the data order")
    parser.add_argument("--stage1-steps", type=int, help="stage 1 steps (default: configs/shapes_tiny.py's)")
    parser.add_argument("--stage2-steps", type=int, help="stage 2 steps (default: configs/shapes_tiny.py's)")
    parser.add_argument("--train-videos", type=int, default=ShapesSpec.train_videos, help="training clips")
    parser.add_argument("--train-images", type=int, default=ShapesSpec.train_images, help="training images")
    parser.add_argument("--eval-videos", type=int, default=ShapesSpec.eval_videos, help="held-out clips "
                        "(direction questions)")
    parser.add_argument("--eval-images", type=int, default=ShapesSpec.eval_images, help="held-out images "
                        "(color questions)")
    args = parser.parse_args(argv)
    for name in ("stage1_steps", "stage2_steps", "train_videos", "train_images", "eval_videos", "eval_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Runs the demo; returns the metrics document it writes to WORKDIR/metrics.json."""
    from vllava_jax.demo.plot import write_plot

    args = parse_args(argv)
    workdir = cli.make_output_dir(args.workdir, "--workdir")
    spec = ShapesSpec(train_videos=args.train_videos, train_images=args.train_images, eval_videos=args.eval_videos,
                      eval_images=args.eval_images)
    began = time.perf_counter()
    seconds = {}

    def lap(name: str) -> None:
        seconds[name] = round(time.perf_counter() - began - sum(seconds.values()), 1)

    print("[1/5] data, tokenizer, random-init checkpoint")
    data, init = prepare(workdir, args.seed, spec)
    lap("prepare")
    print("[2/5] stage 1: projector on captions")
    stage1, losses1 = train_stage("stage1", init, data.stage1, data.root, workdir, args.seed, args.stage1_steps)
    lap("stage1")
    print("[3/5] stage 2: projector + LLM + towers on QA")
    stage2, losses2 = train_stage("stage2", stage1, data.stage2, data.root, workdir, args.seed, args.stage2_steps,
                                  weights=shapes_tiny.STAGE2_MIX)
    lap("stage2")
    print("[4/5] evaluation on held-out clips and images")
    docs = evaluate(stage2, data, workdir / "eval")
    lap("eval")
    print("[5/5] one answer from python -m vllava_jax.generate")
    clip, question, truth, answer = example_answer(stage2, data)
    lap("generate")
    accuracy = {kind: doc["metrics"]["accuracy"] for kind, doc in docs.items()}
    metrics = {"accuracy": accuracy, "questions": {kind: doc["questions"] for kind, doc in docs.items()},
               "chance": {"video_direction": 0.25, "image_color": 0.25}, "seed": args.seed,
               "steps": {"stage1": len(losses1), "stage2": len(losses2)},
               "final_loss": {"stage1": losses1[-1], "stage2": losses2[-1]}, "seconds": seconds,
               "total_seconds": round(time.perf_counter() - began, 1),
               "example": {"video": clip, "question": question, "answer": truth, "pred": answer}}
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot = write_plot(workdir / "plot.png", {"stage 1": losses1, "stage 2": losses2}, accuracy)
    print(f"\ndata:         {data.root}")
    print(f"checkpoints:  {init}, {stage1}, {stage2} (transformers format + tokenizer)")
    print(f"train logs:   {workdir / 'runs'} (metrics.jsonl, TensorBoard events)")
    print(f"predictions:  {workdir / 'eval'} (predictions.jsonl, judged.jsonl, metrics.json, report.html)")
    print(f"metrics:      {workdir / 'metrics.json'}")
    print(f"plot:         {plot}")
    print(f"example:      {question!r} on {clip} -> {answer!r} (truth: {truth!r})")
    print("accuracy:     " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()) + " (chance 25%)")
    print(f"done in {metrics['total_seconds']:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())})")
    return metrics

