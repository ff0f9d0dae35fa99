"""Grids: uint8 RGB [3, H, W]; a row per probe sample, a column per channel, wrapped into bands of columns,
each band under a header naming its channels.

Sizes are worked out from render's constants; the pixels of a tile are checked against the captured
activation, normalised per channel and colour-mapped by matplotlib directly; the channel numbers against
Pillow's drawing of them, and their height against the width TensorBoard's Images card shows the grid at;
the PNG in the event file decodes to the same picture.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pytest
import torch
from conftest import TinyCNN, make_trainer, read_events, tiny_loaders
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from fm_callback import FeatureMapCallback, FeatureMapProbe, marks
from fm_callback import channel_header as H
from fm_callback import render as R
from fm_callback.picture import Picture
from fm_callback.tensorboard_writer import add_png

INK = (R.BACKGROUND + R.HEADER_INK) // 2  # a header pixel brighter than this is part of a digit


def tile_side(side: int, longest: int = R.MAX_TILE) -> int:
    """Pixels a map of ``side`` x ``side`` takes in the grid (a 1-D map of length ``side``: ``longest=2*MAX_TILE``)."""
    if side > longest:
        return longest
    if side < R.MIN_TILE:
        return side * math.ceil(R.MIN_TILE / side)
    return side


@dataclass
class Layout:
    """Where things are in a banded grid, read off its size and the tile size."""

    channels: int  # columns in all
    cols: int  # columns per band
    tile_w: int
    tile_h: int
    rows: int  # samples
    band_h: int  # header and rows of tiles
    head: int  # header height

    @classmethod
    def of(cls, grid: torch.Tensor, channels: int, rows: int, tile_w: int, tile_h: int | None = None) -> Layout:
        tile_h = tile_w if tile_h is None else tile_h
        cols = (grid.shape[2] + R.PAD) // (tile_w + R.PAD)
        assert grid.shape[2] == cols * (tile_w + R.PAD) - R.PAD, "the grid is not a whole number of columns"
        bands = math.ceil(channels / cols)
        assert grid.shape[1] % bands == 0, "the bands differ in height"
        band_h = grid.shape[1] // bands
        return cls(channels, cols, tile_w, tile_h, rows, band_h, band_h - (rows * (tile_h + R.PAD) - R.PAD))

    @property
    def bands(self) -> int:
        return math.ceil(self.channels / self.cols)

    def tile(self, col: int, row: int) -> tuple[int, int]:
        """(top, left) of the tile of grid column ``col`` (the col-th shown channel) and sample ``row``."""
        band, col = divmod(col, self.cols)
        return band * self.band_h + self.head + row * (self.tile_h + R.PAD), col * (self.tile_w + R.PAD)

    def header(self, grid: torch.Tensor, col: int) -> torch.Tensor:
        """The header pixels above grid column ``col``: ``uint8 [3, head, tile_w]``."""
        band, col = divmod(col, self.cols)
        left = col * (self.tile_w + R.PAD)
        return grid[:, band * self.band_h : band * self.band_h + self.head, left : left + self.tile_w]


def ink_box(pixels: torch.Tensor) -> tuple[slice, slice]:
    """Rows and columns of the digits' bounding box in header pixels ``[3, h, w]`` (or ``[h, w]``)."""
    ink = (pixels if pixels.dim() == 2 else pixels[0]) > INK
    rows, cols = ink.any(dim=1).nonzero().flatten(), ink.any(dim=0).nonzero().flatten()
    assert len(rows) and len(cols), "no channel number"
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def conv_probe(c_out: int, side: int, n: int, dims: int = 2, **options) -> tuple[FeatureMapProbe, torch.Tensor]:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    model = nn.Sequential(conv(3, c_out, 3, padding=1))
    x = torch.randn(n, 3, *([side] * dims), generator=torch.Generator().manual_seed(2))
    return FeatureMapProbe(model, **options), x


