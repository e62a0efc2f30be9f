"""The jitted train step: loss over answer tokens only, gradient accumulation, AdamW update.

Pure functions over (graphdef, trainable state, frozen state): the frozen towers are closed over,
never differentiated, so they cost forward FLOPs only and carry no optimizer state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vllava_jax.modeling import lora

IGNORE = -100


class TrainState(NamedTuple):
    step: jax.Array
    params: nnx.State  # the trainable parameters only
    opt_state: Any


# Logits are computed for at most this fraction of each row's positions when every row's labelled
# tokens fit (Video-LLaVA rows are mostly visual tokens, never labelled); otherwise for all of them.
HEAD_FRACTION = 4


def labelled_head_rows(length: int) -> int:
    """How many positions per row get logits on the fast path of `answer_loss`."""
    return -(-length // HEAD_FRACTION)


def position_chunks(x: jax.Array, size: int) -> jax.Array:
    """(batch, length, ...) -> (chunks, batch, size, ...): the positions in chunks of `size`, the
    last padded (with zeros: False for a mask) when `size` does not divide the length."""
    pad = -x.shape[1] % size
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)


def summed_nll(lm, hidden: jax.Array, targets: jax.Array, keep: jax.Array) -> jax.Array:
    """Sum over `keep` of -log p(target): logsumexp minus the target's logit, no log-softmaxed copy."""
    logits = lm.logits(hidden).astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(keep, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0))


def answer_loss(graphdef, params, frozen, batch) -> tuple[jax.Array, jax.Array]:
    """(summed next-token NLL over labelled tokens, number of labelled tokens) for one microbatch.

    `labels[t]` is the target of the token at t (IGNORE where nothing is learned); logits at t
    predict t + 1, as transformers shifts them (the labels shift, not the logits). The LM head runs
    only on each row's first `labelled_head_rows(len)` labelled positions when no row has more;
    otherwise (a `cond`, same result) on every position.
    """
    model = nnx.merge(graphdef, params, frozen)
    hidden = model.final_hidden(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values_images"),
                                batch.get("pixel_values_videos"), batch.get("positions"), batch.get("segment_ids"))
    labels = batch["labels"]
    targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)
    labelled = targets != IGNORE
    targets = jnp.where(labelled, targets, 0)
    per_row = jnp.sum(labelled, axis=1)
    rows = labelled_head_rows(labels.shape[1])

    def labelled_only():
        index = jax.vmap(lambda m: jnp.nonzero(m, size=rows, fill_value=0)[0])(labelled)
        keep = jnp.arange(rows)[None, :] < per_row[:, None]
        picked = jnp.take_along_axis(hidden, index[..., None], axis=1)
        return summed_nll(model.language_model, picked, jnp.take_along_axis(targets, index, axis=1), keep)

    def every_position():
        # HEAD_FRACTION chunks of positions, each over every row, its logits recomputed for its
        # backward: every position's float32 logits at once would be the step's largest buffers
        # (2.9 GB each at 8 x 3,072 tokens, vocab 32,064). Chunking the positions, not the rows,
        # keeps the rows split over the batch axes: a loop over rows moved each row's logits
        # across the batch axes (an all-reduce of every row's (length x vocab) logits on a pod).
        chunk_nll = jax.checkpoint(lambda h, t, k: summed_nll(model.language_model, h, t, k))
        return jnp.sum(jax.lax.map(lambda chunk: chunk_nll(*chunk),
                                   tuple(position_chunks(x, rows) for x in (hidden, targets, labelled))))

    if rows >= labels.shape[1]:
        return every_position(), jnp.sum(per_row)
    return jax.lax.cond(jnp.all(per_row <= rows), labelled_only, every_position), jnp.sum(per_row)


def train_step(graphdef, optimizer: optax.GradientTransformation, state: TrainState, frozen, batches,
               param_shardings=None):
    """One update from `batches`, a stack (accumulation steps, ...) of microbatches.

    The loss is the mean over every labelled token of all microbatches, as if they were one batch.
    `param_shardings` (the trainable parameters' placements) pins gradients to them, so XLA never
    keeps a replicated copy of a 7B gradient.
    """
    grad_fn = lora.dropout_at(state.step, jax.value_and_grad(answer_loss, argnums=1, has_aux=True))

    def pin(tree):
        return tree if param_shardings is None else jax.lax.with_sharding_constraint(tree, param_shardings)

    def accumulate(carry, batch):
        grads, loss_sum, count = carry
        (loss, n), g = grad_fn(graphdef, state.params, frozen, batch)
        return (pin(jax.tree.map(jnp.add, grads, pin(g))), loss_sum + loss, count + n), None

    if jax.tree.leaves(batches)[0].shape[0] == 1:  # no accumulation: no loop, no zero-filled sums
        (loss_sum, count), grads = grad_fn(graphdef, state.params, frozen, jax.tree.map(lambda x: x[0], batches))
        grads = pin(grads)
    else:
        zeros = pin(jax.tree.map(jnp.zeros_like, state.params))
        (grads, loss_sum, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0), batches)
    denominator = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / denominator, "grad_norm": optax.tree.norm(grads), "tokens": count}
    return TrainState(state.step + 1, params, opt_state), metrics
