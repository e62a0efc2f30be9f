"""Decode the frames a Video-LLaVA model sees: `num_frames` sampled uniformly over the whole clip."""

from __future__ import annotations

import av
import numpy as np
from etils import epath

from vllava_jax.errors import VllavaError


class VideoError(VllavaError):
    """A video file that cannot be decoded into frames: missing, empty, corrupt or without video."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """The reference sampling: `np.linspace(0, total - 1, num_frames)` rounded down.

    Clips shorter than `num_frames` repeat frames rather than fail.
    """
    return np.linspace(0, total - 1, num_frames).astype(np.int64)


def read_frames(path: epath.PathLike, num_frames: int = 8) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames of the file's first video stream."""
    path = epath.Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot be decoded ({e})") from None
    if not frames:
        raise VideoError(f"{path}: holds no decodable frames")
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)])
