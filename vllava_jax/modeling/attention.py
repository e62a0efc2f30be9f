"""Attention, with the implementation chosen per platform in this one module.

Entry points, all on (batch, len, heads, head_dim) arrays, keys/values possibly with fewer heads
(grouped-query attention), logits and softmax in float32, output in q's dtype:

- `causal_attention(q, k, v, segment_ids)`: the decoder over whole sequences (training, scoring).
  Masks travel as segment ids (batch, len): 1, 2, ... per sample packed in a row, 0 on padding; an
  unpacked row passes its attention mask (1 = token, 0 = padding), left or right padded. A token
  sees the earlier tokens of its own segment. Outputs at padding are unspecified (finite).
- `bidirectional_attention(q, k, v)`: the vision towers (ViT, LanguageBind's temporal attention),
  no mask.
- `masked_attention(q, k, v, mask)`: new tokens against a KV cache under an explicit boolean mask
  (XLA's attention on every platform).

Which implementation runs (`choose_implementation`):

| compiled for | decoder | towers |
| --- | --- | --- |
| NVIDIA GPU, 16-bit compute, head_dim a multiple of 8 up to 128 | `cudnn` | `cudnn` |
| TPU, 16-bit compute | `pallas_tpu` | `xla` |
| CPU; or float32 compute anywhere; or a head_dim cuDNN does not take | `blocked` | `xla` |

- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused flash attention.
  Its masks are causality and per-row lengths only (anything else would be an (L x L) bias), so
  the decoder checks at run time (`lax.cond`) whether every row is one segment padded on the
  right (unpacked training rows, scoring without padding): then cuDNN with
  `query_seq_lengths = key_value_seq_lengths = tokens per row`; otherwise (packed rows,
  left-padded scoring) `pallas_gpu`, which takes segment ids natively. Prompts are re-laid to
  the right before they get here (`generation.run_prompt`): re-laid here, as a third branch of
  the `lax.cond`, the stage-2 train step compiled for an H200 kept that branch's residuals too
  (3.1 GiB more temporaries at `benchmarks.accelerator`'s shapes).
- `pallas_gpu`: `jax.experimental.pallas.ops.gpu.attention.mha` (Triton flash attention with
  segment ids; heads repeated for GQA, length padded to its block). Deprecated since jax 0.11 in
  favor of tokamax; it is still in jax 0.12.
- `pallas_tpu`: `jax.experimental.pallas.ops.tpu.flash_attention` (segment ids, causal; heads
  repeated for GQA, length padded to a multiple of 128). The towers stay on XLA there: 257 and
  8 tokens would be mostly padding in 128-token blocks.
- `blocked`: causal attention in blocks of queries with a flash-style backward, written for XLA's
  CPU backend (`blocked_causal_attention`).
- `xla`: `jax.nn.dot_product_attention`'s XLA implementation, the reference of the tests.

Fused kernels run only for bfloat16/float16 compute: cuDNN takes nothing else, and a float32
model asks for float32 numbers (the parity policy), which a silent cast to 16 bits would break.

Platform contract (shared with ahead-of-time compilation, where a CPU host compiles for a TPU):
the platform is that of the devices the program is compiled for, read at trace time from the
mesh made current with `jax.set_mesh(mesh)` (or an abstract one with
`jax.sharding.use_abstract_mesh`): `jax.sharding.get_abstract_mesh().abstract_device.platform`.
With no mesh set it is `jax.devices()[0].platform`; never `jax.default_backend()`. On a mesh of
several devices the Pallas kernels run per shard (`jax.shard_map` over that mesh, rows and heads
placed by `vllava_jax.sharding`'s rules); cuDNN's call is partitioned by XLA itself.

Override: every entry point takes `implementation=`; the environment variable VLLAVA_ATTENTION
(read at trace time) forces one name wherever that name applies ("xla" and "cudnn": decoder and
towers; "blocked", "pallas_gpu", "pallas_tpu": the decoder). A Pallas GPU kernel traced for
another platform runs in Pallas' interpreter; the TPU kernel does so under
`jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (how the tests run both on CPU).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

from vllava_jax.errors import ConfigError
from vllava_jax.sharding import MESH_AXES, logical_to_spec

OVERRIDE_ENV = "VLLAVA_ATTENTION"
Kind = Literal["decoder", "tower"]
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "decoder": ("blocked", "xla", "cudnn", "pallas_gpu", "pallas_tpu"),
    "tower": ("xla", "cudnn"),
}
_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
NVIDIA_PLATFORMS = ("gpu", "cuda")  # the platform names jax gives NVIDIA GPUs


def compile_platform() -> str:
    """The platform the program being traced is compiled for (the contract in the module docstring)."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.devices()[0].platform


