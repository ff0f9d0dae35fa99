"""Feature maps -> readable uint8 RGB grids, as pure tensor functions on the activation's device.

Shapes are plain: a grid is ``uint8 [3, H, W]``. Rows are probe samples, columns are channels; the
columns wrap into bands (see :func:`band_layout`) and a header above each band names the channel of
each column, drawn once per layer with Pillow's built-in font. Each channel is min-max normalised on
its own over the shown samples, so a weak channel is as visible as a strong one; a constant channel
renders as the colormap's lowest colour and a NaN/Inf value as magenta.

A grid has at most 256 colours (``LEVELS`` of the colormap, ``HEADER_GREYS`` and magenta), so the
event file stores it losslessly as a palette PNG, about a third of the RGB one (``tensorboard.png``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .marks import frame_tiles, frame_width, paint_header_cell

NONFINITE_RGB = (255, 0, 255)
BACKGROUND = 24
PAD = 2
MIN_TILE = 32
MAX_TILE = 96
STRIP_HEIGHT = 8

HEADER_INK = 230  # grey of the channel numbers on the BACKGROUND of the header
# The header's anti-aliased digits in 16 greys from BACKGROUND to HEADER_INK: at 16 steps the edges look as
# smooth as at 207.
HEADER_GREYS = np.linspace(BACKGROUND, HEADER_INK, 16).round()
# Colormap levels. 64 steps of viridis look the same as 256 at the size TensorBoard shows a grid (adjacent levels
# differ by about 4/255) and make the demo's palette PNGs 19 % smaller than 239 levels: 254 against 314 kB an
# event (the first conv's maps carry the input's pixel noise, which no lossless coder squeezes).
LEVELS = 64
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


def colormap_lut(cmap: str = "viridis", levels: int = LEVELS) -> torch.Tensor:
    """A ``uint8 [levels, 3]`` lookup table of a matplotlib colormap (read once, applied on any device)."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"cmap: unknown matplotlib colormap {cmap!r}; try 'viridis', 'magma' or 'gray'") from None
    rgba = colormap(np.linspace(0, 1, levels))
    return torch.from_numpy((rgba[:, :3] * 255).round()).to(torch.uint8)


def choose_channels(std: torch.Tensor, k: int, order: str = "std") -> torch.Tensor:
    """Indices of the ``k`` channels to show: most varied first (``"std"``) or the first ``k`` (``"index"``)."""
    k = min(k, std.numel())
    if order == "index":
        return torch.arange(k, device=std.device)
    if order == "std":  # on std's device: the host reads the chosen channels with the rest of the event
        return torch.argsort(torch.nan_to_num(std.float(), nan=-1.0), descending=True, stable=True)[:k]
    raise ValueError(f"channel_order must be 'std' or 'index', got {order!r}")


