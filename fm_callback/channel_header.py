"""The header above each band of a grid: which channel each column shows, legible where TensorBoard shows it.

TensorBoard shrinks a wide grid to its card, and its numbers with it, so the columns wrap into bands (see
:func:`band_layout`), each under its own header of channel numbers drawn with Pillow's built-in font at the digit
height the cards ask for (:func:`digit_height`). :func:`with_header` puts the bands together, with the dead and
dying marks (``marks.py``), as a :class:`~.picture.Picture` in the grid palette (``render.grid_palette``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .marks import frame_tiles, frame_width, paint_header_cell
from .picture import Picture
from .render import BACKGROUND, GREY, HEADER_GREYS, HEADER_INK, MARK_FIRST, PAD, grid_palette

# TensorBoard's Images dashboard shows every image 350 CSS px wide whatever its size or the window's
# (tf-image-loader: ``:host {width: 350px}``, ``img {width: 100%; image-rendering: pixelated}``). Measured
# in TensorBoard 2.21 with headless Chromium at window widths 1150, 1600 and 1920 px: the <img> of every
# card had clientWidth 350 for naturalWidth 200 to 1600 (tests/test_browser.py measures it again).
CARD_WIDTH = 350
# The Time Series tab shows every image 215 CSS px tall, its width following (a 526 x 562 grid 201 px wide, a
# 270 x 298 one 195 px wide), measured in TensorBoard 2.21 with headless Chromium in a 1600 px window
# (tests/test_browser.py measures it again).
TIME_SERIES_HEIGHT = 215
SCREEN_DIGIT = 8  # digit height the header aims at on screen in those cards
LEGIBLE_DIGIT = 7  # the least that reads
MIN_DIGIT = 9  # digit height in the PNG itself, for "Show actual image size" and snapshot files


def digit_height(width: int, bands: int = 1, body_height: int = 0) -> int:
    """Digit height in pixels of the header of a grid ``width`` px wide of ``bands`` bands of ``body_height`` px
    tiles: SCREEN_DIGIT once the Images card scales it to CARD_WIDTH wide and the Time Series card to
    TIME_SERIES_HEIGHT tall (where the headers, growing with the digits, are part of the height)."""
    digit = max(MIN_DIGIT, math.ceil(SCREEN_DIGIT * width / CARD_WIDTH))
    while digit < 4 * MIN_DIGIT and digit * TIME_SERIES_HEIGHT < SCREEN_DIGIT * bands * (
        header_height(digit) + body_height
    ):
        digit += 1
    return digit


# Headers are drawn once per (channels, tile width, digit height) and kept, with the fonts and layouts that size
# them: Pillow parses its built-in font again for every size tried, and the shown channels are pinned, so every
# event of a run draws the same headers (what the caches save: BENCHMARKS.md, "The picture path").
@functools.lru_cache(maxsize=64)
def _font(digit: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """Pillow's default font at the smallest size whose digits are ``digit`` px tall, and its stroke width.

    Large digits are shrunk on screen, and TensorBoard shrinks without smoothing: a stroke (bold) keeps each
    line of a digit about a pixel wide on screen.
    """
    stroke = digit // 14
    for size in range(digit, 4 * digit):
        font = ImageFont.load_default(size=size)
        top, bottom = font.getbbox("0123456789", stroke_width=stroke)[1::2]
        if bottom - top >= digit:
            return font, stroke
    return font, stroke  # a Pillow built without FreeType ignores the size: its one bitmap font


def _margin(digit: int) -> int:
    return max(PAD + 1, digit // 4)


def header_height(digit: int) -> int:
    """Height of a header whose digits are ``digit`` px tall: the digits and a margin above and below."""
    font, stroke = _font(digit)
    top, bottom = font.getbbox("0123456789", stroke_width=stroke)[1::2]
    return bottom - top + 2 * _margin(digit)


def _label_width(digits: int, digit: int) -> int:
    """Width in pixels of a ``digits``-digit channel number ``digit`` px tall."""
    font, stroke = _font(digit)
    return math.ceil(font.getlength("0" * digits)) + 2 * stroke


@functools.lru_cache(maxsize=1024)
def band_layout(channels: int, widest: int, tile_width: int, body_height: int) -> tuple[int, int]:
    """``(columns per band, digit height)`` for ``channels`` columns of tiles ``tile_width`` px wide.

    TensorBoard's card shows a grid ``CARD_WIDTH`` px wide, however wide it is: one band of 16 columns of
    96 px tiles is shrunk 4.5 times, its maps to 21 px and its numbers with them. Wrapping the columns into
    bands, each under its own header, shrinks it less; the number of bands is the one that makes the grid
    closest to square, which gives the maps the most of the card without making the card much taller than wide.
    Digits are as tall as that grid's width asks (:func:`digit_height`), but never wider than a tile when the
    widest label has ``widest`` digits; a layout whose digits are at least LEGIBLE_DIGIT px on screen in both the
    Images and the Time Series card comes before a squarer one.
    """
    best = None
    for bands in sorted({math.ceil(channels / cols) for cols in range(1, channels + 1)}):
        cols = math.ceil(channels / bands)
        width = cols * (tile_width + PAD) - PAD
        digit = digit_height(width, bands, body_height)
        while digit > MIN_DIGIT and _label_width(widest, digit) > tile_width:
            digit -= 1
        height = bands * (header_height(digit) + body_height)
        on_screen = min(digit * CARD_WIDTH / width, digit * TIME_SERIES_HEIGHT / height)
        score = (on_screen < LEGIBLE_DIGIT, abs(math.log(height / width)))
        if best is None or score < best[0]:
            best = (score, cols, digit)
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def channel_header(channels: tuple[int, ...], tile_width: int, digit: int) -> torch.Tensor:
    """``uint8 [h, W]`` indices of ``HEADER_GREYS`` (0 the background), shared (copy before writing): each channel
    index, ``digit`` px tall, centred above its column of tiles.

    Drawn anti-aliased, then each pixel given the nearest of the greys (the darker on a tie, so a pixel brighter
    than the midway grey stays so). Cached: the shown channels are pinned, so every event of a run draws the
    same headers.
    """
    font, stroke = _font(digit)
    top = font.getbbox("0123456789", stroke_width=stroke)[1]
    width = len(channels) * (tile_width + PAD) - PAD
    image = Image.new("L", (width, header_height(digit)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for col, channel in enumerate(channels):
        centre = col * (tile_width + PAD) + tile_width / 2
        draw.text((centre, _margin(digit) - top), str(channel), HEADER_INK, font, "ma", stroke_width=stroke)
    pixels = np.asarray(image)
    nearest = np.abs(pixels[..., None] - HEADER_GREYS).argmin(axis=-1).astype(np.uint8) + GREY
    return torch.from_numpy(nearest)


def with_header(
    grid: torch.Tensor,
    channels: list[int],
    lut: torch.Tensor,
    marks: tuple[str | None, ...] = (),
    rows: int = 1,
) -> Picture:
    """The whole grid of a CPU grid body from :func:`~.render.render_feature_grid` drawn with the colormap ``lut``:
    its columns wrapped into bands, a header above each band, as a :class:`~.picture.Picture`.

    Band after band from the top, each shows the same rows (samples) for the next columns (channels) in
    order; the last band may be narrower, padded with background on the right. ``marks`` (one per column, see
    :func:`marks.column_marks`) colour the header cell and frame the ``rows`` tiles of a dead or dying column.
    """
    body_height, width = grid.shape
    tile_width = (width + PAD) // len(channels) - PAD
    cols, digit = band_layout(len(channels), len(str(max(channels))), tile_width, body_height)
    band_height = header_height(digit) + body_height
    bands = math.ceil(len(channels) / cols)
    out = torch.full((bands * band_height, cols * (tile_width + PAD) - PAD), GREY, dtype=torch.uint8)
    frame = frame_width(out.shape[1], tile_width, CARD_WIDTH)
    for band in range(bands):
        shown = channels[band * cols : (band + 1) * cols]
        left, right = band * cols * (tile_width + PAD), (band * cols + len(shown)) * (tile_width + PAD) - PAD
        header = channel_header(tuple(shown), tile_width, digit)
        top = band * band_height
        out[top : top + header.shape[0], : right - left] = header
        out[top + header.shape[0] : top + band_height, : right - left] = grid[:, left:right]
        for col, mark in enumerate(marks[band * cols : (band + 1) * cols]):
            if mark is not None:
                x = col * (tile_width + PAD)
                paint_header_cell(out[top : top + header.shape[0], x : x + tile_width], MARK_FIRST[mark])
                body = out[top + header.shape[0] : top + band_height, x : x + tile_width]
                frame_tiles(body, MARK_FIRST[mark], (body_height + PAD) // rows - PAD, PAD, frame)
    return Picture(out, grid_palette(lut))
