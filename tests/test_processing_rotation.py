"""Rotated and mirrored streams (display matrix, as phones write) come out as ffmpeg's autorotate shows them."""

from __future__ import annotations

import av
import numpy as np
import pytest

from tests import media
from vllava_jax.processing import video as video_lib

# PyAV's set_display_rotation: rotate counterclockwise by `degrees`, then mirror (hflip, vflip)
ORIENTATIONS = [(d, h, v) for d in (0, 90, 180, 270) for h, v in ((False, False), (True, False), (False, True))]


def _displayed(frame: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    out = np.rot90(frame, degrees // 90)
    out = out[:, ::-1] if hflip else out
    return out[::-1] if vflip else out


@pytest.mark.parametrize("display", ORIENTATIONS, ids=lambda d: f"{d[0]}deg{'_hflip' * d[1]}{'_vflip' * d[2]}")
def test_frames_come_out_as_displayed(tmp_path, display):
    path = tmp_path / "phone.mp4"
    media.write_clip(path, num_frames=20, width=48, height=32, display=display)
    stored = video_lib.read_frames(path, 8, rotate=False)
    everything = media.read_all_frames(path)  # the reference recipe ignores the matrix
    np.testing.assert_array_equal(stored, np.stack([everything[i] for i in np.linspace(0, 19, 8).astype(int)]))
    want = np.stack([_displayed(f, *display) for f in stored])
    got = video_lib.read_frames(path, 8)
    assert got.shape == want.shape == ((8, 48, 32, 3) if display[0] % 180 else (8, 32, 48, 3))
    np.testing.assert_array_equal(got, want)
    if display != (0, False, False) and got.shape == stored.shape:
        assert not np.array_equal(got, stored)  # the pattern is asymmetric enough to tell orientations apart


def _matrix(degrees_cw: float) -> np.ndarray:
    """av_display_rotation_set's fixed-point matrix for a clockwise angle (it rotates by -angle)."""
    r = np.radians(-degrees_cw)
    m = np.zeros(9, np.int64)
    m[0], m[1], m[3], m[4] = (round(65536 * np.cos(r)), round(65536 * -np.sin(r)), round(65536 * np.sin(r)),
                              round(65536 * np.cos(r)))
    m[8] = 1 << 30
    return m.astype(np.int32)


def test_upright_by_matrix():
    pixels = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1)  # [[0 1 2] [3 4 5]]
    np.testing.assert_array_equal(video_lib.upright(pixels, None), pixels)
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(0)), pixels)
    # the display turns the frame counterclockwise by av_display_rotation_get = -(clockwise matrix angle)
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(-90))[..., 0], [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(90))[..., 0], [[3, 0], [4, 1], [5, 2]])
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(180))[..., 0], [[5, 4, 3], [2, 1, 0]])
    # a phone's rotation with fixed-point rounding (89.9996 degrees) still counts as a quarter turn
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(89.9996)), video_lib.upright(pixels, _matrix(90)))
    # odd angles (ffmpeg interpolates them) and singular matrices are left as decoded
    np.testing.assert_array_equal(video_lib.upright(pixels, _matrix(45)), pixels)
    np.testing.assert_array_equal(video_lib.upright(pixels, np.zeros(9, np.int32)), pixels)


def test_matrix_written_by_pyav_is_what_frames_carry(tmp_path):
    """The decoder hands the container's matrix to every frame (what `read_frames` reads)."""
    path = tmp_path / "rot.mp4"
    media.write_clip(path, num_frames=3, display=(90, False, False))
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 90
        np.testing.assert_array_equal(np.frombuffer(bytes(frame.side_data["DISPLAYMATRIX"]), np.int32), _matrix(-90))
