"""Random masks computed where they are used: Threefry-2x32 written as elementwise operations.

`jax.random` lowers Threefry on CPU (and on GPU) to a loop or a kernel that writes every random
word to memory, two 32-bit words per element, and XLA schedules those loops early: in a
rematerialized decoder layer of the 7B LoRA step the seven adapters' dropout masks were 6.6 GiB of
live buffers at once. The same hash written with `jnp` integer operations on iotas is one
elementwise expression that XLA fuses into the mask's consumer, so no bits are stored.
`threefry2x32` is bit-identical to `jax.extend.random.threefry_2x32` (tests/test_fused_random.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds of `key` (uint32[2]) over the counter pairs (`x0`, `x1`) (uint32, broadcast together)."""
    k0, k1 = key[0], key[1]
    schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for bits in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + schedule[(i + 1) % 3]
        x1 = x1 + schedule[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
    """A boolean array of `shape`, True with probability `p` (to 2^-32), independently per element.

    `key` is a typed JAX key (`jax.random.key`, `fold_in`). Element (i..., j) hashes the counter
    pair (row-major index of i..., j), so every element has its own counter.
    """
    shape = tuple(shape)
    if math.prod(shape[:-1]) >= 2 ** 32 or shape[-1] >= 2 ** 32:
        raise ValueError(f"bernoulli: shape {shape} has more rows or columns than 32-bit counters address")
    # counters as (rows..., 1) and (1..., columns) iotas, broadcast only where the key enters: they
    # are loop-invariant in the scanned decoder, and JAX hoists such values out of the layer loop
    # and keeps them (full-shape iotas there were 3.5 GiB of the 7B LoRA step)
    row_shape = (*shape[:-1], 1)
    rows = jnp.zeros(row_shape, jnp.uint32)
    for dim in range(len(shape) - 1):
        rows = rows * jnp.uint32(shape[dim]) + jax.lax.broadcasted_iota(jnp.uint32, row_shape, dim)
    columns = jax.lax.broadcasted_iota(jnp.uint32, (1,) * (len(shape) - 1) + shape[-1:], len(shape) - 1)
    bits, _ = threefry2x32(jax.random.key_data(key), rows, columns)
    threshold = min(round((1.0 - p) * 2 ** 32), 2 ** 32 - 1)
    return bits >= jnp.uint32(threshold)
