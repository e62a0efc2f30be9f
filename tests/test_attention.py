"""Every attention implementation that runs on CPU equals jax.nn.dot_product_attention's XLA
implementation (masks built here, from the layouts the model sees), forward and gradients; the
dispatch picks each platform's kernel by the compile target's platform."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

import vllava_jax
from configs import train_tiny
from vllava_jax.errors import ConfigError
from vllava_jax.modeling import attention
from vllava_jax.train.build import build_model_config

HEADS, HEAD_DIM = 4, 16


def segment_ids(layout: str, length: int) -> jax.Array:
    """(2, length) segment ids: row 1 carries the layout's padding, row 0 is full (or packed)."""
    positions = jnp.arange(length)
    full = jnp.ones(length, jnp.int32)
    rows = {
        "no-padding": [full, full],
        "right-padded": [full, (positions < length - 7).astype(jnp.int32)],
        "left-padded": [full, (positions >= 5).astype(jnp.int32)],
        "packed": [positions // 11 + 1, jnp.where(positions < length - 4, positions // 17 + 1, 0)],
    }[layout]
    return jnp.stack(rows).astype(jnp.int32)


def reference_mask(ids: jax.Array, layout: str) -> jax.Array:
    """What the model asked of jax.nn.dot_product_attention before: keys masked by padding, or same segment."""
    if layout == "packed":
        return ((ids[:, :, None] == ids[:, None, :]) & (ids[:, None, :] > 0))[:, None]
    return (ids > 0)[:, None, None, :]


def case(layout: str, length: int, kv_heads: int, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, length, HEADS, HEAD_DIM))
    k, v = (jax.random.normal(key, (2, length, kv_heads, HEAD_DIM)) for key in keys[1:3])
    ids = segment_ids(layout, length)
    real = (ids > 0)[:, :, None, None]
    weights = jax.random.normal(keys[3], q.shape) * real  # padded queries' outputs are unspecified and feed nothing
    return [x.astype(dtype) for x in (q, k, v)], ids, real, weights


def forward_and_grads(fn, q, k, v, weights):
    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * weights)

    with jax.default_matmul_precision("highest"):
        return jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)


def assert_matches_reference(fn, layout, length, kv_heads, dtype=jnp.float32):
    (q, k, v), ids, real, weights = case(layout, length, kv_heads, dtype)
    mask = reference_mask(ids, layout)
    out, grads = forward_and_grads(fn(ids), q, k, v, weights)
    ref_out, ref_grads = forward_and_grads(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla"),
        *(x.astype(jnp.float32) for x in (q, k, v)), weights)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    if dtype == jnp.float32:
        tolerance = dict(rtol=1e-4, atol=1e-5)
    else:  # bf16 inputs and outputs, float32 reference: relative to each tensor's scale
        tolerance = dict(rtol=0, atol=0.03 * float(jnp.abs(ref_out).max()))
    np.testing.assert_allclose(np.asarray((out * real).astype(jnp.float32)), np.asarray(ref_out * real), **tolerance)
    for name, g, r in zip("qkv", grads, ref_grads):
        r = np.asarray(r)
        atol = tolerance["atol"] if dtype == jnp.float32 else 0.03 * np.abs(r).max()
        np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), r, rtol=tolerance["rtol"], atol=atol,
                                   err_msg=f"d{name}")
    return out


