"""Figures drawn from data: training curves of M&M stages (one run, or seeds as a mean with a ± std band) beside each arm's final mIoU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnm.experiments.collect import read_curve_band, read_curves

#: figure titles of the curves stages log (:attr:`BaseStage.curve_metrics`); other curves show their key
CURVE_TITLES = {"loss": "training loss", "active_fraction": "active-triplet fraction", "triplet": "triplet term",
                "cross_image_fraction": "cross-image positive fraction"}


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


#: line styles and markers cycled with the colours, so that identical curves stay distinguishable
LINE_STYLES = ("-", "--", ":", "-.")


MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_mm_curves(
    series: Mapping[str, Path | Sequence[Path]], columns: Mapping[str, str], out: Path,
    miou: Mapping[str, float | None] | None = None, bar_colours: Sequence[str] | None = None,
) -> Path:
    """Save :func:`mm_figure` to ``out``."""
    fig = mm_figure(series, columns, miou, bar_colours)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out


def mm_figure(
    series: Mapping[str, Path | Sequence[Path]], columns: Mapping[str, str],
    miou: Mapping[str, float | None] | None = None, bar_colours: Sequence[str] | None = None,
) -> Any:
    """One panel per curve ``key -> CSV column`` vs step, one line per ``label -> CSV log`` (raw faint, smoothed)
    or ``label -> CSV logs`` of several seeds (their smoothed mean, a ± std band, n in the legend),
    and, given ``miou`` (``label -> mIoU`` in [0, 1]), a bar panel of the final mIoU per arm, coloured by
    ``bar_colours`` (default: one colour per bar; the lines are ``C0``, ``C1``, ... in the order of ``series``).

    Each line gets its own colour, line style and marker (placed at staggered steps), so
    curves that coincide, as the active fraction of every α = 2.1 run does, remain visible.
    """
    plt = pyplot()
    curves = len(columns) if series else 0
    panels = max(curves + (1 if miou else 0), 1)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    for i, (label, paths) in enumerate(series.items()):
        band = not isinstance(paths, str | Path)
        c = read_curve_band(paths, columns) if band else read_curves(Path(paths), columns)
        style = {"color": f"C{i}", "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
        for ax, key in zip(axes[:curves], columns, strict=True):
            ok = ~np.isnan(c[key])
            every = max(1, int(ok.sum()) // 6)
            mean = _smooth(c[key][ok])
            if band:
                spread = _smooth(c[f"{key}_std"][ok])
                ax.fill_between(c["step"][ok], mean - spread, mean + spread, color=style["color"], alpha=0.15)
            else:
                ax.plot(c["step"][ok], c[key][ok], color=style["color"], alpha=0.25, linewidth=0.8)
            ax.plot(c["step"][ok], mean, **style, marker=MARKERS[i % len(MARKERS)],
                    markevery=(i % every, every), markersize=4, label=f"{label} (n={c['n']})" if band else label)
    for ax, key in zip(axes[:curves], columns, strict=True):
        ax.set(title=CURVE_TITLES.get(key, key), xlabel="step")
        ax.grid(alpha=0.3)
    if curves:
        axes[0].legend(fontsize=8)
    if miou:
        ax = axes[-1]
        values = [100 * (v or 0.0) for v in miou.values()]
        ax.barh(range(len(miou)), values, color=list(bar_colours or (f"C{i}" for i in range(len(miou)))))
        for y, (v, raw) in enumerate(zip(values, miou.values(), strict=True)):
            ax.text(v, y, f" {v:.2f}" if raw is not None else " –", va="center", fontsize=8)
        ax.set_yticks(range(len(miou)), list(miou), fontsize=8)
        ax.invert_yaxis()
        ax.set(title="final mIoU (%)", xlim=(0, max([*values, 1.0]) * 1.2))
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
