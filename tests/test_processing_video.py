"""Seeking decoder vs the reference recipe (decode every frame, keep linspace indices); bad files."""

from __future__ import annotations

import numpy as np
import pytest

from tests import media
from vllava_jax.errors import VllavaError
from vllava_jax.processing import video as video_lib
from vllava_jax.processing.video import VideoError

CLIPS = {
    "h264_bframes.mp4": dict(num_frames=100, gop=12),
    "h264_long_gop.mp4": dict(num_frames=90, gop=250),
    "h264_nonref_bframes.mp4": dict(num_frames=100, gop=30, nonref_bframes=True),
    "mpeg4.mp4": dict(num_frames=61, codec="mpeg4", gop=10),
    "vp9.webm": dict(num_frames=50, codec="libvpx-vp9", gop=16),
    "animated.gif": dict(num_frames=20, codec="gif", fps=10),
    "variable_rate.mp4": dict(num_frames=40, vfr=True),
    "with_audio.mp4": dict(num_frames=30, audio=True),
    "three_frames.mp4": dict(num_frames=3),
    "one_frame.mp4": dict(num_frames=1),
}


@pytest.mark.parametrize("name", CLIPS)
def test_frames_match_reference_recipe(tmp_path, name, monkeypatch):
    path = tmp_path / name
    media.write_clip(path, **CLIPS[name])
    everything = media.read_all_frames(path)
    assert len(everything) == CLIPS[name]["num_frames"]
    indices = np.linspace(0, len(everything) - 1, 8).astype(int)  # the reference sampling, written out
    want = np.stack([everything[i] for i in indices])
    monkeypatch.setattr(video_lib, "_decode_all", lambda *a: pytest.fail("fell back to decoding everything"))
    got = video_lib.read_frames(path, 8)
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_short_clip_repeats_frames(tmp_path):
    path = tmp_path / "short.mp4"
    media.write_clip(path, num_frames=3)
    frames = video_lib.read_frames(path, 8)
    everything = media.read_all_frames(path)
    for got, i in zip(frames, [0, 0, 0, 0, 1, 1, 1, 2]):
        np.testing.assert_array_equal(got, everything[i])


def test_header_without_frame_count(tmp_path):
    """WebM stores no frame count (the reference recipe's `stream.frames` is 0): the packets give it."""
    import av

    path = tmp_path / "clip.webm"
    media.write_clip(path, num_frames=33, codec="libvpx-vp9")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    everything = media.read_all_frames(path)
    want = np.stack([everything[i] for i in np.linspace(0, 32, 8).astype(int)])
    np.testing.assert_array_equal(video_lib.read_frames(path, 8), want)


def _corrupt(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _truncated(path):
    media.write_clip(path, num_frames=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


BAD = {
    "missing.mp4": (lambda p: None, "no such file"),
    "empty.mp4": (lambda p: p.write_bytes(b""), "empty"),
    "corrupt.mp4": (_corrupt, "cannot be decoded"),
    "truncated.mp4": (_truncated, "cannot be decoded|no decodable"),
    "audio_only.m4a": (media.write_audio_only, "no video stream"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_files_raise_video_error_naming_the_file(tmp_path, name):
    make, reason = BAD[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(VideoError, match=rf"{name}.*({reason})") as info:
        video_lib.read_frames(path)
    assert isinstance(info.value, VllavaError)


def test_truncated_after_header_still_gives_the_decodable_frames(tmp_path):
    """moov first (faststart), data cut: what decodes is sampled, nothing hangs."""
    path = tmp_path / "cut.mp4"
    media.write_clip(path, num_frames=60)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    try:
        frames = video_lib.read_frames(path)
    except VideoError as e:
        assert "cut.mp4" in str(e)
    else:
        assert frames.shape[0] == 8


def test_sample_dropped_as_non_reference_is_decoded_again(tmp_path, monkeypatch):
    """If a sampled B-frame is dropped anyway (its packet held other frames, as packed B-frames do),
    the decoder goes back and decodes it without dropping; no fallback to decoding everything."""
    path = tmp_path / "bframes.mp4"
    media.write_clip(path, num_frames=100, gop=30, nonref_bframes=True)
    everything = media.read_all_frames(path)
    want = np.stack([everything[i] for i in np.linspace(0, 99, 8).astype(int)])

    def drop_every_non_reference(self):
        for packet in self.container.demux(self.stream):
            self.stream.codec_context.skip_frame = "NONREF" if self.skip_nonref else "DEFAULT"
            yield from packet.decode()

    retries = []
    find = video_lib._Cursor.find
    monkeypatch.setattr(video_lib._Cursor, "_decode", drop_every_non_reference)
    monkeypatch.setattr(video_lib._Cursor, "find", lambda self, t, restart=False: retries.append(restart) or find(
        self, t, restart))
    monkeypatch.setattr(video_lib, "_decode_all", lambda *a: pytest.fail("fell back to decoding everything"))
    np.testing.assert_array_equal(video_lib.read_frames(path, 8), want)
    assert any(retries)  # some samples are non-reference B-frames, dropped the first time


def test_in_memory_file_errors_name_it():
    with pytest.raises(VideoError, match="record 7: is empty"):
        video_lib.decode_frames(b"", "record 7")
    with pytest.raises(VideoError, match="record 7: cannot be decoded"):
        video_lib.decode_frames(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "record 7")
