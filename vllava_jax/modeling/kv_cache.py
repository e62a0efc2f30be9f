"""The decoder's KV cache: its layout, in-place writes, and attention of one new token over it.

Decoding is memory bound: each token should read every weight and the cache once. The cache is
updated with `dynamic_update_slice` on the buffer the decode loop carries, after every layer has
read it (see `LlamaDecoder.cached`), so XLA writes it in place: no copy of the cache per token.

Keys are stored (layers, batch, kv_heads, slots, head_dim) and values (layers, batch, kv_heads,
head_dim, slots): each product of decode attention then sums over its operand's last axis (the
keys' head_dim, the values' slots). With the slots before head_dim in the values too, XLA on
NVIDIA GPUs summed a single query's probabilities x values over a major axis, and wrote each
layer's float32 product (slots x heads x head_dim) to memory before summing it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint

from vllava_jax.config import TextConfig
from vllava_jax.modeling.attention import NVIDIA_PLATFORMS, compile_platform

# As jax.nn.dot_product_attention masks: finite, so a row with no visible key stays finite.
_MASKED = 0.7 * float(jnp.finfo(jnp.float32).min)


class KVCache(NamedTuple):
    """Keys (layers, batch, kv_heads, slots, head_dim) and values (layers, batch, kv_heads,
    head_dim, slots) of every layer, and which slots hold a token.

    Head-major (each head's slots contiguous): decode attention's two products then read a
    layer's cache as it lies; with the slots before the heads, XLA's CPU backend made a
    transposed copy of every layer's cache each step."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array  # (batch, slots) bool

    @classmethod
    def empty(cls, cfg: TextConfig, batch: int, slots: int, dtype) -> KVCache:
        leading = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads)
        return cls(jnp.zeros((*leading, slots, cfg.head_dim), dtype), jnp.zeros((*leading, cfg.head_dim, slots), dtype),
                   jnp.zeros((batch, slots), bool))


class SharedKV(NamedTuple):
    """Cached tokens that many rows attend to but that are held once, e.g. the serving engine's
    prompt prefixes (system prompt + video, the same for every question about that video).

    A decode step then reads each entry once for all its rows, not once per row: with 16 rows
    asking about one 8-frame clip, the clip's ~2,000 cached tokens per layer are read once a step
    instead of 16 times. `keys`/`values` (laid out as `KVCache`'s, with entries for batch) may be
    larger than what `visible` (batch, entries', slots') covers: only the first entries' and slots'
    are read."""

    keys: jax.Array
    values: jax.Array
    visible: jax.Array  # (batch, entries', slots') True where the row sees that entry's slot


def write(stacked: tuple[jax.Array, jax.Array], new: tuple[jax.Array, jax.Array], layer, slot) -> tuple[jax.Array, ...]:
    """A `KVCache`'s keys and values with the `new` ones (layers', batch, len, kv_heads, head_dim: as
    the projections give them) written at layers [layer, layer + layers') and slots [slot, slot + len)."""
    keys, values = stacked
    new_keys, new_values = new
    return (keep_layout(jax.lax.dynamic_update_slice(keys, new_keys.swapaxes(2, 3).astype(keys.dtype),
                                                     (layer, 0, 0, slot, 0))),
            keep_layout(jax.lax.dynamic_update_slice(values, new_values.transpose(0, 1, 3, 4, 2).astype(values.dtype),
                                                     (layer, 0, 0, 0, slot))))


def keep_layout(x: jax.Array) -> jax.Array:
    """`x` pinned to its row-major layout, the one programs hand each other the cache in, where the
    program is compiled for NVIDIA GPUs; elsewhere `x` as is.

    XLA's GPU layout assignment lays out what a loop carries as it likes, and in the decode
    programs it moved each cache stack's layer axis next to the minor one (where the size-1 axis
    of a layer's slice sat in the reductions reading it): a transposed copy of the whole cache on
    the way into the decode loop and out of it, and into and out of the serving step
    (BENCHMARKS.md). Pinned on the stacks and on each layer's slice, the cache is read where it lies."""
    if compile_platform() not in NVIDIA_PLATFORMS:
        return x
    return with_layout_constraint(x, Layout(major_to_minor=tuple(range(x.ndim))))


def attend_one_token(q: jax.Array, k: jax.Array, v: jax.Array, keys: jax.Array, values: jax.Array,
                     visible: jax.Array, shared: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
    """Softmax attention of one new token per row over itself and a layer's cache.

    q, k, v (batch, 1, heads or kv_heads, head_dim) are the new token's; keys (batch, kv_heads,
    slots, head_dim) and values (batch, kv_heads, head_dim, slots) the layer's cache *before* the
    token is written, so the reads depend only on the loop's incoming buffer and the write can
    follow them in place (reading the written cache instead made XLA fuse the write into the read
    and copy the whole cache before every layer's write). `visible` (batch, slots) is True for the
    earlier tokens the query sees. Each kv head serves heads // kv_heads consecutive query heads
    (GQA, no repeated copy). Logits, softmax and the weighted sum run in float32 (as
    `jax.nn.dot_product_attention`); the output, (batch, 1, heads, head_dim), is in q's dtype. The
    two products are einsums (batched over batch and kv heads, the cache's leading axes, so no
    operand is transposed): on XLA's CPU backend elementwise products and reductions decoded 3-5x
    slower.

    `shared` = (keys (entries, kv_heads, slots', head_dim), values (entries, kv_heads, head_dim,
    slots'), visible (batch, entries, slots'))
    adds a layer's `SharedKV`: every row's query meets every entry in one product (batched over kv
    heads only), masked to the entries it sees, and joins the same softmax.
    """
    batch, _, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    f32 = jnp.float32
    scale = f32(1.0 / math.sqrt(head_dim))
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    k, v = (x.reshape(batch, kv_heads, 1, head_dim) for x in (k, v))
    cached = jnp.einsum("bkgd,bksd->bkgs", grouped, keys.astype(q.dtype), preferred_element_type=f32) * scale
    cached = jnp.where(visible[:, None, None, :], cached, _MASKED)
    own = jnp.sum(grouped.astype(f32) * k.astype(f32), axis=-1) * scale  # (batch, kv_heads, group)
    peak = jnp.maximum(jnp.max(cached, axis=-1), own)
    if shared is not None:
        shared_keys, shared_values, shared_visible = shared
        common = jnp.einsum("bkgd,eksd->bkges", grouped, shared_keys.astype(q.dtype), preferred_element_type=f32)
        common = jnp.where(shared_visible[:, None, None], common * scale, _MASKED)
        peak = jnp.maximum(peak, jnp.max(common, axis=(-2, -1)))
    weights, own_weight = jnp.exp(cached - peak[..., None]), jnp.exp(own - peak)
    total = jnp.sum(weights, axis=-1) + own_weight
    out = jnp.einsum("bkgs,bkds->bkgd", weights.astype(values.dtype), values, preferred_element_type=f32)
    out = out + own_weight[..., None] * v.astype(f32)
    if shared is not None:
        common_weights = jnp.exp(common - peak[..., None, None])
        total = total + jnp.sum(common_weights, axis=(-2, -1))
        out = out + jnp.einsum("bkges,ekds->bkgd", common_weights.astype(shared_values.dtype), shared_values,
                               preferred_element_type=f32)
    return (out / total[..., None]).reshape(batch, 1, heads, head_dim).astype(q.dtype)
