"""Accelerator figures in one call: the stage-2 train step and 7B generation, ours vs transformers.

    python -m benchmarks.accelerator [--llm-layers 6] [--remat none] [--out DIR] [--tiny] [--sections train generation serving]

One process, one device, the same weights on both sides: transformers initializes each model in
bfloat16 and saves it; we load that checkpoint.
- Train step, stage 2 (projector + LLM train, towers frozen): ViT-L/14 towers at 224 px, a decoder
  of --llm-layers layers of Vicuna-7B's shape, 8 rows x 2,312 tokens (one 8-frame video + 256 text
  tokens each, the last 128 labelled); ours float32 master weights / bfloat16 compute, --remat
  (default none, as the first H200 run measured), the trainer's jitted step (`train.state`); the
  reference (no gradient checkpointing) float32 weights under bfloat16
  autocast with fused AdamW. Step time, both step-0 losses, compile time, and MFU of the project's
  `flops.step_flops` (LM head over the labelled tokens for ours; every logit, what it
  computes, for the reference) against the dense bfloat16 peak of the device kind
  (`flops.PEAK_FLOPS`) and against a bfloat16 matmul measured in the same run; then ours compiled
  with the decode programs' `GPU_WEIGHTS_READ_IN_PLACE` against ours as shipped.
- Generation: the 7B decoder (32 layers) in bfloat16, batch 1 and 16, a 2,120-token prompt (an
  8-frame 224 px video + 64 text tokens), 128 new tokens, greedy, EOS disabled: prefill seconds
  (and ours compiled with the decode programs' `GPU_WEIGHTS_READ_IN_PLACE`, against ours as shipped),
  decode tokens/s (a generate's time minus a prefill's), `stream`'s tokens/s against `generate`'s,
  and the decode roofline fraction: tokens/s over what the device's memory bandwidth (measured
  here, from a large on-device copy) allows when each step reads the decoder's parameters and the
  filled KV cache once.
- Serving (ours only: transformers has no continuous batching): the serving engine on that 7B
  model, new tokens/s with 16 requests in flight (2 with --tiny) against one at a time, each a
  different question after the same system prompt and clip (features cached, prefix stored;
  `benchmarks.serve_engine`), --new-tokens as generation's.
The JSON (DIR/accelerator.json) is rewritten after every figure, so a run cut short still leaves
what it measured; a section that fails (train, models: loading the generation models, generation,
serving) is recorded there with its traceback and the others still run (exit status 1 then);
--sections reruns some of them. --tiny runs the same code with tiny shapes on any backend (CI runs it on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from etils import epath
from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

import vllava_jax
from benchmarks.common import IMAGE_TOKEN, VIDEO_TOKEN, VOCAB, median_seconds, synchronize, video_prompt
from benchmarks.generation import decode_rate, generation_timers, prefill_inputs
from benchmarks import serve_engine
from benchmarks.train_step import jitted_step, labelled_batch, reference_step
from vllava_jax import generation
from vllava_jax.config import DTypePolicy
from vllava_jax.modeling.layers import GPU_WEIGHTS_READ_IN_PLACE, REMAT_POLICIES
from vllava_jax.sharding import mesh_context
from vllava_jax.train import flops, partition, roofline
from vllava_jax.train.step import IGNORE

FRAMES = 8
SECTIONS = ("train", "generation", "serving")


@dataclasses.dataclass(frozen=True)
class Shapes:
    vision: dict          # transformers' vision_config of both towers
    text: dict            # text_config without its depth
    train_layers: int
    train_rows: int
    train_text_tokens: int  # per row, around the video; the half after it is labelled
    generation_layers: int
    generation_batches: tuple[int, ...]
    prompt_text_tokens: int
    new_tokens: int
    matmul_size: int      # of the bfloat16 size^3 matmul timed as the measured peak
    copy_bytes: int       # of the on-device copy the memory bandwidth is measured from
    runs: int             # timed runs per figure, median reported


FULL = Shapes(
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768),
    text=dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
              vocab_size=VOCAB, max_position_embeddings=4096),
    train_layers=6, train_rows=8, train_text_tokens=256, generation_layers=32, generation_batches=(1, 16),
    prompt_text_tokens=64, new_tokens=128, matmul_size=8192, copy_bytes=4 << 30, runs=5)

TINY = Shapes(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                patch_size=14, projection_dim=16),
    text=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
              max_position_embeddings=512),
    train_layers=2, train_rows=2, train_text_tokens=16, generation_layers=2, generation_batches=(1, 2),
    prompt_text_tokens=8, new_tokens=32, matmul_size=256, copy_bytes=16 << 20, runs=3)


def hf_config(shapes: Shapes, layers: int) -> VideoLlavaConfig:
    return VideoLlavaConfig(vision_config=shapes.vision, text_config=dict(shapes.text, num_hidden_layers=layers),
                            image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN)


def save_reference(config: VideoLlavaConfig, path: str, device: torch.device):
    """transformers' model initialized in bfloat16 on `device` and saved to `path`; returned in eval mode."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            reference = VideoLlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    reference.save_pretrained(path)
    return reference


