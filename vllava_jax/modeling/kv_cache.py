"""The decoder's KV cache: its layout, in-place writes, and attention of one new token over it.

Decoding is memory bound: each token should read every weight and the whole cache once. The cache
is updated with `dynamic_update_slice` on the buffer the decode loop carries (XLA writes it in
place), and a token's attention is elementwise products and reductions over the cache, which XLA
fuses with the layer's slice of it: each layer's keys and values are read once, straight from the
carried buffer. A dot there first copied (and transposed, for its preferred operand layout) the
layer's slice: on XLA's CPU backend that read and wrote the cache again every token.
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
    """Keys and values of every layer, (layers, batch, slots, kv_heads, head_dim), and which slots hold a token."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array  # (batch, slots) bool

    @classmethod
    def empty(cls, cfg: TextConfig, batch: int, slots: int, dtype) -> KVCache:
        shape = (cfg.num_hidden_layers, batch, slots, cfg.num_key_value_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, slots), bool))


def write(stacked: tuple[jax.Array, jax.Array], new: tuple[jax.Array, jax.Array], layer, slot) -> tuple[jax.Array, ...]:
    """Keys and values (layers, batch, slots, ...) with the `new` ones (layers', batch, len, ...)
    written at [layer:layer + layers', :, slot:slot + len]."""
    return tuple(jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (layer, 0, slot, 0, 0))
                 for c, n in zip(stacked, new))


def attend_one_token(q: jax.Array, k: jax.Array, v: jax.Array, keys: jax.Array, values: jax.Array,
                     visible: jax.Array) -> jax.Array:
    """Softmax attention of one new token per row over itself and a layer's cache, read once.

    q, k, v (batch, 1, heads or kv_heads, head_dim) are the new token's; keys/values (batch,
    slots, kv_heads, head_dim) the layer's cache *before* the token is written, so the reads
    depend only on the loop's incoming buffer: XLA then reads it in place and writes the token
    afterwards, where reading the written cache makes it duplicate the write into the read and
    copy the whole cache before every write (XLA's CPU HLO: two whole-cache copies per layer per
    token). `visible` (batch, slots) is True for the earlier tokens the query sees. Each kv head
    serves heads // kv_heads consecutive query heads (GQA, no repeated copy). Logits, softmax and
    the weighted sum of values run in float32 (as `jax.nn.dot_product_attention`); the output,
    (batch, 1, heads, head_dim), is in q's dtype.
    """
    batch, _, heads, head_dim = q.shape
    kv_heads = keys.shape[2]
    f32 = jnp.float32
    scale = f32(1.0 / math.sqrt(head_dim))
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim).astype(f32)
    k, v = (x.reshape(batch, kv_heads, 1, head_dim).astype(f32) for x in (k, v))
    cached = jnp.sum(grouped[:, None] * keys[:, :, :, None, :].astype(f32), axis=-1) * scale  # (b, slots, kvh, g)
    cached = jnp.where(visible[:, :, None, None], cached, _MASKED)
    own = jnp.sum(grouped * k, axis=-1) * scale  # (batch, kv_heads, group)
    peak = jnp.maximum(jnp.max(cached, axis=1), own)
    weights, own_weight = jnp.exp(cached - peak[:, None]), jnp.exp(own - peak)
    total = jnp.sum(weights, axis=1) + own_weight
    out = jnp.sum(weights[..., None] * values[:, :, :, None, :].astype(f32), axis=1) + own_weight[..., None] * v
    return (out / total[..., None]).reshape(batch, 1, heads, head_dim).astype(q.dtype)
