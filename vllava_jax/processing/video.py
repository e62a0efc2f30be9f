"""Video frames a Video-LLaVA model sees: decode `num_frames` uniform samples, then one of two transforms.

Decoding seeks instead of decoding the whole clip: the packets are demuxed once (no decoding) to
learn every frame's timestamp and where the keyframes are; then for each sampled frame we seek to
the keyframe before it only when that skips frames, and decode forward to the exact timestamp.
The frames are the ones decoding everything and keeping `np.linspace(0, total - 1, n).astype(int)`
gives (the reference recipe); streams without timestamps fall back to decoding everything.

Transforms:
- "hf": each frame like an image (transformers' `VideoLlavaImageProcessor`/`VideoLlavaVideoProcessor`).
- "original": the original project's LanguageBind video transform, on the whole clip in float32:
  x / 255, normalize, bilinear resize of the short side (no antialiasing), center crop. The
  original also flips clips horizontally at random even at inference; we do not unless asked.
"""

from __future__ import annotations

import math

import av
import numpy as np
from etils import epath

from vllava_jax.errors import VllavaError
from vllava_jax.processing import image as image_lib

VIDEO_TRANSFORMS = ("hf", "original")


class VideoError(VllavaError):
    """A video file that cannot be decoded into frames: missing, empty, corrupt or without video."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """The reference sampling: `np.linspace(0, total - 1, num_frames)` rounded down.

    Clips shorter than `num_frames` repeat frames rather than fail.
    """
    return np.linspace(0, total - 1, num_frames).astype(np.int64)


def _rgb(frame: av.VideoFrame, rotate: bool) -> np.ndarray:
    pixels = frame.to_ndarray(format="rgb24")
    turns = round(frame.rotation / 90) % 4 if rotate else 0  # display matrix angle, counterclockwise
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def read_frames(path: epath.PathLike, num_frames: int = 8, rotate: bool = True) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames of the file's first video stream, sampled uniformly.

    `rotate` applies the stream's display rotation (phone videos); the reference recipe does not.
    """
    path = epath.Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir() or path.stat().length == 0:
        raise VideoError(f"{path}: is empty or a directory, not a video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: has no video stream")
            frames = _read_sampled(container, num_frames, rotate)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot be decoded ({e})") from None
    if frames is None:
        raise VideoError(f"{path}: holds no decodable video frames")
    return frames


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
    wanted = sorted({pts[i] for i in indices})
    keyframes.sort()
    # Frames well before a target are decoded only to rebuild the references it needs: let the
    # decoder drop non-reference frames (most B-frames) there, and decode everything near it.
    step = int(np.median(np.diff(pts))) if len(pts) > 1 else 1
    near = step * (max(stream.codec_context.has_b_frames, 2) + 4)
    got: dict[int, np.ndarray] = {}
    position = None  # pts of the last decoded frame; None = must seek
    skip_before = [None]  # read by the decoder at every packet
    for target in wanted:
        for skipping in (True, False):  # a target dropped as non-reference is decoded again without skipping
            skip_before[0] = target - near if skipping else None
            key = keyframes[max(np.searchsorted(keyframes, target, side="right") - 1, 0)] if keyframes else None
            if position is None or (key is not None and key > position) or target <= position:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                decoder = _decode_skipping(container, stream, skip_before)
            for frame in decoder:
                position = frame.pts
                if frame.pts is None or frame.pts > target:
                    break
                if frame.pts == target:
                    got[target] = _rgb(frame, rotate)
                    break
            else:
                position = None
            if target in got:
                break
            position = None
        if target not in got:  # the file lied (truncated, broken index): decode everything instead
            stream.codec_context.skip_frame = "DEFAULT"
            return _decode_all(container, stream, num_frames, rotate)
    return np.stack([got[pts[i]] for i in indices])


def _decode_skipping(container, stream, skip_before: list[int | None]):
    """Decoded frames of `stream` from the current position; packets before `skip_before[0]` (pts)
    are decoded with non-reference frames dropped."""
    context = stream.codec_context
    for packet in container.demux(stream):
        far = skip_before[0] is not None and packet.pts is not None and packet.pts < skip_before[0]
        context.skip_frame = "NONREF" if far else "DEFAULT"
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
