"""What happens to a sample we cannot train on: skip and count it (default) or fail loudly.

Skips are decided in the workers (`transforms.ExampleTransform`), travel to the trainer as a
fixed-shape count vector in every batch (`batch["skipped"]`, indexed by `SKIP_REASONS`), and are
summed by the trainer into its logged `skipped_samples` scalar. Each skipped sample is logged once per
worker process with the file, entry index and reason; a whole-file problem (malformed JSON, an
entry without `conversations`) is never skipped: it raises `DataError` naming file and entry.
"""

from __future__ import annotations

import logging

import numpy as np


SKIP_REASONS = (
    "missing_media",               # the media file does not exist or is empty
    "corrupt_media",               # the image/video cannot be decoded
    "no_gpt_turn",                 # the conversation has no assistant answer to learn from
    "bad_conversation",            # roles do not alternate, placeholders do not match the media, ...
    "visual_exceeds_max_length",   # the visual tokens alone do not fit in max_length
    "no_target_within_max_length",  # truncation left no answer token
)
POLICIES = ("skip", "fail")

log = logging.getLogger("data_pipelines")


class SkipSample(Exception):
    """Raised inside a transform for one sample; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def skip_counts(reason: str | None = None) -> np.ndarray:
    """A count vector over `SKIP_REASONS`, one for `reason` (if given)."""
    counts = np.zeros(len(SKIP_REASONS), np.int32)
    if reason is not None:
        counts[SKIP_REASONS.index(reason)] = 1
    return counts

