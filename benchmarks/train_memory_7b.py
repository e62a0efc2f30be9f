"""Per-device memory of the real 7B stage-2 train step, compiled ahead of time on abstract inputs.

    python -m benchmarks.train_memory_7b [--devices 8] [--fsdp 8] [--rows 8] [--seq 2048] [--remat]

No weight is materialized: the model, optimizer state and batch are `jax.ShapeDtypeStruct`s carrying
their shardings over a simulated CPU mesh; XLA compiles the step and reports the buffers one device
needs (arguments, outputs, temporaries). That is the number to pick a TPU/GPU slice by. CPU
compilation stands in for the accelerator's: layouts and fusion differ somewhat, so leave headroom.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="simulated devices")
    parser.add_argument("--data", type=int, default=1, help="mesh data axis")
    parser.add_argument("--fsdp", type=int, default=8, help="mesh fsdp axis")
    parser.add_argument("--tensor", type=int, default=1, help="mesh tensor axis")
    parser.add_argument("--rows", type=int, default=8, help="global rows per microbatch (one 8-frame video each)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row")
    parser.add_argument("--stage", default="stage2", choices=["stage1", "stage2"], help="which groups train")
    parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True, help="rematerialize layers")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs import video_llava_7b
    from vllava_jax.config import DTypePolicy, VideoLlavaConfig
    from vllava_jax.modeling.video_llava import VideoLlavaModel
    from vllava_jax.sharding import activation_sharding, make_mesh, state_shardings
    from vllava_jax.train import partition
    from vllava_jax.train.loop import batch_shardings
    from vllava_jax.train.optimizer import make_optimizer
    from vllava_jax.train.state import abstract_train_state, jit_train_step

    config = VideoLlavaConfig.from_hf_dict(video_llava_7b.get_config().model.to_dict())
    policy = DTypePolicy(jnp.float32, jnp.bfloat16, "default")
    mesh = make_mesh(args.data, args.fsdp, args.tensor)
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(config, policy, nnx.Rngs(0), args.remat))
    graphdef, trainable, frozen = partition.split_trainable(abstract, partition.STAGES[args.stage])

    frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), frozen,
                          state_shardings(frozen, mesh))
    optimizer, _ = make_optimizer(2e-5, 1000)
    state = abstract_train_state(trainable, optimizer, mesh)
    frames, size = 8, config.video_tower_config.image_size
    shapes = {"input_ids": (1, args.rows, args.seq), "labels": (1, args.rows, args.seq),
              "attention_mask": (1, args.rows, args.seq), "positions": (1, args.rows, args.seq),
              "pixel_values_videos": (1, args.rows, frames, 3, size, size)}
    shardings = batch_shardings(shapes, mesh)
    dtypes = {"pixel_values_videos": jnp.float32}
    batch = {k: jax.ShapeDtypeStruct(v, dtypes.get(k, jnp.int32), sharding=shardings[k]) for k, v in shapes.items()}

    start = time.perf_counter()
    step = jit_train_step(graphdef, optimizer, state, frozen, shardings)
    with activation_sharding(mesh):
        compiled = step.lower(state, frozen, batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    gib = 1024 ** 3
    params = sum(x.size for x in jax.tree.leaves(state.params)) + sum(x.size for x in jax.tree.leaves(frozen))
    print(f"7B {args.stage}, {params / 1e9:.2f}B params (float32 master, bfloat16 compute), mesh data={args.data} "
          f"fsdp={args.fsdp} tensor={args.tensor}, {args.rows} rows x {args.seq} tokens + one 8-frame video per row, "
          f"remat={args.remat}; compiled in {seconds:.0f}s on CPU")
    print("| per device | GiB |")
    print("| --- | --- |")
    rows = [("arguments (params, optimizer state, batch)", memory.argument_size_in_bytes),
            ("outputs (aliased with donated arguments)", memory.output_size_in_bytes),
            ("temporaries (activations, gradients)", memory.temp_size_in_bytes),
            ("generated code", memory.generated_code_size_in_bytes)]
    for name, value in rows:
        print(f"| {name} | {value / gib:.2f} |")
    peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes
    print(f"| **peak estimate** (arguments + temporaries) | **{peak / gib:.2f}** |")


if __name__ == "__main__":
    main()