LAYOUTS = ["no-padding", "right-padded", "left-padded", "packed"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("implementation", ["blocked", "xla"])
def test_cpu_implementations_match_reference(implementation, kv_heads, layout):
    assert_matches_reference(
        lambda ids: lambda q, k, v: attention.causal_attention(q, k, v, ids, implementation=implementation),
        layout, 37, kv_heads)


@pytest.mark.parametrize("length, block, kv_heads, layout",
                         [(37, 16, 4, "left-padded"), (37, 64, 2, "right-padded"), (40, 8, 4, "packed"),
                          (33, 16, 1, "packed")])
def test_blocked_attention_is_exact_at_any_block_size(length, block, kv_heads, layout):
    assert_matches_reference(
        lambda ids: lambda q, k, v: attention.blocked_causal_attention(q, k, v, ids, block=block),
        layout, length, kv_heads)


@pytest.mark.parametrize("implementation", ["blocked", "xla"])
def test_bfloat16_stays_close(implementation):
    assert_matches_reference(
        lambda ids: lambda q, k, v: attention.causal_attention(q, k, v, ids, implementation=implementation),
        "packed", 40, 2, jnp.bfloat16)


@pytest.mark.parametrize("layout, kv_heads, dtype", [("packed", 2, jnp.float32), ("left-padded", 4, jnp.bfloat16)])
def test_pallas_gpu_kernel_in_interpret_mode(layout, kv_heads, dtype):
    """Triton's flash attention with segment ids, run by Pallas' interpreter on CPU."""
    assert_matches_reference(
        lambda ids: lambda q, k, v: attention.causal_attention(q, k, v, ids, implementation="pallas_gpu"),
        layout, 40, kv_heads, dtype)


@pytest.mark.parametrize("layout, kv_heads, dtype", [("packed", 2, jnp.float32), ("left-padded", 4, jnp.bfloat16)])
def test_pallas_tpu_kernel_in_interpret_mode(layout, kv_heads, dtype):
    """The TPU flash attention kernel (segment ids, causal) in Pallas' TPU interpreter on CPU."""
    with pltpu.force_tpu_interpret_mode():
        assert_matches_reference(
            lambda ids: lambda q, k, v: attention.causal_attention(q, k, v, ids, implementation="pallas_tpu"),
            layout, 40, kv_heads, dtype)


@pytest.mark.parametrize("layout", ["right-padded", "left-padded"])
def test_lengths_branch_or_segment_kernel(layout):
    """The GPU decoder path: fused attention with per-row lengths when every row is one right-padded
    segment, else the Pallas kernel with segment ids. Here the fused kernel is XLA's (cuDNN needs a GPU),
    taking the very lengths cuDNN gets."""
    out = assert_matches_reference(
        lambda ids: lambda q, k, v: attention.lengths_or_segments(q, k, v, ids, fused=XLA_FUSED), layout, 40, 2)
    padded = np.asarray(segment_ids(layout, 40) == 0)
    took_lengths = layout in ("no-padding", "right-padded")
    assert took_lengths == bool(np.all(np.asarray(out)[padded] == 0))  # the lengths branch zeroes padding


XLA_FUSED = functools.partial(jax.nn.dot_product_attention, implementation="xla")


def careless_fused(q, k, v, *, is_causal, query_seq_lengths, key_value_seq_lengths):
    """XLA's attention with the given lengths, leaving NaN wherever a position is padded, forward
    and backward: what a kernel that does not write padded positions may leave there."""
    assert query_seq_lengths is key_value_seq_lengths

    @jax.custom_vjp
    def attend(q, k, v, lengths):
        return attend_forward(q, k, v, lengths)[0]

    def attend_forward(q, k, v, lengths):
        real = (jnp.arange(q.shape[1])[None, :] < lengths[:, None])[:, :, None, None]
        out, pullback = jax.vjp(lambda q, k, v: XLA_FUSED(q, k, v, is_causal=is_causal, query_seq_lengths=lengths,
                                                          key_value_seq_lengths=lengths), q, k, v)
        return jnp.where(real, out, jnp.nan), (pullback, real)

    def attend_backward(residuals, d_out):
        pullback, real = residuals
        return (*(jnp.where(real, d, jnp.nan) for d in pullback(d_out)), None)

    attend.defvjp(attend_forward, attend_backward)
    return attend(q, k, v, query_seq_lengths)


def test_lengths_branch_passes_on_nothing_a_fused_kernel_leaves_in_padding():
    """Right-padded rows through a fused kernel that leaves NaN at padded positions of its output
    and of its gradients: the output and the gradients still equal the reference (finite)."""
    assert_matches_reference(
        lambda ids: lambda q, k, v: attention.lengths_or_segments(q, k, v, ids, fused=careless_fused),
        "right-padded", 40, 2)


def test_towers_attention_is_xla_on_cpu():
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (3, 9, HEADS, HEAD_DIM)) for key in keys)
    out = attention.bidirectional_attention(q, k, v)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.nn.dot_product_attention(q, k, v)))


@pytest.mark.parametrize("platform, dtype, head_dim, decoder, tower", [
    ("gpu", jnp.bfloat16, 128, "cudnn", "cudnn"),
    ("gpu", jnp.float16, 64, "cudnn", "cudnn"),
    ("gpu", jnp.float32, 128, "blocked", "xla"),  # cuDNN takes 16-bit only; float32 keeps float32 numbers
    ("gpu", jnp.bfloat16, 12, "blocked", "xla"),  # a head_dim cuDNN does not take
    ("tpu", jnp.bfloat16, 128, "pallas_tpu", "xla"),
    ("tpu", jnp.float32, 128, "blocked", "xla"),
    ("cpu", jnp.bfloat16, 128, "blocked", "xla"),
])
def test_choose_implementation(platform, dtype, head_dim, decoder, tower, monkeypatch):
    monkeypatch.delenv(attention.OVERRIDE_ENV, raising=False)
    assert attention.choose_implementation("decoder", platform, dtype, head_dim) == decoder
    assert attention.choose_implementation("tower", platform, dtype, head_dim) == tower


