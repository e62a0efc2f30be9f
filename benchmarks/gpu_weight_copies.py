"""Layer weights copied out of their stacks by the 7B generate program, compiled here for an NVIDIA
H200 without one.

    pip install "jax[cuda12]"   # jax's CUDA plugin: compiling for a GPU needs it, not a GPU or a driver
    python -m benchmarks.gpu_weight_copies [--batch 1] [--prompt 2112] [--new-tokens 128]

The decoder's layers are scanned: each step of the scan slices its layer's weights out of the
stacked arrays. XLA on NVIDIA GPUs materializes that slice (a fusion that only copies) before its
Triton gemms read it, so a decode step, which is all weight reads, moves every weight three times
(read, write, read again) where the memory roofline counts one; and its dot merger concatenates
the key and value projections' weights (a copy of both) before one matmul reads them. With the
compiler options the decode programs pass (`layers.GPU_WEIGHTS_READ_IN_PLACE`), cuBLAS reads each
slice where it lies and nothing is merged.

This script compiles `train.programs.lower_generation` (towers + prompt prefill + the decode loop,
bfloat16, one video per prompt) and the serving engine's step program (`serve.slots.step`: --batch
rows, a 256-column window, one stored prefix entry) for an H200 described below: as shipped, with
the dot merger back on, and with all those options at XLA's defaults; and counts the bytes of
slices, alone or concatenated, that the compiled programs materialize (`hlo_stats`: loops counted
by their trip counts). Per decode step of generate comes from the difference between
`--new-tokens` and one new token. No timing: compiled, never run.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver here to check the CUDA libraries against
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs on its CPU; the GPU is only a compile target

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from configs import video_llava_7b_stage2  # noqa: E402
from vllava_jax.config import DTypePolicy  # noqa: E402
from vllava_jax.modeling.layers import GPU_WEIGHTS_READ_IN_PLACE  # noqa: E402
from vllava_jax.modeling.video_llava import VideoLlavaModel  # noqa: E402
from vllava_jax.serve import slots  # noqa: E402
from vllava_jax.sharding import make_mesh  # noqa: E402
from vllava_jax.train import hlo_stats, programs  # noqa: E402
from vllava_jax.train.build import build_model_config  # noqa: E402

# NVIDIA H200 SXM (Hopper, sm_90): the facts XLA's GPU compiler plans kernels by.
H200 = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=48 << 10,
            shared_memory_per_core=228 << 10, shared_memory_per_block_optin=227 << 10, threads_per_core_limit=2048,
            core_count=132, fpus_per_core=128, block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535,
            block_dim_limit_z=65535, memory_bandwidth=4_800_000_000_000, l2_cache_size=50 << 20, clock_rate_ghz=1.98,
            device_memory_size=141_000_000_000, registers_per_core_limit=65536, registers_per_block_limit=65536)
OPTIONS_OFF = {"xla_gpu_enable_dynamic_slice_fusion": False, "xla_gpu_enable_triton_gemm": True,
               "xla_gpu_dot_merger_threshold_mb": 32}  # XLA's defaults
assert OPTIONS_OFF.keys() == GPU_WEIGHTS_READ_IN_PLACE.keys()
# the options as shipped but XLA's dot merger: what it alone copies
MERGER_ON = dict(GPU_WEIGHTS_READ_IN_PLACE, xla_gpu_dot_merger_threshold_mb=OPTIONS_OFF["xla_gpu_dot_merger_threshold_mb"])
VARIANTS = {"as shipped": None, "dot merger on": MERGER_ON, "options off": OPTIONS_OFF}


def target_config(facts: dict, name: str = "NVIDIA H200") -> str:
    """XLA's GPU target description (a GpuTargetConfigProto in text form)."""
    fields = "\n".join(f"  {key}: {value}" for key, value in facts.items())
    return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
            f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 10 }}\ndevice_description_str: "{name}"\n')


def gpu_devices():
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=target_config(H200)).devices
    except (NotImplementedError, RuntimeError) as e:
        sys.exit(f'error: cannot compile for a GPU here ({e}); install jax\'s CUDA plugin: pip install "jax[cuda12]"')


