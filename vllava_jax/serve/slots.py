"""The serving engine's device state and its compiled programs: admit a request into a row (its
prompt alone, or after a cached prefix), fill a prefix, step the rows in use, move a row.

The KV cache has one row per request in flight (`rows`) and `columns` columns per row. All rows
write the column under one shared head, which advances by one each step and wraps around (a ring
buffer), so one step program serves any mix of requests: the new token of each row attends to
the columns its row marks valid, and since RoPE positions are baked into the keys (positions are
per row) the order of the columns does not matter. A newcomer's prompt is run alone, left padded
as `generation.generate` pads it, and its keys and values land in its row at the columns just
behind the head, so its first decode step writes at the head like everyone else's. A request of
`n` prompt tokens and `m` new tokens holds at most n + m - 1 columns of its row, so with
n + m <= columns the head never comes back to its prompt before it finishes.

Prefixes: many questions about one video share the prompt up to the video's last token (system
prompt, earlier text, the video's ~2,000 tokens on the 7B). `fill_prefix` runs such a prefix once
into an entry of a separate store (`SharedKV` keys, one per entry), and `admit_after_prefix` runs
only the rest of a prompt (the question) after it, so a newcomer's prefill is its question. Its
row then holds only the question and the answer; decode steps attend to the entry it names
(`prefix_of`) beside its own columns, and read each entry once for all the rows that name it.

A step decodes the first `rows` rows only (free ones among them included: their tokens are
ignored) and reads only the last `window` columns behind the head (what the rows' requests have
written), and the first `entries` x `width` of the prefix store: so a step's reads follow what is
in flight, not the cache's size. The engine keeps the rows in use at the front (`move` copies a
row down when others leave) and picks these static sizes per step: a step program per
combination, compiled the first time it runs; no host input per step besides them.

All programs take the state donated and update the cache in place (no copy per step). `admit`,
`fill_prefix` and `admit_after_prefix` compile once per padded prompt (or prefix, or rest) length
(prompts and prefixes padded to the engine's `pad_to_multiple`, rests to `engine.REST_PAD_TO`),
`admit` and `fill_prefix` per media shape too.
The prefix store is not split over the batch axes (every row may read every entry): on a mesh
each device of the data x fsdp axes holds all of it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax import generation
from vllava_jax.modeling.kv_cache import KVCache, SharedKV
from vllava_jax.modeling.layers import GPU_WEIGHTS_READ_IN_PLACE
from vllava_jax.modeling.video_llava import positions_from_mask
from vllava_jax.sharding import constrain


class Slots(NamedTuple):
    """Everything the engine keeps on the device, one entry per row where it has a leading axis."""

    cache: KVCache           # rows x columns (`KVCache`'s layout); valid (rows, columns)
    prefixes: KVCache        # entries x prefix columns; valid (entries, prefix columns)
    prefix_of: jax.Array     # (rows,) int32 the prefix entry the row's prompt continues, -1 for none
    last: jax.Array          # (rows,) int32 the last chosen token: the next step's input
    positions: jax.Array     # (rows,) int32 its position
    keys: jax.Array          # (rows,) PRNG keys, advanced once per step as generation's one key is
    temperature: jax.Array   # (rows,) float32, 0 = greedy
    top_p: jax.Array         # (rows,) float32
    head: jax.Array          # () int32 the column the next step writes

    @classmethod
    def zeros(cls, cfg, dtype, rows: int, columns: int, entries: int = 0, prefix_columns: int = 0) -> Slots:
        """Every row free and every prefix entry empty (not placed: see `empty`)."""
        zeros = functools.partial(jnp.zeros, (rows,))
        return cls(KVCache.empty(cfg, rows, columns, dtype), KVCache.empty(cfg, entries, prefix_columns, dtype),
                   jnp.full((rows,), -1, jnp.int32), zeros(jnp.int32), zeros(jnp.int32),
                   jax.random.split(jax.random.key(0), rows), zeros(jnp.float32), zeros(jnp.float32),
                   jnp.zeros((), jnp.int32))

    @classmethod
    def empty(cls, model, rows: int, columns: int, entries: int = 0, prefix_columns: int = 0) -> Slots:
        """`zeros` for `model`, made by a compiled program so that it is placed as the programs'
        outputs are (the programs are then compiled once, not again for the second call)."""
        cfg, dtype = model.config.text_config, model.policy.compute_dtype
        slots = jax.jit(lambda: cls.zeros(cfg, dtype, rows, columns, entries, prefix_columns).placed())()
        if model.mesh is None:  # committed to the parameters' device, as the programs' outputs are
            slots = jax.device_put(slots, jax.tree.leaves(model.state)[0].sharding)
        return slots

    def placed(self) -> Slots:
        """The state pinned to one placement on the current mesh (rows over the batch axes, kv heads
        over tensor; nothing without a mesh), the same on the way out of every program."""
        rows = functools.partial(constrain, names=("batch",))

        def cache(kv: KVCache, batch: str | None) -> KVCache:
            return KVCache(constrain(kv.keys, ("layers", batch, "kv_heads", "length", "head_dim")),
                           constrain(kv.values, ("layers", batch, "kv_heads", "head_dim", "length")),
                           constrain(kv.valid, (batch, "length")))

        # every row may read every entry: entries are not split over the batch axes
        return Slots(cache(self.cache, "batch"), cache(self.prefixes, None), rows(self.prefix_of), rows(self.last),
                     rows(self.positions), rows(self.keys), rows(self.temperature), rows(self.top_p), self.head)


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
    logits, prompt, positions = generation.run_prompt(model, input_ids, attention_mask, images, videos,
                                                      input_ids.shape[1])
    return _place(slots, row, jnp.int32(-1), prompt, logits, positions[0], key, temperature, top_p)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def fill_prefix(graphdef, state, slots: Slots, entry, input_ids, attention_mask, images, videos) -> Slots:
    """Run a prompt's prefix (1, padded length <= the store's columns), its media included, into
    prefix `entry`: its tokens' keys and values in the entry's first columns (`run_prompt`'s
    layout), the rest of the entry invalid."""
    model = nnx.merge(graphdef, state)
    _, prefix, _ = generation.run_prompt(model, input_ids, attention_mask, images, videos, input_ids.shape[1])
    keys, values = (jax.lax.dynamic_update_slice(mine, theirs.astype(mine.dtype), (0, entry, 0, 0, 0))
                    for mine, theirs in ((slots.prefixes.keys, prefix.keys), (slots.prefixes.values, prefix.values)))
    width = slots.prefixes.valid.shape[1]
    valid = slots.prefixes.valid.at[entry].set(jnp.arange(width) < 0)
    valid = jax.lax.dynamic_update_slice(valid, prefix.valid, (entry, 0))
    return slots._replace(prefixes=KVCache(keys, values, valid)).placed()


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def admit_after_prefix(graphdef, state, slots: Slots, row, entry, prefix_length, input_ids, attention_mask, key,
                       temperature, top_p) -> tuple[Slots, jax.Array]:
    """Run the rest of a prompt (1, padded length; text only) after prefix `entry` of
    `prefix_length` tokens, and put it in `row`, as `admit` puts a whole prompt: the rest attends
    to the entry's columns and causally to itself, at the positions that follow the prefix.
    The entry is copied into a one-row cache in front of the rest (the prompt path `generate`
    runs), so the admission reads and writes one entry's columns once, and its prefill's
    attention spans them. Returns the state and the first chosen token (1,)."""
    lm = nnx.merge(graphdef, state).language_model
    length, width = input_ids.shape[1], slots.prefixes.valid.shape[1]
    # a one-row cache holding the entry, then room for the rest: the prompt path as generate runs it
    entry_keys, entry_values = (jax.lax.dynamic_slice_in_dim(x, entry, 1, axis=1)
                                for x in (slots.prefixes.keys, slots.prefixes.values))
    cache = KVCache(jnp.pad(entry_keys, ((0, 0), (0, 0), (0, 0), (0, length), (0, 0))),
                    jnp.pad(entry_values, ((0, 0), (0, 0), (0, 0), (0, 0), (0, length))),
                    jnp.pad(jax.lax.dynamic_slice_in_dim(slots.prefixes.valid, entry, 1), ((0, 0), (0, length))))
    positions = prefix_length + positions_from_mask(attention_mask)
    hidden, cache = lm.cached(lm.embed(input_ids), positions, attention_mask, cache, width)
    rest = KVCache(cache.keys[..., width:, :], cache.values[..., width:], cache.valid[:, width:])
    return _place(slots, row, entry, rest, lm.logits(hidden), positions[0, -1] + 1, key, temperature, top_p)


def _place(slots: Slots, row, entry, prompt: KVCache, logits, position, key, temperature, top_p
           ) -> tuple[Slots, jax.Array]:
    """`slots` with a prompt's keys and values (a one-row `KVCache` of `length` slots) in `row`:
    its tokens (the slots `prompt.valid` marks, in order; padding is not written) in the columns
    right behind the head, every other column of the row invalid, and the row's next-token state;
    the first token chosen from `logits` (1, vocab)."""
    key, sub = jax.random.split(key)
    first = choose_per_row(logits, sub[None], temperature[None], top_p[None])
    mask = prompt.valid[0]
    columns = slots.cache.valid.shape[1]
    # padding is not written: its target is out of range and dropped
    target = jnp.where(mask, (slots.head - jnp.sum(mask) + positions_from_mask(mask)) % columns, columns)
    # indexed by row and target, the two indexed axes come first: (length, layers, kv_heads, head_dim)
    keys = slots.cache.keys.at[:, row, :, target].set(jnp.moveaxis(prompt.keys[:, 0], 2, 0), mode="drop")
    values = slots.cache.values.at[:, row, :, :, target].set(jnp.moveaxis(prompt.values[:, 0], 3, 0), mode="drop")
    valid = slots.cache.valid.at[row].set(jnp.zeros((columns,), bool).at[target].set(True, mode="drop"))
    return slots._replace(cache=KVCache(keys, values, valid), prefix_of=slots.prefix_of.at[row].set(entry),
                          last=slots.last.at[row].set(first[0]), positions=slots.positions.at[row].set(position),
                          keys=slots.keys.at[row].set(key), temperature=slots.temperature.at[row].set(temperature),
                          top_p=slots.top_p.at[row].set(top_p)).placed(), first


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6), donate_argnums=2,
                   compiler_options=GPU_WEIGHTS_READ_IN_PLACE)
def step(graphdef, state, slots: Slots, rows: int, window: int | None = None, entries: int = 0, width: int = 0
         ) -> tuple[Slots, jax.Array]:
    """One token for each of the first `rows` rows, whether or not a request holds it: the engine
    ignores the tokens of free rows, and the admit programs reset every column of the row they
    fill, so what a free row writes is never read. Rows past `rows` are neither read nor written
    (their columns at the head keep what they held: the rows are free or their requests have all
    their tokens). Each row reads the `window` columns behind the head (all columns if None: the
    caller makes it cover every column its requests wrote) and, if `entries`, the first `width`
    columns of the prefix entries below `entries` that it continues. Returns the state and the
    chosen tokens (rows,)."""
    lm = nnx.merge(graphdef, state).language_model
    last, positions, keys, temperature, top_p, prefix_of = (
        x[:rows] for x in (slots.last, slots.positions, slots.keys, slots.temperature, slots.top_p, slots.prefix_of))
    total = slots.cache.valid.shape[1]
    columns = None if window is None else (slots.head - window + jnp.arange(window)) % total
    shared = None
    if entries:
        sees = (prefix_of[:, None] == jnp.arange(entries))[:, :, None] & slots.prefixes.valid[None, :entries, :width]
        shared = SharedKV(slots.prefixes.keys, slots.prefixes.values, sees)
    # the cache goes in whole: the decoder reads and writes its first `rows` rows in place
    hidden, cache = lm.cached(lm.embed(last[:, None]), positions[:, None], jnp.ones((rows, 1), bool), slots.cache,
                              slots.head, columns=columns, shared=shared)
    keys, sub = jnp.unstack(jax.vmap(jax.random.split)(keys), axis=1)
    tokens = choose_per_row(lm.logits(hidden), sub, temperature, top_p)
    return slots._replace(cache=cache, last=slots.last.at[:rows].set(tokens),
                          positions=slots.positions.at[:rows].add(1), keys=slots.keys.at[:rows].set(keys),
                          head=(slots.head + 1) % total).placed(), tokens


@functools.partial(jax.jit, donate_argnums=0)
def move(slots: Slots, source, target) -> Slots:
    """The state with row `source` (its columns, prefix entry, token, position, key and sampling
    values) copied to row `target`: how the engine keeps the rows in use at the front, so that
    steps run over few rows. Copies one row of the cache, in place."""
    def row(x, axis=0):
        return x.at[(slice(None),) * axis + (target,)].set(x[(slice(None),) * axis + (source,)])

    cache = KVCache(row(slots.cache.keys, 1), row(slots.cache.values, 1), row(slots.cache.valid))
    return slots._replace(cache=cache, prefix_of=row(slots.prefix_of), last=row(slots.last),
                          positions=row(slots.positions), keys=row(slots.keys), temperature=row(slots.temperature),
                          top_p=row(slots.top_p)).placed()
