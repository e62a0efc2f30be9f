"""Media URLs of a chat request -> preprocessed pixels keyed by content, as `Processor` prepares them.

A URL is a `data:` URL (base64, what browsers and the `openai` client send) or a `file://` path
inside `--media-root` (never outside it, symlinks resolved first; without `--media-root` no file is
readable). Nothing is downloaded. The encoded bytes are hashed into the feature cache's key, so
the same video uploaded twice runs the towers once whatever its name. Decoding (PyAV, Pillow) runs
on the request's thread, never on the engine's.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import urllib.parse

import numpy as np
from PIL import Image

from vllava_jax.features import FeatureCache
from vllava_jax.processing import video as video_lib
from vllava_jax.processing.processor import Processor
from vllava_jax.serve.api_errors import bad_request
from vllava_jax.serve.engine import Medium

# OpenAI content part type -> medium kind (`video_url` is vLLM's convention; OpenAI has none).
PART_KINDS = {"image_url": "image", "video_url": "video"}


@dataclasses.dataclass(frozen=True)
class MediaReference:
    """One medium a request names: its kind, URL, and where in the request (for error messages)."""

    kind: str
    url: str
    param: str


class MediaLoader:
    def __init__(self, processor: Processor, cache: FeatureCache, media_root: str | None = None):
        self.processor, self.cache = processor, cache
        self.media_root = None if media_root is None else os.path.realpath(media_root)

    def load(self, ref: MediaReference) -> Medium:
        """Read, decode and preprocess one medium; a URL or file the server cannot use is a 400 naming `ref.param`."""
        data = self.read(ref)
        return Medium(self.cache.bytes_key(ref.kind, data), self.pixels(ref, data))

    def read(self, ref: MediaReference) -> bytes:
        scheme = ref.url.split(":", 1)[0].lower() if ":" in ref.url else ""
        if scheme == "data":
            return _data_url_bytes(ref)
        if scheme == "file":
            return self._file_bytes(ref)
        raise bad_request(f"{ref.param}: only data: (base64) and file:// URLs are supported, got "
                          f"{ref.url[:40]!r}", ref.param)

    def pixels(self, ref: MediaReference, data: bytes) -> np.ndarray:
        """(3, S, S) for an image, (T, 3, S, S) for a video, float32, as `Processor` preprocesses them."""
        if ref.kind == "image":
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    return self.processor.preprocess_image(image)
            except (OSError, Image.DecompressionBombError, ValueError) as e:
                raise bad_request(f"{ref.param}: not a readable image ({e})", ref.param) from None
        try:
            frames = video_lib.decode_frames(data, ref.param, self.processor.num_frames)
        except video_lib.VideoError as e:
            raise bad_request(str(e), ref.param) from None
        return self.processor.preprocess_video(frames)

    def _file_bytes(self, ref: MediaReference) -> bytes:
        parsed = urllib.parse.urlparse(ref.url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"{ref.param}: file:// URL names host {parsed.netloc!r}; only local files are read",
                              ref.param)
        if self.media_root is None:
            raise bad_request(f"{ref.param}: file:// URLs are refused: the server was started without --media-root",
                              ref.param)
        path = os.path.realpath(urllib.parse.unquote(parsed.path))
        if os.path.commonpath([path, self.media_root]) != self.media_root:
            raise bad_request(f"{ref.param}: {urllib.parse.unquote(parsed.path)} is outside --media-root", ref.param)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise bad_request(f"{ref.param}: no such file {urllib.parse.unquote(parsed.path)}", ref.param) from None
        except OSError as e:
            raise bad_request(f"{ref.param}: cannot read {urllib.parse.unquote(parsed.path)} ({e.strerror})",
                              ref.param) from None


def _data_url_bytes(ref: MediaReference) -> bytes:
    header, sep, payload = ref.url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise bad_request(f"{ref.param}: a data: URL must be base64 (data:<type>;base64,<data>)", ref.param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{ref.param}: the data: URL's payload is not valid base64", ref.param) from None
    if not data:
        raise bad_request(f"{ref.param}: the data: URL is empty", ref.param)
    return data


def preview_frames(processor: Processor, pixels: np.ndarray) -> list[str]:
    """Preprocessed pixels back to PNG data URLs, one per frame (an image is one frame): what the towers see."""
    frames = pixels[None] if pixels.ndim == 3 else pixels
    mean, std = np.asarray(processor.mean, np.float32), np.asarray(processor.std, np.float32)
    urls = []
    for frame in frames:
        rgb = np.clip((np.moveaxis(frame, 0, -1) * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return urls
