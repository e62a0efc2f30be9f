"""Per-device memory of the real 7B stage-2 train step, compiled ahead of time on abstract inputs.

    python -m benchmarks.train_memory_7b [--devices 8] [--fsdp 8] [--rows 8] [--seq 2048] [--remat dots]
    python -m benchmarks.train_memory_7b --stage lora --devices 1 --fsdp 1 --seq 3072 --remat full --like_accelerator

No weight is materialized: the model, optimizer state and batch are `jax.ShapeDtypeStruct`s carrying
their shardings over a simulated CPU mesh; XLA compiles the step and reports the buffers one device
needs (arguments, outputs, temporaries). That is the number to pick a TPU/GPU slice by. CPU
compilation stands in for the accelerator's: layouts and fusion differ somewhat, so leave headroom.
`--stage lora` takes `configs/video_llava_7b_lora.py`'s settings: bfloat16 frozen base, float32
adapters (rank 128 on q/k/v/o/gate/up/down) and projector, dropout, the projector's own rate.

`--like_accelerator` turns off two things only XLA's CPU backend does (benchmarks/BENCHMARKS.md,
"7B LoRA step memory"): hoisting float32 copies of every layer's bfloat16 weights out of the
layer loop (a CPU multiplies bfloat16 through float32), and the concurrency-optimized scheduler,
which starts independent work early to keep many cores busy and holds its buffers meanwhile
(GPU and TPU compilers schedule within the device's memory). `--layers N` compiles the decoder
with N layers instead of 32: a quick fixed part + per-layer slope.
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
    parser.add_argument("--accum", type=int, default=1, help="microbatches per step (gradient accumulation)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row")
    parser.add_argument("--stage", default="stage2", choices=["stage1", "stage2", "lora"], help="which groups train")
    parser.add_argument("--remat", default="dots", choices=["none", "dots", "full"],
                        help="what rematerialized layers keep (vllava_jax.modeling.layers.REMAT_POLICIES)")
    parser.add_argument("--like_accelerator", action="store_true",
                        help="no CPU-only loop-invariant weight copies, memory-minimizing schedule (see above)")
    parser.add_argument("--layers", type=int, default=0, help="decoder layers (0: the 7B's 32)")
    args = parser.parse_args()
    flags = f"--xla_force_host_platform_device_count={args.devices}"
    if args.like_accelerator:
        flags += (" --xla_disable_hlo_passes=while-loop-invariant-code-motion"
                  " --xla_cpu_enable_concurrency_optimized_scheduler=false")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import jax.numpy as jnp

    from configs import video_llava_7b_lora
    from vllava_jax.sharding import make_mesh
    from vllava_jax.train import partition
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.loop import batch_shardings
    from vllava_jax.train.programs import abstract_train_state
    from vllava_jax.train.state import jit_train_step

    train_config = video_llava_7b_lora.get_config()  # the 7B architecture in `model`
    if args.stage != "lora":  # the LoRA config's own list: adapters and the projector
        train_config.trainable = partition.preset(args.stage)
        train_config.param_dtype = "float32"  # master weights
    train_config.remat = args.remat
    if args.layers:
        train_config.model.text_config["num_hidden_layers"] = args.layers
    mesh = make_mesh(args.data, args.fsdp, args.tensor)
    config = build_model_config(train_config)
    train = abstract_train_state(train_config, config, mesh)
    state, frozen, trainable = train.state, train.frozen, train.state.params
    frames, size = 8, config.video_tower_config.image_size
    lead = (args.accum, args.rows)
    shapes = {"input_ids": (*lead, args.seq), "labels": (*lead, args.seq), "attention_mask": (*lead, args.seq),
              "positions": (*lead, args.seq), "pixel_values_videos": (*lead, 1, frames, 3, size, size)}
    shardings = batch_shardings(shapes, mesh)
    dtypes = {"pixel_values_videos": jnp.float32}
    batch = {k: jax.ShapeDtypeStruct(v, dtypes.get(k, jnp.int32), sharding=shardings[k]) for k, v in shapes.items()}

    start = time.perf_counter()
    step = jit_train_step(train.graphdef, train.optimizer, state, frozen, shardings)
    with jax.set_mesh(mesh):
        compiled = step.lower(state, frozen, batch).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    gib = 1024 ** 3
    params = sum(x.size for x in jax.tree.leaves(trainable)) + sum(x.size for x in jax.tree.leaves(frozen))
    trained = sum(x.size for x in jax.tree.leaves(trainable))
    masters = "bfloat16 frozen base, float32 trained" if args.stage == "lora" else "float32 master"
    layers = f" ({args.layers} decoder layers)" if args.layers else ""
    cpu = "CPU, as an accelerator schedules" if args.like_accelerator else "CPU"
    print(f"7B{layers} {args.stage}, {params / 1e9:.2f}B params ({trained / 1e6:.0f}M trained; {masters}, bfloat16 "
          f"compute), mesh data={args.data} fsdp={args.fsdp} tensor={args.tensor}, {args.accum} x {args.rows} rows "
          f"x {args.seq} tokens + one 8-frame video per row, remat={args.remat}; compiled in {seconds:.0f}s on {cpu}")
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
