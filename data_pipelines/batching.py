"""Fixed-shape training batches: the contract between the data pipeline and the jitted train step.

A batch is a dict of numpy arrays whose shapes depend only on the `BatchSpec` (B rows,
L = max_length, I images and V videos per row, T frames, S pixels), so the step compiles once:

| key | shape, dtype | meaning |
| --- | --- | --- |
| `input_ids` | (B, L) int32 | tokens; visual slots hold `<image>`/`<video>` ids; padding is `pad_id` |
| `labels` | (B, L) int32 | the token to predict *at that position's input*, i.e. unshifted as in transformers (the trainer compares logits[:, :-1] with labels[:, 1:]); IGNORE (-100) except assistant answers and their `</s>`; every segment starts with BOS (IGNORE), so a shift never crosses segments |
| `segment_ids` | (B, L) int32 | 1, 2, ... per sample packed in the row, 0 on padding; tokens attend only within their segment |
| `positions` | (B, L) int32 | 0, 1, ... restarting at each segment (pass as `position_ids`), 0 on padding |
| `attention_mask` | (B, L) int32 | `segment_ids > 0` |
| `pixel_values_images` | (B, I, 3, S, S) float32 | each row's images, in the order their slots appear in that row, zeros after |
| `image_valid` | (B, I) bool | which of a row's entries hold an image |
| `pixel_values_videos` | (B, V, T, 3, S, S) float32 | each row's videos, likewise |
| `video_valid` | (B, V) bool | which of a row's entries hold a video |
| `skipped` | (len(SKIP_REASONS),) int32 | samples skipped while this batch was built (summed into the trainer's `skipped_samples`) |

Media are laid out per row so that a row and its media split over devices together: the model's
`scatter_features` fills row b's k-th slot block with row b's k-th entry, a gather within each row
that needs no communication when rows are sharded. The towers run on every entry; unused entries
are never referenced. `pixels[valid]` is the flat inference layout (`VideoLlavaModel.embed_inputs`).
A batch may hold fewer samples than rows (the last of the data).
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
    images_per_row: int
    videos_per_row: int
    num_frames: int
    image_size: int
    pad_id: int

    @classmethod
    def for_processor(cls, processor: Processor, rows: int, max_length: int, images_per_row: int = 1,
                      videos_per_row: int = 1) -> BatchSpec:
        """One image and one video per row suffice for unpacked rows (one sample each, Video-LLaVA's
        data has at most one medium per sample); packed rows hold as many as these allow."""
        pad = processor.tokenizer.pad_token_id
        return cls(rows, max_length, images_per_row, videos_per_row, processor.num_frames, processor.crop_size,
                   pad if pad is not None else 0)


def make_batch(rows: list[list[dict[str, np.ndarray]]], spec: BatchSpec, skipped: np.ndarray | None = None):
    """Lay out `rows` (each a list of examples packed left to right) as the contract above."""
    b, length, size = spec.rows, spec.max_length, spec.image_size
    out = {
        "input_ids": np.full((b, length), spec.pad_id, np.int32),
        "labels": np.full((b, length), IGNORE, np.int32),
        "segment_ids": np.zeros((b, length), np.int32),
        "positions": np.zeros((b, length), np.int32),
        "pixel_values_images": np.zeros((b, spec.images_per_row, 3, size, size), np.float32),
        "image_valid": np.zeros((b, spec.images_per_row), bool),
        "pixel_values_videos": np.zeros((b, spec.videos_per_row, spec.num_frames, 3, size, size), np.float32),
        "video_valid": np.zeros((b, spec.videos_per_row), bool),
        "skipped": skip_counts() if skipped is None else skipped,
    }
    assert len(rows) <= b
    for r, row in enumerate(rows):
        start = 0
        used = {"images": 0, "videos": 0}
        for segment, example in enumerate(row, start=1):
            n = len(example["input_ids"])
            out["input_ids"][r, start:start + n] = example["input_ids"]
            out["labels"][r, start:start + n] = example["labels"]
            out["segment_ids"][r, start:start + n] = segment
            out["positions"][r, start:start + n] = np.arange(n)
            start += n
            for kind, key in (("images", "image"), ("videos", "video")):
                k, first = len(example[kind]), used[kind]
                out[f"pixel_values_{kind}"][r, first:first + k] = example[kind]
                out[f"{key}_valid"][r, first:first + k] = True
                used[kind] += k
        assert start <= length
    out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
    return out