def captured(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model[0](x)


@pytest.mark.parametrize(
    ("c_out", "side", "n", "max_channels", "max_samples", "cols"),
    [
        (20, 8, 6, 16, 4, 8),  # more channels and samples than shown; 8x8 maps upscaled; 2 bands of 8
        (5, 7, 3, 16, 4, 5),  # fewer channels and samples than the limits; a 7x7 map is made visible; 1 band
        (12, 40, 2, 3, 1, 2),  # a mid-size map kept as it is; one row: 2 bands (2 + 1 columns) are squarer
        (3, 100, 2, 8, 8, 3),  # a large map is shrunk to MAX_TILE; 8 rows: 1 band
        (64, 224, 4, 16, 4, 8),  # the first conv of a 224 px network: 2 bands of 8 instead of 16 columns
    ],
)
def test_grid_layout_and_size(c_out, side, n, max_channels, max_samples, cols):
    """Columns wrap into the bands that make the grid closest to square; every band is a header and all rows."""
    probe, x = conv_probe(c_out, side, n, max_channels=max_channels, max_samples=max_samples)
    rep = probe.run(x)["0"]
    rows, shown, tile = min(max_samples, n), min(max_channels, c_out), tile_side(side)
    assert tile >= min(side, R.MIN_TILE) and tile <= R.MAX_TILE
    assert rep.grid.dtype == torch.uint8 and rep.grid.device.type == "cpu"
    assert len(rep.channels) == shown and len(set(rep.channels)) == shown
    assert rep.grid.shape[2] == cols * (tile + R.PAD) - R.PAD
    layout = Layout.of(rep.grid, shown, rows, tile)
    assert layout.cols == cols and H.MIN_DIGIT < layout.head < tile
    height, width = rep.grid.shape[1:]
    for fewer_bands in range(1, layout.bands):  # closer to square than a layout with fewer, wider bands
        wide = math.ceil(shown / fewer_bands) * (tile + R.PAD) - R.PAD
        assert abs(math.log(height / width)) < abs(math.log(fewer_bands * layout.band_h / wide))
    for band in range(layout.bands):  # headers are grey digits on the background, the pad right of them too
        header = rep.grid[:, band * layout.band_h : band * layout.band_h + layout.head]
        assert (header[0] == header[1]).all() and (header[0] == header[2]).all()
        assert header.min() == R.BACKGROUND and INK < header.max() <= R.HEADER_INK
    right = (shown - (layout.bands - 1) * cols) * (tile + R.PAD)  # a shorter last band is padded on the right
    assert (rep.grid[:, (layout.bands - 1) * layout.band_h :, right:] == R.BACKGROUND).all()
    body = R.render_feature_grid(captured(probe.model, x), torch.tensor(rep.channels), max_samples, probe.lut)
    want = Picture(body, R.grid_palette(probe.lut)).rgb()
    for col in range(shown):  # the tiles are the picture without header, column after column
        top, left = layout.tile(col, 0)
        body_left = col * (tile + R.PAD)
        assert torch.equal(
            rep.grid[:, top : top + want.shape[1], left : left + tile], want[:, :, body_left : body_left + tile]
        )


@pytest.mark.parametrize(("dims", "side", "tile_hw"), [(1, 10, (R.STRIP_HEIGHT, 40)), (3, 6, (36, 36))])
def test_1d_maps_are_strips_and_3d_maps_show_a_slice(dims, side, tile_hw):
    probe, x = conv_probe(4, side, 2, dims=dims, max_samples=4)
    rep = probe.run(x)["0"]
    h, w = tile_hw
    layout = Layout.of(rep.grid, 4, 2, w, h)
    assert rep.grid.shape[2] == layout.cols * (w + R.PAD) - R.PAD
    assert rep.grid.shape[1] == layout.bands * (layout.head + 2 * (h + R.PAD) - R.PAD)


def test_layer_without_spatial_layout_has_stats_but_no_grid():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    result = FeatureMapProbe(model, layers=["0", nn.Linear], image_layers=["0", "2"]).run(torch.randn(2, 3, 8, 8))
    assert result["0"].grid is not None
    assert result["2"].grid is None and result["2"].channel_mean.shape == (5,)


def drawn(number: int, tile: int, digit: int) -> torch.Tensor:
    """Pillow's default font writing ``number`` centred in a ``tile``-wide column: its ink, cropped."""
    font, stroke = H._font(digit)
    image = Image.new("L", (tile, 4 * digit), R.BACKGROUND)
    ImageDraw.Draw(image).text((tile / 2, digit), str(number), R.HEADER_INK, font, "ma", stroke_width=stroke)
    ink = torch.from_numpy(np.asarray(image).copy())
    rows, cols = ink_box(ink)
    return ink[rows, cols] > INK


@pytest.mark.parametrize(("c_out", "side"), [(20, 8), (120, 8), (128, 56)])
def test_header_names_each_columns_channel(c_out, side):
    probe, x = conv_probe(c_out, side, 2, max_channels=12)
    rep = probe.run(x)["0"]
    tile = tile_side(side)
    layout = Layout.of(rep.grid, 12, 2, tile)
    cols, digit = H.band_layout(12, len(str(max(rep.channels))), tile, 2 * (tile + R.PAD) - R.PAD)
    assert cols == layout.cols
    assert max(rep.channels) >= 10  # multi-digit indices are shown too
    for col, channel in enumerate(rep.channels):
        header = layout.header(rep.grid, col)
        rows, cols = ink_box(header)
        assert torch.equal(header[0, rows, cols] > INK, drawn(channel, tile, digit)), (col, channel)
        # centred in its column, clear of the tiles above and below
        assert abs((cols.start + cols.stop) / 2 - tile / 2) <= 1 and rows.start >= 2 and rows.stop <= layout.head - 2
    # the header ends in a background margin and the first row of tiles starts right below it
    assert (rep.grid[:, layout.head - R.PAD : layout.head] == R.BACKGROUND).all()
    assert not (rep.grid[:, layout.head, :tile] == R.BACKGROUND).all()


@pytest.mark.parametrize(("order", "cmap"), [("std", "viridis"), ("index", "magma")])
def test_tiles_show_each_channel_normalised_on_its_own(order, cmap):
    c_out, side, n, max_samples = 10, 8, 5, 3
    probe, x = conv_probe(c_out, side, n, max_channels=6, max_samples=max_samples, channel_order=order, cmap=cmap)
    with torch.no_grad():  # channel 0: a huge channel; channel 1: a constant one
        probe.model[0].weight[0] *= 1000
        probe.model[0].weight[1] = 0
    rep = probe.run(x)["0"]
    act = captured(probe.model, x).double()
    std = act.transpose(0, 1).flatten(1).std(dim=1, unbiased=False)
    if order == "std":
        assert rep.channels == torch.argsort(std, descending=True)[:6].tolist()
        assert rep.channels[0] == 0 and 1 not in rep.channels
    else:
        assert rep.channels == list(range(6))
    tile = tile_side(side)
    factor = tile // side
    layout = Layout.of(rep.grid, 6, max_samples, tile)
    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, R.LEVELS))[:, :3]  # R.LEVELS colours, see render.py
    grid = rep.grid.permute(1, 2, 0).numpy().astype(int)
    for col, channel in enumerate(rep.channels):
        shown = act[:max_samples, channel]
        lo, hi = shown.min(), shown.max()
        norm = (shown - lo) / (hi - lo) if hi > lo else torch.zeros_like(shown)
        for row in range(max_samples):
            want_idx = (norm[row] * (R.LEVELS - 1)).round().long()
            want_idx = want_idx.repeat_interleave(factor, 0).repeat_interleave(factor, 1).numpy()
            want = np.round(lut[want_idx] * 255).astype(int)
            top, left = layout.tile(col, row)
            got = grid[top : top + tile, left : left + tile]
            if channel == 1:  # constant, so dead: framed in the dead colour, the map inside as any other
                frame = marks.frame_width(grid.shape[1], tile, H.CARD_WIDTH)
                assert (got[:frame] == marks.COLOURS[marks.DEAD][0]).all() and (got[:, -frame:] == got[0, 0]).all()
                got, want = got[frame:-frame, frame:-frame], want[frame:-frame, frame:-frame]
            # identical (float32 vs float64 could differ by one colour step at a rounding boundary)
            diff = np.abs(got - want).max(axis=2)
            assert (diff == 0).mean() > 0.99 and diff.max() <= 3, (row, col, channel)
            if channel == 1:  # constant: the colormap's lowest colour, no NaN artefacts
                assert (got == np.round(lut[0] * 255).astype(int)).all()
    # tiles are separated by background padding
    assert (rep.grid[:, layout.head :, tile : tile + R.PAD] == R.BACKGROUND).all()