class Report:
    """The figures so far and the sections that failed, rewritten to DIR/accelerator.json
    (atomically) after each one."""

    def __init__(self, out: epath.Path, meta: dict):
        self.path = out / "accelerator.json"
        self.data = {"meta": meta, "figures": {}, "failed": {}}
        out.mkdir(parents=True, exist_ok=True)

    def _write(self) -> None:
        partial = self.path.parent / (self.path.name + ".tmp")
        partial.write_text(json.dumps(self.data, indent=1))
        partial.replace(self.path)

    def run_section(self, name: str, figures, *args):
        """`figures(*args)`'s result; if it raises, its traceback is recorded under "failed" and
        printed, and None returned, so that one section's failure (an out-of-memory, a kernel the
        device refuses) does not cost the figures of the others in a one-shot device run."""
        try:
            return figures(*args)
        except Exception:
            self.data["failed"][name] = traceback.format_exc()
            self._write()
            print(f"section {name!r} failed:\n{self.data['failed'][name]}", file=sys.stderr, flush=True)
            return None

    def add(self, name: str, ours=None, reference=None, unit: str = "", ratio: float | None = None, **extra) -> None:
        if ratio is None and ours is not None and reference:
            ratio = ours / reference
        self.data["figures"][name] = dict(ours=ours, reference=reference, ratio=ratio, unit=unit, **extra)
        self._write()
        print(f"{name}: ours {_fmt(ours)} {unit}, reference {_fmt(reference)}, ratio {_fmt(ratio)}", flush=True)

    def table(self) -> str:
        lines = ["| figure | ours | transformers | ours/transformers |", "| --- | --- | --- | --- |"]
        for name, f in self.data["figures"].items():
            lines.append(f"| {name} ({f['unit']}) | {_fmt(f['ours'])} | {_fmt(f['reference'])} | {_fmt(f['ratio'])} |")
        return "\n".join(lines)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def matmul_peak(size: int, runs: int) -> float:
    """FLOP/s of one bfloat16 size^3 XLA matmul (float32 accumulation), median of `runs`."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    return 2 * size ** 3 / median_seconds(lambda: jax.block_until_ready(matmul(a)), runs)


def memory_bandwidth(size_bytes: int, runs: int) -> float:
    """Bytes/s of an on-device elementwise copy (each byte read once and written once), median of `runs`."""
    x = jnp.zeros((size_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda v: v + 1.0)
    return 2 * size_bytes / median_seconds(lambda: jax.block_until_ready(copy(x)), runs)


def train_figures(report: Report, shapes: Shapes, layers: int, remat: str, device: torch.device, peak: float) -> None:
    config = hf_config(shapes, layers)
    image_size = shapes.vision["image_size"]
    batch = labelled_batch(np.random.default_rng(0), shapes.train_rows, image_size, shapes.train_text_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        reference = save_reference(config, tmp, device).float()  # float32 master weights under autocast
        ours = vllava_jax.load_pretrained(tmp, dtype=DTypePolicy.from_names("float32", "bfloat16"), remat=remat)
    step, state, frozen, batches = jitted_step(ours.module, partition.preset("stage2"), batch)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batches).compile()
    report.add("train step compile", time.perf_counter() - start, unit="s")

    def runner(program):
        """A closure running one step of `program` on the train state; returns its loss."""
        def run() -> float:
            nonlocal state
            state, metrics = program(state, frozen, batches)
            return float(metrics["loss"])

        return run

    run_ours = runner(compiled)
    run_reference = reference_step(reference, partition.preset("stage2"), batch, autocast=torch.bfloat16)
    timed = {}
    for name, fn in (("ours", run_ours), ("reference", run_reference)):
        start = time.perf_counter()
        timed[name] = fn()  # step 0: the same weights and batch on both sides
        timed[name + "_first"] = time.perf_counter() - start
    report.add("train step-0 loss", timed["ours"], timed["reference"], unit="nats")
    report.add("train first step incl. compile/warm-up", timed["ours_first"], timed["reference_first"], unit="s")
    seconds = {"ours": median_seconds(run_ours, shapes.runs), "reference": median_seconds(run_reference, shapes.runs)}
    report.add("train step", seconds["ours"], seconds["reference"], unit="s")

    rows, length = batch["input_ids"].shape
    labelled = int(np.sum(batch["labels"][:, 1:] != IGNORE))
    model_flops = flops.step_flops(ours.config, partition.preset("stage2"), rows, length, FRAMES, labelled)
    every_logit = flops.step_flops(ours.config, partition.preset("stage2"), rows, length, FRAMES)
    mfu = {k: f / seconds[k] for k, f in (("ours", model_flops), ("reference", every_logit))}
    report.add("train model TFLOP per step (ours: labelled logits; ref: every logit)", model_flops / 1e12,
               every_logit / 1e12, unit="TFLOP")
    report.add("train MFU vs dense bf16 peak", *(mfu[k] / peak if peak else None for k in ("ours", "reference")),
               unit="fraction", peak_flops=peak)
    report.add("train MFU vs measured bf16 matmul", *(mfu[k] / report.data["meta"]["matmul_peak_flops"]
                                                       for k in ("ours", "reference")), unit="fraction")

    # the step compiled with the decode programs' GPU options (cuBLAS gemms reading each layer's
    # weights in place), which training does not pass: this figure beside the step as shipped says
    # whether it should
    run_in_place = runner(step.lower(state, frozen, batches).compile(GPU_WEIGHTS_READ_IN_PLACE))
    run_in_place()
    report.add("train step reading weights in place (ours) vs as shipped", median_seconds(run_in_place, shapes.runs),
               seconds["ours"], unit="s")


def generation_models(shapes: Shapes, device: torch.device):
    """(ours, reference): the generation shape's model, initialized and saved by transformers in
    bfloat16, loaded by us."""
    with tempfile.TemporaryDirectory() as tmp:
        reference = save_reference(hf_config(shapes, shapes.generation_layers), tmp, device)
        return vllava_jax.load_pretrained(tmp, dtype="bfloat16"), reference


def prefill_in_place(ours, ids: np.ndarray, videos: np.ndarray, new_tokens: int):
    """A timer of our prefill compiled with `GPU_WEIGHTS_READ_IN_PLACE`, which only the decode
    programs pass: its figure beside the prefill as shipped says whether prefill should too."""
    sampling, padded, mask = prefill_inputs(ours, ids, videos, new_tokens)
    inputs = (jnp.asarray(padded, jnp.int32), jnp.asarray(mask, jnp.int32), None, jnp.asarray(videos),
              jax.random.key(0))
    with mesh_context(ours.mesh), jax.default_matmul_precision(ours.policy.matmul_precision):
        compiled = generation.prefill_program.lower(ours.graphdef, ours.state, *inputs, sampling).compile(
            GPU_WEIGHTS_READ_IN_PLACE)
    return lambda: jax.block_until_ready(compiled(ours.state, *inputs))


def generation_figures(report: Report, shapes: Shapes, ours, reference, bandwidth: float) -> None:
    """Prefill, decode and stream figures at each batch, ours and the reference's."""
    image_size = shapes.vision["image_size"]
    text = ours.config.text_config
    for batch in shapes.generation_batches:
        ids, videos = video_prompt(np.random.default_rng(batch), batch, image_size, shapes.prompt_text_tokens)
        timers = generation_timers(ours, reference, ids, videos.astype(np.float32), shapes.new_tokens)
        start = time.perf_counter()
        timers["ours_generate"]()
        report.add(f"generate b{batch} first call incl. compile", time.perf_counter() - start, unit="s")
        t = {name: median_seconds(fn, shapes.runs) for name, fn in timers.items()}
        report.add(f"prefill b{batch}", t["ours_prefill"], t["ref_prefill"], unit="s", prompt_tokens=ids.shape[1])
        ours_rate = decode_rate(batch, shapes.new_tokens, t["ours_generate"], t["ours_prefill"])
        ref_rate = decode_rate(batch, shapes.new_tokens, t["ref_generate"], t["ref_prefill"])
        report.add(f"decode b{batch}", ours_rate, ref_rate, unit="tok/s")
        stream_rate = decode_rate(batch, shapes.new_tokens, t["ours_stream"], t["ours_prefill"])
        report.add(f"stream b{batch} (ours) vs generate (ours)", stream_rate, ours_rate, unit="tok/s")
        # each step reads the parameters and every row's filled cache (on average half the new tokens)
        step_bytes = roofline.decode_step_bytes(ours.state["language_model"], text, batch,
                                                ids.shape[1] + shapes.new_tokens / 2, ours.policy.compute_dtype)
        rate = batch * bandwidth / step_bytes
        report.add(f"decode b{batch} fraction of memory roofline", ours_rate / rate, ref_rate / rate,
                   unit="fraction", roofline_tok_s=rate, bytes_per_step=step_bytes)
        # last: a what-if (one more compile), which a run cut short can best do without
        in_place = median_seconds(prefill_in_place(ours, ids, videos.astype(np.float32), shapes.new_tokens),
                                  shapes.runs)
        report.add(f"prefill b{batch} reading weights in place (ours) vs as shipped", in_place, t["ours_prefill"],
                   unit="s")


