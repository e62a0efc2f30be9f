"""The serving engine: one thread owns the accelerator and decodes every request in flight together.

Continuous batching over the slot cache of `vllava_jax.serve.slots`: a request waits in a queue
until a row is free, is admitted between two steps (visual features from the FeatureCache, the
towers only for media it has not seen, then its prompt alone, as `generation.generate` runs it),
then decodes one token per step beside whatever else is in flight, and leaves when it chose an EOS,
reached its max_new_tokens or was cancelled; its row goes to the next in the queue. No request
waits for another to finish. The rows in use are kept at the front (a newcomer takes the lowest
free row; when requests leave, the highest rows move down as far as the next power of two of the
count needs) and each step runs over that power of two only, so light load decodes about as fast
as an engine of that many rows would. Newcomers join an idle engine all at once and a busy one
one per step, so running streams keep flowing through a burst of arrivals. Only the engine
thread touches the device state and the FeatureCache (other threads submit, cancel, and compute
media keys with `FeatureCache.bytes_key`).

Prefix reuse: a prompt with media is split after its last visual token. The part up to there
(system prompt, earlier text, the media) is run once into an entry of the prefix store, keyed by
its token ids and media keys, and every request that starts the same way (another question about
the same video) runs only its question after that entry; decode steps read the entry once for
all rows that continue it. An entry is refilled only when no request in flight continues it (the
least recently used such one); when every entry is in use, a newcomer runs its whole prompt in its
row, as a prompt without media always does.

Steps are dispatched one ahead of the host: step t+1 is queued before step t's tokens are read,
so the device does not wait for the host between steps. The price is that a row that chose an
EOS at step t computes one more (ignored) token at step t+1.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import threading
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vllava_jax import generation
from vllava_jax.errors import InputError
from vllava_jax.features import FeatureCache
from vllava_jax.inputs import check_inputs
from vllava_jax.serve import slots
from vllava_jax.sharding import mesh_context

log = logging.getLogger(__name__)

# The rest of a prompt after a stored prefix (a question: tens of tokens) is padded to a multiple of
# this, not of pad_to_multiple: padding a short question to 64 nearly doubles the prefill of its
# admission (benchmarks/BENCHMARKS.md, serving engine); the price is an admit program per 16 tokens.
REST_PAD_TO = 16


@dataclasses.dataclass(frozen=True)
class Medium:
    key: str            # FeatureCache key: content digest + kind + preprocessing fingerprint
    pixels: np.ndarray  # preprocessed as Processor does: image (3, S, S), video (T, 3, S, S), float32


@dataclasses.dataclass(frozen=True)
class Request:
    prompt_ids: np.ndarray           # (length,) int32, visual placeholders expanded to their token slots
    images: tuple[Medium, ...] = ()  # in the order of the image slots
    videos: tuple[Medium, ...] = ()  # in the order of the video slots
    max_new_tokens: int = 16
    temperature: float = 0.0         # 0 = greedy
    top_p: float = 1.0
    seed: int = 0                    # sampling draws what generation.generate(key=jax.random.key(seed)) draws


class Event(NamedTuple):
    """One per chosen token, then a last one with `token` None and the finish reason: "stop" (an
    EOS, which is not sent), "length" (max_new_tokens) or "cancelled"; a request that failed ends
    with finish_reason None and the `error`."""

    token: int | None
    finish_reason: str | None
    error: Exception | None = None


class _Job:
    """A submitted request as the engine thread tracks it."""

    def __init__(self, request: Request, emit: Callable[[Event], None]):
        self.request, self.emit = request, emit
        self.cancelled = False  # set from any thread; read by the engine thread at step boundaries
        self.finished = False
        self.row: int | None = None
        self.entry: int | None = None  # the prefix entry its row continues
        self.prompt_columns = 0  # columns of its row its prompt (or the rest after the prefix) holds
        self.admitted_at = 0     # the engine's step count when it was admitted
        self.dispatched = 0      # tokens the programs queued so far will have chosen
        self.emitted = 0


@dataclasses.dataclass
class _Prefix:
    """What an entry of the prefix store holds, as the engine thread tracks it."""

    key: str
    length: int     # tokens of the prefix
    width: int      # columns it fills (its length padded to pad_to_multiple)
    users: int = 0  # requests in flight that continue it
    last_used: int = 0


class Ticket:
    def __init__(self, engine: Engine, job: _Job):
        self._engine, self._job = engine, job

    def cancel(self) -> None:
        """Thread-safe; the request ends with "cancelled" and its row is freed at the next step boundary."""
        self._job.cancelled = True
        self._engine._wake()


class Engine:
    def __init__(self, model, *, max_batch: int = 16, max_length: int | None = None,
                 feature_cache: FeatureCache | None = None, pad_to_multiple: int = 64, max_prefixes: int = 4,
                 eos_token_ids: tuple[int, ...] | None = None):
        """`max_batch` requests decode at once, each in a row of `max_length` cache columns (prompt +
        new tokens; default and at most the model's context), and `max_prefixes` prompt prefixes
        (up to the last medium) are kept for reuse, 0 for none. Memory: 2 x layers x (max_batch +
        max_prefixes) x max_length x kv_heads x head_dim values. A step reads, of the rows in use
        (rounded up to a power of two), the columns their requests wrote (rounded likewise), and
        the prefixes they continue. `eos_token_ids` end an answer (default: the model config's; ()
        for none, so that every answer runs its max_new_tokens, as a benchmark wants)."""
        self.model = model
        self.context = model.config.text_config.max_position_embeddings
        self.max_length = self.context if max_length is None else max_length
        if not 0 < self.max_length <= self.context:
            raise ValueError(f"max_length {self.max_length} must be in [1, {self.context}] (the model's context)")
        if max_batch < 1 or pad_to_multiple < 1 or max_prefixes < 0:
            raise ValueError(f"max_batch {max_batch} and pad_to_multiple {pad_to_multiple} must be positive, "
                             f"max_prefixes {max_prefixes} not negative")
        self.max_batch, self.pad_to_multiple = max_batch, pad_to_multiple
        self.prefix_columns = -(-self.max_length // pad_to_multiple) * pad_to_multiple  # a padded prefix fits
        self.visual_token_ids = (model.config.image_token_index, model.config.video_token_index)
        self.feature_cache = FeatureCache(model) if feature_cache is None else feature_cache
        defaults = generation.sampling_config(model.config)
        self.eos_token_ids = frozenset(defaults.eos_token_ids if eos_token_ids is None else eos_token_ids)
        self.pad_token_id = defaults.pad_token_id
        self._condition = threading.Condition()
        self._arrivals: collections.deque[_Job] = collections.deque()  # guarded by _condition
        self._closing = False
        self._thread: threading.Thread | None = None
        # engine thread only:
        self._queue: collections.deque[_Job] = collections.deque()
        self._rows: list[_Job | None] = [None] * max_batch
        self._in_flight: collections.deque[tuple[jax.Array, list[tuple[int, _Job]]]] = collections.deque()
        self._slots: slots.Slots | None = None
        self._prefixes: list[_Prefix | None] = [None] * max_prefixes
        self.prefix_fills = 0  # prefixes run into the store
        self.prefix_hits = 0   # requests admitted after a prefix already in the store
        self.steps = 0  # decode steps dispatched (each one token for every row in use)
        self.steps_by_rows: collections.Counter[int] = collections.Counter()  # steps per program's row count
        self.steps_by_window: collections.Counter[int | None] = collections.Counter()  # per columns read (None: all)
        self.moves = 0  # rows moved down to keep the rows in use at the front

    @property
    def rows_in_use(self) -> int:
        """Requests admitted and not finished (read on any thread: a snapshot)."""
        return sum(job is not None for job in self._rows)

    def check(self, request: Request) -> None:
        """Raise InputError for a request the engine cannot run (the message names what is wrong)."""
        ids = np.asarray(request.prompt_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"prompt_ids must be a non-empty 1-D array of token ids, got shape {ids.shape} "
                             f"{ids.dtype}")
        new = request.max_new_tokens
        if not isinstance(new, (int, np.integer)) or new < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {new!r}")
        if not (np.isfinite(request.temperature) and request.temperature >= 0):
            raise InputError(f"temperature must be >= 0, got {request.temperature!r}")
        if not 0 < request.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {request.top_p!r}")
        if not isinstance(request.seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {request.seed!r}")
        limit = "the context" if self.max_length == self.context else "the engine's max_length"
        if ids.size + new > self.max_length:
            raise InputError(f"prompt of {ids.size} tokens + max_new_tokens {new} = {ids.size + new} exceeds "
                             f"{limit} of {self.max_length} positions")
        check_inputs(self.model.config, ids[None], np.ones((1, ids.size), np.int32),
                     _stack("images", request.images), _stack("videos", request.videos))

    def submit(self, request: Request, emit: Callable[[Event], None]) -> Ticket:
        """Queue a checked request; `emit` gets its events on the engine thread and must not block."""
        self.check(request)
        job = _Job(request, emit)
        with self._condition:
            closed = self._closing
            if not closed:
                self._arrivals.append(job)
                self._condition.notify()
        if closed:
            _send(job, Event(None, "cancelled"))
        return Ticket(self, job)

    def start(self) -> None:
        """Start the engine thread (the one that owns the accelerator)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vllava-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the engine thread; every request not finished ends with "cancelled"."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
        with self._condition:
            self._queue.extend(self._arrivals)
            self._arrivals.clear()
        for job in [*self._rows, *self._queue]:
            if job is not None:
                self._finish(job, "cancelled")
        self._queue.clear()
        self._in_flight.clear()

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not (self._closing or self._arrivals or self._queue or self._in_flight
                           or any(self._rows)):
                    self._condition.wait()
                if self._closing:
                    return
                self._queue.extend(self._arrivals)
                self._arrivals.clear()
            try:
                self._end_cancelled()
                self._compact()
                self._admit()
                stepped = self._step()
                self._read(keep=1 if stepped else 0)
            except Exception as error:  # a device failure: every request in flight fails, the state is rebuilt
                log.exception("engine step failed")
                self._fail_all(error)

    def _device(self):
        stack = contextlib.ExitStack()
        stack.enter_context(mesh_context(self.model.mesh))
        stack.enter_context(jax.default_matmul_precision(self.model.policy.matmul_precision))
        return stack

    def _end_cancelled(self) -> None:
        for job in [*self._rows, *self._queue]:
            if job is not None and job.cancelled and not job.finished:
                self._finish(job, "cancelled")
        self._queue = collections.deque(job for job in self._queue if not job.finished)

    def _bucket(self, rows: int) -> int:
        """The row count of the step program that runs `rows` rows: the next power of two, at most
        max_batch (a program per power of two: few compilations, at most 2x the rows needed)."""
        return min(_power_of_two_at_least(rows), self.max_batch)

    def _compact(self) -> None:
        """Move the highest rows in use into the lowest free ones until every row in use lies within
        the bucket of their count, so that steps run over that bucket only. A newcomer takes the
        lowest free row, so rows move only when requests leave, one row's cache copy each, and not
        for every departure: only when the count falls into a smaller bucket."""
        used = [row for row, job in enumerate(self._rows) if job is not None]
        limit = self._bucket(len(used)) if used else 0
        while used and used[-1] >= limit:  # a moved row lands below the limit: only the rows left are checked
            source, target = used.pop(), self._rows.index(None)
            with self._device():
                self._slots = slots.move(self._slots, np.int32(source), np.int32(target))
            job = self._rows[source]
            self._rows[source], self._rows[target], job.row = None, job, target
            self.moves += 1

    def _admit(self) -> None:
        """Admit queued requests into free rows: towers for unseen media, then each prompt alone
        (or its rest after a stored prefix).

        While other rows are decoding, one per step, so a burst of newcomers delays their tokens
        by one prefill at a time, not by all the prefills of the burst; into an idle engine, all
        at once (nobody is waiting for tokens, and each step decodes every row)."""
        decoding, admitted = any(job is not None for job in self._rows), 0
        while self._queue and None in self._rows and not (decoding and admitted):
            job = self._queue.popleft()
            row = self._rows.index(None)
            try:
                with self._device():
                    if self._slots is None:
                        self._slots = self._empty_slots()
                    first = self._run_prompt(job, row)
            except Exception as error:
                self._finish(job, None, error)
                continue
            job.row, job.dispatched, job.admitted_at = row, 1, self.steps
            self._rows[row] = job
            admitted += 1
            self._in_flight.append((first, [(0, job)]))

    def _empty_slots(self) -> slots.Slots:
        """Fresh device state, with `move` compiled on it (a row moved onto itself): the first
        departure that moves a row then does not stall every stream in flight for a compile."""
        fresh = slots.Slots.empty(self.model, self.max_batch, self.max_length, len(self._prefixes),
                                  self.prefix_columns)
        return slots.move(fresh, np.int32(0), np.int32(0)) if self.max_batch > 1 else fresh

    def _run_prompt(self, job: _Job, row: int) -> jax.Array:
        """Queue the program that puts `job`'s prompt in `row` (after a stored prefix when it can);
        returns the first chosen token (1,)."""
        request = job.request
        sampling = generation.SamplingConfig(max_new_tokens=request.max_new_tokens, pad_token_id=self.pad_token_id)
        choice = (jax.random.key(request.seed), np.float32(request.temperature), np.float32(request.top_p))
        split = self._split(request)
        entry = None if split is None else self._entry_for(split[0])
        if entry is None:
            features = self._media_features(request)
            ids, mask, _ = self._prepare(request.prompt_ids, *features, sampling)
            self._slots, first = slots.admit(self.model.graphdef, self.model.state, self._slots, np.int32(row), ids,
                                             mask, *features, *choice)
            job.prompt_columns = len(request.prompt_ids)
            return first
        key, prefix_ids, rest_ids = split
        stored = self._prefixes[entry]
        if stored is None or stored.key != key:
            self._prefixes[entry] = None  # until the fill below is queued
            features = self._media_features(request)
            ids, mask, _ = self._prepare(prefix_ids, *features, sampling)
            self._slots = slots.fill_prefix(self.model.graphdef, self.model.state, self._slots, np.int32(entry), ids,
                                            mask, *features)
            stored = self._prefixes[entry] = _Prefix(key, len(prefix_ids), ids.shape[1])
            self.prefix_fills += 1
        else:
            self.prefix_hits += 1
        ids, mask, _ = self._prepare(rest_ids, None, None, sampling, min(self.pad_to_multiple, REST_PAD_TO))
        self._slots, first = slots.admit_after_prefix(
            self.model.graphdef, self.model.state, self._slots, np.int32(row), np.int32(entry),
            np.int32(stored.length), ids, mask, *choice)
        stored.users += 1
        stored.last_used = self.steps
        job.entry, job.prompt_columns = entry, len(rest_ids)
        return first

    def _prepare(self, ids, images, videos, sampling, pad_to_multiple: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
        """`generation.prepare_prompt` with the media's projected features (checked against the ids as pixels are)."""
        return generation.prepare_prompt(self.model, ids, None, images, videos, sampling,
                                         pad_to_multiple or self.pad_to_multiple)

    def _media_features(self, request: Request) -> tuple[jax.Array | None, jax.Array | None]:
        return self._features("image", request.images), self._features("video", request.videos)

    def _split(self, request: Request) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(prefix key, prefix ids, rest ids) of a prompt with media, split after its last visual
        token; None when it has no media or nothing follows them, or the engine keeps no prefixes."""
        ids = np.asarray(request.prompt_ids, np.int32)
        visual = np.flatnonzero(np.isin(ids, self.visual_token_ids))
        if not self._prefixes or not visual.size or visual[-1] + 1 == ids.size:
            return None
        cut = visual[-1] + 1
        digest = hashlib.sha256(ids[:cut].tobytes())
        for medium in (*request.images, *request.videos):
            digest.update(b"\0" + medium.key.encode())
        return digest.hexdigest(), ids[:cut], ids[cut:]

    def _entry_for(self, key: str) -> int | None:
        """The entry holding prefix `key`, else the one to fill with it (an empty one, else the least
        recently used one no request in flight continues), else None."""
        for entry, stored in enumerate(self._prefixes):
            if stored is not None and stored.key == key:
                return entry
        if None in self._prefixes:
            return self._prefixes.index(None)
        idle = [(stored.last_used, entry) for entry, stored in enumerate(self._prefixes) if not stored.users]
        return min(idle)[1] if idle else None

    def _features(self, kind: str, media: tuple[Medium, ...]) -> jax.Array | None:
        """The projected features of `media` in order (2-D, what prefill takes), running the tower
        once for each medium the cache does not hold."""
        if not media:
            return None
        cache, found = self.feature_cache, {}
        for medium in media:
            if medium.key in found:
                continue
            if medium.key not in cache:
                cache.add(kind, [medium.key], np.asarray(medium.pixels, np.float32)[None])
            found[medium.key] = cache[medium.key]  # held here: a later add may evict it from the cache
        return jnp.concatenate([found[m.key] for m in media], axis=0)

    def _step(self) -> bool:
        """Queue one decode step over the rows up to the last one still owed tokens (the bucket of
        that row count); False when no row is owed one."""
        live = [(row, job) for row, job in enumerate(self._rows)
                if job is not None and job.dispatched < job.request.max_new_tokens]
        if not live:
            return False
        rows = self._bucket(live[-1][0] + 1)
        window = self._window(max(job.prompt_columns + self.steps - job.admitted_at for _, job in live))
        entries = [job.entry for _, job in live if job.entry is not None]
        count = min(_power_of_two_at_least(max(entries) + 1), len(self._prefixes)) if entries else 0
        width = max((self._prefixes[e].width for e in entries), default=0)
        with self._device():
            self._slots, tokens = slots.step(self.model.graphdef, self.model.state, self._slots, rows, window,
                                             count, width)
        self.steps += 1
        self.steps_by_rows[tokens.shape[0]] += 1
        self.steps_by_window[window] += 1
        for _, job in live:
            job.dispatched += 1
        self._in_flight.append((tokens, live))
        return True

    def _window(self, span: int) -> int | None:
        """The ring columns a step reads when the live rows wrote the last `span`: a power of two of
        at least 2 x pad_to_multiple (few step programs), or None (every column) past a quarter of
        the columns, where gathering the window (read, written, read again) costs more than it saves."""
        window = _power_of_two_at_least(max(span, 2 * self.pad_to_multiple))
        return window if 4 * window <= self._slots.cache.valid.shape[1] else None

    def _read(self, keep: int) -> None:
        """Read the tokens of all but the newest `keep` queued programs and send them on."""
        while len(self._in_flight) > keep:
            tokens, entries = self._in_flight.popleft()
            chosen = np.asarray(tokens)
            for index, job in entries:
                if job.finished:
                    continue
                token = int(chosen[index])
                if token in self.eos_token_ids:
                    self._finish(job, "stop")
                    continue
                job.emitted += 1
                if not _send(job, Event(token, None)):
                    self._release(job)
                elif job.emitted == job.request.max_new_tokens:
                    self._finish(job, "length")

    def _finish(self, job: _Job, reason: str | None, error: Exception | None = None) -> None:
        self._release(job)
        _send(job, Event(None, reason, error))

    def _release(self, job: _Job) -> None:
        """Mark the job finished and free its row (and its hold on its prefix entry)."""
        if not job.finished and job.entry is not None and self._prefixes[job.entry] is not None:
            self._prefixes[job.entry].users -= 1
        job.finished = True
        if job.row is not None and self._rows[job.row] is job:
            self._rows[job.row] = None

    def _fail_all(self, error: Exception) -> None:
        for job in self._rows:
            if job is not None:
                self._finish(job, None, error)
        self._in_flight.clear()
        self._slots = None
        self._prefixes = [None] * len(self._prefixes)


def _power_of_two_at_least(n: int) -> int:
    """Static sizes of the step programs are powers of two: few programs, at most 2x the work."""
    return 1 << (n - 1).bit_length()


def _send(job: _Job, event: Event) -> bool:
    """Call the job's `emit`; False if it raised (logged: the request is then dropped)."""
    try:
        job.emit(event)
        return True
    except Exception:
        log.exception("emit of a request failed; the request is dropped")
        return False


def _stack(name: str, media: tuple[Medium, ...]) -> np.ndarray | None:
    """The media's pixels stacked as prefill takes them, for `check_inputs`."""
    if not media:
        return None
    shapes = {np.shape(m.pixels) for m in media}
    if len(shapes) > 1:
        raise InputError(f"{name} have different shapes {sorted(shapes)}; every one must be preprocessed alike")
    return np.stack([np.asarray(m.pixels) for m in media])