# Default grids (max_channels=16, max_samples=4) of real layers: (channels, output size, conv dims).
REAL_LAYERS = [
    (64, 224, 2),  # VGG/ResNet on 224 px: the first convs, tiles shrunk to MAX_TILE
    (64, 112, 2),
    (128, 56, 2),
    (256, 28, 2),
    (512, 14, 2),
    (512, 7, 2),  # the last ResNet block: 7x7 maps enlarged to 35 px, three-digit channel numbers
    (16, 64, 2),  # the demo (examples/shapes.py, 64 px inputs): features.0, .4, .8, .12
    (32, 32, 2),
    (64, 16, 2),
    (64, 8, 2),
    (3, 224, 2),  # few channels
    (1, 7, 2),
    (64, 1000, 1),  # 1-D: strips, the long ones shrunk to 2 * MAX_TILE
    (32, 10, 1),
    (16, 8, 3),  # 3-D: the middle slice
]


@pytest.mark.parametrize(("c_out", "side", "dims"), REAL_LAYERS)
def test_channel_numbers_are_legible_in_tensorboards_card(c_out, side, dims):
    """At least 7 px on screen: TensorBoard's Images card shows a grid H.CARD_WIDTH px wide (measured there, see
    channel_header.py and tests/test_browser.py), so a digit's height on screen is its height in the grid times
    CARD_WIDTH / grid width, in every band of every default grid."""
    probe, x = conv_probe(c_out, side, 4, dims=dims)
    grid = probe.run(x)["0"].grid
    shown = min(16, c_out)
    tile_w = tile_side(side) if dims > 1 else tile_side(side, 2 * R.MAX_TILE)
    tile_h = tile_side(side) if dims > 1 else R.STRIP_HEIGHT
    layout = Layout.of(grid, shown, 4, tile_w, tile_h)
    on_screen = H.CARD_WIDTH / grid.shape[2]
    for col in range(shown):
        rows, cols = ink_box(layout.header(grid, col))
        height = rows.stop - rows.start
        assert height * on_screen >= 7, f"column {col}: digits {height} px tall, {height * on_screen:.1f} px on screen"
        assert height >= 8, "too small at actual size"
        assert cols.start > 0 and cols.stop < tile_w, "the number spills out of its column"
    # and the maps get more of the card than in one band of 16 columns
    assert grid.shape[2] <= max(H.CARD_WIDTH, 8 * (tile_w + R.PAD))