def as_maps(x: torch.Tensor) -> torch.Tensor | None:
    """``(S, K, *spatial)`` -> ``(S, K, h, w)``: 1-D maps become strips, 3-D maps their middle depth slice."""
    if x.dim() == 3:
        return x.unsqueeze(2)
    if x.dim() == 4:
        return x
    if x.dim() == 5:
        return x[:, :, x.shape[2] // 2]
    return None


def fit_tile(maps: torch.Tensor) -> torch.Tensor:
    """Resize ``(S, K, h, w)`` maps so a 7x7 map is visible and a 224x224 map does not flood the grid."""
    s, k, h, w = maps.shape
    if h == 1:  # a 1-D strip: fit the length, then give it some height
        if w > MAX_TILE * 2:
            maps = F.interpolate(maps.reshape(s * k, 1, w), size=MAX_TILE * 2, mode="area").reshape(s, k, 1, -1)
        elif w < MIN_TILE:
            maps = maps.repeat_interleave(math.ceil(MIN_TILE / w), dim=3)
        return maps.repeat_interleave(STRIP_HEIGHT, dim=2)
    longest = max(h, w)
    if longest > MAX_TILE:
        size = (max(1, round(h * MAX_TILE / longest)), max(1, round(w * MAX_TILE / longest)))
        return F.interpolate(maps, size=size, mode="area")
    if longest < MIN_TILE:
        factor = math.ceil(MIN_TILE / longest)
        return maps.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    return maps


def normalise_per_channel(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalise each channel (dim 1) over samples and positions; returns (values in [0,1], non-finite mask)."""
    maps = maps.float()
    finite = torch.isfinite(maps)
    dims = (0, 2, 3)
    lo = torch.where(finite, maps, math.inf).amin(dim=dims, keepdim=True)
    hi = torch.where(finite, maps, -math.inf).amax(dim=dims, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # constant or all non-finite: no contrast to show
    norm = (maps - lo) / torch.where(flat, 1.0, span)
    norm = torch.where(flat | ~finite, 0.0, norm).clamp(0, 1)
    return norm, ~finite


def colorize(norm: torch.Tensor, lut: torch.Tensor, nonfinite: torch.Tensor | None = None) -> torch.Tensor:
    """Values in [0, 1] of any shape -> uint8 RGB with a trailing dim of 3, through the lookup table."""
    index = (norm * (len(lut) - 1)).round_().to(torch.int32)
    lut = lut.to(norm.device)
    if nonfinite is not None:  # magenta as one more colour of the table: one lookup, not a select over RGB
        magenta = torch.tensor([NONFINITE_RGB], dtype=torch.uint8).to(norm.device, non_blocking=True)
        index.masked_fill_(nonfinite, len(lut))
        lut = torch.cat([lut, magenta])
    return lut.index_select(0, index.reshape(-1)).view(*norm.shape, 3)  # 2-3x faster than lut[index] on CPU


def tile(rgb: torch.Tensor, pad: int = PAD, background: int = BACKGROUND) -> torch.Tensor:
    """``uint8 (rows, cols, h, w, 3)`` -> ``uint8 [3, H, W]``: one tile per cell, ``pad`` pixels between."""
    rows, cols, h, w, _ = rgb.shape
    padded = F.pad(rgb.permute(0, 1, 4, 2, 3), (0, pad, 0, pad), value=background)
    grid = padded.permute(2, 0, 3, 1, 4).reshape(3, rows * (h + pad), cols * (w + pad))
    return grid[:, : rows * (h + pad) - pad, : cols * (w + pad) - pad]


def render_feature_grid(
    x: torch.Tensor, channels: torch.Tensor, max_samples: int, lut: torch.Tensor
) -> torch.Tensor | None:
    """The picture of one layer output ``(N, C, *spatial)``, without header: ``uint8 [3, H, W]`` on x's device.

    ``None`` when the output has no spatial layout to show (e.g. ``(N, C)``).
    Only the chosen channels of the shown samples are copied.
    """
    maps = as_maps(x[:max_samples].index_select(1, channels.to(x.device)))
    if maps is None:
        return None
    norm, nonfinite = normalise_per_channel(maps)
    # A NaN marks each non-finite value through the resize (an area mean over it, or a copy of it, is NaN too):
    # one resize, and no asking first whether there is any (that would make a GPU wait for the forward).
    fitted = fit_tile(norm.masked_fill(nonfinite, math.nan))
    marked = fitted.isnan()
    return tile(colorize(fitted.nan_to_num_(0.0), lut, marked))


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


# Headers are drawn once per (channels, tile width, digit height) and kept: with the three caches below a grid's
# header takes under 1 ms, without them 100-170 ms (Pillow parses its built-in font again for every size
# tried), with only the font and layout cached 14-39 ms (demo and ResNet-18 grids, 2-core machine under load).
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
    """``uint8 [3, h, W]``, read-only: each channel index, ``digit`` px tall, centred above its column of tiles.

    Drawn anti-aliased, then each pixel set to the nearest of ``HEADER_GREYS`` (the darker on a tie, so a
    pixel brighter than the midway grey stays so). Cached: the shown channels are pinned, so every event of
    a run draws the same headers.
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
    greys = HEADER_GREYS[np.abs(pixels[..., None] - HEADER_GREYS).argmin(axis=-1)].astype(np.uint8)
    return torch.from_numpy(greys).expand(3, -1, -1)


def with_header(
    grid: torch.Tensor, channels: list[int], marks: tuple[str | None, ...] = (), rows: int = 1
) -> torch.Tensor:
    """A CPU grid from :func:`render_feature_grid`, its columns wrapped into bands, a header above each band.

    Band after band from the top, each shows the same rows (samples) for the next columns (channels) in
    order; the last band may be narrower, padded with background on the right. ``marks`` (one per column, see
    :func:`marks.column_marks`) colour the header cell and frame the ``rows`` tiles of a dead or dying column.
    """
    body_height, width = grid.shape[1:]
    tile_width = (width + PAD) // len(channels) - PAD
    cols, digit = band_layout(len(channels), len(str(max(channels))), tile_width, body_height)
    band_height = header_height(digit) + body_height
    bands = math.ceil(len(channels) / cols)
    out = torch.full((3, bands * band_height, cols * (tile_width + PAD) - PAD), BACKGROUND, dtype=torch.uint8)
    frame = frame_width(out.shape[2], tile_width, CARD_WIDTH)
    for band in range(bands):
        shown = channels[band * cols : (band + 1) * cols]
        left, right = band * cols * (tile_width + PAD), (band * cols + len(shown)) * (tile_width + PAD) - PAD
        header = channel_header(tuple(shown), tile_width, digit)
        top = band * band_height
        out[:, top : top + header.shape[1], : right - left] = header
        out[:, top + header.shape[1] : top + band_height, : right - left] = grid[:, :, left:right]
        for col, mark in enumerate(marks[band * cols : (band + 1) * cols]):
            if mark is not None:
                x = col * (tile_width + PAD)
                paint_header_cell(out[:, top : top + header.shape[1], x : x + tile_width], mark, BACKGROUND, HEADER_INK)
                body = out[:, top + header.shape[1] : top + band_height, x : x + tile_width]
                frame_tiles(body, mark, (body_height + PAD) // rows - PAD, PAD, frame)
    return out


def input_images(
    x: torch.Tensor, max_samples: int, mean: list[float] | None = None, std: list[float] | None = None
) -> torch.Tensor | None:
    """The probe input as float RGB ``(S, 3, h, w)`` in [0, 1], denormalised when ``mean``/``std`` are known,
    fitted to the tile size like feature maps (so an event's overlays are drawn at the size they are shown).

    Without them each sample is min-max scaled on its own. ``None`` for inputs that are not images.
    """
    img = as_rgb(x[:max_samples], mean, std)
    return fit_tile(img) if img is not None else None


def as_rgb(x: torch.Tensor, mean: list[float] | None = None, std: list[float] | None = None) -> torch.Tensor | None:
    """Image batch ``(N, C, H, W)`` -> float RGB in [0, 1] as a person sees it (see :func:`input_images`), at its
    own size; ``None`` for inputs that are not images."""
    if x.dim() != 4 or not x.is_floating_point():
        return None
    img = x.float()
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=img.dtype).to(img.device, non_blocking=True).reshape(1, -1, 1, 1)
        s = torch.tensor(std, dtype=img.dtype).to(img.device, non_blocking=True).reshape(1, -1, 1, 1)
        img = (img * s + m).clamp(0, 1)
    else:
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo).clamp(min=1e-12)
    img = torch.nan_to_num(img, nan=0.0)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    elif img.shape[1] != 3:
        img = img[:, :1].expand(-1, 3, -1, -1)
    return img


def image_row(images: torch.Tensor) -> torch.Tensor:
    """Images from :func:`input_images` -> one ``uint8 [3, H, W]`` row of tiles."""
    rgb = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).unsqueeze(0)
    return tile(rgb)


def activation_energy(x: torch.Tensor, max_samples: int) -> torch.Tensor | None:
    """Mean absolute activation across channels, ``(S, h, w)`` float32: where the layer responds at all."""
    maps = as_maps(x[:max_samples])
    if maps is None or maps.shape[2] == 1:
        return None
    return maps.float().abs().mean(dim=1)


def overlay(images: torch.Tensor, energy: torch.Tensor, lut: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend per-sample energy maps ``(S, h, w)`` over images from :func:`input_images`; one uint8 row out."""
    heat = F.interpolate(energy.unsqueeze(1).to(images.device), size=images.shape[2:], mode="bilinear")
    lo = heat.amin(dim=(1, 2, 3), keepdim=True)
    hi = heat.amax(dim=(1, 2, 3), keepdim=True)
    heat = torch.nan_to_num((heat - lo) / (hi - lo).clamp(min=1e-12), nan=0.0).clamp(0, 1)
    colour = colorize(heat[:, 0], lut).permute(0, 3, 1, 2).float() / 255
    blend = (1 - alpha) * images + alpha * colour
    return tile((blend * 255).round().to(torch.uint8).permute(0, 2, 3, 1).unsqueeze(0))
