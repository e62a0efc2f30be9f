"""CLIP image transform, bit-for-bit the arithmetic of transformers' `VideoLlavaImageProcessor`.

Its recipe, step by step: RGB (transparency composited onto white), shortest side to `size` with
PIL bicubic on uint8 pixels, the long side `int(size * long / short)` (rounded down), center crop
at `(h - crop) // 2`, rescale in float64 then cast to float32, normalize in float32.
`pad_to_square` is the original project's `image_aspect_ratio=pad`: paste onto a square of the
mean color first, so nothing is cropped away.
"""

from __future__ import annotations

import numpy as np
from etils import epath
from PIL import Image

from vllava_jax.errors import InputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(image: str | epath.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """A file path, PIL image or (H, W[, C]) uint8 array -> an RGB PIL image."""
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        path = epath.Path(image)
        try:
            with path.open("rb") as f:
                image = Image.open(f)
                image.load()
        except FileNotFoundError:
            raise InputError(f"{path}: no such image file") from None
        except OSError as e:
            raise InputError(f"{path}: not a readable image ({e})") from None
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(f"image array has dtype {array.dtype}; pass uint8 pixels in [0, 255]")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(f"image array has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4), channels last")
    return Image.fromarray(array, mode="RGB" if array.shape[-1] == 3 else "RGBA")


def expand_to_square(image: Image.Image, mean=OPENAI_CLIP_MEAN) -> Image.Image:
    """The original's `expand2square`: centered on a square of the mean color (as 0-255 ints)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), tuple(int(m * 255) for m in mean))
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def resize_shortest_side(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    return image.resize((size, new_long) if w <= h else (new_long, size), resample=resample)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) -> (size, size, C); an image smaller than `size` is zero-padded around, as transformers does."""
    h, w = pixels.shape[:2]
    if h < size or w < size:
        padded = np.zeros((max(h, size), max(w, size), pixels.shape[2]), pixels.dtype)
        top, left = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
        padded[top:top + h, left:left + w] = pixels
        pixels, h, w = padded, *padded.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[top:top + size, left:left + size]


def normalize(pixels: np.ndarray, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32: x/255 in float64, then (x - mean) / std in float32."""
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    out = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.moveaxis(out, -1, -3)


def clip_transform(image, size: int = 224, crop_size: int | None = None, mean=OPENAI_CLIP_MEAN,
                   std=OPENAI_CLIP_STD, pad_to_square: bool = False, resample: int = Image.BICUBIC) -> np.ndarray:
    """One image (path, PIL or uint8 array) -> (3, crop, crop) float32, as `VideoLlavaImageProcessor` returns."""
    image = load_image(image)
    if pad_to_square:
        image = expand_to_square(image, mean)
    resized = np.asarray(resize_shortest_side(image, size, resample))
    return normalize(center_crop(resized, crop_size or size), mean, std)
