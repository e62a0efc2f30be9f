"""ArrayRecord shards of an annotation file plus its media, in TFDS's layout, written and read without TensorFlow.

Training then reads by random access (`TfdsSource`) instead of walking a directory of millions of
files. Each record holds the sample's text and its medium in one of two storage modes:
- encoded (default): the media file's bytes, decoded in the workers by our PyAV/Pillow code
  (`media.py`; TFDS's `Image`/`Video` features would need TensorFlow);
- pre-sampled frames (`video_frames=N`): each video's N frames, sampled at build time by the same
  decoder and stored as raw uint8 (lossless, so training sees the very pixels decoding gives),
  so workers skip PyAV. Images stay encoded. Raw frames are H x W x 3 x N bytes before
  ArrayRecord's own compression (8 frames: 5.5 MB at 360p, 22 MB at 720p, against a few MB for a
  whole encoded clip): more disk, much less CPU per read.
A medium missing at build time is stored empty and a video that does not decode keeps its encoded
bytes; either is then skipped (counted) when read, as reading the JSON directly would.

Records are written in annotation order straight into the shards through TFDS's `SequentialWriter`,
so memory stays flat and builds of any size need no TensorFlow. (TFDS's `download_and_prepare`
shuffles through a buffer that spills to disk with `tf.io.gfile` past 1 GB, i.e. needs TensorFlow for
anything bigger; the pipeline shuffles anyway.) A build goes to a temporary dir renamed at the end,
so an interrupted one leaves nothing that reads. One dataset per `data_dir`: build each annotation
file (or each piece of a big one, in parallel processes) into its own dir and mix the sources.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import sequential_writer
from tqdm import tqdm

from data_pipelines.annotations import load_annotations, media_of
from data_pipelines.bad_data import SkipSample, log
from vllava_jax.errors import DataError
from data_pipelines.media import decode_video
from data_pipelines.sources import element

NAME = "video_llava_annotations"
VERSION = "1.1.0"
_TEXT = ("id", "origin", "conversations", "media_kind", "media_path")
_CHUNK_BYTES = 64 << 20  # records handed to the writer at once (it rewrites the metadata files per call)


def _features() -> tfds.features.FeaturesDict:
    data = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)  # noqa: E731  (bytes)
    return tfds.features.FeaturesDict({**{k: tfds.features.Text() for k in _TEXT}, "media": data(), "frames": data(),
                                       "frames_shape": tfds.features.Tensor(shape=(4,), dtype=np.int32)})


def dataset_dir(data_dir: epath.PathLike) -> epath.Path:
    """Where `build` puts the dataset under `data_dir` (TFDS's NAME/VERSION layout)."""
    return epath.Path(data_dir) / NAME / VERSION


def build(annotation_file: epath.PathLike, media_root: epath.PathLike, data_dir: epath.PathLike, *,
          video_frames: int | None = None, examples_per_shard: int = 1000, overwrite: bool = False,
          workers: int = 0) -> epath.Path:
    """Writes the dataset of `annotation_file` (media relative to `media_root`) under `data_dir`; returns its dir.

    `video_frames=N` stores each video's N sampled frames instead of the encoded file (N must be the
    processor's `num_frames`; reading checks it). `workers` > 0 reads and samples the media in that
    many processes (the records are the same). An existing dataset is kept unless `overwrite`.
    """
    target = dataset_dir(data_dir)
    if target.exists() and not overwrite:
        raise DataError(f"{target}: a dataset is already built here; pass --overwrite (overwrite=True) to rebuild it")
    entries = load_annotations(annotation_file)
    check_media(entries, epath.Path(media_root), str(annotation_file))
    partial = target.parent / f".{VERSION}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    identity = tfds.core.DatasetIdentity(name=NAME, version=tfds.core.Version(VERSION), data_dir=str(partial),
                                         module_name=__name__)
    info = tfds.core.DatasetInfo(builder=identity, features=_features(),
                                 description=f"{annotation_file} with media from {media_root}",
                                 metadata=tfds.core.MetadataDict(video_frames=video_frames or 0))
    writer = sequential_writer.SequentialWriter(info, max_examples_per_shard=examples_per_shard,
                                                file_format="array_record")
    writer.initialize_splits(["train"])
    chunk, size = [], 0
    jobs = ((entry, f"{annotation_file} entry {index}", epath.Path(media_root), video_frames)
            for index, entry in enumerate(entries))
    records = _in_order(_record, jobs, workers)
    for record in tqdm(records, total=len(entries), desc=f"building {target}", unit="sample", disable=None):
        chunk.append(record)
        size += len(record["media"]) + len(record["frames"])
        if size >= _CHUNK_BYTES:
            writer.add_examples({"train": chunk})
            chunk, size = [], 0
    if chunk:
        writer.add_examples({"train": chunk})
    writer.close_all()
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def check_media(entries: list[dict[str, Any]], media_root: epath.Path, annotation_file: str) -> None:
    """Fail when no medium the annotations name is under `media_root` (a wrong --media-root), warn when some are not."""
    named = [relpath for _, relpath in map(media_of, entries) if relpath]
    missing = [relpath for relpath in named if not (media_root / relpath).is_file()]
    if not missing:
        return
    first = ", ".join(str(media_root / m) for m in missing[:3])
    if len(missing) == len(named):
        raise DataError(f"none of the {len(named)} media {annotation_file} names are under --media-root {media_root} "
                        f"(first: {first}); check --media-root")
    log.warning("%d of %d media %s names are missing under %s (first: %s); they are stored empty and skipped in "
                "training", len(missing), len(named), annotation_file, media_root, first)