def test_override_from_the_environment(monkeypatch):
    monkeypatch.setenv(attention.OVERRIDE_ENV, "pallas_gpu")
    assert attention.choose_implementation("decoder", "tpu", jnp.bfloat16, 128) == "pallas_gpu"
    assert attention.choose_implementation("tower", "tpu", jnp.bfloat16, 128) == "xla"  # not a tower kernel
    monkeypatch.setenv(attention.OVERRIDE_ENV, "xla")
    assert attention.choose_implementation("decoder", "gpu", jnp.bfloat16, 128) == "xla"
    assert attention.choose_implementation("tower", "gpu", jnp.bfloat16, 128) == "xla"
    monkeypatch.setenv(attention.OVERRIDE_ENV, "flash")
    with pytest.raises(ConfigError, match="VLLAVA_ATTENTION='flash'"):
        attention.choose_implementation("decoder", "cpu", jnp.float32, 16)
    with pytest.raises(ValueError, match="tower attention implementation 'blocked'"):
        attention.bidirectional_attention(*(jnp.zeros((1, 2, 1, 8)),) * 3, implementation="blocked")


def abstract_mesh(platform: str, kind: str):
    device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=None, platform=platform)
    return jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device)


def traced_decoder_attention():
    q = jax.ShapeDtypeStruct((2, 40, HEADS, HEAD_DIM), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 40, 2, HEAD_DIM), jnp.bfloat16)
    return jax.make_jaxpr(attention.causal_attention)(q, kv, kv, jax.ShapeDtypeStruct((2, 40), jnp.int32))


def test_dispatch_reads_the_mesh_not_the_host(monkeypatch):
    """Traced for a TPU mesh on this CPU host, the decoder calls the TPU kernel; for an NVIDIA mesh it
    reaches cuDNN (which this host lacks, so tracing stops there)."""
    monkeypatch.delenv(attention.OVERRIDE_ENV, raising=False)
    assert attention.compile_platform() == jax.devices()[0].platform == "cpu"
    with jax.sharding.use_abstract_mesh(abstract_mesh("tpu", "TPU v5 lite")):
        assert attention.compile_platform() == "tpu"
        assert "flash_attention" in set(re.findall(r"name=(\w+)", str(traced_decoder_attention())))
    with jax.sharding.use_abstract_mesh(abstract_mesh("gpu", "NVIDIA H200")):
        assert attention.compile_platform() == "gpu"
        try:
            jaxpr = str(traced_decoder_attention())
        except RuntimeError as e:  # no CUDA: cuDNN's version check fails while tracing its call
            assert "cuDNN" in str(e)
        else:  # a CUDA host
            assert "cudnn" in jaxpr.lower()
    with jax.set_mesh(jax.make_mesh((1,), ("data",))):
        assert attention.compile_platform() == "cpu"
        assert "flash_attention" not in str(traced_decoder_attention())


@pytest.fixture(scope="module")
def traced_model():
    """(pixels) -> the jaxpr of a tiny bfloat16 model's forward (text, plus one image when `pixels`)."""
    config = build_model_config(train_tiny.get_config())
    module = vllava_jax.VideoLlava.random(config, "bfloat16").module
    ids = np.ones((2, 40), np.int32)
    ids[0, 2:2 + config.image_seq_length] = config.image_token_index
    size = config.vision_config.image_size

    def trace(pixels: bool) -> str:
        if not pixels:
            return str(jax.make_jaxpr(lambda i: module(i, jnp.ones_like(i)))(ids * (ids != config.image_token_index)))
        images = jax.ShapeDtypeStruct((1, 3, size, size), jnp.float32)
        return str(jax.make_jaxpr(lambda i, x: module(i, jnp.ones_like(i), x))(ids, images))

    return trace


def test_model_call_sites_use_the_dispatch(traced_model, monkeypatch):
    """The decoder's and the towers' attention go through the dispatch: on a TPU mesh the decoder runs the
    flash kernel, on an NVIDIA mesh the towers reach cuDNN even with the decoder forced elsewhere."""
    monkeypatch.delenv(attention.OVERRIDE_ENV, raising=False)
    assert "flash_attention" not in traced_model(pixels=False)
    with jax.sharding.use_abstract_mesh(abstract_mesh("tpu", "TPU v5 lite")):
        assert "flash_attention" in traced_model(pixels=False)
    monkeypatch.setenv(attention.OVERRIDE_ENV, "blocked")
    with jax.sharding.use_abstract_mesh(abstract_mesh("gpu", "NVIDIA H200")):
        traced_model(pixels=False)  # the decoder alone, forced to the blocked attention
        try:
            jaxpr = traced_model(pixels=True)
        except RuntimeError as e:  # no CUDA here: the towers' call reached cuDNN
            assert "cuDNN" in str(e)
        else:
            assert "cudnn" in jaxpr.lower()