def environment_override(variable: str, choices) -> str:
    """The value of environment variable `variable` ("" when unset), one of `choices`; any other
    value is a ConfigError naming it."""
    value = os.environ.get(variable, "")
    if value and value not in choices:
        raise ConfigError(f"environment variable {variable}={value!r} is not one of {sorted(choices)}")
    return value


def choose_implementation(kind: Kind, platform: str, dtype, head_dim: int) -> str:
    """The implementation `kind` ("decoder" or "tower") attention runs for `platform` ("cpu", "gpu",
    "tpu"), compute `dtype` and `head_dim`, after the VLLAVA_ATTENTION override."""
    forced = environment_override(OVERRIDE_ENV, {name for names in IMPLEMENTATIONS.values() for name in names})
    if forced in IMPLEMENTATIONS[kind]:
        return forced
    fused = jnp.dtype(dtype) in _FUSED_DTYPES
    if platform in NVIDIA_PLATFORMS and fused and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    if platform == "tpu" and fused and kind == "decoder":
        return "pallas_tpu"
    return "blocked" if kind == "decoder" else "xla"


def _resolve(kind: Kind, implementation: str | None, q: jax.Array) -> str:
    if implementation is None:
        return choose_implementation(kind, compile_platform(), q.dtype, q.shape[-1])
    if implementation not in IMPLEMENTATIONS[kind]:
        raise ValueError(f"{kind} attention implementation {implementation!r} is not one of {IMPLEMENTATIONS[kind]}")
    return implementation


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                     implementation: str | None = None) -> jax.Array:
    """Causal attention within segments (see the module docstring); `segment_ids` (batch, len) int."""
    return _CAUSAL[_resolve("decoder", implementation, q)](q, k, v, segment_ids.astype(jnp.int32))


def bidirectional_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                            implementation: str | None = None) -> jax.Array:
    """Every query sees every key (the towers)."""
    name = _resolve("tower", implementation, q)
    return jax.nn.dot_product_attention(q, k, v, implementation=name).astype(q.dtype)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """XLA's attention where `mask` (batch, 1, q_len or 1, key_len) is True."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)


def _key_ids(segment_ids: jax.Array) -> jax.Array:
    """Segment ids for the key side, padding -1: equal to a query's id exactly where that key is visible to
    it, causality aside (padded queries, id 0, then see nothing)."""
    return jnp.where(segment_ids > 0, segment_ids, -1)


def _segment_mask(segment_ids: jax.Array, key_ids: jax.Array, queries: slice, keys: slice) -> jax.Array:
    """(batch, 1, queries, keys) True where a query sees a key: same segment, not padding, causal."""
    rows = jnp.arange(segment_ids.shape[1])
    causal = rows[queries, None] >= rows[None, keys]
    return ((segment_ids[:, queries, None] == key_ids[:, None, keys]) & causal)[:, None]


def _repeat_kv(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values with one head per query head (for kernels without grouped-query attention)."""
    groups = q.shape[2] // k.shape[2]
    return tuple(jnp.repeat(x, groups, axis=2) if groups > 1 else x for x in (k, v))


