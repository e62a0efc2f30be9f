"""The decoder's KV cache: its layout, in-place writes, and attention of one new token over it.

Decoding is memory bound: each token should read every weight and the cache once. The cache is
updated with `dynamic_update_slice` on the buffer the decode loop carries, after every layer has
read it (see `LlamaDecoder.cached`), so XLA writes it in place: no copy of the cache per token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vllava_jax.config import TextConfig

# As jax.nn.dot_product_attention masks: finite, so a row with no visible key stays finite.
_MASKED = 0.7 * float(jnp.finfo(jnp.float32).min)


class KVCache(NamedTuple):
    """Keys and values of every layer, (layers, batch, kv_heads, slots, head_dim), and which slots hold a token.

    Head-major (each head's slots contiguous): decode attention's two products then read a
    layer's cache as it lies; with the slots before the heads, XLA's CPU backend made a
    transposed copy of every layer's cache each step."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array  # (batch, slots) bool

    @classmethod
    def empty(cls, cfg: TextConfig, batch: int, slots: int, dtype) -> KVCache:
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, slots, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, slots), bool))


class SharedKV(NamedTuple):
    """Cached tokens that many rows attend to but that are held once, e.g. the serving engine's
    prompt prefixes (system prompt + video, the same for every question about that video).

    A decode step then reads each entry once for all its rows, not once per row: with 16 rows
    asking about one 8-frame clip, the clip's ~2,000 cached tokens per layer are read once a step
    instead of 16 times. `keys`/`values` (layers, entries, kv_heads, slots, head_dim) may be larger
    than what `visible` (batch, entries', slots') covers: only the first entries' and slots' are read."""

    keys: jax.Array
    values: jax.Array
    visible: jax.Array  # (batch, entries', slots') True where the row sees that entry's slot


def write(stacked: tuple[jax.Array, jax.Array], new: tuple[jax.Array, jax.Array], layer, slot) -> tuple[jax.Array, ...]:
    """Keys and values (layers, batch, kv_heads, slots, head_dim) with the `new` ones (layers',
    batch, len, kv_heads, head_dim: as the projections give them) written at [layer:layer + layers',
    :, :, slot:slot + len]."""
    return tuple(jax.lax.dynamic_update_slice(c, n.swapaxes(2, 3).astype(c.dtype), (layer, 0, 0, slot, 0))
                 for c, n in zip(stacked, new))


def attend_one_token(q: jax.Array, k: jax.Array, v: jax.Array, keys: jax.Array, values: jax.Array,
                     visible: jax.Array, shared: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
    """Softmax attention of one new token per row over itself and a layer's cache.

    q, k, v (batch, 1, heads or kv_heads, head_dim) are the new token's; keys/values (batch,
    kv_heads, slots, head_dim) the layer's cache *before* the token is written, so the reads
    depend only on the loop's incoming buffer and the write can follow them in place (reading the
    written cache instead made XLA fuse the write into the read and copy the whole cache before
    every layer's write). `visible` (batch, slots) is True for the earlier tokens the query sees.
    Each kv head serves heads // kv_heads consecutive query heads (GQA, no repeated copy).
    Logits, softmax and the weighted sum run in float32 (as `jax.nn.dot_product_attention`);
    the output, (batch, 1, heads, head_dim), is in q's dtype. The two products are einsums
    (batched over batch and kv heads, the cache's leading axes, so no operand is transposed): on
    XLA's CPU backend elementwise products and reductions decoded 3-5x slower.

    `shared` = (keys, values (entries, kv_heads, slots', head_dim), visible (batch, entries, slots'))
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
    out = jnp.einsum("bkgs,bksd->bkgd", weights.astype(values.dtype), values, preferred_element_type=f32)
    out = out + own_weight[..., None] * v.astype(f32)
    if shared is not None:
        common_weights = jnp.exp(common - peak[..., None, None])
        total = total + jnp.sum(common_weights, axis=(-2, -1))
        out = out + jnp.einsum("bkges,eksd->bkgd", common_weights.astype(shared_values.dtype), shared_values,
                               preferred_element_type=f32)
    return (out / total[..., None]).reshape(batch, 1, heads, head_dim).astype(q.dtype)
