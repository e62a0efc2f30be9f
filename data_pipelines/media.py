"""Encoded media bytes -> uint8 pixels, with failures turned into counted skips.

Everything is decoded from bytes, so a file on disk and a record in ArrayRecord go through one
code path; videos whose frames were sampled when the record was built are not decoded again.
Frame sampling is `vllava_jax.processing.video`'s seeking decoder (identical frames to the
reference recipe).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from data_pipelines.bad_data import SkipSample
from vllava_jax.errors import DataError
from vllava_jax.processing import video as video_lib


def read_media(element: dict[str, Any]) -> bytes:
    """The element's encoded medium: from its record, else (no record) from its file."""
    data = element["media_bytes"]
    if data is None:
        try:
            data = epath.Path(element["media_path"]).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise SkipSample("missing_media", f"{element['media_path']}: no such file") from None
    if not data:
        raise SkipSample("missing_media", f"{element['media_path'] or 'record'}: empty {element['media_kind']}")
    return data


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, Image.DecompressionBombError) as e:
        raise SkipSample("corrupt_media", f"{where}: not a readable image ({e})") from None
    return image


def video_frames(element: dict[str, Any], num_frames: int, where: str) -> np.ndarray:
    """(num_frames, H, W, 3) uint8: the frames sampled when the record was built, else decoded now."""
    frames = element["frames"]
    if frames is None:
        return decode_video(read_media(element), num_frames, where)
    if len(frames) != num_frames:
        raise DataError(f"{element['origin']}: the dataset holds {len(frames)} frames per video, sampled when it was "
                        f"built; the processor takes {num_frames}: rebuild it with video_frames={num_frames}")
    return frames


def decode_video(data: bytes, num_frames: int, where: str) -> np.ndarray:
    """(num_frames, H, W, 3) uint8, sampled as `vllava_jax.processing.video.read_frames` samples."""
    try:
        return video_lib.decode_frames(data, where, num_frames)
    except video_lib.VideoError as e:
        raise SkipSample("corrupt_media", str(e)) from None
