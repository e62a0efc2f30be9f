"""The serving engine's device state and its compiled programs: admit a request into a row, step the rows in use,
move a row.

The KV cache has one row per request in flight (`rows`) and `columns` columns per row. All rows
write the column under one shared head, which advances by one each step and wraps around (a ring
buffer), so one step program serves any mix of requests: the new token of each row attends to
the columns its row marks valid, and since RoPE positions are baked into the keys (positions are
per row) the order of the columns does not matter. A newcomer's prompt is run alone, left padded
as `generation.generate` pads it, and its keys and values land in its row at the columns just
behind the head, so its first decode step writes at the head like everyone else's. A request of
`n` prompt tokens and `m` new tokens holds at most n + m - 1 columns of its row, so with
n + m <= columns the head never comes back to its prompt before it finishes.

A step decodes the first `rows` rows only (free ones among them included: their tokens are
ignored), reading and writing those rows of the whole cache in place, so a lone request pays for
one row, not for every row the engine could hold. The engine keeps the rows in use at the front
(`move` copies a row down when others leave) and steps over the next power of two of the rows it
needs (capped at its row count): a step program per such count, compiled the first time it runs;
no host input per step besides that count.

All three programs take the state donated and update the cache in place (no copy per step).
`admit` is compiled once per padded prompt length (prompts are padded to the engine's
`pad_to_multiple`) and per media shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax import generation
from vllava_jax.modeling.kv_cache import KVCache
from vllava_jax.sharding import constrain


class Slots(NamedTuple):
    """Everything the engine keeps on the device, one entry per row where it has a leading axis."""

    cache: KVCache           # (layers, rows, kv_heads, columns, head_dim); valid (rows, columns)
    last: jax.Array          # (rows,) int32 the last chosen token: the next step's input
    positions: jax.Array     # (rows,) int32 its position
    keys: jax.Array          # (rows,) PRNG keys, advanced once per step as generation's one key is
    temperature: jax.Array   # (rows,) float32, 0 = greedy
    top_p: jax.Array         # (rows,) float32
    head: jax.Array          # () int32 the column the next step writes

    @classmethod
    def empty(cls, model, rows: int, columns: int) -> Slots:
        """A state with every row free, made by a compiled program so that it is placed as the
        programs' outputs are (the programs are then compiled once, not again for the second call)."""
        cfg = model.config.text_config

        def make():
            zeros = functools.partial(jnp.zeros, (rows,))
            return cls(KVCache.empty(cfg, rows, columns, model.policy.compute_dtype), zeros(jnp.int32),
                       zeros(jnp.int32), jax.random.split(jax.random.key(0), rows), zeros(jnp.float32),
                       zeros(jnp.float32), jnp.zeros((), jnp.int32)).placed()

        slots = jax.jit(make)()
        if model.mesh is None:  # committed to the parameters' device, as the programs' outputs are
            slots = jax.device_put(slots, jax.tree.leaves(model.state)[0].sharding)
        return slots

    def placed(self) -> Slots:
        """The state pinned to one placement on the current mesh (rows over the batch axes, kv heads
        over tensor; nothing without a mesh), the same on the way out of every program."""
        rows = functools.partial(constrain, names=("batch",))
        cache = KVCache(*(constrain(x, ("layers", "batch", "kv_heads", "length", "head_dim"))
                          for x in (self.cache.keys, self.cache.values)), constrain(self.cache.valid, ("batch", "length")))
        return Slots(cache, rows(self.last), rows(self.positions), rows(self.keys), rows(self.temperature),
                     rows(self.top_p), self.head)


