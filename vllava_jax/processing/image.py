"""CLIP image transform: shortest side to `size` (bicubic), center crop, rescale, normalize."""

from __future__ import annotations

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def clip_transform(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """One RGB image (H, W, 3) -> (3, size, size) float32 normalized pixels."""
    image = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    resized = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), np.float32) / 255.0
    return ((crop - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD).transpose(2, 0, 1)
