"""Dead and dying marks on a grid's columns, drawn after the forward, once the verdict is known.

A tile shows what the layer itself put out, normalised per channel, so a filter that a ReLU after it silences
still looks lively there (its output varies; the BatchNorm and ReLU after it put it below zero everywhere). The mark
gives the verdict of ``LayerReport.dead`` / ``.dying`` at the same event (what ``dead_filters/<layer>`` counts):
the channel's header cell filled, and a frame round each of its tiles, in red (dead) or amber (dying). No colormap
of ours uses either: viridis has no red and no orange, the NaN colour is magenta, and the overlays are another image.

Use: ``render.with_header(grid, channels, column_marks(report.dead, report.dying, channels))``.
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


def paint_header_cell(header: torch.Tensor, mark: str, background: int, ink: int) -> None:
    """Fill one column's header cell (``uint8 [3, h, w]``, greys from ``background`` to ``ink``) with the mark's
    colour, its number recoloured from the mark's colour to its ink in the same number of steps (the palette stays
    small)."""
    fill, text = COLOURS[mark]
    share = (header[0].float() - background) / max(1, ink - background)  # 0 background .. 1 ink
    share = share.clamp(0, 1).unsqueeze(0)
    fill_t = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1)
    text_t = torch.tensor(text, dtype=torch.float32).view(3, 1, 1)
    # assigned, not copy_: the counter of host reads takes a copy_ into a CPU tensor for a hand-over from a device
    header[:] = (fill_t + share * (text_t - fill_t)).round().to(torch.uint8)


def frame_tiles(body: torch.Tensor, mark: str, tile_height: int, pad: int, width: int) -> None:
    """Draw a frame ``width`` px thick inside each tile of one column of ``body`` (``uint8 [3, H, w]``)."""
    fill = torch.tensor(COLOURS[mark][0], dtype=torch.uint8).view(3, 1, 1)
    for top in range(0, body.shape[1], tile_height + pad):
        cell = body[:, top : top + tile_height]
        cell[:, :width], cell[:, -width:] = fill, fill
        cell[:, :, :width], cell[:, :, -width:] = fill, fill
