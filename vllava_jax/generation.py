"""KV-cached generation: one prefill (towers + prompt), then one token per step, static shapes.

The cache holds only the decoder: the visual towers run once, in prefill. Prompts are left padded
to a multiple of `pad_to_multiple` so prompts of nearby lengths share one compiled program; padding
is masked and positions come from the attention mask, so it does not change a single logit.
`generate` runs the whole decode loop inside one `lax.while_loop`; `stream` yields tokens as
they are produced (the CLI), one jitted step at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vllava_jax.errors import InputError
from vllava_jax.inputs import check_inputs, optional_array
from vllava_jax.modeling.llama import KVCache
from vllava_jax.modeling.video_llava import positions_from_mask


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen; temperature 0 is greedy. Processors apply as transformers
    orders them: temperature, then top-k, then top-p."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int = 0


def sampling_config(config, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    eos_token_id=None, pad_token_id: int | None = None) -> SamplingConfig:
    """EOS and pad default to the model config's; pad falls back to EOS, as in transformers."""
    text = config.text_config
    eos = text.eos_token_id if eos_token_id is None else eos_token_id
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = next(p for p in (pad_token_id, config.pad_token_id, text.pad_token_id, *eos, 0) if p is not None)
    return SamplingConfig(max_new_tokens, temperature, top_k, top_p, eos, pad)


