"""Rotary position embeddings with the scaling kinds transformers' LlamaConfig accepts.

Frequencies are computed in float32 exactly as transformers computes them, so that positions far
into a long context rotate by the same angles.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vllava_jax.config import RopeConfig


def _base_inverse_frequencies(theta, head_dim: int):
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    return 1.0 / (theta ** exponents)


def _llama3_inverse_frequencies(rope: RopeConfig, head_dim: int, max_positions: int) -> np.ndarray:
    inv_freq = _base_inverse_frequencies(np.float32(rope.theta), head_dim).astype(np.float32)
    old_context = rope.original_max_position_embeddings or max_positions
    low_wavelen = old_context / rope.low_freq_factor
    high_wavelen = old_context / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def inverse_frequencies(rope: RopeConfig, head_dim: int, max_positions: int, positions: jax.Array) -> jax.Array:
    """(head_dim // 2,) float32 inverse frequencies for this call's positions.

    Only "dynamic" depends on `positions`: past `max_positions` it raises the base (NTK scaling)
    for the longest sequence in the call, as transformers does on a fresh model.
    """
    if rope.rope_type == "dynamic":
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_positions).astype(jnp.float32)
        base = rope.theta * ((rope.factor * seq_len / max_positions) - (rope.factor - 1)) ** (head_dim / (head_dim - 2))
        exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
        return 1.0 / (base ** exponents)
    if rope.rope_type == "llama3":
        return jnp.asarray(_llama3_inverse_frequencies(rope, head_dim, max_positions))
    inv_freq = _base_inverse_frequencies(np.float32(rope.theta), head_dim).astype(np.float32)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / np.float32(rope.factor)
    return jnp.asarray(inv_freq)


def rotary_tables(inv_freq: jax.Array, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables, (batch, len, 1, head_dim), halves repeated (rotate-half layout)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
