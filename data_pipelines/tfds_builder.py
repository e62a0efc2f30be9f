"""ArrayRecord shards of an annotation file plus its media, built and read with tensorflow-datasets.

Training then reads by random access (`tfds.data_source`) instead of walking a directory of
millions of files. TFDS's `Image`/`Video` features need TensorFlow, so the encoded media file is
stored as plain bytes and decoded by our PyAV/Pillow code (`media.py`). A medium missing at build
time is stored empty and skipped (counted) when read, as reading the JSON directly would.
One dataset per `data_dir`: build each annotation file into its own dir and mix the sources.
Limit: TFDS 4.9.10's writer spills to disk through `tf.io.gfile` once a split's records pass
1 GB, so without TensorFlow a build must stay under 1 GB of encoded media (split big files).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.annotations import load_annotations, media_of
from data_pipelines.bad_data import DataError
from data_pipelines.sources import element

NAME = "video_llava_annotations"


class VideoLlavaAnnotations(tfds.core.GeneratorBasedBuilder):
    """`annotation_file`/`media_root` are needed to build only; reading needs just the `data_dir`."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to look for; TFDS 4.9.10 would need the uninstalled `importlib_resources` to find one.
    code_path = None

    def __init__(self, *, annotation_file: epath.PathLike | None = None, media_root: epath.PathLike | None = None,
                 **kwargs):
        self.annotation_file = annotation_file and epath.Path(annotation_file)
        self.media_root = media_root and epath.Path(media_root)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "id": text(), "origin": text(), "conversations": text(), "media_kind": text(), "media_path": text(),
            "media": tfds.features.Tensor(shape=(), dtype=np.object_),
        }))

    def _split_generators(self, dl_manager):
        if self.annotation_file is None:
            raise DataError(f"{NAME}: building needs annotation_file= and media_root=")
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, entry in enumerate(load_annotations(self.annotation_file)):
            kind, relpath = media_of(entry)
            path = self.media_root / relpath if relpath else None
            media = path.read_bytes() if path is not None and path.is_file() else b""
            yield index, {"id": str(entry.get("id", index)), "origin": f"{self.annotation_file} entry {index}",
                          "conversations": json.dumps(entry["conversations"]), "media_kind": kind,
                          "media_path": relpath, "media": media}


def build(annotation_file: epath.PathLike, media_root: epath.PathLike, data_dir: epath.PathLike) -> None:
    VideoLlavaAnnotations(annotation_file=annotation_file, media_root=media_root, data_dir=str(data_dir),
                          file_format="array_record").download_and_prepare()


class TfdsSource:
    """Random access over a built dataset, yielding the same elements as `sources.AnnotationSource`."""

    def __init__(self, data_dir: epath.PathLike, split: str = "train"):
        self.records = tfds.data_source(NAME, data_dir=str(data_dir), split=split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        text = {k: r[k].decode() for k in ("id", "origin", "conversations", "media_kind", "media_path")}
        entry = {"id": text["id"], "conversations": json.loads(text["conversations"])}
        if text["media_kind"]:
            entry[text["media_kind"]] = text["media_path"]
        return element(entry, text["origin"], media_bytes=r["media"])

    def __repr__(self) -> str:
        return f"TfdsSource({self.records!r}, {len(self)} records)"
