"""The demo's figure drawn with Pillow alone (matplotlib is not a dependency): loss curves of the
training stages on one axis, accuracy per question kind as bars beside it."""

from __future__ import annotations

import math

from etils import epath
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 900, 420
CURVE_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
BAR_COLOR, CHANCE_COLOR, AXIS_COLOR, GRID_COLOR = (255, 127, 14), (120, 120, 120), (0, 0, 0), (225, 225, 225)


def _frame(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, x_label: str, y_label: str,
           y_ticks: list[tuple[float, str]]) -> None:
    """Axes, horizontal grid lines at `y_ticks` (fraction of the height, label), title and labels."""
    left, top, right, bottom = box
    for fraction, label in y_ticks:
        y = bottom - fraction * (bottom - top)
        draw.line([(left, y), (right, y)], fill=GRID_COLOR)
        draw.text((left - 6, y), label, fill=AXIS_COLOR, anchor="rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOR, width=2)
    draw.text(((left + right) / 2, top - 18), title, fill=AXIS_COLOR, anchor="mm")
    draw.text(((left + right) / 2, bottom + 28), x_label, fill=AXIS_COLOR, anchor="mm")
    draw.text((left - 44, top - 18), y_label, fill=AXIS_COLOR, anchor="lm")


def _losses(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], curves: dict[str, list[float]]) -> None:
    """Each curve against its own step count; y is log-scaled when the losses span more than 10x."""
    left, top, right, bottom = box
    values = [v for c in curves.values() for v in c if math.isfinite(v) and v > 0]
    lo, hi = min(values), max(values)
    log = hi / lo > 10
    f = math.log10 if log else (lambda v: v)
    span = (f(hi) - f(lo)) or 1.0
    ticks = [(i / 4, f"{10 ** (f(lo) + i / 4 * span) if log else lo + i / 4 * span:.2g}") for i in range(5)]
    longest = max(len(c) for c in curves.values())
    _frame(draw, box, "training loss" + (" (log scale)" if log else ""), f"step (1..{longest})", "loss", ticks)
    for k, (name, curve) in enumerate(curves.items()):
        points = [(left + (i / max(longest - 1, 1)) * (right - left), bottom - (f(v) - f(lo)) / span * (bottom - top))
                  for i, v in enumerate(curve) if math.isfinite(v) and v > 0]
        color = CURVE_COLORS[k % len(CURVE_COLORS)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        draw.line([(right - 110, top + 12 + 16 * k), (right - 90, top + 12 + 16 * k)], fill=color, width=3)
        draw.text((right - 84, top + 12 + 16 * k), name, fill=AXIS_COLOR, anchor="lm")


def _accuracy(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], accuracy: dict[str, float],
              chance: float) -> None:
    left, top, right, bottom = box
    _frame(draw, box, "held-out accuracy", "question kind", "accuracy",
           [(i / 4, f"{25 * i}%") for i in range(5)])
    slot = (right - left) / max(len(accuracy), 1)
    for i, (name, value) in enumerate(accuracy.items()):
        x0, x1 = left + slot * i + slot * 0.2, left + slot * (i + 1) - slot * 0.2
        y = bottom - value * (bottom - top)
        draw.rectangle([x0, y, x1, bottom], fill=BAR_COLOR)
        draw.text(((x0 + x1) / 2, y - 8), f"{100 * value:.0f}%", fill=AXIS_COLOR, anchor="mm")
        draw.text(((x0 + x1) / 2, bottom + 10), name, fill=AXIS_COLOR, anchor="mm")
    y = bottom - chance * (bottom - top)
    draw.line([(left, y), (right, y)], fill=CHANCE_COLOR, width=1)
    draw.text((right, y - 8), "chance", fill=CHANCE_COLOR, anchor="rm")


def write_plot(path: epath.PathLike, curves: dict[str, list[float]], accuracy: dict[str, float],
               chance: float = 0.25) -> epath.Path:
    """A PNG with the loss `curves` (name -> loss per step) and `accuracy` (kind -> fraction) bars."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _losses(draw, (70, 50, 520, 360), curves)
    _accuracy(draw, (620, 50, 870, 360), accuracy, chance)
    path = epath.Path(path)
    with path.open("wb") as f:
        image.save(f, format="PNG")
    return path
