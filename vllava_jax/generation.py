"""KV-cached generation: one prefill (towers + prompt), then one token per step, static shapes.

The cache holds only the decoder: the visual towers run once, in prefill. Prompts are left padded
to a multiple of `pad_to_multiple` so prompts of nearby lengths share one compiled program; padding
is masked and positions come from the attention mask, so it does not change a single logit.
Two compiled programs serve every caller: `prefill` (prompt in, first token chosen) and `decode`
(a `lax.while_loop` of steps on a donated carry, so the cache is written in place). `generate`
runs the loop to the end in one call; `stream` (the CLI) runs it in chunks, queued ahead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vllava_jax.errors import InputError
from vllava_jax.inputs import check_inputs, optional_array
from vllava_jax.modeling.kv_cache import KVCache
from vllava_jax.modeling.layers import GPU_WEIGHTS_READ_IN_PLACE
from vllava_jax.modeling.video_llava import positions_from_mask
from vllava_jax.sharding import mesh_context


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
    """(batch, vocab) logits -> (batch,) next tokens; greedy picks from the logits as they are
    (a float32 copy would pick the same), sampling works in float32."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        logits = nucleus(logits, sampling.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def nucleus(logits: jax.Array, top_p) -> jax.Array:
    """Top-p filtering of (batch, vocab) float32 logits: those outside the smallest set of most
    likely tokens holding probability `top_p` (a float, or (batch, 1) per row) become -inf."""
    ascending = jnp.sort(logits, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    removed = cumulative <= 1.0 - top_p
    removed = removed.at[:, -1].set(False)  # always keep the most likely token
    threshold = jnp.min(jnp.where(removed, jnp.inf, ascending), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


class Decoding(NamedTuple):
    """The decode loop's carry, on device: `prefill` makes it, `decode` advances it (donated, updated in place)."""

    step: jax.Array       # () tokens chosen so far
    done: jax.Array       # (batch,) the row has chosen an EOS
    tokens: jax.Array     # (batch, max_new_tokens) chosen tokens, pad after EOS and beyond `step`
    cache: KVCache        # prompt + chosen tokens; slot of tokens[:, s] is prompt length + s
    positions: jax.Array  # (batch,) position of the last chosen token
    key: jax.Array


class Emitted(NamedTuple):
    """Copies of a `Decoding`'s tokens and step, still readable after the carry is donated onward."""

    tokens: jax.Array
    step: jax.Array


def _choose(logits, key, done, sampling: SamplingConfig):
    """The next tokens from (batch, vocab) logits, pad for finished rows; the advanced key."""
    key, sub = jax.random.split(key)
    tokens = jnp.where(done, sampling.pad_token_id, choose_tokens(logits, sub, sampling))
    return tokens, done | jnp.isin(tokens, jnp.asarray(sampling.eos_token_ids, jnp.int32)), key


def run_prompt(model, input_ids, attention_mask, images, videos, slots: int):
    """Towers + prompt through the decoder into a fresh cache of `slots` slots (the prompt's first);
    the logits of the last prompt token, the cache, the (batch,) positions of the next token.

    Each row's tokens are moved to its first columns (left padding to the right) before the
    decoder: the prompt then attends with the decoder's kernel for rows padded on the right
    (cuDNN's flash attention on GPU takes per-row lengths counted from a row's start). The
    cache holds the prompt in that layout, its `valid` saying which slots hold a token."""
    embeds = model.embed_inputs(input_ids, images, videos)
    positions = positions_from_mask(attention_mask)
    padding = jnp.argmax(attention_mask > 0, axis=1)  # columns before each row's first token
    embeds, row_positions, token_mask = (_roll_rows(x, padding) for x in (embeds, positions, attention_mask))
    cache = KVCache.empty(model.language_model.cfg, input_ids.shape[0], slots, embeds.dtype)
    hidden, cache = model.language_model.cached(embeds, row_positions, token_mask, cache, 0)
    return model.language_model.logits(hidden), cache, positions[:, -1] + 1


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """(batch, len, ...) `x` with row r's column c taken from column (c + shift[r]) mod len."""
    columns = (jnp.arange(x.shape[1])[None, :] + shift[:, None]) % x.shape[1]
    return jnp.take_along_axis(x, columns.reshape(columns.shape + (1,) * (x.ndim - 2)), axis=1)


def _prefill_and_choose(graphdef, state, input_ids, attention_mask, images, videos, key, sampling: SamplingConfig):
    batch, length = input_ids.shape
    new = sampling.max_new_tokens
    logits, cache, positions = run_prompt(nnx.merge(graphdef, state), input_ids, attention_mask, images, videos,
                                          length + new)
    tokens = jnp.full((batch, new), sampling.pad_token_id, jnp.int32)
    first, done, key = _choose(logits, key, jnp.zeros((batch,), bool), sampling)
    if new == 0:
        return Decoding(jnp.int32(0), done, tokens, cache, positions, key)
    return Decoding(jnp.int32(1), done, tokens.at[:, 0].set(first), cache, positions, key)


def _decode_steps(graphdef, state, decoding: Decoding, stop, sampling: SamplingConfig) -> tuple[Decoding, Emitted]:
    """Tokens chosen one step at a time in one device loop, until `stop` or every row's EOS."""
    model = nnx.merge(graphdef, state)
    prompt_length = decoding.cache.valid.shape[1] - sampling.max_new_tokens

    def cond(d: Decoding):
        return (d.step < stop) & ~jnp.all(d.done)

    def body(d: Decoding) -> Decoding:
        last = jax.lax.dynamic_index_in_dim(d.tokens, d.step - 1, axis=1)  # (batch, 1)
        embeds = model.language_model.embed(last)
        hidden, cache = model.language_model.cached(embeds, d.positions[:, None], jnp.ones_like(last), d.cache,
                                                    prompt_length + d.step - 1)
        tokens, done, key = _choose(model.language_model.logits(hidden), d.key, d.done, sampling)
        chosen = jax.lax.dynamic_update_index_in_dim(d.tokens, tokens, d.step, axis=1)
        return Decoding(d.step + 1, done, chosen, cache, d.positions + 1, key)

    decoding = jax.lax.while_loop(cond, body, decoding)
    return decoding, Emitted(decoding.tokens.copy(), decoding.step.copy())


# The compiled programs behind `prefill` and `decode` (public so their HLO can be inspected); jit's
# compiler options apply to top-level programs only, so `generate_program` runs the plain functions.
prefill_program = jax.jit(_prefill_and_choose, static_argnums=(0, 7))
decode_loop = jax.jit(_decode_steps, static_argnums=(0, 4), donate_argnums=2,
                      compiler_options=GPU_WEIGHTS_READ_IN_PLACE)


@functools.partial(jax.jit, static_argnums=(0, 7), compiler_options=GPU_WEIGHTS_READ_IN_PLACE)
def generate_program(graphdef, state, input_ids, attention_mask, images, videos, key, sampling: SamplingConfig
                     ) -> Emitted:
    """Prefill and the decode loop to `max_new_tokens` as one program: what `train.programs`
    compiles ahead of time for a pod (`generate` runs the same two steps as separate calls, so
    `stream` can share them). One program takes one set of compiler options: the decode loop's."""
    decoding = _prefill_and_choose(graphdef, state, input_ids, attention_mask, images, videos, key, sampling)
    _, emitted = _decode_steps(graphdef, state, decoding, jnp.int32(sampling.max_new_tokens), sampling)
    return emitted


def prefill(model, input_ids, attention_mask, pixel_values_images, pixel_values_videos, *, sampling: SamplingConfig,
            key: jax.Array) -> Decoding:
    """Run a prompt laid out by `prepare_prompt` and choose the first new token; returns the decode carry."""
    with mesh_context(model.mesh), jax.default_matmul_precision(model.policy.matmul_precision):
        return prefill_program(model.graphdef, model.state, jnp.asarray(input_ids, jnp.int32),
                               jnp.asarray(attention_mask, jnp.int32), optional_array(pixel_values_images),
                               optional_array(pixel_values_videos), key, sampling)


def decode(model, decoding: Decoding, stop: int, *, sampling: SamplingConfig) -> tuple[Decoding, Emitted]:
    """Choose tokens one step at a time until `stop` are chosen or every row has chosen an EOS.

    `decoding` is donated: its cache is updated in place and must not be used again. All steps
    run in one device loop, and the call returns before they finish (JAX dispatches
    asynchronously), so the next call can be queued before this one's tokens are read.
    """
    with mesh_context(model.mesh), jax.default_matmul_precision(model.policy.matmul_precision):
        return decode_loop(model.graphdef, model.state, decoding, jnp.int32(stop), sampling)


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
    decoding = prefill(model, ids, mask, pixel_values_images, pixel_values_videos, sampling=sampling, key=key)
    _, emitted = decode(model, decoding, sampling.max_new_tokens, sampling=sampling)
    return np.concatenate([ids[:, extra:], np.asarray(emitted.tokens)[:, : int(emitted.step)]], axis=1)


def stream(model, input_ids, attention_mask=None, pixel_values_images=None, pixel_values_videos=None, *,
           sampling: SamplingConfig, key: jax.Array | None = None, pad_to_multiple: int = 64,
           chunk: int = 8) -> Iterator[np.ndarray]:
    """Yield each step's (batch,) tokens, the same as `generate` chooses; stops when every row hit EOS.

    Tokens come `chunk` steps at a time from the device loop `generate` runs, the first alone
    right after prefill. Each chunk is queued before the previous one's tokens are read, so the
    device never waits for the host and streaming decodes as fast as `generate`.
    """
    ids, mask, _ = prepare_prompt(model, input_ids, attention_mask, pixel_values_images, pixel_values_videos,
                                  sampling, pad_to_multiple)
    key = jax.random.key(0) if key is None else key
    decoding = prefill(model, ids, mask, pixel_values_images, pixel_values_videos, sampling=sampling, key=key)
    stop = min(1, sampling.max_new_tokens)
    decoding, pending = decode(model, decoding, stop, sampling=sampling)
    shown = 0
    while True:
        following = None
        if stop < sampling.max_new_tokens:
            stop = min(stop + chunk, sampling.max_new_tokens)
            decoding, following = decode(model, decoding, stop, sampling=sampling)
        tokens, step = np.asarray(pending.tokens), int(pending.step)
        for column in range(shown, step):
            yield tokens[:, column]
        if following is None or step == shown:  # max_new_tokens reached, or every row is done
            return
        shown, pending = step, following
