"""The Grain pipeline on generated media: mixed batches, packing, resume, sharding, TFDS round trip, bad input."""

from __future__ import annotations

import json
import logging
import re

import grain
import numpy as np
import pytest
from PIL import Image

from data_pipelines.bad_data import SKIP_REASONS
from vllava_jax.errors import DataError
from data_pipelines.batching import BatchSpec
from data_pipelines.labels import IGNORE
from data_pipelines.pipeline import make_dataset
from data_pipelines.sources import AnnotationSource
from data_pipelines.tfds_builder import TfdsSource, build
from data_pipelines.transforms import ExampleTransform
from tests.media import write_clip
from tests.test_data_labels import data_checkpoint  # noqa: F401  (fixture)
from vllava_jax.processing import video as video_lib
from vllava_jax.processing.processor import Processor

KINDS = ("image", "video", "")  # sample n has KINDS[n % 3]
N = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_checkpoint):  # noqa: F811
    root = tmp_path_factory.mktemp("data")
    (root / "media").mkdir()
    entries = []
    for n in range(N):
        kind = KINDS[n % 3]
        entry = {"id": f"s{n}", "conversations": [
            {"from": "human", "value": (f"<{kind}>\n" if kind else "") + f"Describe sample {n}."},
            {"from": "gpt", "value": "The woman smiles." * (1 + n % 2)}]}
        if kind == "image":
            entry["image"] = f"media/{n}.png"
            Image.fromarray(np.full((30 + n, 40, 3), 20 * n, np.uint8)).save(root / entry["image"])
        elif kind == "video":
            entry["video"] = f"media/{n}.mp4"
            write_clip(root / entry["video"], num_frames=10 + n, width=32, height=32)
        entries.append(entry)
    (root / "train.json").write_text(json.dumps(entries))
    return root


def _dataset(data, ckpt, **kwargs):
    proc = Processor.from_pretrained(ckpt)
    kwargs = dict(shard=grain.sharding.NoSharding(), seed=3) | kwargs
    spec = BatchSpec.for_processor(proc, rows=kwargs.pop("rows", 4), max_length=kwargs.pop("max_length", 160),
                                   images_per_row=kwargs.pop("images_per_row", 1),
                                   videos_per_row=kwargs.pop("videos_per_row", 1))
    sources = kwargs.pop("sources", [AnnotationSource(data / "train.json", data)])
    transform = ExampleTransform(ckpt, max_length=spec.max_length, policy=kwargs.pop("policy", "skip"))
    return make_dataset(sources, transform, spec, **kwargs), proc


def _samples(batch, proc):
    """Sample numbers per row, in segment order (read back from the decoded question)."""
    out = []
    for row, seg in zip(batch["input_ids"], batch["segment_ids"]):
        out.append([int(re.search(r"sample (\d+)", proc.decode(row[seg == s])).group(1))
                    for s in range(1, seg.max() + 1)])
    return out


def test_mixed_batches_carry_the_right_pixels_to_the_right_slots(data, data_checkpoint):  # noqa: F811
    ds, proc = _dataset(data, data_checkpoint)
    cfg, seen = proc.config, []
    for batch in ds:
        assert batch["input_ids"].shape == (4, 160) and batch["pixel_values_videos"].shape == (4, 1, 8, 3, 28, 28)
        rows = _samples(batch, proc)
        seen += [n for row in rows for n in row]
        for kind, per in (("image", cfg.image_seq_length), ("video", cfg.video_seq_length(8))):
            token = proc.image_token_id if kind == "image" else proc.video_token_id
            for r, row in enumerate(rows):  # row r's slots take row r's own media
                media = [n for n in row if KINDS[n % 3] == kind]
                assert (batch["input_ids"][r] == token).sum() == per * len(media)
                assert batch[f"{kind}_valid"][r].tolist() == [bool(media)]
                for k, n in enumerate(media):
                    path = data / f"media/{n}.{'png' if kind == 'image' else 'mp4'}"
                    want = proc.preprocess_image(path) if kind == "image" else proc.preprocess_video(path)
                    np.testing.assert_array_equal(batch[f"pixel_values_{kind}s"][r, k], want)
                assert not batch[f"pixel_values_{kind}s"][r, len(media):].any()
        assert (batch["labels"][batch["input_ids"] == proc.image_token_id] == IGNORE).all()
    assert sorted(seen) == list(range(N))


