"""Video frames a Video-LLaVA model sees: decode `num_frames` uniform samples, then one of two transforms.

Decoding seeks instead of decoding the whole clip: the packets are demuxed once (no decoding) to
learn every frame's timestamp and where the keyframes are; then for each sampled frame we seek to
the keyframe before it only when that skips frames, and decode forward to the exact timestamp,
letting the decoder drop every non-reference frame (most B-frames) that is not a sampled one.
The frames are the ones decoding everything and keeping `np.linspace(0, total - 1, n).astype(int)`
gives (the reference recipe); streams without timestamps fall back to decoding everything.
Frames are turned upright as ffmpeg's autorotate does (display matrix: rotation and mirroring).

Transforms:
- "hf": each frame like an image (transformers' `VideoLlavaImageProcessor`/`VideoLlavaVideoProcessor`).
- "original": the original project's LanguageBind video transform, on the whole clip in float32:
  x / 255, normalize, bilinear resize of the short side (no antialiasing), center crop. The
  original also flips clips horizontally at random even at inference; we do not unless asked.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from vllava_jax.errors import VllavaError
from vllava_jax.processing import image as image_lib

if TYPE_CHECKING:
    import av

VIDEO_TRANSFORMS = ("hf", "original")


class VideoError(VllavaError):
    """A video file that cannot be decoded into frames: missing, empty, corrupt or without video."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """The reference sampling: `np.linspace(0, total - 1, num_frames)` rounded down.

    Clips shorter than `num_frames` repeat frames rather than fail.
    """
    return np.linspace(0, total - 1, num_frames).astype(np.int64)


def upright(pixels: np.ndarray, display_matrix: np.ndarray | None) -> np.ndarray:
    """(H, W, C) pixels as ffmpeg's autorotate shows them, from the stream's 3x3 display matrix
    (FFmpeg's int32 layout, 16.16 fixed point): quarter turns, with a mirror where the matrix has one.

    Phones store portrait video as landscape frames plus this matrix; without it a model sees the
    scene on its side. Like ffmpeg we read the angle rounded to whole degrees; an angle that is not
    a multiple of 90 (ffmpeg interpolates those with its `rotate` filter) is left as decoded.
    """
    if display_matrix is None:
        return pixels
    m = display_matrix / 65536.0
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale_x == 0 or scale_y == 0:
        return pixels
    # clockwise degrees (minus av_display_rotation_get), rounded and wrapped to [0, 360) as ffmpeg's get_rotation
    theta = round(math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    transpose = lambda x: x.swapaxes(0, 1)  # noqa: E731
    if abs(theta - 90) < 1:  # ffmpeg: transpose=cclock_flip if m[3] > 0 else transpose=clock
        out = transpose(pixels) if display_matrix[3] > 0 else transpose(pixels)[:, ::-1]
    elif abs(theta - 180) < 1:  # hflip if m[0] < 0, vflip if m[4] < 0
        out = pixels[:, ::-1] if display_matrix[0] < 0 else pixels
        out = out[::-1] if display_matrix[4] < 0 else out
    elif abs(theta - 270) < 1:  # transpose=clock_flip if m[3] < 0 else transpose=cclock
        out = transpose(pixels)[::-1, ::-1] if display_matrix[3] < 0 else transpose(pixels)[::-1]
    elif abs(theta) < 1:  # vflip if m[4] < 0
        out = pixels[::-1] if display_matrix[4] < 0 else pixels
    else:
        out = pixels
    return np.ascontiguousarray(out)


def _rgb(frame: av.VideoFrame, rotate: bool) -> np.ndarray:
    pixels = frame.to_ndarray(format="rgb24")
    matrix = frame.side_data.get("DISPLAYMATRIX") if rotate else None
    return upright(pixels, None if matrix is None else np.frombuffer(bytes(matrix), np.int32))


def read_frames(path: epath.PathLike, num_frames: int = 8, rotate: bool = True) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames of the file's first video stream, sampled uniformly.

    `rotate` turns frames upright by the stream's display matrix (phone videos), as ffmpeg does by
    default; the reference recipe does not.
    """
    path = epath.Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir() or path.stat().length == 0:
        raise VideoError(f"{path}: is empty or a directory, not a video file")
    return _sample_file(str(path), str(path), num_frames, rotate)


def decode_frames(data: bytes, name: str, num_frames: int = 8, rotate: bool = True) -> np.ndarray:
    """`read_frames` on an encoded file held in memory (a dataset record); errors name `name`."""
    if not data:
        raise VideoError(f"{name}: is empty, not a video file")
    return _sample_file(io.BytesIO(data), name, num_frames, rotate)


def _sample_file(file, name: str, num_frames: int, rotate: bool) -> np.ndarray:
    import av  # PyAV: only where videos are decoded, so the model runs where it is not installed

    try:
        with av.open(file) as container:
            if not container.streams.video:
                raise VideoError(f"{name}: has no video stream")
            if is_still_image(container.format.name):  # and PyAV 18 crashes later on such frames' side data
                raise VideoError(f"{name}: is a still image ({container.format.name}), not a video; pass it as an "
                                 "image")
            frames = _read_sampled(container, num_frames, rotate)
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: cannot be decoded ({e})") from None
    if frames is None:
        raise VideoError(f"{name}: holds no decodable video frames")
    return frames


def is_still_image(demuxer: str) -> bool:
    """FFmpeg's demuxers of single pictures (png_pipe, jpeg_pipe, ..., image2); animated GIFs are videos."""
    return demuxer.endswith("_pipe") or demuxer.startswith("image2")


def _read_sampled(container, num_frames: int, rotate: bool) -> np.ndarray | None:
    stream = container.streams.video[0]
    pts, keyframes = [], []
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    pts.sort()
    if not pts or len(set(pts)) != len(pts):
        return _decode_all(container, stream, num_frames, rotate)
    total = stream.frames if stream.frames == len(pts) else len(pts)  # a container may lie about its count
    indices = sample_indices(total, num_frames)
    cursor = _Cursor(container, stream, sorted(keyframes), wanted={pts[i] for i in indices})
    got: dict[int, np.ndarray] = {}
    for target in sorted(cursor.wanted):
        frame = cursor.find(target)
        if frame is None:  # dropped as non-reference after all (its packet held other frames): again, no skipping
            cursor.skip_nonref = False
            frame = cursor.find(target, restart=True)
            cursor.skip_nonref = True
        if frame is None:  # the file lied (truncated, broken index): decode everything instead
            stream.codec_context.skip_frame = "DEFAULT"
            return _decode_all(container, stream, num_frames, rotate)
        got[target] = _rgb(frame, rotate)
    return np.stack([got[pts[i]] for i in indices])


class _Cursor:
    """Decodes forward through the stream, seeking only when a keyframe lies between the last decoded
    frame and the next target (else decoding on is cheaper). Packets of frames not `wanted` are
    decoded with non-reference frames dropped: nothing later depends on those."""

    def __init__(self, container, stream, keyframes: list[int], wanted: set[int]):
        self.container, self.stream, self.keyframes, self.wanted = container, stream, keyframes, wanted
        self.skip_nonref = True
        self.position = None  # pts of the last decoded frame; None = must seek
        self.frames = None

    def find(self, target: int, restart: bool = False) -> av.VideoFrame | None:
        """The decoded frame with pts `target`, or None if the stream skips past it or ends."""
        before = np.searchsorted(self.keyframes, target, side="right") - 1
        key = self.keyframes[max(before, 0)] if self.keyframes else None
        if restart or self.position is None or (key is not None and key > self.position) or target <= self.position:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            self.frames = self._decode()
        for frame in self.frames:
            self.position = frame.pts
            if frame.pts is None or frame.pts > target:
                return None
            if frame.pts == target:
                return frame
        self.position = None
        return None

    def _decode(self):
        context = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            context.skip_frame = "NONREF" if self.skip_nonref and packet.pts not in self.wanted else "DEFAULT"
            yield from packet.decode()


def _decode_all(container, stream, num_frames: int, rotate: bool) -> np.ndarray | None:
    container.seek(0)
    frames = [_rgb(f, rotate) for f in container.decode(stream)]
    if not frames:
        return None
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)])


