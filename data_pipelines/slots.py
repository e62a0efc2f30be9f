"""Placeholder tokens -> visual slots, and truncation that never cuts a visual block.

Each `<image>` id becomes `config.image_seq_length` copies and each `<video>` id
`config.video_seq_length(T)` copies, as the processor does on text; their labels stay IGNORE.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.bad_data import SkipSample
from data_pipelines.labels import IGNORE


def expand_slots(ids: np.ndarray, labels: np.ndarray, slot_lengths: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Repeat every placeholder id by its slot count (`{token id: slots}`)."""
    repeats = np.ones(len(ids), np.int64)
    for token, length in slot_lengths.items():
        repeats[ids == token] = length
    return np.repeat(ids, repeats), np.repeat(labels, repeats)


def truncate(ids: np.ndarray, labels: np.ndarray, max_length: int, visual_ids: tuple[int, ...]):
    """Cut to `max_length`; a sample whose visual slots do not all fit, or that keeps no answer token, is skipped."""
    if len(ids) <= max_length:
        return ids, labels
    visual = np.flatnonzero(np.isin(ids, visual_ids))
    if visual.size and visual[-1] >= max_length:
        raise SkipSample("visual_exceeds_max_length", f"visual slots end at token {visual[-1] + 1}, "
                         f"max_length is {max_length}")
    ids, labels = ids[:max_length], labels[:max_length]
    if not (labels != IGNORE).any():
        raise SkipSample("no_target_within_max_length", f"no answer token within the first {max_length} tokens")
    return ids, labels