def choose_tokens(logits: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """(batch, vocab) logits -> (batch,) next tokens."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        ascending = jnp.sort(logits, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        removed = cumulative <= 1.0 - sampling.top_p
        removed = removed.at[:, -1].set(False)  # always keep the most likely token
        threshold = jnp.min(jnp.where(removed, jnp.inf, ascending), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _prefill(model, input_ids, attention_mask, images, videos, slots: int):
    """Towers + prompt through the decoder into a fresh cache; logits of the last prompt token."""
    embeds = model.embed_inputs(input_ids, images, videos)
    positions = positions_from_mask(attention_mask)
    cache = KVCache.empty(model.language_model.cfg, input_ids.shape[0], slots, embeds.dtype)
    hidden, cache = model.language_model.cached(embeds, positions, attention_mask, cache, 0)
    return model.language_model.logits(hidden), cache, positions[:, -1] + 1


def _decode(model, tokens, positions, cache, slot):
    embeds = model.language_model.embed(tokens[:, None])
    hidden, cache = model.language_model.cached(embeds, positions[:, None], jnp.ones_like(tokens[:, None]), cache,
                                                slot)
    return model.language_model.logits(hidden), cache


@functools.partial(jax.jit, static_argnums=(0, 7))
def generate_program(graphdef, state, input_ids, attention_mask, images, videos, key, sampling: SamplingConfig):
    """Prefill and the whole decode loop as one jitted program: (new tokens, steps taken).

    `generate` runs it; `train.programs.lower_generation` compiles it ahead of time for a pod.
    """
    model = nnx.merge(graphdef, state)
    batch, length = input_ids.shape
    logits, cache, positions = _prefill(model, input_ids, attention_mask, images, videos,
                                        length + sampling.max_new_tokens)
    eos = jnp.asarray(sampling.eos_token_ids, jnp.int32)
    out = jnp.full((batch, sampling.max_new_tokens), sampling.pad_token_id, jnp.int32)

    def cond(carry):
        step, done = carry[0], carry[1]
        return (step < sampling.max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, done, out, logits, cache, positions, key = carry
        key, sub = jax.random.split(key)
        tokens = jnp.where(done, sampling.pad_token_id, choose_tokens(logits, sub, sampling))
        out = out.at[:, step].set(tokens)
        done = done | jnp.isin(tokens, eos)
        logits, cache = _decode(model, tokens, positions, cache, length + step)
        return step + 1, done, out, logits, cache, positions + 1, key

    init = (jnp.int32(0), jnp.zeros((batch,), bool), out, logits, cache, positions, key)
    steps, _, out, *_ = jax.lax.while_loop(cond, body, init)
    return out, steps


@functools.partial(jax.jit, static_argnums=(0, 6))
def _prefill_jit(graphdef, state, input_ids, attention_mask, images, videos, slots: int):
    return _prefill(nnx.merge(graphdef, state), input_ids, attention_mask, images, videos, slots)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=4)
def _decode_jit(graphdef, state, tokens, positions, cache, slot):
    return _decode(nnx.merge(graphdef, state), tokens, positions, cache, slot)


_choose_jit = jax.jit(choose_tokens, static_argnums=2)


def prepare_prompt(model, input_ids, attention_mask, images, videos, sampling: SamplingConfig, pad_to_multiple: int):
    """Check a prompt batch with its media and left-pad it; returns (ids, mask, pad columns added)."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if input_ids.shape[1] == 0 or not mask.any(axis=1).all():
        raise InputError("empty prompt: every row of input_ids needs at least one attended token")
    if mask.shape == input_ids.shape and not mask[:, -1].all():
        raise InputError("generation needs left padding: the last column of attention_mask must be all 1 "
                         "(pad prompts on the left, as Processor(padding_side='left') does)")
    context = model.config.text_config.max_position_embeddings
    longest = int(mask.sum(axis=1).max())
    if longest + sampling.max_new_tokens > context:
        raise InputError(f"prompt of {longest} tokens + max_new_tokens {sampling.max_new_tokens} = "
                         f"{longest + sampling.max_new_tokens} exceeds the context of {context} positions")
    extra = -input_ids.shape[1] % pad_to_multiple
    ids = np.pad(input_ids, ((0, 0), (extra, 0)), constant_values=sampling.pad_token_id)
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    check_inputs(model.config, ids, mask, images, videos)
    return ids, mask, extra


def generate(model, input_ids, attention_mask=None, pixel_values_images=None, pixel_values_videos=None, *,
             sampling: SamplingConfig, key: jax.Array | None = None, pad_to_multiple: int = 64) -> np.ndarray:
    """Prompt + new tokens, (batch, length + steps), pad after EOS: what transformers' generate returns."""
    ids, mask, extra = prepare_prompt(model, input_ids, attention_mask, pixel_values_images, pixel_values_videos,
                                 sampling, pad_to_multiple)
    key = jax.random.key(0) if key is None else key
    with jax.default_matmul_precision(model.policy.matmul_precision):
        out, steps = generate_program(model.graphdef, model.state, jnp.asarray(ids, jnp.int32),
                                   jnp.asarray(mask, jnp.int32), optional_array(pixel_values_images),
                                   optional_array(pixel_values_videos), key, sampling)
    return np.concatenate([ids[:, extra:], np.asarray(out)[:, : int(steps)]], axis=1)


def stream(model, input_ids, attention_mask=None, pixel_values_images=None, pixel_values_videos=None, *,
           sampling: SamplingConfig, key: jax.Array | None = None, pad_to_multiple: int = 64) -> Iterator[np.ndarray]:
    """Yield each step's (batch,) tokens as soon as it is chosen; stops when every row hit EOS."""
    ids, mask, _ = prepare_prompt(model, input_ids, attention_mask, pixel_values_images, pixel_values_videos,
                                 sampling, pad_to_multiple)
    key = jax.random.key(0) if key is None else key
    eos = np.asarray(sampling.eos_token_ids)
    done = np.zeros(ids.shape[0], bool)
    with jax.default_matmul_precision(model.policy.matmul_precision):
        logits, cache, positions = _prefill_jit(model.graphdef, model.state, jnp.asarray(ids, jnp.int32),
                                                jnp.asarray(mask, jnp.int32), optional_array(pixel_values_images),
                                                optional_array(pixel_values_videos), ids.shape[1] + sampling.max_new_tokens)
        for step in range(sampling.max_new_tokens):
            key, sub = jax.random.split(key)
            tokens = np.where(done, sampling.pad_token_id, np.asarray(_choose_jit(logits, sub, sampling)))
            yield tokens
            done |= np.isin(tokens, eos)
            if done.all() or step + 1 == sampling.max_new_tokens:
                return
            logits, cache = _decode_jit(model.graphdef, model.state, jnp.asarray(tokens, jnp.int32), positions,
                                        cache, ids.shape[1] + step)
            positions = positions + 1