def copied_bytes(model_config, mesh, batch: int, prompt: int, new_tokens: int, options) -> tuple[float, float]:
    """(bytes of slices the compiled generate program materializes, compile seconds)."""
    start = time.perf_counter()
    compiled = programs.lower_generation(model_config, mesh, batch, prompt, new_tokens).compile(options)
    seconds = time.perf_counter() - start
    return hlo_stats.Program(compiled.as_text()).cost().slice_copy_bytes, seconds


def serving_step_copied_bytes(abstract, device, rows: int, columns: int, options) -> float:
    """Bytes of slices one compiled serving step of the abstract bfloat16 model materializes: `rows`
    rows of `columns` cache columns, reading a 256-column window and one of 4 prefix entries."""
    placed = SingleDeviceSharding(device)
    on_device = functools.partial(jax.tree.map, lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed))
    graphdef, state = nnx.split(abstract)
    state_shapes = jax.eval_shape(lambda: slots.Slots.zeros(abstract.language_model.cfg, jnp.bfloat16, rows, columns,
                                                            4, columns))
    compiled = slots.step.lower(graphdef, on_device(state), on_device(state_shapes), rows, 256, 1,
                                columns).compile(options)
    return hlo_stats.Program(compiled.as_text()).cost().slice_copy_bytes


def decoder_layer_bytes(abstract) -> int:
    """Bytes of the abstract bfloat16 model's decoder layer weights: what a decode step must read of them."""
    return sum(leaf.size * 2 for leaf in jax.tree.leaves(nnx.state(abstract.language_model.layers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    parser.add_argument("--prompt", type=int, default=2112, help="prompt tokens (one 8-frame video's 2,056 + text)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per prompt (at least 2)")
    args = parser.parse_args()
    if args.batch < 1 or args.new_tokens < 2 or args.prompt < 2057:
        parser.error("--batch must be >= 1, --new-tokens >= 2, --prompt >= 2057 (a video and a question)")
    model_config = build_model_config(video_llava_7b_stage2.get_config())
    mesh = make_mesh(1, 1, 1, devices=gpu_devices())
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(model_config, DTypePolicy.resolve("bfloat16"), nnx.Rngs(0)))
    rows = {}
    columns = -(-(args.prompt + args.new_tokens) // 64) * 64
    for label, options in VARIANTS.items():
        whole, seconds = copied_bytes(model_config, mesh, args.batch, args.prompt, args.new_tokens, options)
        prefill_only, _ = copied_bytes(model_config, mesh, args.batch, args.prompt, 1, options)
        serving = serving_step_copied_bytes(abstract, mesh.devices.flat[0], args.batch, columns, options)
        rows[label] = dict(whole=whole, per_step=(whole - prefill_only) / (args.new_tokens - 1), seconds=seconds,
                           serving=serving)
    layers = decoder_layer_bytes(abstract)
    print(f"7B generate compiled for an {H200['core_count']}-SM H200 (deviceless, jax {jax.__version__}): batch "
          f"{args.batch}, {args.prompt}-token prompt, {args.new_tokens} new tokens, bfloat16; decoder layers "
          f"{layers / 1e9:.2f} GB")
    print(f"| figure | {' | '.join(VARIANTS)} | shipped/off |")
    print("| --- |" + " --- |" * (len(VARIANTS) + 1))
    for name, key, scale, unit in (("slices copied per generate_program call", "whole", 1e9, "GB"),
                                   ("slices copied per decode step", "per_step", 1e9, "GB"),
                                   ("slices copied per serving engine step", "serving", 1e9, "GB"),
                                   ("compile", "seconds", 1, "s")):
        figures = [rows[label][key] / scale for label in VARIANTS]
        ratio = f"{figures[0] / figures[-1]:.3f}" if figures[-1] else "-"
        print(f"| {name} ({unit}) | {' | '.join(f'{x:.3f}' for x in figures)} | {ratio} |")
    print(f"a decode step must read the decoder layers once ({layers / 1e9:.2f} GB); each GB copied costs two "
          "more (its write and its second read)")


if __name__ == "__main__":
    main()