def test_png_in_the_event_file_decodes_to_the_grid(tmp_path):
    """End to end: the PNG TensorBoard stores at step 0 is the grid a probe of the untrained model draws, as a
    palette PNG (a byte a pixel); the probe input, a photo of many colours, stays RGB."""
    train, val = tiny_loaders()
    probe_batch = next(iter(val))
    model = TinyCNN()
    untrained = copy.deepcopy(model)
    callback = FeatureMapCallback(probe_batch=probe_batch, max_samples=3, max_channels=5, every_n_epochs=1)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(model, train, val)
    want = FeatureMapProbe(untrained, max_samples=3, max_channels=5).run(probe_batch[0])

    events = read_events(trainer.logger.log_dir)
    for layer in ("conv1", "conv2"):
        images = sorted(events.images[f"feature_maps/{layer}"], key=lambda e: e.step)
        assert [e.step for e in images] == [0, 4, 8]
        grid = want[layer].grid
        for event in images:
            png = Image.open(io.BytesIO(event.encoded_image_string))
            assert png.format == "PNG" and png.mode == "P"
            assert png.size == (event.width, event.height) == (grid.shape[2], grid.shape[1])
        first = decoded(images[0])
        assert np.array_equal(first, grid.permute(1, 2, 0).numpy()), layer
        last = decoded(images[-1])
        assert not np.array_equal(first, last)  # the maps changed as the model learned
    probe_input = events.images["probe/input"][0]
    png = Image.open(io.BytesIO(probe_input.encoded_image_string))
    assert png.mode == "RGB" and png.size == (want.input_image.shape[2], want.input_image.shape[1])
    assert png.size == (3 * (tile_side(16) + R.PAD) - R.PAD, tile_side(16))