def test_packing_keeps_samples_apart(data, data_checkpoint):  # noqa: F811
    single, proc = _dataset(data, data_checkpoint, rows=12)
    lengths = {}
    for batch in single:
        for row, n in zip(batch["attention_mask"], _samples(batch, proc)):
            lengths[n[0]] = int(row.sum()) if n else None
    packed, _ = _dataset(data, data_checkpoint, rows=2, pack=True, max_length=200, images_per_row=2)
    seen, rows_used = [], 0
    for batch in packed:
        assert batch["pixel_values_images"].shape[:2] == batch["image_valid"].shape == (2, 2)
        for r, row in enumerate(_samples(batch, proc)):
            for kind, per_row in (("image", 2), ("video", 1)):
                media = [n for n in row if KINDS[n % 3] == kind]
                assert len(media) <= per_row and batch[f"{kind}_valid"][r].sum() == len(media)
            seg, pos = batch["segment_ids"][r], batch["positions"][r]
            for s, n in enumerate(row, start=1):
                where = np.flatnonzero(seg == s)
                assert len(where) == lengths[n] and (np.diff(where) == 1).all()  # contiguous, whole sample
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))
                assert batch["input_ids"][r, where[0]] == proc.tokenizer.bos_token_id
                assert batch["labels"][r, where[0]] == IGNORE  # a shifted loss never crosses segments
            seen += row
            rows_used += bool(row)
    assert sorted(seen) == list(range(N))
    assert rows_used < N  # several samples did share a row


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_saved_iterator_state_resumes_at_the_next_example(data, data_checkpoint, workers):  # noqa: F811
    kwargs = dict(rows=2, pack=True, max_length=100, num_epochs=2,
                  num_workers=workers)
    ds, _ = _dataset(data, data_checkpoint, **kwargs)
    it = iter(ds)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip, as in a checkpoint
    expected = _take(it, 4)
    fresh = iter(_dataset(data, data_checkpoint, **kwargs)[0])
    fresh.set_state(state)
    _assert_same(_take(fresh, 4), expected)
    for i in (it, fresh):
        if workers:
            i.close()


def test_process_shards_are_disjoint_and_cover_the_data(data, data_checkpoint):  # noqa: F811
    shards = []
    for index in range(2):
        ds, proc = _dataset(data, data_checkpoint, shard=grain.sharding.ShardOptions(index, 2))
        shards.append({n for batch in ds for row in _samples(batch, proc) for n in row})
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(N))


@pytest.mark.parametrize("video_frames", [None, 8], ids=["encoded", "presampled"])
def test_tfds_array_record_round_trip(data, data_checkpoint, tmp_path, video_frames, monkeypatch):  # noqa: F811
    build(data / "train.json", data, tmp_path / "tfds", video_frames=video_frames)
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    json_source, tfds_source = AnnotationSource(data / "train.json", data), TfdsSource(tmp_path / "tfds")
    assert len(tfds_source) == len(json_source) == N
    transform = ExampleTransform(data_checkpoint, max_length=160)
    direct = {e["origin"]: transform.map(e) for e in (json_source[i] for i in range(N))}
    json_batches = list(_dataset(data, data_checkpoint)[0])
    if video_frames:  # the frames were sampled at build time: reading must not decode
        monkeypatch.setattr(video_lib, "decode_frames", lambda *a, **k: pytest.fail("decoded a pre-sampled video"))
    stored = {}
    for i in range(N):
        e = tfds_source[i]
        assert e["conversations"] == json_source.entries[int(e["id"][1:])]["conversations"]
        if video_frames and e["media_kind"] == "video":
            np.testing.assert_array_equal(e["frames"], video_lib.read_frames(data / e["media_path"], 8))
        stored[e["origin"]] = transform.map(e)
    assert direct.keys() == stored.keys()
    for origin in direct:
        _assert_same([direct[origin]], [stored[origin]])
    ds, proc = _dataset(data, data_checkpoint, sources=[tfds_source])
    tfds_batches = list(ds)
    assert sorted(n for batch in tfds_batches for row in _samples(batch, proc) for n in row) == list(range(N))
    _assert_same(tfds_batches, json_batches)  # same order too: same shuffle seed


@pytest.fixture(scope="module")
def bad_data(data):
    entries = json.loads((data / "train.json").read_text())[:3]
    (data / "media/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    entries += [
        {"id": "missing", "video": "media/nope.mp4", "conversations": entries[1]["conversations"]},
        {"id": "corrupt", "video": "media/corrupt.mp4", "conversations": entries[1]["conversations"]},
        {"id": "no_gpt", "conversations": [{"from": "human", "value": "Describe sample 99."}]},
    ]
    (data / "bad.json").write_text(json.dumps(entries))
    return data / "bad.json"


def test_bad_samples_are_skipped_counted_and_logged_once(data, data_checkpoint, bad_data, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    ds, proc = _dataset(data, data_checkpoint, sources=[AnnotationSource(bad_data, data)], num_epochs=2)
    skipped, seen = [], []
    for batch in ds:
        skipped.append(batch["skipped"])  # what the trainer sums into its `skipped_samples` scalar
        seen += [n for row in _samples(batch, proc) for n in row]
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]
    counts = dict(zip(SKIP_REASONS, np.sum(skipped, axis=0).tolist()))
    assert {r: c for r, c in counts.items() if c} == {"missing_media": 2, "corrupt_media": 2, "no_gpt_turn": 2}
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skips) == 3  # once per sample, not once per epoch
    assert any("bad.json entry 3" in m and "nope.mp4: no such file" in m for m in skips)
    assert any("bad.json entry 4" in m and "corrupt_media" in m for m in skips)


@pytest.mark.slow
def test_fail_policy_raises_in_the_trainer_process(data, data_checkpoint, bad_data):  # noqa: F811
    ds, _ = _dataset(data, data_checkpoint, sources=[AnnotationSource(bad_data, data)], policy="fail",
                     num_workers=1, rows=1)
    with pytest.raises(Exception, match=r"bad.json entry [345]"):
        for _ in ds:
            pass
    with pytest.raises(DataError, match="policy 'maybe'"):
        ExampleTransform(data_checkpoint, policy="maybe")
