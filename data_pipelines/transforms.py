"""One annotation element -> one training example (or a counted skip), run in the Grain workers.

Example: `input_ids`, `labels` int32 (len <= max_length, visual slots expanded), `images`
(k, 3, S, S) and `videos` (k, T, 3, S, S) float32 pixels (k is 0 or 1), in slot order.
A skipped sample becomes `{"skipped": counts}` so that the packer can count it; with
`policy="fail"` it raises `DataError` naming the entry instead.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import numpy as np
from etils import epath

from data_pipelines.bad_data import POLICIES, SkipSample, log, skip_counts
from vllava_jax.errors import DataError
from data_pipelines.conversations import normalize_turns
from data_pipelines.labels import tokenize_conversation
from data_pipelines.media import decode_image, read_media, video_frames
from data_pipelines.slots import expand_slots, truncate
from vllava_jax.processing.conversation import get_template
from vllava_jax.processing.processor import Processor


class ExampleTransform(grain.transforms.Map):
    """Picklable: the processor is rebuilt from `checkpoint_dir` in each worker process."""

    def __init__(self, checkpoint_dir: epath.PathLike, template: str = "vicuna_v1", max_length: int = 2048,
                 policy: str = "skip", video_transform: str | None = None):
        if policy not in POLICIES:
            raise DataError(f"bad-data policy {policy!r} is not one of {POLICIES}")
        self.checkpoint_dir, self.video_transform = str(checkpoint_dir), video_transform
        self.template, self.max_length, self.policy = get_template(template), max_length, policy
        self._logged: set[str] = set()

    @functools.cached_property
    def processor(self) -> Processor:
        return Processor.from_pretrained(self.checkpoint_dir, video_transform=self.video_transform)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "processor"}

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        try:
            return self.example(element)
        except SkipSample as skip:
            if self.policy == "fail":
                raise DataError(f"{element['origin']} (id {element['id']}): {skip}") from None
            if element["origin"] not in self._logged:
                self._logged.add(element["origin"])
                log.warning("skipping %s (id %s): %s", element["origin"], element["id"], skip)
            return {"skipped": skip_counts(skip.reason), "skip_detail": f"{element['origin']}: {skip}"}

    def example(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        proc, kind = self.processor, element["media_kind"]
        turns, media = normalize_turns(element["conversations"], kind)
        size, frames = proc.crop_size, proc.num_frames
        images = np.zeros((0, 3, size, size), np.float32)
        videos = np.zeros((0, frames, 3, size, size), np.float32)
        if kind:
            where = element["media_path"] or element["origin"]
            if kind == "image":
                images = proc.preprocess_image(decode_image(read_media(element), where))[None]
            else:
                videos = proc.preprocess_video(video_frames(element, frames, where))[None]
        ids, labels = tokenize_conversation(proc.tokenizer, self.template, turns, media)
        slots = {proc.image_token_id: proc.config.image_seq_length,
                 proc.video_token_id: proc.config.video_seq_length(frames)}
        ids, labels = expand_slots(ids, labels, slots)
        ids, labels = truncate(ids, labels, self.max_length, tuple(slots))
        return {"input_ids": ids, "labels": labels, "images": images, "videos": videos}
