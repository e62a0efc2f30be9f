"""Train step (forward + backward + AdamW update): ours vs transformers + torch.optim.AdamW, same weights.

    python -m benchmarks.train_step [--runs 5] [--batch 4] [--image-size 112] [--text-tokens 128]

Both sides float32 on the CPU, one process, the same random weights (saved by transformers, loaded
by us) and the same batch: each row one 8-frame video and --text-tokens text tokens, the text after
the video labelled. The same parameters train on both sides (--stage; towers frozen by default)
with the same update: global-norm clipping to 1, then AdamW (torch's defaults: foreach, its default
attention implementation). Ours is the trainer's jitted step (`vllava_jax.train.state.jit_train_step`,
state donated) at matmul precision "highest". Warm-up (compilation) excluded, `block_until_ready`
before the clock stops; the rounds interleave ours, the reference and a float32 4096^3 XLA matmul
(the measured peak that MFU is relative to), and the table reports medians. Model FLOPs
(`flops.step_flops`) count the LM head over the labelled tokens only, the logits the
loss needs: our step computes just those, transformers computes every position's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.common import model_pair, small_config, video_prompt
from vllava_jax.modeling.layers import REMAT_POLICIES
from vllava_jax.sharding import make_mesh
from vllava_jax.train import flops, partition
from vllava_jax.train.optimizer import make_optimizer
from vllava_jax.train.state import create_train_state, jit_train_step, place_on_mesh
from vllava_jax.train.step import IGNORE

PEAK_SIZE = 4096
FRAMES = 8


def labelled_batch(rng, batch: int, image_size: int, text_tokens: int) -> dict[str, np.ndarray]:
    """Rows of text, one video, text; the text after the video is the answer (labelled)."""
    ids, videos = video_prompt(rng, batch, image_size, text_tokens)
    labels = np.full_like(ids, IGNORE)
    answer = text_tokens - text_tokens // 2
    labels[:, -answer:] = ids[:, -answer:]
    return dict(input_ids=ids, attention_mask=np.ones_like(ids), labels=labels, pixel_values_videos=videos)


def jitted_step(module, trainable: Sequence[str], batch: dict[str, np.ndarray], learning_rate: float = 1e-5):
    """(step, state, frozen, batches) as the trainer builds them, on a one-device mesh: call
    `step(state, frozen, batches)`; `batches` is `batch` (flat videos, as transformers takes them) as
    one microbatch (no accumulation) in the training batch's per-row layout."""
    mesh = make_mesh(devices=jax.devices()[:1])
    graphdef, trainable, frozen = partition.split_trainable(module, trainable)
    optimizer, _ = make_optimizer(learning_rate, 1000)
    state = create_train_state(trainable, optimizer, mesh)
    frozen = place_on_mesh(frozen, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    step = jit_train_step(graphdef, optimizer, state, frozen, replicated)
    per_row = dict(batch, pixel_values_videos=batch["pixel_values_videos"][:, None])  # the training layout: a video per row
    batches = jax.device_put({k: v[None] for k, v in per_row.items()}, replicated)
    return step, state, frozen, batches


REFERENCE_GROUPS = {"model.video_tower.": "video_tower", "model.image_tower.": "image_tower",
                    "model.multi_modal_projector.": "projector", "model.language_model.": "language_model",
                    "lm_head.": "language_model"}


def reference_step(reference, trainable: Sequence[str], batch: dict[str, np.ndarray], autocast: torch.dtype | None = None):
    """A closure running one transformers training step on `batch` (the groups `trainable` trains) on
    the reference's device, under autocast to `autocast` if given, with torch's fused AdamW on a
    GPU; returns its loss."""
    for name, p in reference.named_parameters():
        group = next(g for prefix, g in REFERENCE_GROUPS.items() if name.startswith(prefix))
        p.requires_grad_(any(re.search(pattern, group + "/") for pattern in trainable))
    params = [p for p in reference.parameters() if p.requires_grad]
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=True if device.type == "cuda" else None)
    inputs = {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
    reference.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = reference(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.item()

    return step


def matmul_rate(run_once, size: int = PEAK_SIZE):
    """A closure timing one size^3 matmul (`run_once`, warmed up here); returns its FLOP/s."""
    run_once()

    def run() -> float:
        start = time.perf_counter()
        run_once()
        return 2 * size ** 3 / (time.perf_counter() - start)

    return run


def matmul_peak(size: int = PEAK_SIZE):
    """One float32 size^3 XLA matmul at highest precision: the measured peak MFU is relative to."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest"))
    return matmul_rate(lambda: jax.block_until_ready(matmul(a, a)), size)


def torch_matmul_peak(size: int = PEAK_SIZE):
    """The same for torch's float32 matmul: what the reference's step is made of."""
    a = torch.randn(size, size)
    return matmul_rate(lambda: torch.mm(a, a), size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="rows per step, each one 8-frame video")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--text-tokens", type=int, default=128, help="text tokens around the video")
    parser.add_argument("--stage", default="stage2", choices=sorted(partition.PRESETS),
                        help="which groups train (a `partition.preset`)")
    parser.add_argument("--remat", default="dots", choices=["none", *REMAT_POLICIES],
                        help="our layers' rematerialization policy")
    args = parser.parse_args()

    reference, ours = model_pair(small_config(args.image_size), remat=args.remat)
    batch = labelled_batch(np.random.default_rng(0), args.batch, args.image_size, args.text_tokens)
    module = ours.module
    trainable = partition.preset(args.stage)
    step, state, frozen, batches = jitted_step(module, trainable, batch)
    ref_step = reference_step(reference, trainable, batch)
    peaks = {"peak": matmul_peak(), "torch_peak": torch_matmul_peak()}

    def run_ours() -> float:
        nonlocal state
        with jax.default_matmul_precision("highest"):
            state, metrics = step(state, frozen, batches)
        return float(jax.block_until_ready(metrics)["loss"])

    losses = {"ours": run_ours(), "reference": ref_step()}  # warm-up; step 0 from the same weights
    print(f"step-0 loss: ours {losses['ours']:.6f}, transformers {losses['reference']:.6f}, "
          f"difference {abs(losses['ours'] - losses['reference']):.2e}")
    times = {"ours": [], "reference": [], "peak": [], "torch_peak": []}
    for _ in range(args.runs):
        for name, peak in peaks.items():
            times[name].append(peak())
        for name, fn in (("ours", run_ours), ("reference", ref_step)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_s, ref_s, peak_flops, torch_peak = (statistics.median(times[k])
                                             for k in ("ours", "reference", "peak", "torch_peak"))

    seq_len = batch["input_ids"].shape[1]
    labelled = int(np.sum(batch["labels"][:, 1:] != IGNORE))  # the LM head work the loss needs
    model_flops = flops.step_flops(ours.config, trainable, args.batch, seq_len, FRAMES, labelled)
    ref_flops = flops.step_flops(ours.config, trainable, args.batch, seq_len, FRAMES)  # every logit
    print(f"train step ({args.stage}, our remat {args.remat}) of batch {args.batch} x {seq_len} tokens (8 frames at "
          f"{args.image_size}px + {args.text_tokens} text), float32, CPU, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores, median of {args.runs} interleaved rounds; model FLOPs/step "
          f"{model_flops / 1e12:.3f} T; measured peak: {PEAK_SIZE}^3 float32 XLA matmul {peak_flops / 1e9:.1f} GFLOP/s")
    print("| figure | ours | transformers | ours/ref |")
    print("| --- | --- | --- | --- |")
    print(f"| step time (s) | {ours_s:.3f} | {ref_s:.3f} | {ours_s / ref_s:.2f} |")
    print(f"| step-0 loss | {losses['ours']:.5f} | {losses['reference']:.5f} | "
          f"{losses['ours'] / losses['reference']:.5f} |")
    print(f"| MFU vs measured matmul peak | {model_flops / ours_s / peak_flops:.1%} | "
          f"{model_flops / ref_s / peak_flops:.1%} | {ref_s / ours_s:.2f} |")
    print(f"| matmul peak, {PEAK_SIZE}^3 float32 (GFLOP/s) | {peak_flops / 1e9:.1f} | {torch_peak / 1e9:.1f} | "
          f"{peak_flops / torch_peak:.2f} |")
    # The floor: each side's own matmul FLOPs at its own measured peak, nothing else costing time.
    print(f"| step time at 100% of that peak (s) | {model_flops / peak_flops:.3f} | {ref_flops / torch_peak:.3f} | "
          f"{model_flops / peak_flops / (ref_flops / torch_peak):.2f} |")
    print(f"our step at 100% of the XLA peak would be {model_flops / peak_flops / ref_s:.2f}x the reference's "
          f"measured step: the least step-time ratio these FLOPs allow on this machine")


if __name__ == "__main__":
    main()
