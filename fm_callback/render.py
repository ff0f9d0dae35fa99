"""Feature maps -> readable grids, as pure tensor functions on the activation's device.

Rows are probe samples, columns are channels; ``channel_header.py`` wraps the columns into bands under headers
naming each column's channel. Each channel is min-max normalised on its own over the shown samples, so a weak
channel is as visible as a strong one; a constant channel renders as the colormap's lowest colour and a NaN/Inf
value as magenta.

A grid is drawn in the indices of one palette (:func:`grid_palette`), never in RGB: the hook keeps a byte a pixel
on the device, and the encoder writes the indices as they are (see ``picture.py``). The probe input and the
overlays are photos, drawn in RGB (:func:`input_images`, :func:`overlay`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .marks import DEAD, DYING, recoloured

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

# The grid palette, index by index: the header's greys (the first one the background, also between tiles), each
# mark's ramp (those greys recoloured, see marks.recoloured), the NaN colour, then the colormap's levels. The fixed
# part comes first so that every index but the levels' is a constant; neighbouring levels get neighbouring indices,
# which the PNG row filters turn into small steps.
GREY = 0
MARK_FIRST = {DEAD: GREY + len(HEADER_GREYS), DYING: GREY + 2 * len(HEADER_GREYS)}
NONFINITE = GREY + 3 * len(HEADER_GREYS)
LEVEL0 = NONFINITE + 1
_GREYS = torch.from_numpy(HEADER_GREYS).to(torch.uint8)
_FIXED_COLOURS = torch.cat(
    [
        _GREYS.unsqueeze(1).expand(-1, 3),
        recoloured(DEAD, _GREYS, BACKGROUND, HEADER_INK),
        recoloured(DYING, _GREYS, BACKGROUND, HEADER_INK),
        torch.tensor([NONFINITE_RGB], dtype=torch.uint8),
    ]
)


def grid_palette(lut: torch.Tensor) -> torch.Tensor:
    """``uint8 [LEVEL0 + levels, 3]``: the colour of each index of a grid drawn with the colormap ``lut`` (a CPU
    tensor, see :func:`colormap_lut`)."""
    if LEVEL0 + len(lut) > 256:
        raise ValueError(f"a grid's palette has at most 256 colours: at most {256 - LEVEL0} colormap levels")
    return torch.cat([_FIXED_COLOURS, lut])


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
    """Indices of the ``k`` channels to show: most varied first (``"std"``) or the first ``k`` (``"index"``; the
    order was checked with the probe's arguments, ``arguments.check_options``)."""
    k = min(k, std.numel())
    if order == "index":
        return torch.arange(k, device=std.device)
    # on std's device: the host reads the chosen channels with the rest of the event
    return torch.argsort(torch.nan_to_num(std.float(), nan=-1.0), descending=True, stable=True)[:k]


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


def levels(norm: torch.Tensor, count: int) -> torch.Tensor:
    """Values in [0, 1] of any shape -> the nearest of ``count`` colormap levels, ``0 .. count - 1``, int32."""
    return (norm * (count - 1)).round_().to(torch.int32)


def colorize(norm: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] of any shape -> uint8 RGB with a trailing dim of 3, through the lookup table."""
    index = levels(norm, len(lut))
    return lut.to(norm.device).index_select(0, index.reshape(-1)).view(*norm.shape, 3)  # faster than lut[index]


def tile(cells: torch.Tensor, pad: int = PAD, background: int = BACKGROUND) -> torch.Tensor:
    """``uint8 (rows, cols, h, w, 3)`` RGB -> ``[3, H, W]``, or ``(rows, cols, h, w)`` palette indices ->
    ``[H, W]``: one cell per tile, ``pad`` pixels of ``background`` between."""
    indexed = cells.dim() == 4
    if indexed:
        cells = cells.unsqueeze(-1)
    rows, cols, h, w, channels = cells.shape
    padded = F.pad(cells.permute(0, 1, 4, 2, 3), (0, pad, 0, pad), value=background)
    grid = padded.permute(2, 0, 3, 1, 4).reshape(channels, rows * (h + pad), cols * (w + pad))
    grid = grid[:, : rows * (h + pad) - pad, : cols * (w + pad) - pad]
    return grid[0] if indexed else grid


def render_feature_grid(
    x: torch.Tensor, channels: torch.Tensor, max_samples: int, lut: torch.Tensor
) -> torch.Tensor | None:
    """The picture of one layer output ``(N, C, *spatial)``, without header: ``uint8 [H, W]`` indices into
    ``grid_palette(lut)``, on x's device.

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
    index = levels(fitted.nan_to_num_(0.0), len(lut)).add_(LEVEL0).masked_fill_(marked, NONFINITE)
    return tile(index.to(torch.uint8), background=GREY)


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