def decoded(event) -> np.ndarray:
    """The RGB pixels of an image event's PNG, ``uint8 [H, W, 3]``."""
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_grids_have_at_most_256_colours_and_are_stored_losslessly_as_palette_pngs(tmp_path):
    """A grid with every kind of colour (all colormap levels, NaN, a header of three-digit numbers) fits a
    palette; add_png stores it as one, as it does an RGB image of at most 256 colours (a grey photo), and an image
    of more colours as RGB, all decoding to the same pixels."""
    x = torch.rand(2, 120, 40, 40, generator=torch.Generator().manual_seed(0))
    x[0, 110, :3] = math.nan
    lut = R.colormap_lut()
    grid = H.with_header(R.render_feature_grid(x, torch.arange(100, 120), 2, lut), list(range(100, 120)), lut)
    colours = grid.rgb().flatten(1).unique(dim=1)
    assert R.LEVELS + 2 <= colours.shape[1] <= 256  # every level shows, and NaN, and the header's greys
    small = torch.rand(4, 16, 7, 7, generator=torch.Generator().manual_seed(1))  # 7x7 maps, enlarged 5x
    enlarged = H.with_header(R.render_feature_grid(small, torch.arange(16), 4, lut), list(range(16)), lut)
    photo = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = photo[:1].expand(3, -1, -1).contiguous()
    assert len(grey[0].unique()) == 256
    pictures = (("grid", grid, "P"), ("enlarged", enlarged, "P"), ("grey", grey, "P"), ("photo", photo, "RGB"))
    writer = SummaryWriter(tmp_path)
    for tag, image, _ in pictures:
        add_png(writer, tag, image, 0)
    writer.close()
    events = read_events(tmp_path)
    for tag, image, mode in pictures:
        (event,) = events.images[tag]
        assert Image.open(io.BytesIO(event.encoded_image_string)).mode == mode
        pixels = image.rgb() if isinstance(image, Picture) else image
        assert np.array_equal(decoded(event), pixels.permute(1, 2, 0).numpy()), tag
    # under a byte a pixel for noise, and zlib finds the rows an enlarged map repeats
    assert len(events.images["grid"][0].encoded_image_string) < grid.indices.numel()
    assert len(events.images["enlarged"][0].encoded_image_string) < enlarged.indices.numel() / 8


def test_smooth_maps_are_filtered_and_overlays_quantized_to_a_third(tmp_path):
    """A grid of smooth maps costs a fraction of a byte a pixel (PNG row filters on a palette in colormap
    order); an overlay of a noisy photo under a heat map, ``quantize=True``, is a palette PNG of about a third
    of its lossless size and close to it."""
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 96), torch.linspace(0, 3, 96), indexing="ij")
    smooth = torch.stack([torch.sin(xx * (c + 1)) * torch.cos(yy + c) for c in range(16)]).expand(4, 16, 96, 96)
    lut = R.colormap_lut()
    grid = H.with_header(R.render_feature_grid(smooth, torch.arange(16), 4, lut), list(range(16)), lut)
    ramp = torch.stack([xx, yy, 3 - xx])[:, :64, :64] / 3  # a colour gradient with pixel noise
    photo = (ramp + 0.08 * torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    energy = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1))
    overlay = R.overlay(photo, energy, R.colormap_lut("inferno"))
    writer = SummaryWriter(tmp_path)
    add_png(writer, "smooth", grid, 0)
    add_png(writer, "overlay", overlay, 0, quantize=True)
    add_png(writer, "lossless", overlay, 0)
    writer.close()
    events = read_events(tmp_path)
    (smooth_png,), (overlay_png,), (lossless_png,) = (events.images[t] for t in ("smooth", "overlay", "lossless"))
    assert np.array_equal(decoded(smooth_png), grid.rgb().permute(1, 2, 0).numpy())
    assert len(smooth_png.encoded_image_string) < grid.indices.numel() / 4
    assert Image.open(io.BytesIO(overlay_png.encoded_image_string)).mode == "P"
    assert len(overlay_png.encoded_image_string) < len(lossless_png.encoded_image_string) / 2
    error = np.abs(decoded(overlay_png).astype(int) - overlay.permute(1, 2, 0).numpy())
    assert error.mean() < 6 and np.array_equal(decoded(lossless_png), overlay.permute(1, 2, 0).numpy())
