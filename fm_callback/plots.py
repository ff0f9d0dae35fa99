"""The end-of-fit pictures: the dead-filter timeline, the layer change heatmap and the layer similarity matrix.

Each picture is first a :class:`Chart` (the cells, their labels and colours, and the layout in inches), then drawn
two ways from it: as a matplotlib figure on its own Agg canvas (``*_figure``, for ``fm-callback report --plot``;
the user's backend and pyplot's figures are left alone), or straight to ``uint8 [H, W, 3]`` pixels with numpy and
PIL (``*_image``, for TensorBoard at the end of a fit: matplotlib took about 1 s for the three, mostly laying out
text). Both have the same size and layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

DPI = 100
BAR = 1.25  # inches right of the plot: the colour bar, its ticks and its label


@dataclass
class Chart:
    """One heatmap: ``values`` [rows, columns] through ``norm`` and ``cmap``, cells written with ``cell`` (or not),
    row and column labels (columns at ``column_ticks``), a colour bar with ``bar_ticks``; sizes in inches."""

    values: np.ndarray
    cmap: Any
    norm: Any
    rows: list[str]
    row_size: int
    column_ticks: list[int]
    columns: list[str]
    column_size: int
    title: str
    xlabel: str
    bar_label: str
    bar_ticks: list[tuple[float, str]]
    width: float
    height: float
    left: float
    bottom: float
    top: float = 0.35
    cell: str | None = None
    rotate_columns: bool = False

    def box(self) -> tuple[float, float, float, float]:
        """The plot area (left, bottom, width, height) in inches."""
        return (
            self.left,
            self.bottom,
            max(0.5, self.width - self.left - BAR),
            max(0.5, self.height - self.bottom - self.top),
        )


def timeline_chart(history: list[dict[str, Any]], title: str | None = None) -> Chart:
    """One row per layer, one column per probe event, the % of dead channels as colour (``history``: one
    ``{"step", "epoch", "dead_fraction": {layer: fraction}}`` per event)."""
    layers, values = _by_layer(history, "dead_fraction")
    ticks = [(v, f"{v:.0f}%") for v in range(0, 101, 20)]
    return _events_chart(
        100 * values,
        layers,
        history,
        "YlOrRd",
        Normalize(0, 100),
        "{:.3g}%",
        "dead (%)",
        ticks,
        title or "dead filters: % of each layer's channels",
    )


def change_chart(history: list[dict[str, Any]], title: str | None = None) -> Chart:
    """Layers x probe events, each layer's change since the previous event (1 - CKA) on a log scale from 1e-4 to 1
    (``history``: one ``{"step", "epoch", "change": {layer: value}}`` per event after the first). A layer that has
    settled turns pale; when layers settle bottom-up the pale region spreads from the top rows down."""
    layers, values = _by_layer(history, "change")
    values = values.clip(min=1e-4)  # 0 (a frozen layer) shows as the palest colour, not as a missing cell
    ticks = [(10.0**e, f"1e{e}" if e else "1") for e in range(-4, 1)]
    return _events_chart(
        values,
        layers,
        history,
        "magma_r",
        LogNorm(1e-4, 1),
        "{:.2g}",
        "1 - CKA(previous, now)",
        ticks,
        title or "layer change: 1 - CKA with the previous probe event",
    )


def similarity_chart(names: list[str], cka: Any, title: str | None = None) -> Chart:
    """The layer x layer matrix of debiased linear CKA at one event (1: the two layers see the samples alike)."""
    names_width = 0.057 * max((len(n) for n in names), default=0)  # inches of 7 pt labels
    size = min(16.0, 2.5 + 0.28 * len(names) + 0.065 * max((len(n) for n in names), default=0))
    return Chart(
        np.array(cka, dtype=float).reshape(len(names), len(names)), colormaps["viridis"].with_extremes(bad="0.85"),
        Normalize(0, 1), names, 7, list(range(len(names))), names, 7,
        title or "layer similarity: debiased linear CKA at the last event", "", "CKA",
        [(v / 5, f"{v / 5:.1f}".rstrip("0").rstrip(".")) for v in range(6)],
        size + 1.0, size, names_width + 0.15, names_width + 0.15, rotate_columns=True,
    )  # fmt: skip


def _events_chart(values, layers, history, cmap, norm, cell, label, bar_ticks, title) -> Chart:  # noqa: ANN001
    names_width = 0.065 * max((len(name) for name in layers), default=0)  # inches of 8 pt labels
    ticks = list(range(0, len(history), max(1, len(history) // 12)))
    return Chart(
        values, colormaps[cmap].with_extremes(bad="0.85"), norm, layers, 8, ticks,
        [f"{history[i]['step']}\nep {history[i]['epoch']}" for i in ticks], 7, title,
        "probe event (global step, epoch)", label, bar_ticks,
        min(16.0, names_width + max(3.5, 0.55 * len(history)) + 1.8), max(2.5, 0.3 * len(layers) + 1.5),
        names_width + 0.2, 0.75, cell=cell if len(layers) <= 40 and len(history) <= 24 else None,
    )  # fmt: skip


def _by_layer(history: list[dict[str, Any]], key: str) -> tuple[list[str], np.ndarray]:
    """The layers of ``history`` in order of appearance, and their ``event[key][layer]`` as [layers, events]."""
    layers = list(dict.fromkeys(name for event in history for name in event[key]))
    values = np.array([[event[key].get(name, np.nan) for event in history] for name in layers], dtype=float)
    return layers, values.reshape(len(layers), len(history))


# ---- drawn by matplotlib ---------------------------------------------------------------------------------------


def figure(chart: Chart) -> Figure:
    """``chart`` as a matplotlib figure on its own Agg canvas (no pyplot, nothing to close)."""
    fig = Figure(figsize=(chart.width, chart.height), dpi=DPI)
    FigureCanvasAgg(fig)
    left, bottom, width, height = chart.box()
    ax = fig.add_axes((left / chart.width, bottom / chart.height, width / chart.width, height / chart.height))
    cax = fig.add_axes(
        ((left + width + 0.2) / chart.width, bottom / chart.height, 0.15 / chart.width, height / chart.height)
    )
    image = ax.imshow(chart.values, aspect="auto", cmap=chart.cmap, norm=chart.norm, interpolation="nearest")
    if chart.cell:
        for (row, col), value in np.ndenumerate(chart.values):
            if not np.isnan(value):
                ax.text(
                    col, row, chart.cell.format(value), ha="center", va="center", fontsize=7, color=_ink(chart, value)
                )
    ax.set_yticks(range(len(chart.rows)), chart.rows, fontsize=chart.row_size)
    ax.set_xticks(
        chart.column_ticks, chart.columns, fontsize=chart.column_size, rotation=90 if chart.rotate_columns else 0
    )
    ax.set_xlabel(chart.xlabel)
    ax.set_title(chart.title, fontsize=10)
    colorbar = fig.colorbar(image, cax=cax, label=chart.bar_label)
    colorbar.minorticks_off()
    colorbar.set_ticks([v for v, _ in chart.bar_ticks], labels=[t for _, t in chart.bar_ticks])
    return fig


def timeline_figure(history: list[dict[str, Any]], title: str | None = None) -> Figure:
    return figure(timeline_chart(history, title))


def change_figure(history: list[dict[str, Any]], title: str | None = None) -> Figure:
    return figure(change_chart(history, title))


def similarity_figure(names: list[str], cka: Any, title: str | None = None) -> Figure:
    return figure(similarity_chart(names, cka, title))


# ---- drawn straight to pixels ----------------------------------------------------------------------------------


def pixels(chart: Chart) -> np.ndarray:
    """``chart`` as uint8 RGB [H, W, 3] at 100 dpi, the size of its figure, drawn with numpy and PIL."""
    width, height = int(chart.width * DPI), int(chart.height * DPI)  # as matplotlib sizes its canvas
    left, bottom, box_w, box_h = (round(v * DPI) for v in chart.box())
    top = height - bottom - box_h
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    rows, cols = chart.values.shape
    colours = _rgb(chart.cmap(chart.norm(np.ma.masked_invalid(chart.values))))
    if rows and cols:
        y = np.arange(box_h) * rows // box_h
        x = np.arange(box_w) * cols // box_w
        canvas[top : top + box_h, left : left + box_w] = colours[y][:, x]
    bar_x = left + box_w + 20
    shades = chart.cmap(np.linspace(1, 0, box_h))
    canvas[top : top + box_h, bar_x : bar_x + 15] = _rgb(shades)[:, None]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.rectangle((left - 1, top - 1, left + box_w, top + box_h), outline="black")
    draw.rectangle((bar_x - 1, top - 1, bar_x + 15, top + box_h), outline="black")
    cell_w, cell_h = box_w / max(cols, 1), box_h / max(rows, 1)
    if chart.cell:
        for (row, col), value in np.ndenumerate(chart.values):
            if not np.isnan(value):
                at = (left + (col + 0.5) * cell_w, top + (row + 0.5) * cell_h)
                draw.text(at, chart.cell.format(value), fill=_ink(chart, value), font=_font(7), anchor="mm")
    for row, name in enumerate(chart.rows):
        draw.text((left - 6, top + (row + 0.5) * cell_h), name, fill="black", font=_font(chart.row_size), anchor="rm")
    for col, name in zip(chart.column_ticks, chart.columns, strict=True):
        x_at = left + (col + 0.5) * cell_w
        if chart.rotate_columns:
            _paste_vertical(image, name, _font(chart.column_size), x_at, top + box_h + 6)
        else:
            draw.multiline_text(
                (x_at, top + box_h + 5), name, fill="black", font=_font(chart.column_size), anchor="ma", align="center"
            )
    for value, text in chart.bar_ticks:
        y_at = top + box_h * (1 - float(chart.norm(value)))
        draw.line((bar_x + 15, y_at, bar_x + 19, y_at), fill="black")
        draw.text((bar_x + 22, y_at), text, fill="black", font=_font(10), anchor="lm")
    draw.text((left + box_w / 2, top - 8), chart.title, fill="black", font=_font(10), anchor="md")
    if chart.xlabel:
        draw.text((left + box_w / 2, height - 6), chart.xlabel, fill="black", font=_font(10), anchor="md")
    _paste_vertical(image, chart.bar_label, _font(10), width - 14, top + box_h / 2, centred=True)
    return np.asarray(image)


def timeline_image(history: list[dict[str, Any]], title: str | None = None) -> np.ndarray:
    """The timeline as uint8 RGB [H, W, 3]."""
    return pixels(timeline_chart(history, title))


def change_image(history: list[dict[str, Any]], title: str | None = None) -> np.ndarray:
    """The layer change map as uint8 RGB [H, W, 3]."""
    return pixels(change_chart(history, title))


def similarity_image(names: list[str], cka: Any, title: str | None = None) -> np.ndarray:
    """The layer similarity matrix as uint8 RGB [H, W, 3]."""
    return pixels(similarity_chart(names, cka, title))


_FONTS: dict[int, Any] = {}


def _font(points: int) -> Any:
    """Matplotlib's own DejaVu Sans at ``points`` (at 100 dpi), so both drawings use the same letters."""
    if points not in _FONTS:
        path = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf"
        _FONTS[points] = ImageFont.truetype(path, round(points * DPI / 72))
    return _FONTS[points]


def _paste_vertical(image: Image.Image, text: str, font: Any, x: float, y: float, centred: bool = False) -> None:
    """``text`` turned 90 degrees (read bottom to top), its right end at ``y`` (or its middle), centred on ``x``."""
    if not text:
        return
    left, top, right, bottom = font.getbbox(text)
    label = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    y0 = y - label.height / 2 if centred else y
    image.paste(Image.new("RGB", label.size, "black"), (round(x - label.width / 2), round(y0)), label)


def _rgb(rgba: np.ndarray) -> np.ndarray:
    return (np.asarray(rgba)[..., :3] * 255 + 0.5).astype(np.uint8)


def _ink(chart: Chart, value: float) -> str:
    """Black or white, whichever reads better on the cell of ``value`` (WCAG relative luminance)."""
    rgba = chart.cmap(chart.norm(value))
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.179 else "white"
