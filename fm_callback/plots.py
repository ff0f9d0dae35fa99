"""The end-of-fit pictures: the dead-filter timeline, the layer change heatmap and the layer similarity matrix.

Each is a matplotlib figure built without pyplot, on its own Agg canvas (the user's backend and pyplot's figures
are left alone, and nothing needs closing), or that figure rendered to ``uint8 [H, W, 3]`` for TensorBoard.
``tensorboard.py`` logs them at the end of a fit and ``report.py`` saves them for ``fm-callback report --plot``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure


def timeline_figure(history: list[dict[str, Any]], title: str | None = None) -> Figure:
    """A matplotlib figure: one row per layer, one column per probe event, the % of dead channels as colour.

    ``history`` is a list of ``{"step", "epoch", "dead_fraction": {layer: fraction}}``, one per event. Cells show
    the percentage when the grid is small enough to read it."""
    layers, values = _by_layer(history, "dead_fraction")
    fig, ax, colorbar = _heatmap(100 * values, layers, history, "YlOrRd", Normalize(0, 100), "{:.3g}%", "dead (%)")
    ax.set_title(title or "dead filters: % of each layer's channels", fontsize=10)
    colorbar.ax.yaxis.set_major_formatter("{x:.0f}%")
    return fig


def change_figure(history: list[dict[str, Any]], title: str | None = None) -> Figure:
    """Layers x probe events, each layer's representation change since the previous event (1 - CKA) as colour.

    ``history`` is a list of ``{"step", "epoch", "change": {layer: value}}``, one per event after the first. A layer
    that has settled turns pale; when layers settle bottom-up the pale region spreads from the top rows (the first
    layers) down. The colour scale is logarithmic from 1e-4 to 1, so small changes stay apart.
    """
    layers, values = _by_layer(history, "change")
    values = values.clip(min=1e-4)  # 0 (a frozen layer) shows as the palest colour, not as a missing cell
    fig, ax, _ = _heatmap(values, layers, history, "magma_r", LogNorm(1e-4, 1), "{:.2g}", "1 - CKA(previous, now)")
    ax.set_title(title or "layer change: 1 - CKA with the previous probe event", fontsize=10)
    return fig


def similarity_figure(names: list[str], cka: Any, title: str | None = None) -> Figure:
    """The layer x layer matrix of debiased linear CKA at one event (1: the two layers see the samples alike)."""
    matrix = np.array(cka, dtype=float)
    size = min(16.0, 2.5 + 0.28 * len(names) + 0.065 * max((len(n) for n in names), default=0))
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=90)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title or "layer similarity: debiased linear CKA at the last event", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, aspect=30, label="CKA")
    return fig


def _by_layer(history: list[dict[str, Any]], key: str) -> tuple[list[str], np.ndarray]:
    """The layers of ``history`` in order of appearance, and their ``event[key][layer]`` as [layers, events]."""
    layers = list(dict.fromkeys(name for event in history for name in event[key]))
    values = np.array([[event[key].get(name, np.nan) for event in history] for name in layers], dtype=float)
    return layers, values.reshape(len(layers), len(history))


def _heatmap(
    values: np.ndarray, layers: list[str], history: list[dict[str, Any]], cmap: str, norm: Any, cell: str, label: str
) -> tuple[Figure, Any, Any]:
    """A layers x events heatmap on its own Agg canvas (no pyplot), each cell written with ``cell`` while the grid
    is small enough to read it; returns the figure, its axes and its colour bar."""
    names_width = 0.065 * max((len(name) for name in layers), default=0)  # inches of 8 pt tick labels
    width = min(16.0, names_width + max(3.5, 0.55 * len(history)) + 1.8)
    fig = Figure(figsize=(width, max(2.5, 0.3 * len(layers) + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = colormaps[cmap].with_extremes(bad="0.85")  # grey: the layer was not probed at that event
    image = ax.imshow(values, aspect="auto", cmap=colours, norm=norm, interpolation="nearest")
    if len(layers) <= 40 and len(history) <= 24:
        for (row, col), value in np.ndenumerate(values):
            if not np.isnan(value):
                ink = _ink(colours(norm(value)))
                ax.text(col, row, cell.format(value), ha="center", va="center", fontsize=7, color=ink)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ticks = list(range(0, len(history), max(1, len(history) // 12)))
    ax.set_xticks(ticks, [f"{history[i]['step']}\nep {history[i]['epoch']}" for i in ticks], fontsize=7)
    ax.set_xlabel("probe event (global step, epoch)")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, aspect=30, label=label)
    return fig, ax, colorbar


def _rendered(fig: Figure) -> np.ndarray:
    """``fig`` rendered at its own 100 dpi: uint8 RGB, [H, W, 3] (``add_image(..., dataformats="HWC")``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def timeline_image(history: list[dict[str, Any]], title: str | None = None) -> np.ndarray:
    """``timeline_figure`` as uint8 RGB [H, W, 3]."""
    return _rendered(timeline_figure(history, title))


def change_image(history: list[dict[str, Any]], title: str | None = None) -> np.ndarray:
    """``change_figure`` as uint8 RGB [H, W, 3]."""
    return _rendered(change_figure(history, title))


def similarity_image(names: list[str], cka: Any, title: str | None = None) -> np.ndarray:
    """``similarity_figure`` as uint8 RGB [H, W, 3]."""
    return _rendered(similarity_figure(names, cka, title))


def _ink(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (WCAG relative luminance)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.179 else "white"