def _in_order(fn, jobs: Iterable[tuple], workers: int) -> Iterator:
    """`fn(*job)` for each job, in order, run by `workers` processes (0: here) at most 2 per worker ahead."""
    if not workers:
        yield from (fn(*job) for job in jobs)
        return
    # spawned, not forked: forking a process that runs JAX or Grain threads can deadlock
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.submit(fn, *job))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _record(entry: dict[str, Any], origin: str, media_root: epath.Path, video_frames: int | None) -> dict[str, Any]:
    kind, relpath = media_of(entry)
    path = media_root / relpath if relpath else None
    media = path.read_bytes() if path is not None and path.is_file() else b""
    frames = np.zeros((0, 0, 0, 3), np.uint8)
    if video_frames and kind == "video" and media:
        try:
            frames = decode_video(media, video_frames, str(path))
            media = b""
        except SkipSample as skip:  # kept encoded: reading skips it as the JSON path would
            log.warning("%s: %s; stored encoded", origin, skip)
    return {"id": str(entry.get("id", origin)), "origin": origin, "conversations": json.dumps(entry["conversations"]),
            "media_kind": kind, "media_path": relpath, "media": media, "frames": frames.tobytes(),
            "frames_shape": np.asarray(frames.shape, np.int32)}


class TfdsSource:
    """Random access over a built dataset, yielding the same elements as `sources.AnnotationSource`."""

    def __init__(self, data_dir: epath.PathLike, split: str = "train"):
        path = dataset_dir(data_dir)
        if not (path / "dataset_info.json").exists():
            raise DataError(f"{data_dir}: no {NAME} {VERSION} dataset here (expected {path}; see tfds_builder.build)")
        self.path = path
        self.records = tfds.builder_from_directory(str(path)).as_data_source(split=split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        text = {k: r[k].decode() for k in _TEXT}
        entry = {"id": text["id"], "conversations": json.loads(text["conversations"])}
        if text["media_kind"]:
            entry[text["media_kind"]] = text["media_path"]
        shape = tuple(int(n) for n in r["frames_shape"])
        frames = np.frombuffer(r["frames"], np.uint8).reshape(shape) if shape[0] else None
        return element(entry, text["origin"], media_path=text["media_path"], media_bytes=r["media"], frames=frames)

    def __repr__(self) -> str:
        return f"TfdsSource({self.path}, {len(self)} records)"
