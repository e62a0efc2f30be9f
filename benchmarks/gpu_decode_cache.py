"""What the GPU decode programs do with the KV cache beyond reading it and writing the new token,
compiled here for an NVIDIA H200 without one.

    pip install "jax[cuda12]"   # jax's CUDA plugin: compiling for a GPU needs it, not a GPU or a driver
    python -m benchmarks.gpu_decode_cache [--batches 1 16] [--prompt 2112] [--new-tokens 128]

A decode step should read the cache once and write one slot of it in place. This script compiles
the two programs that decode from a cache they are handed (the cache crosses program boundaries
in the layout `KVCache` gives it): `generation.decode_loop` (what `generate` and `stream` run after
prefill) and the serving engine's step (`serve.slots.step`, all columns read, no prefix), 7B in
bfloat16, for the H200 of `benchmarks/gpu_weight_copies.py`, and reads from their HLO:

- cache copies per call: bytes written by instructions outside the layer loop whose result is an
  array the size of the whole key or value cache and that are not updates in place (XLA choosing
  another layout for the cache inside the loop copies it, transposed, at the loop's entry and exit);
- the largest float32 array a decode step writes per layer: a layer's attention needs only its
  (rows x heads x slots) scores; an array of a layer's cache size means an intermediate product
  written to memory (the probabilities x values product before its sum);
- temporaries (`memory_analysis()`);
- HBM bytes per decoded token as `hlo_stats` models them (what each top-level kernel reads and
  writes; a scanned layer's weights counted as the slices read) over the least a step must read
  (`roofline.decode_step_bytes`: the decoder's parameters and every row's cache, all its slots
  here, as the step reads them): 1.00 is decoding at the memory roofline's byte count.

No timing: compiled, never run.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver here to check the CUDA libraries against
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs on its CPU; the GPU is only a compile target

import argparse  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from benchmarks.gpu_weight_copies import gpu_devices  # noqa: E402
from configs import video_llava_7b_stage2  # noqa: E402
from vllava_jax import generation  # noqa: E402
from vllava_jax.config import DTypePolicy  # noqa: E402
from vllava_jax.modeling.kv_cache import KVCache  # noqa: E402
from vllava_jax.modeling.video_llava import VideoLlavaModel  # noqa: E402
from vllava_jax.serve import slots  # noqa: E402
from vllava_jax.sharding import make_mesh  # noqa: E402
from vllava_jax.train import hlo_stats, roofline  # noqa: E402
from vllava_jax.train.build import build_model_config  # noqa: E402


def cache_figures(compiled, cache_elements: int, layers: int, steps: int, least_bytes: float) -> dict:
    """The figures of the module docstring from one compiled decode program that decodes `steps`
    tokens per call (`steps` 1: a program with no token loop)."""
    program = hlo_stats.Program(compiled.as_text())
    loops = program.loops()
    layer_bodies = {body for _, body, trips in loops if trips == layers}
    # the token loop's body: the computation that runs a layer loop, if it is a loop's body itself
    step_bodies = {body for name, body, _ in loops if name not in layer_bodies} & {
        name for name, body, _ in loops if body in layer_bodies}
    copied, largest_f32 = 0.0, 0.0
    per_token = sum(program.cost(body).hbm_bytes for body in step_bodies) if step_bodies else program.cost().hbm_bytes
    for name in (program.entry, *step_bodies, *layer_bodies):
        for ins in program.computations[name]:
            if ins.opcode in hlo_stats.FREE_OPCODES:
                continue
            for dtype, dims in hlo_stats.arrays(ins.shape):
                size = math.prod(dims) * hlo_stats.DTYPE_BYTES[dtype]
                if name in layer_bodies:
                    largest_f32 = max(largest_f32, size if dtype == "f32" else 0)
                elif math.prod(dims) == cache_elements and program.result_opcode(ins) != "dynamic-update-slice":
                    copied += size * (steps if name in step_bodies else 1)
    return dict(copied=copied, largest_f32=largest_f32, temps=compiled.memory_analysis().temp_size_in_bytes,
                over_least=per_token / least_bytes)


def decode_programs(graphdef, state, cfg, batch: int, columns: int, on_device, sampling):
    """(name, compiled program, tokens per call) of `decode_loop` and the serving step for `batch` rows."""
    decoding = jax.eval_shape(lambda: generation.Decoding(
        jnp.int32(1), jnp.zeros((batch,), bool), jnp.zeros((batch, sampling.max_new_tokens), jnp.int32),
        KVCache.empty(cfg, batch, columns, jnp.bfloat16), jnp.zeros((batch,), jnp.int32), jax.random.key(0)))
    loop = generation.decode_loop.lower(graphdef, state, on_device(decoding), jax.ShapeDtypeStruct((), jnp.int32),
                                        sampling).compile()
    serving = jax.eval_shape(lambda: slots.Slots.zeros(cfg, jnp.bfloat16, batch, columns))
    step = slots.step.lower(graphdef, state, on_device(serving), batch).compile()
    return ("decode_loop", loop, sampling.max_new_tokens), ("serving step", step, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="rows decoded together")
    parser.add_argument("--prompt", type=int, default=2112, help="prompt tokens (one 8-frame video's 2,056 + text)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per prompt")
    args = parser.parse_args()
    if min(args.batches) < 1 or args.new_tokens < 1 or args.prompt < 1:
        parser.error("--batches, --prompt and --new-tokens must be >= 1")
    model_config = build_model_config(video_llava_7b_stage2.get_config())
    device = gpu_devices()[0]
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(model_config, DTypePolicy.resolve("bfloat16"), nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    placed = SingleDeviceSharding(device)
    on_device = functools.partial(jax.tree.map, lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed))
    cfg = abstract.language_model.cfg
    columns = args.prompt + args.new_tokens
    sampling = generation.SamplingConfig(max_new_tokens=args.new_tokens, eos_token_ids=(2,), pad_token_id=0)
    rows = []
    # the attention and the cache's layout follow the platform the program is compiled for (the mesh's)
    with jax.sharding.use_abstract_mesh(make_mesh(1, 1, 1, devices=[device]).abstract_mesh):
        for batch in args.batches:
            cache_elements = cfg.num_hidden_layers * batch * cfg.num_key_value_heads * columns * cfg.head_dim
            least = roofline.decode_step_bytes(state["language_model"], cfg, batch, columns, jnp.bfloat16)
            for program, compiled, steps in decode_programs(graphdef, on_device(state), cfg, batch, columns, on_device,
                                                            sampling):
                figures = cache_figures(compiled, cache_elements, cfg.num_hidden_layers, steps, least)
                rows.append((program, batch, figures))
    print(f"7B decode programs compiled for an H200 (deviceless, jax {jax.__version__}): {args.prompt}-token prompt, "
          f"{columns} cache slots, bfloat16; decode_loop decodes {args.new_tokens} tokens per call")
    print("| program | batch | cache copies per call (GB) | largest float32 array per layer (MB) | temporaries (GiB) "
          "| HBM bytes per token / least |")
    print("| --- | --- | --- | --- | --- | --- |")
    for program, batch, figures in rows:
        print(f"| {program} | {batch} | {figures['copied'] / 1e9:.2f} | {figures['largest_f32'] / 1e6:.2f} | "
              f"{figures['temps'] / 2**30:.2f} | {figures['over_least']:.3f} |")


if __name__ == "__main__":
    main()