# ---- transforms ----

def transform_hf(frames: np.ndarray, size: int = 224, crop_size: int | None = None, mean=image_lib.OPENAI_CLIP_MEAN,
                 std=image_lib.OPENAI_CLIP_STD) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, crop, crop) float32, each frame as `VideoLlavaImageProcessor` does it."""
    return np.stack([image_lib.clip_transform(f, size, crop_size, mean, std) for f in frames])


def transform_original(frames: np.ndarray, size: int = 224, mean=image_lib.OPENAI_CLIP_MEAN,
                       std=image_lib.OPENAI_CLIP_STD, flip: bool = False) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32, LanguageBind's inference transform.

    `flip=True` mirrors the clip, which the original does with probability 0.5 even at inference.
    """
    x = frames.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    h, w = x.shape[1:3]
    new_h, new_w = (size, int(math.floor(w / h * size))) if h < w else (int(math.floor(h / w * size)), size)
    x = _bilinear_resize(x, new_h, new_w)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[:, top:top + size, left:left + size]
    if flip:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _bilinear_resize(x: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """torch's `interpolate(mode="bilinear", align_corners=False, antialias=False)` on (T, H, W, C) float32."""

    def axis(n_in: int, n_out: int):
        # torch's float32 scale, but the source index rounded once (it compiles to a fused multiply-add)
        src = (np.arange(n_out) + 0.5) * np.float64(np.float32(n_in / n_out)) - 0.5
        src = np.maximum(src.astype(np.float32), 0)
        lo = np.minimum(src.astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (src - lo).astype(np.float32)
        return lo, hi, frac

    lo, hi, fy = axis(x.shape[1], new_h)
    x = x[:, lo] * (1 - fy)[None, :, None, None] + x[:, hi] * fy[None, :, None, None]
    lo, hi, fx = axis(x.shape[2], new_w)
    return x[:, :, lo] * (1 - fx)[None, None, :, None] + x[:, :, hi] * fx[None, None, :, None]
