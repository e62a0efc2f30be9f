"""Pixels of the synthetic shapes world: filled shapes drawn with Pillow, clips encoded with PyAV.

Real files on purpose: the demo and its tests then run the same decoding (PyAV seek + frame
sampling, PIL resize, CLIP normalization) as a real dataset does.
"""

from __future__ import annotations

import av
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (40, 40, 40)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, center: tuple[float, float], size: int) -> None:
    x, y, r = center[0], center[1], size / 2
    box = (x - r, y - r, x + r, y + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLORS[color])
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(objects: list[tuple[str, str, tuple[float, float]]], canvas: int, size: int) -> Image.Image:
    """One RGB frame holding `(shape, color, center)` objects."""
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape, color, center in objects:
        draw_shape(draw, shape, color, center, size)
    return image


def write_moving_clip(path: epath.Path, shape: str, color: str, start: tuple[float, float], direction: str,
                      canvas: int, size: int, frames: int, travel: float, fps: int = 8) -> None:
    """`frames` frames of one shape sliding `travel` pixels from `start` in `direction` (mpeg4, yuv420p)."""
    dx, dy = DIRECTIONS[direction]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = canvas
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(frames):
            t = travel * i / (frames - 1)
            frame = render([(shape, color, (start[0] + dx * t, start[1] + dy * t))], canvas, size)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")))
        container.mux(stream.encode())
