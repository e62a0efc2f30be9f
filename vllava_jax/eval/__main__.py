"""Evaluate a Video-LLaVA checkpoint on a benchmark with the original prompts and official scoring.

    python -m vllava_jax.eval --task msvd_qa --model CKPT --data MSVD_Zero_Shot_QA --output out/msvd --judge openai

Tasks: msvd_qa, msrvtt_qa, tgif_qa, activitynet_qa (test_q.json + test_a.json, videos in DATA,
DATA/videos, DATA/videos/all or DATA/mp4); vqav2, textvqa, vizwiz, gqa (LLaVA question JSONL +
official annotations); pope (coco_pope_{adversarial,popular,random}.json); sqa_img
(llava_test_CQM-A.json + problems.json). See vllava_jax/eval/tasks/ for each layout.

Writes to OUTPUT: predictions.jsonl (cached per question: rerun the same command to resume),
judged.jsonl, metrics.json, report.html, and submission.json for the server-scored splits (VQAv2
test-dev, VizWiz test). `--shard I/N` on N processes, then `--merge`, splits a run. The openai
judge reads OPENAI_API_KEY, OPENAI_BASE_URL and OPENAI_JUDGE_MODEL from the environment.
"""

from __future__ import annotations

import argparse

from vllava_jax import cli
from vllava_jax.eval.runner import RunConfig, run, summary_line
from vllava_jax.eval.tasks import registry


def shard_arg(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def parse_args(argv: list[str] | None) -> RunConfig:
    parser = cli.ArgumentParser(prog="python -m vllava_jax.eval", description=__doc__)
    parser.add_argument("--task", required=True, choices=sorted(registry()), help="benchmark to run")
    parser.add_argument("--model", required=True, help="checkpoint dir (any format load_pretrained reads) with "
                        "its tokenizer files")
    parser.add_argument("--data", required=True, help="the benchmark's dir: annotation files and media")
    parser.add_argument("--output", required=True, help="where predictions, verdicts, metrics and the report go; "
                        "rerunning into the same dir resumes")
    parser.add_argument("--limit", type=int, help="only the first N questions (in annotation order)")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per left-padded batch; does not "
                        "change greedy answers")
    parser.add_argument("--judge", default="offline", choices=["offline", "openai"], help="video QA judge: "
                        "offline (normalized exact/contains match, no network) or openai (the original GPT prompt "
                        "on an OpenAI-compatible endpoint from the environment)")
    parser.add_argument("--judge-tries", type=int, default=3, help="most requests per question to the openai "
                        "judge when replies are malformed or fail")
    parser.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the original "
                        "script's, 1024 for video QA and ScienceQA, 128 for the other image tasks)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter/compute dtype")
    parser.add_argument("--adapter", help="a LoRA adapter dir (PEFT format, as training exports) applied on top of "
                        "--model without merging")
    parser.add_argument("--report-samples", type=int, default=24, help="questions shown in report.html")
    parser.add_argument("--shard", type=shard_arg, help="I/N: predict only questions I, I+N, I+2N, ... (0 <= I < N) "
                        "into OUTPUT/shards/I-of-N, e.g. one process or host each; then --merge")
    parser.add_argument("--merge", action="store_true", help="gather the predictions of every --shard I/N run in "
                        "OUTPUT (each question exactly once), then judge, score and report them as one run")
    args = parser.parse_args(argv)
    if args.shard is not None and args.merge:
        parser.error("--shard and --merge are separate steps: run each shard, then --merge once")
    for name in ("limit", "batch_size", "judge_tries", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return RunConfig(**vars(args))


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    doc = run(config)
    print(summary_line(doc, config.output))


if __name__ == "__main__":
    cli.run(main, resumable=True)
