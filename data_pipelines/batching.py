"""Fixed-shape training batches: the contract between the data pipeline and the jitted train step.

A batch is a dict of numpy arrays whose shapes depend only on the `BatchSpec` (B rows,
L = max_length, image capacity I, video capacity V, T frames, S pixels), so the step compiles once:

| key | shape, dtype | meaning |
| --- | --- | --- |
| `input_ids` | (B, L) int32 | tokens; visual slots hold `<image>`/`<video>` ids; padding is `pad_id` |
| `labels` | (B, L) int32 | the token to predict *at that position's input*, i.e. unshifted as in transformers (the trainer compares logits[:, :-1] with labels[:, 1:]); IGNORE (-100) except assistant answers and their `</s>`; every segment starts with BOS (IGNORE), so a shift never crosses segments |
| `segment_ids` | (B, L) int32 | 1, 2, ... per sample packed in the row, 0 on padding; tokens attend only within their segment |
| `positions` | (B, L) int32 | 0, 1, ... restarting at each segment (pass as `position_ids`), 0 on padding |
| `attention_mask` | (B, L) int32 | `segment_ids > 0` |
| `pixel_values_images` | (I, 3, S, S) float32 | the images, in the order their slots appear in the batch (row-major), zeros after |
| `image_valid` | (I,) bool | which buffer entries hold an image |
| `pixel_values_videos` | (V, T, 3, S, S) float32 | the videos, likewise |
| `video_valid` | (V,) bool | which buffer entries hold a video |
| `skipped` | (len(SKIP_REASONS),) int32 | samples skipped while this batch was built (summed into the trainer's `skipped_samples`) |

Because valid entries come first and in slot order, the model's `scatter_features` (k-th slot
block <- k-th buffer entry) is right as is; the towers may run on the whole buffer and unused
entries are never referenced. A batch may hold fewer samples than rows (the last of the data).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.bad_data import skip_counts
from data_pipelines.labels import IGNORE
from vllava_jax.processing.processor import Processor


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    rows: int
    max_length: int
    image_capacity: int
    video_capacity: int
    num_frames: int
    image_size: int
    pad_id: int

    @classmethod
    def for_processor(cls, processor: Processor, rows: int, max_length: int, image_capacity: int | None = None,
                      video_capacity: int | None = None) -> BatchSpec:
        """Capacities default to one per row, enough for unpacked rows (one medium per sample)."""
        pad = processor.tokenizer.pad_token_id
        return cls(rows, max_length, rows if image_capacity is None else image_capacity,
                   rows if video_capacity is None else video_capacity, processor.num_frames,
                   processor.crop_size, pad if pad is not None else 0)


def make_batch(rows: list[list[dict[str, np.ndarray]]], spec: BatchSpec, skipped: np.ndarray | None = None):
    """Lay out `rows` (each a list of examples packed left to right) as the contract above."""
    b, length, size = spec.rows, spec.max_length, spec.image_size
    out = {
        "input_ids": np.full((b, length), spec.pad_id, np.int32),
        "labels": np.full((b, length), IGNORE, np.int32),
        "segment_ids": np.zeros((b, length), np.int32),
        "positions": np.zeros((b, length), np.int32),
        "pixel_values_images": np.zeros((spec.image_capacity, 3, size, size), np.float32),
        "image_valid": np.zeros(spec.image_capacity, bool),
        "pixel_values_videos": np.zeros((spec.video_capacity, spec.num_frames, 3, size, size), np.float32),
        "video_valid": np.zeros(spec.video_capacity, bool),
        "skipped": skip_counts() if skipped is None else skipped,
    }
    assert len(rows) <= b
    used = {"images": 0, "videos": 0}
    for r, row in enumerate(rows):
        start = 0
        for segment, example in enumerate(row, start=1):
            n = len(example["input_ids"])
            out["input_ids"][r, start:start + n] = example["input_ids"]
            out["labels"][r, start:start + n] = example["labels"]
            out["segment_ids"][r, start:start + n] = segment
            out["positions"][r, start:start + n] = np.arange(n)
            start += n
            for kind, key in (("images", "image"), ("videos", "video")):
                k, first = len(example[kind]), used[kind]
                out[f"pixel_values_{kind}"][first:first + k] = example[kind]
                out[f"{key}_valid"][first:first + k] = True
                used[kind] += k
        assert start <= length
    out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
    return out
