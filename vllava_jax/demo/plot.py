"""The demo's figure: loss curves of the training stages beside held-out accuracy per question kind."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed (or wanted) on a training machine

from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib import ticker  # noqa: E402
from etils import epath  # noqa: E402

SIZE_INCHES, DPI = (9.0, 4.2), 100


def _plot_losses(axes, curves: dict[str, list[float]]) -> None:
    """Each curve against its own steps; a log y axis once the losses span more than 10x, since the
    second stage starts where the first ended and falls by orders of magnitude."""
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1.5)
    values = [v for curve in curves.values() for v in curve if math.isfinite(v) and v > 0]
    if values and max(values) / min(values) > 10:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ticker.LogFormatterMathtext())
    axes.set_title("training loss" + (" (log scale)" if axes.get_yscale() == "log" else ""))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()


def _plot_accuracy(axes, accuracy: dict[str, float], chance: float) -> None:
    names = list(accuracy)
    bars = axes.bar(names, [accuracy[n] for n in names], color="tab:orange", width=0.6)
    axes.bar_label(bars, labels=[f"{100 * accuracy[n]:.0f}%" for n in names], padding=2)
    axes.axhline(chance, color="gray", linestyle="--", linewidth=1)
    axes.annotate(f"chance ({100 * chance:.0f}%)", (1.0, chance), xycoords=("axes fraction", "data"),
                  xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", color="dimgray",
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    axes.set_ylim(0, 1.1)
    axes.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
    axes.set_title("held-out accuracy")
    axes.set_xlabel("question kind")
    axes.set_ylabel("accuracy")
    axes.grid(True, axis="y", alpha=0.3)


def write_plot(path: epath.PathLike, curves: dict[str, list[float]], accuracy: dict[str, float],
               chance: float = 0.25) -> epath.Path:
    """A 900x420 PNG with the loss `curves` (name -> loss per step) and `accuracy` (kind -> fraction) bars."""
    figure, (losses, bars) = plt.subplots(1, 2, figsize=SIZE_INCHES, dpi=DPI, layout="constrained",
                                          gridspec_kw={"width_ratios": [3, 2]})
    try:
        _plot_losses(losses, curves)
        _plot_accuracy(bars, accuracy, chance)
        path = epath.Path(path)
        with path.open("wb") as f:
            figure.savefig(f, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    return path
