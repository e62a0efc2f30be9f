"""The elementwise Threefry behind LoRA's dropout masks equals JAX's own, and its masks keep the asked fraction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from vllava_jax.modeling import fused_random


def test_threefry_is_jax_threefry_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(4):
        key = jnp.asarray(rng.integers(0, 2 ** 32, 2, dtype=np.uint64).astype(np.uint32))
        x0, x1 = (jnp.asarray(rng.integers(0, 2 ** 32, 1000, dtype=np.uint64).astype(np.uint32)) for _ in range(2))
        ours = fused_random.threefry2x32(key, x0, x1)
        # jax's takes the counters as one array: first half x0, second half x1
        theirs = threefry_2x32(key, jnp.concatenate([x0, x1]))
        np.testing.assert_array_equal(np.concatenate([np.asarray(ours[0]), np.asarray(ours[1])]), np.asarray(theirs))


def test_bernoulli_keeps_the_asked_fraction_independently_per_element():
    key = jax.random.fold_in(jax.random.key(3), 7)
    mask = np.asarray(jax.jit(lambda k: fused_random.bernoulli(k, 0.95, (8, 40, 300)))(key))
    assert mask.shape == (8, 40, 300) and mask.dtype == bool
    n = mask.size
    assert abs(mask.mean() - 0.95) < 6 * np.sqrt(0.95 * 0.05 / n)
    # neighbours along either counter are uncorrelated, rows and columns differ
    flat = mask.reshape(-1, 300).astype(np.float64)
    for a, b in ((flat[:, 1:], flat[:, :-1]), (flat[1:], flat[:-1])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 6 / np.sqrt(a.size)
    assert len({row.tobytes() for row in mask.reshape(-1, 300)}) == 320
    # the same key gives the same mask, another step another one
    np.testing.assert_array_equal(mask, np.asarray(fused_random.bernoulli(key, 0.95, (8, 40, 300))))
    other = np.asarray(fused_random.bernoulli(jax.random.fold_in(jax.random.key(3), 8), 0.95, (8, 40, 300)))
    assert (other != mask).mean() > 0.05
