"""TFDS ArrayRecord builder: pre-sampled frames with bad media, rebuild and interrupted builds, builds of
any size without TensorFlow. (The round trip against the JSON source is in test_data_pipeline.py.)"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tensorflow_datasets.core.shuffle

from data_pipelines import tfds_builder
from vllava_jax.errors import DataError
from data_pipelines.sources import AnnotationSource
from data_pipelines.tfds_builder import TfdsSource, build
from data_pipelines.transforms import ExampleTransform
from tests.media import write_clip
from tests.test_data_labels import data_checkpoint  # noqa: F401  (fixture)

TURNS = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "The woman smiles."}]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two good clips, a missing one and a corrupt one."""
    root = tmp_path_factory.mktemp("videos")
    (root / "media").mkdir()
    for n in range(2):
        write_clip(root / f"media/{n}.mp4", num_frames=12 + 5 * n, width=32, height=24)
    (root / "media/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    names = ["0", "1", "nope", "corrupt"]
    (root / "train.json").write_text(json.dumps([{"id": n, "video": f"media/{n}.mp4", "conversations": TURNS}
                                                 for n in names]))
    return root


def _map_all(source, transform):
    return [transform.map(source[i]) for i in range(len(source))]


def test_presampled_build_skips_bad_media_as_the_json_source_does(videos, data_checkpoint, tmp_path):  # noqa: F811
    build(videos / "train.json", videos, tmp_path, video_frames=8)
    source = TfdsSource(tmp_path)
    assert [source[i]["frames"] is not None for i in range(4)] == [True, True, False, False]
    assert source[3]["media_bytes"] == (videos / "media/corrupt.mp4").read_bytes()  # kept encoded
    transform = ExampleTransform(data_checkpoint, max_length=160)
    stored, direct = _map_all(source, transform), _map_all(AnnotationSource(videos / "train.json", videos), transform)
    for got, want in zip(stored, direct):
        assert got.keys() == want.keys()
        for key in want.keys() - {"skip_detail"}:  # the message names where each source found the file
            np.testing.assert_array_equal(got[key], want[key])
    assert [int(np.flatnonzero(x["skipped"])[0]) if "skipped" in x else None for x in stored] == [None, None, 0, 1]


def test_workers_write_the_same_records(videos, tmp_path):
    build(videos / "train.json", videos, tmp_path / "here", video_frames=8)
    build(videos / "train.json", videos, tmp_path / "pool", video_frames=8, workers=2)
    here, pool = TfdsSource(tmp_path / "here").records, TfdsSource(tmp_path / "pool").records
    assert len(here) == len(pool) == 4
    for i in range(4):
        assert here[i].keys() == pool[i].keys()
        for key in here[i]:
            np.testing.assert_array_equal(here[i][key], pool[i][key])


def test_frame_count_must_match_the_processor(videos, data_checkpoint, tmp_path):  # noqa: F811
    build(videos / "train.json", videos, tmp_path, video_frames=4)
    with pytest.raises(DataError, match=r"train.json entry 0: the dataset holds 4 frames .* takes 8: rebuild it "
                                        r"with video_frames=8"):
        ExampleTransform(data_checkpoint, max_length=160).map(TfdsSource(tmp_path)[0])


def test_existing_dataset_is_kept_unless_overwrite(videos, tmp_path):
    build(videos / "train.json", videos, tmp_path)
    with pytest.raises(DataError, match=r"already built here; pass --overwrite \(overwrite=True\)"):
        build(videos / "train.json", videos, tmp_path, video_frames=8)
    assert TfdsSource(tmp_path)[0]["frames"] is None
    build(videos / "train.json", videos, tmp_path, video_frames=8, overwrite=True)
    assert TfdsSource(tmp_path)[0]["frames"].shape == (8, 24, 32, 3)


def test_interrupted_build_leaves_nothing_that_reads(videos, tmp_path, monkeypatch):
    record = tfds_builder._record

    def failing(entry, *args):
        if entry["id"] == "nope":
            raise KeyboardInterrupt
        return record(entry, *args)

    monkeypatch.setattr(tfds_builder, "_record", failing)
    with pytest.raises(KeyboardInterrupt):
        build(videos / "train.json", videos, tmp_path)
    with pytest.raises(DataError, match="no video_llava_annotations .* dataset here"):
        TfdsSource(tmp_path)
    monkeypatch.setattr(tfds_builder, "_record", record)
    build(videos / "train.json", videos, tmp_path)
    assert len(TfdsSource(tmp_path)) == 4


def test_builds_of_any_size_need_no_tensorflow(videos, tmp_path, monkeypatch):
    """TFDS's download_and_prepare spills to tf.io.gfile past 1 GB; our writer never shuffles or spills."""
    monkeypatch.setattr(tensorflow_datasets.core.shuffle, "MAX_MEM_BUFFER_SIZE", 0)  # as if the build were huge
    entries = [{"id": str(i), "video": f"media/{i % 2}.mp4", "conversations": TURNS} for i in range(5)]
    (tmp_path / "big.json").write_text(json.dumps(entries))
    path = build(tmp_path / "big.json", videos, tmp_path / "tfds", examples_per_shard=2)
    assert len(list(path.glob("*.array_record-*"))) == 3
    source = TfdsSource(tmp_path / "tfds")
    assert [source[i]["id"] for i in range(5)] == [str(i) for i in range(5)]  # annotation order
    assert source[4]["media_bytes"] == (videos / "media/0.mp4").read_bytes()
    assert "tensorflow" not in sys.modules