def choose_per_row(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """(rows, vocab) logits -> (rows,) tokens, each row with its own key, temperature and top-p:
    what `generation.choose_tokens` picks for that row alone (greedy rows by argmax of the logits as
    they are; the others in float32, temperature then top-p, one categorical draw per row).

    The draw (and the top-p sort over the vocabulary) runs only when some row samples (some row
    has a top-p below 1): it costs more per row than a small model's decode step."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    sampling = temperature > 0

    def draw():
        scaled = logits.astype(jnp.float32) / jnp.where(sampling, temperature, 1.0)[:, None]
        nucleus = (top_p < 1.0) & sampling
        filtered = jax.lax.cond(jnp.any(nucleus), lambda: jnp.where(
            nucleus[:, None], generation.nucleus(scaled, top_p[:, None]), scaled), lambda: scaled)
        drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row[None], axis=-1)[0])(keys, filtered)
        return jnp.where(sampling, drawn.astype(jnp.int32), greedy)

    return jax.lax.cond(jnp.any(sampling), draw, lambda: greedy)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def admit(graphdef, state, slots: Slots, row, input_ids, attention_mask, images, videos, key, temperature, top_p
          ) -> tuple[Slots, jax.Array]:
    """Run one prompt (1, padded length) and put it in `row`: its keys and values at the columns
    behind the head, every other column of the row invalid; returns the state and the first
    chosen token (1,). Positions, key splits and the choice are those of `generation.prefill`."""
    model = nnx.merge(graphdef, state)
    length = input_ids.shape[1]
    logits, prompt, positions = generation.run_prompt(model, input_ids, attention_mask, images, videos, length)
    key, sub = jax.random.split(key)
    first = choose_per_row(logits, sub[None], temperature[None], top_p[None])
    columns = slots.cache.valid.shape[1]
    # padding is not written: its target is out of range and dropped
    target = jnp.where(attention_mask[0] > 0, (slots.head - length + jnp.arange(length)) % columns, columns)
    # [:, row, :, target] puts its two indexed axes first: (length, layers, kv_heads, head_dim)
    keys, values = (mine.at[:, row, :, target].set(jnp.moveaxis(theirs[:, 0], 2, 0), mode="drop")
                    for mine, theirs in ((slots.cache.keys, prompt.keys), (slots.cache.values, prompt.values)))
    valid = slots.cache.valid.at[row].set(jnp.zeros((columns,), bool).at[target].set(True, mode="drop"))
    return slots._replace(cache=KVCache(keys, values, valid), last=slots.last.at[row].set(first[0]),
                          positions=slots.positions.at[row].set(positions[0]), keys=slots.keys.at[row].set(key),
                          temperature=slots.temperature.at[row].set(temperature),
                          top_p=slots.top_p.at[row].set(top_p)).placed(), first


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=2)
def step(graphdef, state, slots: Slots, rows: int) -> tuple[Slots, jax.Array]:
    """One token for each of the first `rows` rows, whether or not a request holds it: the engine
    ignores the tokens of free rows, and `admit` resets every column of the row it fills, so what
    a free row writes is never read. Rows past `rows` are neither read nor written (their columns
    at the head keep what they held: the rows are free or their requests have all their tokens).
    Returns the state and the chosen tokens (rows,)."""
    lm = nnx.merge(graphdef, state).language_model
    last, positions, keys, temperature, top_p = (x[:rows] for x in (slots.last, slots.positions, slots.keys,
                                                                     slots.temperature, slots.top_p))
    # the cache goes in whole: the decoder reads and writes its first `rows` rows in place
    hidden, cache = lm.cached(lm.embed(last[:, None]), positions[:, None], jnp.ones((rows, 1), bool), slots.cache,
                              slots.head)
    keys, sub = jnp.unstack(jax.vmap(jax.random.split)(keys), axis=1)
    tokens = choose_per_row(lm.logits(hidden), sub, temperature, top_p)
    head = (slots.head + 1) % cache.valid.shape[1]
    return slots._replace(cache=cache, last=slots.last.at[:rows].set(tokens),
                          positions=slots.positions.at[:rows].add(1), keys=slots.keys.at[:rows].set(keys),
                          head=head).placed(), tokens


@functools.partial(jax.jit, donate_argnums=0)
def move(slots: Slots, source, target) -> Slots:
    """The state with row `source` (its columns, token, position, key and sampling values) copied
    to row `target`: how the engine keeps the rows in use at the front, so that steps run over
    few rows. Copies one row of the cache, in place."""
    def row(x, axis=0):
        return x.at[(slice(None),) * axis + (target,)].set(x[(slice(None),) * axis + (source,)])

    cache = KVCache(row(slots.cache.keys, 1), row(slots.cache.values, 1), row(slots.cache.valid))
    return slots._replace(cache=cache, last=row(slots.last), positions=row(slots.positions), keys=row(slots.keys),
                          temperature=row(slots.temperature), top_p=row(slots.top_p)).placed()