def _pad_length(multiple: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Arrays zero-padded along axis 1 to a multiple of `multiple` (padding is segment 0)."""
    extra = -arrays[0].shape[1] % multiple
    return tuple(jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)) for x in arrays)


def _causal_xla(q, k, v, segment_ids):
    every = slice(None)
    mask = _segment_mask(segment_ids, _key_ids(segment_ids), every, every)
    return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)


def lengths_or_segments(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                        fused: Callable[..., jax.Array] | None = None) -> jax.Array:
    """The GPU decoder path: `fused` attention (default cuDNN's, `jax.nn.dot_product_attention`'s
    signature) with causality and per-row lengths when every row is one segment padded on the right
    (decided at run time), else the Pallas GPU kernel with segment ids. Tests on CPU pass XLA's.

    What the fused kernel computes for padded positions is not relied on either way: cuDNN leaves
    padded queries' outputs unwritten, so they are zeroed on the way out, and the gradients it
    returns for padded positions are zeroed on the way back (selected, not multiplied: an unwritten
    NaN times zero is still NaN), so nothing undefined reaches the projections' gradients."""
    if fused is None:
        fused = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
    length = q.shape[1]
    tokens = jnp.sum(segment_ids > 0, axis=1, dtype=jnp.int32)
    right_padded = (jnp.arange(length)[None, :] < tokens[:, None]).astype(jnp.int32)
    one_segment_each = jnp.all(segment_ids == right_padded)

    def with_lengths(q, k, v):
        real = right_padded[:, :, None, None] > 0
        q, k, v = (_zero_gradient_outside(x, real) for x in (q, k, v))
        out = fused(q, k, v, is_causal=True, query_seq_lengths=tokens, key_value_seq_lengths=tokens)
        return jnp.where(real, out, jnp.zeros((), out.dtype)).astype(q.dtype)

    with_segments = functools.partial(_per_shard(_causal_pallas_gpu), segment_ids=segment_ids)
    return jax.lax.cond(one_segment_each, with_lengths, with_segments, q, k, v)


@jax.custom_vjp
def _zero_gradient_outside(x: jax.Array, keep: jax.Array) -> jax.Array:
    """`x`; its gradient is zero wherever `keep` (broadcast against it) is False, whatever arrives there."""
    return x


def _zero_gradient_outside_forward(x, keep):
    return x, keep


def _zero_gradient_outside_backward(keep, d_x):
    return jnp.where(keep, d_x, jnp.zeros((), d_x.dtype)), None


_zero_gradient_outside.defvjp(_zero_gradient_outside_forward, _zero_gradient_outside_backward)


def _per_shard(kernel: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`kernel(q, k, v, segment_ids)` run on each device's rows and heads of the current mesh.

    XLA does not partition a Pallas call: on a mesh it would gather the operands onto every
    device and repeat the whole attention there. Rows and heads are placed as the rules table
    places them; query heads stay whole where key/value heads do (a device must hold the key/value
    heads its query heads read).
    """

    @functools.wraps(kernel)
    def run(q, k, v, segment_ids):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1 or not set(MESH_AXES) <= set(mesh.axis_names):  # not ours: XLA gathers
            return kernel(q, k, v, segment_ids)
        kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), k.shape, mesh)
        q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), q.shape, mesh)
        if q_spec[2] != kv_spec[2]:
            q_spec = jax.sharding.PartitionSpec(q_spec[0], q_spec[1], kv_spec[2], q_spec[3])
        rows = jax.sharding.PartitionSpec(q_spec[0], None)
        return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, rows), out_specs=q_spec,
                             check_vma=False)(q, k, v, segment_ids)

    return run


def _causal_pallas_gpu(q, k, v, segment_ids):
    # imported when traced: jax 0.11 deprecated this module (for tokamax, not a dependency of ours),
    # so importing it with the package would warn every user and break every import once it goes
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    length, head_dim = q.shape[1], q.shape[3]
    block = min(128, max(16, 1 << (length - 1).bit_length()))  # powers of 2 from 16: backward blocks divide it
    sizes = pallas_gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=min(block, 32),
                                  block_kv_dkv=min(block, 32), block_q_dq=min(block, 32), block_kv_dq=min(block, 32))
    q, k, v, segment_ids = _pad_length(block, q, *_repeat_kv(q, k, v), segment_ids)
    out = pallas_gpu.mha(q, k, v, segment_ids, sm_scale=1.0 / math.sqrt(head_dim), causal=True, block_sizes=sizes,
                         interpret=compile_platform() != "gpu")
    return out[:, :length]


def _causal_pallas_tpu(q, k, v, segment_ids):
    length, head_dim = q.shape[1], q.shape[3]
    q, k, v, segment_ids = _pad_length(128, q, *_repeat_kv(q, k, v), segment_ids)
    heads_major = [x.transpose(0, 2, 1, 3) for x in (q, k, v)]
    out = pallas_tpu.flash_attention(*heads_major, segment_ids=pallas_tpu.SegmentIds(segment_ids, segment_ids),
                                     causal=True, sm_scale=1.0 / math.sqrt(head_dim))
    return out.transpose(0, 2, 1, 3)[:, :length]


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                             block: int = 256) -> jax.Array:
    """`causal_attention` in blocks of queries, with flash attention's backward.

    Each block of queries meets only the keys up to its last query (the rest are masked anyway),
    heads-major, so every score and value product is one batched matmul over contiguous heads,
    and each block's mask is made from the segment ids (no (len x len) mask is ever built).
    The backward recomputes each block's probabilities from the saved log-sum-exp instead of
    differentiating through the softmax (as flash kernels do), so no (len x len) probabilities are
    kept for the backward and XLA compiles one small hand-written backward rather than the autodiff
    of every block's softmax (the step time and compile time it saves: benchmarks/BENCHMARKS.md).
    """
    k, v = _repeat_kv(q, k, v)
    segment_ids = segment_ids.astype(jnp.int32)
    out = _block_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), segment_ids, _key_ids(segment_ids), block)
    return out.transpose(0, 2, 1, 3)


# As jax.nn.dot_product_attention masks: finite, so a row with no visible key stays finite (uniform).
_MASKED = 0.7 * float(jnp.finfo(jnp.float32).min)


def _scale(head_dim: int) -> jax.Array:
    """The logits' 1/sqrt(head_dim), as jax.nn.dot_product_attention applies it (after the matmul)."""
    return jnp.float32(1.0 / math.sqrt(head_dim))


def _scores(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """Scaled float32 logits (batch, heads, queries, keys), `_MASKED` where not `visible` (batch, 1, queries, keys).

    `lax.select` on explicit broadcasts, not `jnp.where`: that is a jitted helper, and inside the
    rematerialized decoder layer JAX saved its broadcasts of the mask and of `_MASKED` (known
    before the layer runs) for the backward and hoisted them out of the layer loop, one pair of
    (batch, heads, queries, keys) arrays per block (5 GiB at 8 x 3,072 tokens); these broadcasts
    are recomputed where they are used.
    """
    logits = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
    shape = logits.shape
    visible = jax.lax.broadcast_in_dim(visible, shape, (0, 1, 2, 3))
    return jax.lax.select(visible, logits * _scale(q.shape[-1]), jax.lax.full(shape, _MASKED, jnp.float32))


def _blocks(length: int, block: int):
    return [(slice(start, min(start + block, length)), slice(0, min(start + block, length)))
            for start in range(0, length, block)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _block_attention(q, k, v, segment_ids, key_ids, block):
    """Heads-major (batch, heads, len, head_dim) causal attention; see `blocked_causal_attention`."""
    return _block_attention_forward(q, k, v, segment_ids, key_ids, block)[0]


def _block_attention_forward(q, k, v, segment_ids, key_ids, block):
    out, log_sum_exp = [], []
    for queries, keys in _blocks(q.shape[2], block):
        scores = _scores(q[:, :, queries], k[:, :, keys], _segment_mask(segment_ids, key_ids, queries, keys))
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        probs = (weights / total).astype(v.dtype)
        out.append(jnp.einsum("bnts,bnsh->bnth", probs, v[:, :, keys]))
        log_sum_exp.append(peak + jnp.log(total))
    out = jnp.concatenate(out, axis=2)
    return out, (q, k, v, segment_ids, key_ids, out, jnp.concatenate(log_sum_exp, axis=2))


def _block_attention_backward(block, residuals, d_out):
    """Flash attention's backward as a loop over the (query block, key block) tiles under the
    diagonal: each tile's probabilities are recomputed from the saved log-sum-exp and gone before
    the next tile's. Unrolled over query blocks instead, XLA computed every block's probabilities
    first and held them all (one (queries x keys) float32 array per block: 4.9 GiB per layer of the
    7B LoRA step at 8 x 3,072 tokens), and took the backward's scores for the rematerialized
    forward's, which it then kept alive too."""
    q, k, v, segment_ids, key_ids, out, log_sum_exp = residuals
    f32 = jnp.float32
    length = q.shape[2]
    # d(softmax) row term: sum_s p * dp = sum_h d_out * out
    delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    # tiles of at most `block`, as even as the length allows, so padding adds less than one row
    # per tile; padded queries (segment 0) see no key, padded keys (-1) are seen by none
    block = -(-length // -(-length // block))
    q, k, v, d_out, log_sum_exp, delta, segment_ids = _pad_length_axis2(
        block, q, k, v, d_out, log_sum_exp, delta, segment_ids)
    key_ids = jnp.pad(key_ids, [(0, 0), (0, segment_ids.shape[1] - key_ids.shape[1])], constant_values=-1)
    tiles = np.array([(start, key) for start in range(0, length, block) for key in range(0, start + 1, block)],
                     np.int32)
    offsets = jnp.arange(block, dtype=jnp.int32)

    def tile(grads, starts):
        dq, dk, dv = grads
        queries, keys = starts[0], starts[1]

        def rows(x, start):  # x's block at `start` along the length axis (2; 1 for segment ids)
            return jax.lax.dynamic_slice_in_dim(x, start, block, axis=2 if x.ndim == 4 else 1)

        visible = ((rows(segment_ids, queries)[:, :, None] == rows(key_ids, keys)[:, None, :])
                   & ((queries + offsets)[:, None] >= (keys + offsets)[None, :]))[:, None]
        q_tile, d_tile, k_tile, v_tile = rows(q, queries), rows(d_out, queries), rows(k, keys), rows(v, keys)
        probs = jnp.exp(_scores(q_tile, k_tile, visible) - rows(log_sum_exp, queries))
        dv_tile = jnp.einsum("bnts,bnth->bnsh", probs.astype(v.dtype), d_tile, preferred_element_type=f32)
        d_probs = jnp.einsum("bnth,bnsh->bnts", d_tile, v_tile, preferred_element_type=f32)
        d_logits = probs * (d_probs - rows(delta, queries)) * _scale(q.shape[-1])
        dq_tile = jnp.einsum("bnts,bnsh->bnth", d_logits, k_tile, preferred_element_type=f32)
        dk_tile = jnp.einsum("bnts,bnth->bnsh", d_logits, q_tile, preferred_element_type=f32)

        def add(total, part, start):
            return jax.lax.dynamic_update_slice_in_dim(total, rows(total, start) + part, start, axis=2)

        return (add(dq, dq_tile, queries), add(dk, dk_tile, keys), add(dv, dv_tile, keys)), None

    zeros = jnp.zeros(q.shape, f32), jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
    (dq, dk, dv), _ = jax.lax.scan(tile, zeros, jnp.asarray(tiles))
    return (dq[:, :, :length].astype(q.dtype), dk[:, :, :length].astype(k.dtype), dv[:, :, :length].astype(v.dtype),
            None, None)


def _pad_length_axis2(multiple: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Heads-major arrays (and 2-D segment ids) zero-padded along the length axis to a multiple of `multiple`."""
    def pad(x):
        axis = 2 if x.ndim == 4 else 1
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, -x.shape[axis] % multiple)
        return jnp.pad(x, widths)

    return tuple(pad(x) for x in arrays)


_block_attention.defvjp(_block_attention_forward, _block_attention_backward)


_CAUSAL: dict[str, Callable[..., jax.Array]] = {
    "blocked": blocked_causal_attention,
    "xla": _causal_xla,
    "cudnn": lengths_or_segments,
    "pallas_gpu": _per_shard(_causal_pallas_gpu),
    "pallas_tpu": _per_shard(_causal_pallas_tpu),
}
