"""Grain data sources over annotation files; every source yields the same element dict.

Element (what `transforms.ExampleTransform` consumes, from here or from `tfds_builder.TfdsSource`):
`id` str, `origin` "file entry N" (for messages), `conversations` list of {"from", "value"},
`media_kind` "image" | "video" | "", `media_path` str or "", `media_bytes` the encoded file from a
record (b"" if it was missing at build time) or None (read `media_path` in the worker), `frames`
(T, H, W, 3) uint8 video frames sampled when the record was built, or None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath

from data_pipelines.annotations import load_annotations, media_of


def element(entry: dict[str, Any], origin: str, media_path: str = "", media_bytes: bytes | None = None,
            frames: np.ndarray | None = None) -> dict[str, Any]:
    kind, _ = media_of(entry)
    return {"id": str(entry.get("id", origin)), "origin": origin, "conversations": entry["conversations"],
            "media_kind": kind, "media_path": media_path, "media_bytes": media_bytes, "frames": frames}


class AnnotationSource:
    """Random access over one annotation file; media paths are resolved against `media_root`."""

    def __init__(self, annotation_file: epath.PathLike, media_root: epath.PathLike):
        self.annotation_file = epath.Path(annotation_file)
        self.media_root = epath.Path(media_root)
        self.entries = load_annotations(self.annotation_file)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        _, relpath = media_of(entry)
        path = str(self.media_root / relpath) if relpath else ""
        return element(entry, f"{self.annotation_file} entry {index}", media_path=path)

    def __repr__(self) -> str:
        return f"AnnotationSource({self.annotation_file}, media_root={self.media_root}, {len(self)} entries)"
