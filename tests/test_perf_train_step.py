"""The train step's performance choices keep its numbers (LM head on labelled positions only, block
attention) and its attention masks boolean."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vllava_jax
from configs import train_tiny
from vllava_jax.modeling.layers import attention, causal_attention
from vllava_jax.train import partition
from vllava_jax.train.loop import build_model_config
from vllava_jax.train.step import IGNORE, answer_loss, labelled_head_rows
from vllava_jax.train.synthetic import SyntheticBatches

LENGTH = 48


def dense_loss(graphdef, params, frozen, batch):
    """The textbook loss: every position's log-softmax, shifted logits."""
    model = nnx.merge(graphdef, params, frozen)
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values_images"), None,
                   batch["positions"], batch["segment_ids"])
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = batch["labels"][:, 1:]
    labelled = targets != IGNORE
    nll = -jnp.take_along_axis(logp, jnp.where(labelled, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * labelled), jnp.sum(labelled)


@pytest.mark.parametrize("answer", [5, 40], ids=["labelled-positions-only", "every-position"])
def test_loss_and_gradients_match_the_dense_loss(answer):
    config = build_model_config(train_tiny.get_config())
    model = vllava_jax.VideoLlava.random(config, seed=1)
    graphdef, params, frozen = partition.split_trainable(model.module, partition.STAGES["stage2"])
    batch = next(SyntheticBatches(config, rows=4, length=LENGTH))
    batch["labels"] = np.where(np.arange(LENGTH) >= LENGTH - answer, batch["input_ids"], IGNORE).astype(np.int32)
    fast_path = answer <= labelled_head_rows(LENGTH)
    assert fast_path == (answer == 5)
    batch = jax.tree.map(jnp.asarray, batch)
    with jax.default_matmul_precision("highest"):
        (ours, n), grads = jax.value_and_grad(answer_loss, argnums=1, has_aux=True)(graphdef, params, frozen, batch)
        (ref, m), ref_grads = jax.value_and_grad(dense_loss, argnums=1, has_aux=True)(graphdef, params, frozen, batch)
    assert int(n) == int(m) == 4 * answer
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)
    for (path, g), (_, r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
        r = np.asarray(r[...])
        np.testing.assert_allclose(np.asarray(g[...]), r, rtol=1e-4, atol=1e-5 * np.abs(r).max(), err_msg=str(path))


def attention_case(length: int, kv_heads: int, segments: bool):
    """q, k, v (2 rows, 4 query heads) and a boolean mask: row 1 left-padded by 5, or packed segments."""
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, length, 4, 8))
    k, v = (jax.random.normal(key, (2, length, kv_heads, 8)) for key in keys[1:])
    if segments:
        ids = jnp.stack([jnp.arange(length) // 11 + 1, jnp.where(jnp.arange(length) < length - 4, 1, 0)])
        mask = ((ids[:, :, None] == ids[:, None, :]) & (ids[:, None, :] > 0))[:, None]
        valid = (ids > 0)[:, :, None, None]
    else:
        padding = jnp.arange(length)[None, :] >= jnp.array([[0], [5]])
        mask = padding[:, None, None, :]
        valid = padding[:, :, None, None]
    return q, k, v, mask, valid


def blocked_and_reference(mask: jax.Array, block: int):
    """(q, k, v) -> output: ours in query blocks, and jax.nn.dot_product_attention with the same mask."""
    return (lambda q, k, v: causal_attention(q, k, v, mask, block=block),
            lambda q, k, v: attention(q, k, v, is_causal=True, mask=mask))


@pytest.mark.parametrize("length, block, kv_heads, segments",
                         [(37, 16, 4, False), (37, 64, 2, False), (40, 8, 4, True), (33, 16, 1, True)])
def test_block_causal_attention_matches_masked_attention(length, block, kv_heads, segments):
    """Outputs and gradients (flash-style backward) equal jax.nn.dot_product_attention's at every real query."""
    q, k, v, mask, valid = attention_case(length, kv_heads, segments)
    weights = jax.random.normal(jax.random.key(1), q.shape) * valid  # padded queries' outputs feed nothing

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    implementations = blocked_and_reference(mask, block)
    with jax.default_matmul_precision("highest"):
        ours, ref = (jax.value_and_grad(loss, argnums=(1, 2, 3))(fn, q, k, v) for fn in implementations)
        outputs = [fn(q, k, v) * valid for fn in implementations]
    np.testing.assert_allclose(np.asarray(outputs[0]), np.asarray(outputs[1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(ours[0]), float(ref[0]), rtol=1e-5)
    for name, g, r in zip("qkv", ours[1], ref[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_block_causal_attention_in_bfloat16_stays_close():
    q, k, v, mask, valid = attention_case(40, 2, False)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    grads = [jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * valid), argnums=(0, 1, 2))(*args)
             for fn, args in zip(blocked_and_reference(mask, 16), (low, (q, k, v)))]
    assert all(g.dtype == jnp.bfloat16 for g in grads[0])
    for g, r in zip(*grads):
        np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), np.asarray(r), atol=0.05 * float(jnp.abs(r).max()))


def float_square_masks(jaxpr, length: int) -> list:
    """Equations making a float (..., length, length) array from a boolean one and constants only."""
    found, constant = [], set()
    for eqn in jaxpr.eqns:
        square = eqn.outvars and eqn.outvars[0].aval.shape[-2:] == (length, length)
        floating = eqn.outvars and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating)
        if eqn.primitive.name == "broadcast_in_dim":
            constant.add(eqn.outvars[0])
        elif square and floating and eqn.primitive.name in ("convert_element_type", "select_n"):
            inputs = [v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)]
            if all(v.aval.dtype == jnp.bool_ or v in constant or not v.aval.shape for v in inputs):
                found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += float_square_masks(sub, length)
    return found


@pytest.mark.parametrize("packed", [False, True])
def test_attention_masks_stay_boolean(packed):
    """The decoder never builds an additive float (len, len) mask from its boolean one."""
    config = build_model_config(train_tiny.get_config())
    module = vllava_jax.VideoLlava.random(config).module
    length = 29
    ids = jnp.ones((2, length), jnp.int32)
    segments = jnp.ones((2, length), jnp.int32) if packed else None
    jaxpr = jax.make_jaxpr(lambda i: module(i, jnp.ones_like(i), None, None, None, segments))(ids)
    assert not float_square_masks(jaxpr.jaxpr, length)
    additive = jax.make_jaxpr(lambda m: jnp.where(m, 0.0, -1e9) + jnp.zeros((length, length)))(
        jnp.ones((length, length), bool))
    assert float_square_masks(additive.jaxpr, length)  # what the check catches