SHARDED = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from vllava_jax.modeling import attention
from vllava_jax.sharding import make_mesh

mesh = make_mesh(data=2, fsdp=1, tensor=2)
keys = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(keys[0], (4, 40, 4, 16))
k, v = (jax.random.normal(key, (4, 40, 2, 16)) for key in keys[1:])
ids = jnp.ones((4, 40), jnp.int32).at[1, 30:].set(0).at[2, 20:].set(2)
real = (ids > 0)[:, :, None, None]
with jax.set_mesh(mesh):
    heads = NamedSharding(mesh, P("data", None, "tensor", None))
    q, k, v = (jax.device_put(x, heads) for x in (q, k, v))
    ids = jax.device_put(ids, NamedSharding(mesh, P("data", None)))
    step = jax.jit(lambda q, k, v, ids: jax.value_and_grad(
        lambda q, k, v: jnp.sum(attention.causal_attention(q, k, v, ids, implementation="pallas_gpu") * real),
        argnums=(0, 1, 2))(q, k, v))
    compiled = step.lower(q, k, v, ids).compile().as_text()
    (loss, grads) = step(q, k, v, ids)
reference = lambda q, k, v: jnp.sum(attention.causal_attention(q, k, v, ids, implementation="xla") * real)
ref_loss, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(*(np.asarray(x) for x in (q, k, v)))
np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
print("all-gathers", compiled.count("all-gather"))
"""


def test_pallas_kernels_run_per_shard_on_a_mesh(tmp_path):
    """On 4 simulated devices (2 row groups x 2 head groups, set with jax.set_mesh) the Pallas kernel runs on
    each device's shard: same numbers as unsharded XLA attention, and no operand gathered."""
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all-gathers 0" in result.stdout, result.stdout


def test_one_token_over_its_cache_and_shared_entries_equals_attention_over_what_it_sees():
    """Decode attention of one token per row over its cache and shared prefix entries (the
    serving engine's step) equals jax.nn.dot_product_attention over the keys each row sees, laid
    out as one sequence: the entry it continues, then its cached tokens, then itself (GQA: 2 kv heads)."""
    from vllava_jax.modeling.kv_cache import attend_one_token

    rng = np.random.default_rng(0)
    batch, kv_heads, slots, entries, width = 3, 2, 10, 2, 7
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    q, k, v = normal(batch, 1, HEADS, HEAD_DIM), normal(batch, 1, kv_heads, HEAD_DIM), normal(batch, 1, kv_heads, HEAD_DIM)
    keys, values = normal(batch, kv_heads, slots, HEAD_DIM), normal(batch, kv_heads, slots, HEAD_DIM)
    shared_keys, shared_values = normal(entries, kv_heads, width, HEAD_DIM), normal(entries, kv_heads, width, HEAD_DIM)
    visible = jnp.asarray(rng.random((batch, slots)) < 0.6)
    entry_valid = jnp.asarray(rng.random((entries, width)) < 0.7)
    continues = np.array([1, -1, 0])  # row 1 continues no entry
    sees = (continues[:, None] == np.arange(entries))[:, :, None] & entry_valid[None]

    # the cache's layout: values with the slots last
    out = attend_one_token(q, k, v, keys, values.swapaxes(2, 3), visible, (shared_keys, shared_values.swapaxes(2, 3), sees))

    rows = []
    for b in range(batch):
        taken = [shared_keys[continues[b]].swapaxes(0, 1)[entry_valid[continues[b]]]] if continues[b] >= 0 else []
        taken_v = [shared_values[continues[b]].swapaxes(0, 1)[entry_valid[continues[b]]]] if continues[b] >= 0 else []
        row_k = jnp.concatenate([*taken, keys[b].swapaxes(0, 1)[visible[b]], k[b]])
        row_v = jnp.concatenate([*taken_v, values[b].swapaxes(0, 1)[visible[b]], v[b]])
        rows.append(jax.nn.dot_product_attention(q[b][None], row_k[None], row_v[None], implementation="xla")[0])
    np.testing.assert_allclose(out, jnp.stack(rows), rtol=1e-5, atol=1e-5)
