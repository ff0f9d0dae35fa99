"""Dead and dying marks on a grid's columns, drawn after the forward, once the verdict is known.

A tile shows what the layer itself put out, normalised per channel, so a filter that a ReLU after it silences
still looks lively there (its output varies; the BatchNorm and ReLU after it put it below zero everywhere). The mark
gives the verdict of ``LayerReport.dead`` / ``.dying`` at the same event (what ``dead_filters/<layer>`` counts):
the channel's header cell filled, and a frame round each of its tiles, in red (dead) or amber (dying). No colormap
of ours uses either: viridis has no red and no orange, the NaN colour is magenta, and the overlays are another image.

Use: ``channel_header.with_header(grid, channels, lut, column_marks(report.dead, report.dying, channels))``.
"""

from __future__ import annotations

import math

import torch

DEAD, DYING = "dead", "dying"
# (cell and frame colour, ink of the channel number on it)
COLOURS = {DEAD: ((215, 25, 28), (255, 255, 255)), DYING: ((255, 165, 0), (24, 24, 24))}
FRAME_ON_SCREEN = 2.5  # frame thickness in CSS px once TensorBoard's card has scaled the grid


def column_marks(dead: torch.Tensor, dying: torch.Tensor, channels: list[int]) -> tuple[str | None, ...]:
    """Per shown column: :data:`DEAD`, :data:`DYING` or ``None``, from a layer's CPU ``dead``/``dying`` masks."""
    return marks_of(mark_codes(dead, dying, torch.tensor(channels, dtype=torch.long)).tolist())


def mark_codes(dead: torch.Tensor, dying: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Per shown column 2 (dead), 1 (dying) or 0, on the masks' device: the probe computes them before its
    hand-over, so the marks travel with its other numbers instead of being read layer by layer."""
    codes = torch.where(dead, 2, torch.where(dying, 1, 0))
    return codes.index_select(0, channels.to(codes.device))


def marks_of(codes: list[int]) -> tuple[str | None, ...]:
    """The marks of :func:`mark_codes`' numbers."""
    return tuple((None, DYING, DEAD)[code] for code in codes)


def frame_width(image_width: int, tile: int, card_width: int) -> int:
    """Frame thickness in pixels of the image, :data:`FRAME_ON_SCREEN` on screen, at most a quarter of a tile."""
    return max(1, min(tile // 4, math.ceil(FRAME_ON_SCREEN * image_width / card_width)))


def recoloured(mark: str, greys: torch.Tensor, background: int, ink: int) -> torch.Tensor:
    """``uint8 [n, 3]``: the header's ``greys`` (from ``background`` to ``ink``) as a marked cell shows them, the
    background in the mark's colour and the number's ink in the mark's ink, in as many steps (the palette stays
    small: a marked cell's pixel is its grey's index moved to this ramp, see ``render.grid_palette``)."""
    fill, text = COLOURS[mark]
    share = ((greys.float() - background) / max(1, ink - background)).clamp(0, 1).unsqueeze(1)  # 0 .. 1 ink
    fill_t = torch.tensor(fill, dtype=torch.float32)
    text_t = torch.tensor(text, dtype=torch.float32)
    return (fill_t + share * (text_t - fill_t)).round().to(torch.uint8)


def paint_header_cell(cell: torch.Tensor, first: int) -> None:
    """Recolour one column's header cell (``uint8 [h, w]`` indices of the header's greys, 0 the background): each
    pixel to the same step of the mark's ramp, which starts at palette index ``first``."""
    # in place, not copy_: the counter of host reads takes a copy_ into a CPU tensor for a hand-over from a device
    cell.add_(first)


def frame_tiles(body: torch.Tensor, colour: int, tile_height: int, pad: int, width: int) -> None:
    """Draw a frame ``width`` px thick, in palette index ``colour``, inside each tile of one column of ``body``
    (``uint8 [H, w]`` indices)."""
    for top in range(0, body.shape[0], tile_height + pad):
        cell = body[top : top + tile_height]
        cell[:width], cell[-width:] = colour, colour
        cell[:, :width], cell[:, -width:] = colour, colour
