"""Compile time of the train step vs decoder depth: scanned layers should keep it nearly flat.

    python -m benchmarks.compile_time [--layers 4 8 16 32] [--repeats 2]

The step of benchmarks/train_step.py (small config, stage 2, batch 4 x (8 frames at 112 px + 128
text tokens)) with the decoder's depth varied, lowered and compiled from abstract shapes (no
weights are made). Caches are cleared and the step re-wrapped before each measurement, so every
one traces, lowers and compiles from scratch; the best of --repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.common import small_config
from benchmarks.train_step import labelled_batch
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.modeling.layers import REMAT_POLICIES
from vllava_jax.modeling.video_llava import VideoLlavaModel
from vllava_jax.train import partition
from vllava_jax.train.optimizer import make_optimizer
from vllava_jax.sharding import make_mesh
from vllava_jax.train.state import abstract_train_state, jit_train_step


def abstract_step_inputs(layers: int, args) -> tuple:
    """(graphdef, optimizer, state, frozen, batches) as shapes only, for a decoder `layers` deep,
    placed on a one-device mesh as `train.state.create_train_state` places them."""
    hf = small_config(args.image_size)
    hf.text_config.num_hidden_layers = layers
    config = VideoLlavaConfig.from_hf_dict(hf.to_dict())
    model = nnx.eval_shape(lambda: VideoLlavaModel(config, DTypePolicy(), nnx.Rngs(0), args.remat))
    graphdef, trainable, frozen = partition.split_trainable(model, partition.preset(args.stage))
    optimizer, _ = make_optimizer(1e-5, 1000)
    mesh = make_mesh(devices=jax.devices()[:1])
    replicated = NamedSharding(mesh, PartitionSpec())

    def placed(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)

    batch = labelled_batch(np.random.default_rng(0), args.batch, args.image_size, args.text_tokens)
    batches = {k: placed(jax.ShapeDtypeStruct((1, *v.shape), v.dtype)) for k, v in batch.items()}
    return graphdef, optimizer, abstract_train_state(trainable, optimizer, mesh), jax.tree.map(placed, frozen), batches


def compile_seconds(inputs: tuple) -> float:
    """Trace + lower + compile the step from scratch (fresh caches, fresh jit wrapper)."""
    jax.clear_caches()
    graphdef, optimizer, state, frozen, batches = inputs
    step = jit_train_step(graphdef, optimizer, state, frozen, batches["input_ids"].sharding)
    start = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        step.lower(state, frozen, batches).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32], help="decoder depths")
    parser.add_argument("--repeats", type=int, default=2, help="compilations per depth (best reported)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--stage", default="stage2", choices=sorted(partition.PRESETS))
    parser.add_argument("--remat", default="dots", choices=["none", *REMAT_POLICIES])
    args = parser.parse_args()

    inputs = {n: abstract_step_inputs(n, args) for n in args.layers}
    seconds = {n: [] for n in args.layers}
    for _ in range(args.repeats):  # interleaved, so load from other jobs hits every depth alike
        for n in args.layers:
            seconds[n].append(compile_seconds(inputs[n]))
    best = {n: min(s) for n, s in seconds.items()}
    base = best[args.layers[0]]
    print(f"train step ({args.stage}, remat {args.remat}) lower+compile, batch {args.batch}, 8 frames at "
          f"{args.image_size}px + {args.text_tokens} text tokens, ViT 12x384 towers, LLaMA x768; CPU, "
          f"{os.cpu_count()} cores, best of {args.repeats}")
    print(f"| decoder layers | compile (s) | ratio to {args.layers[0]} layers |")
    print("| --- | --- | --- |")
    for n in args.layers:
        print(f"| {n} | {best[n]:.1f} | {best[n] / base:.2f} |")


if __name__ == "__main__":
    main()
