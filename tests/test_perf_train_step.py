"""The train step's performance choices keep its numbers (LM head on labelled positions only) and its
attention masks boolean (the attention implementations' numbers: tests/test_attention.py)."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vllava_jax
from configs import train_tiny
from vllava_jax.train import partition
from vllava_jax.train.build import build_model_config
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
    graphdef, params, frozen = partition.split_trainable(model.module, partition.preset("stage2"))
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