def serving_figures(report: Report, ours, shapes: Shapes) -> None:
    """The engine's tokens/s, max(generation_batches) requests in flight vs one at a time (4 requests)."""
    in_flight, question = max(shapes.generation_batches), shapes.prompt_text_tokens
    image_size = shapes.vision["image_size"]
    prompt = len(serve_engine.requests(1, 1, image_size, question)[0].prompt_ids)
    max_length = -(-(prompt + shapes.new_tokens) // 64) * 64
    figures = serve_engine.measure(ours, [in_flight], 4, shapes.new_tokens, image_size, question, max_length, 4)
    (_, alone, alone_s, _), (_, together, together_s, steps) = figures
    rate_alone, rate_together = (n * shapes.new_tokens / t for n, t in ((alone, alone_s), (together, together_s)))
    report.add(f"serve {in_flight} in flight vs 1 at a time (ours)", rate_together, rate_alone, unit="tok/s",
               prompt_tokens=prompt, steps=steps)


def free_memory(device: torch.device) -> None:
    """Give back what dropped objects held on the device, so the next section has it."""
    gc.collect()
    synchronize()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-layers", type=int, default=None,
                        help="decoder layers of the train step's model (default 6; 2 with --tiny)")
    parser.add_argument("--remat", default="none", choices=["none", *REMAT_POLICIES],
                        help="our train step's rematerialization (default none: the reference checkpoints nothing "
                             "either; dots as the 7B recipes train)")
    parser.add_argument("--out", default="accelerator_out", help="directory for accelerator.json")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the same code in seconds on a CPU")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure (default all; e.g. a rerun of what a cut run missed)")
    args = parser.parse_args()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # read when JAX starts its GPU client: torch shares it
    if args.llm_layers is not None and args.llm_layers < 1:
        parser.error(f"--llm-layers must be at least 1, got {args.llm_layers}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file, not a directory for accelerator.json")
    shapes = TINY if args.tiny else FULL
    layers = args.llm_layers or shapes.train_layers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = jax.devices()[0].device_kind
    peak = flops.peak_flops()
    meta = dict(device_kind=kind, backend=jax.default_backend(), torch_device=str(device), jax=jax.__version__,
                torch=torch.__version__, transformers=transformers.__version__, tiny=args.tiny,
                train_llm_layers=layers, train_remat=args.remat, shapes=dataclasses.asdict(shapes),
                dense_peak_flops=peak)
    report = Report(epath.Path(args.out), meta)
    meta["matmul_peak_flops"] = matmul_peak(shapes.matmul_size, shapes.runs)
    report.add("measured bf16 matmul peak", meta["matmul_peak_flops"] / 1e12, unit="TFLOP/s",
               ratio=meta["matmul_peak_flops"] / peak if peak else None)
    bandwidth = memory_bandwidth(shapes.copy_bytes, shapes.runs)
    report.add("measured memory bandwidth", bandwidth / 1e9, unit="GB/s")
    if "train" in args.sections:
        report.run_section("train", train_figures, report, shapes, layers, args.remat, device, peak)
        free_memory(device)
    if {"generation", "serving"} & set(args.sections):
        models = report.run_section("models", generation_models, shapes, device)
        if models is not None:
            ours, reference = models
            if "generation" in args.sections:
                report.run_section("generation", generation_figures, report, shapes, ours, reference, bandwidth)
            del models, reference  # the serving engine gets the memory the reference held
            free_memory(device)
            if "serving" in args.sections:
                report.run_section("serving", serving_figures, report, ours, shapes)
    print(f"\n{kind} ({jax.default_backend()}), jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; train step with {layers} decoder layers, remat {args.remat}; medians of "
          f"{shapes.runs}")
    print(report.table())
    print(f"wrote {report.path}")
    if report.data["failed"]:
        print(f"failed sections (tracebacks above and in the JSON): {', '.join(report.data['failed'])}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
