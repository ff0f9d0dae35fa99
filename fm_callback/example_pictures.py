"""The picture of a layer's top examples: a row per shown channel, its best pool samples cropped around the peak.

Each crop is the layer's receptive field (see :mod:`.top_examples`) centred on the input point under the map
position where the channel peaked, scaled to ``TILE`` px; a red box marks that map position's own cell (its
stride in the input), so the place of the activation is visible. Under each crop: the sample's dataset index and
the activation. Rows follow the feature-map grid's columns (the same channels, in the same order); a dead channel's
row says so instead of showing examples. Pure functions of CPU tensors, drawn with Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .marks import COLOURS, DEAD, column_marks
from .render import BACKGROUND, HEADER_INK, as_rgb
from .top_examples import LayerExamples, input_point

TILE = 64  # crop size on the picture, px
LABEL_WIDTH = 64
CAPTION = 12  # height of the text line under each crop
GAP = 4
MARK_RGB = (255, 64, 64)


def crop(image: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``image`` ``uint8 [H, W, 3]`` centred on ``centre`` (row, column), padded
    with the background grey where it leaves the image."""
    half = size // 2
    top, left = round(centre[0]) - half, round(centre[1]) - half
    height, width = image.shape[:2]
    out = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    rows = slice(max(0, top), min(height, top + size))
    cols = slice(max(0, left), min(width, left + size))
    if rows.start < rows.stop and cols.start < cols.stop:
        out[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = image[rows, cols]
    return out


def draw_examples(
    found: Mapping[str, LayerExamples],
    result: Mapping[str, Any],
    sample: Callable[[int], torch.Tensor],
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str | None, ...]]]:
    """Per layer of ``found`` (CPU examples): its ``feature_examples`` picture (left out where there is none) and its
    rows' dead/dying marks, by the verdict of the same event's probe ``result`` (a ``ProbeResult``)."""
    marks, pictures = {}, {}
    for name, examples in found.items():
        report = result.get(name)
        marks[name] = (
            column_marks(report.dead, report.dying, examples.channels)
            if report is not None
            else (None,) * len(examples.channels)
        )
        picture = render_examples(name, examples, sample, marks[name], mean, std)
        if picture is not None:
            pictures[name] = picture
    return pictures, marks


def render_examples(
    layer: str,
    examples: LayerExamples,
    sample: Callable[[int], torch.Tensor],
    marks: Sequence[str | None],
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> torch.Tensor | None:
    """``uint8 [3, H, W]``: the top examples of each of ``examples.channels`` (``marks``: :func:`~.marks.column_marks`);
    ``sample(i)`` is pool sample ``i``'s model input ``(1, C, H, W)`` on the CPU. ``None`` when the pool is not
    an image batch."""
    shown = sorted({index for index in examples.indices.flatten().tolist() if index >= 0})
    if examples.input_size is None or not shown:
        return None
    rgb = as_rgb(torch.cat([sample(index) for index in shown]), mean, std)  # one batch: a few torch ops in all
    if rgb is None:
        return None
    pixels = dict(zip(shown, (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), strict=True))
    height, width = examples.input_size
    size = 2 * examples.radius + 1 if examples.radius is not None else max(height, width)
    k = examples.values.shape[1]
    font = ImageFont.load_default(size=11)
    row_height = TILE + CAPTION + GAP
    title = 18
    canvas = Image.new("RGB", (LABEL_WIDTH + k * (TILE + GAP), title + len(marks) * row_height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    field = f"{size} px receptive field" if examples.radius is not None else "whole input"
    draw.text((2, 3), f"{layer}: top {k} per channel, crops = {field}", (HEADER_INK,) * 3, font)
    cell = (height / examples.map_size[0], width / examples.map_size[1])
    for row, (channel, mark) in enumerate(zip(examples.channels, marks, strict=True)):
        top = title + row * row_height
        draw.text((2, top + 4), f"ch {channel}", (HEADER_INK,) * 3, font)
        if mark:
            draw.text((2, top + 18), mark, COLOURS[mark][0], font)
        if mark == DEAD:
            draw.text((LABEL_WIDTH, top + TILE // 2 - 6), "dead: no examples", COLOURS[DEAD][0], font)
            continue
        for col, (index, value, position) in enumerate(examples.top(row)):
            centre = input_point(position, examples.map_size, (height, width))
            picture = Image.fromarray(crop(pixels[index], centre, size))
            left = LABEL_WIDTH + col * (TILE + GAP)
            canvas.paste(picture.resize((TILE, TILE), Image.NEAREST if size <= TILE else Image.BOX), (left, top))
            scale = TILE / size
            box = [max(1.0, c * scale / 2) for c in cell]
            middle = TILE / 2
            draw.rectangle(
                (left + middle - box[1], top + middle - box[0], left + middle + box[1], top + middle + box[0]),
                outline=MARK_RGB,
            )
            draw.text((left, top + TILE + 1), f"#{index} {_short(value)}", (HEADER_INK,) * 3, font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()


def _short(value: float) -> str:
    """An activation in at most 6 characters: ``3.21``, ``-0.05``, ``1234``."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}" if abs(value) < 1e5 else f"{value:.0e}"
