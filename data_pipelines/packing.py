"""Examples -> fixed-shape batches, one sample per row or several packed per row (first fit).

A Grain `IterDataset` so that it runs inside the `mp_prefetch` workers and its state checkpoints
with the rest of the pipeline. An example goes to the first row with room for its tokens and its
images and videos (`BatchSpec.images_per_row` / `videos_per_row`); a batch closes when the next
example fits in no row; that example opens the next batch. The iterator state
is the parent's state *before* that held-over example, so a restored iterator produces exactly
the batches the original would have produced next.

When `unusable_window` examples in a row are all skipped (wrong media roots, a dataset built
without its media), the iterator stops with a `DataError` giving the skip counts by reason and the
first failures, instead of looking for a usable example forever.
"""

from __future__ import annotations

import grain
import numpy as np

from data_pipelines.bad_data import SKIP_REASONS, skip_counts
from vllava_jax.errors import DataError
from data_pipelines.batching import BatchSpec, make_batch


UNUSABLE_WINDOW = 1000  # consecutive skipped examples after which the data is declared unusable
SHOWN_FAILURES = 5


class PackIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, spec: BatchSpec, pack: bool,
                 unusable_window: int = UNUSABLE_WINDOW):
        super().__init__(parent)
        self.spec, self.pack, self.unusable_window = spec, pack, unusable_window

    def __iter__(self) -> grain.DatasetIterator:
        return _PackIterator(self._parent.__iter__(), self.spec, self.pack, self.unusable_window)

    def __str__(self) -> str:
        return f"PackIterDataset(pack={self.pack}, {self.spec})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, spec: BatchSpec, pack: bool, unusable_window: int):
        super().__init__(parent)
        self.spec, self.pack, self.unusable_window = spec, pack, unusable_window
        self._held = None  # (example, parent state before it)
        self._unusable = skip_counts()  # skips since the last usable example
        self._failures: list[str] = []

    def _count_skip(self, example: dict) -> None:
        self._unusable += example["skipped"]
        if len(self._failures) < SHOWN_FAILURES and "skip_detail" in example:
            self._failures.append(example["skip_detail"])
        if self._unusable.sum() >= self.unusable_window:
            reasons = ", ".join(f"{r} {c}" for r, c in zip(SKIP_REASONS, self._unusable) if c)
            raise DataError(f"the last {self._unusable.sum()} samples in a row were all skipped ({reasons}); "
                            f"first: {'; '.join(self._failures)}. Check the data's media roots (data.media_roots, "
                            "or build_tfds --media-root) and the annotations")

    def _next_example(self):
        if self._held is not None:
            held, self._held = self._held, None
            return held
        state = self._parent.get_state()
        return next(self._parent), state

    def __next__(self) -> dict[str, np.ndarray]:
        spec = self.spec
        rows: list[list[dict]] = []
        fill: list[tuple[int, int, int]] = []  # per row: tokens, images, videos
        skipped = skip_counts()
        while True:
            try:
                example, state = self._next_example()
            except StopIteration:
                if rows or skipped.any():
                    break
                raise
            if "skipped" in example:
                skipped += example["skipped"]
                self._count_skip(example)
                continue
            self._unusable, self._failures = skip_counts(), []
            need = (len(example["input_ids"]), len(example["images"]), len(example["videos"]))
            if not fits(need, (0, 0, 0), spec):
                raise DataError(f"an example of {need[0]} tokens with {need[1]} image(s) and {need[2]} video(s) "
                                f"can never fit {spec}")
            row = next((r for r, used in enumerate(fill) if fits(need, used, spec)), None) if self.pack else None
            if row is None and len(rows) < spec.rows:
                rows.append([])
                fill.append((0, 0, 0))
                row = len(rows) - 1
            if row is None:
                self._held = (example, state)
                break
            rows[row].append(example)
            fill[row] = tuple(u + n for u, n in zip(fill[row], need))
        return make_batch(rows, spec, skipped)

    def get_state(self) -> dict:
        return self._held[1] if self._held is not None else self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)
        self._held = None


def fits(need: tuple[int, int, int], used: tuple[int, int, int], spec: BatchSpec) -> bool:
    """Whether an example needing (tokens, images, videos) fits a row already holding `used`."""
    limits = (spec.max_length, spec.images_per_row, spec.videos_per_row)
    return all(u + n <= limit for u, n, limit in zip(used, need, limits))
