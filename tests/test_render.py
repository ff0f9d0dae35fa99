"""Grids: uint8 RGB [3, H, W]; a row per probe sample, a column per channel, a header naming the channels.

Sizes are worked out from render's constants; the pixels of a tile are checked against the captured
activation, normalised per channel and colour-mapped by matplotlib directly; the PNG in the event file
decodes to the same picture.
"""

from __future__ import annotations

import copy
import io
import math

import matplotlib
import numpy as np
import pytest
import torch
from conftest import TinyCNN, make_trainer, read_events, tiny_loaders
from PIL import Image
from torch import nn

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback import render as R

HEADER_INK = 230  # the grey of the header digits


def tile_side(side: int) -> int:
    """How many pixels a map of ``side`` x ``side`` takes in the grid."""
    if side > R.MAX_TILE:
        return R.MAX_TILE
    if side < R.MIN_TILE:
        return side * math.ceil(R.MIN_TILE / side)
    return side


def header_height(channels: list[int], tile: int) -> int:
    scale = 2 if max(len(str(c)) for c in channels) * 8 <= tile else 1
    return 5 * scale + 2 * R.PAD + 2


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
    ("c_out", "side", "n", "max_channels", "max_samples"),
    [
        (20, 8, 6, 16, 4),  # more channels and samples than shown; an 8x8 map is upscaled
        (5, 7, 3, 16, 4),  # fewer channels and samples than the limits; a 7x7 map is made visible
        (12, 40, 2, 3, 1),  # a mid-size map kept as it is
        (3, 100, 2, 8, 8),  # a large map is shrunk to MAX_TILE
    ],
)
def test_grid_layout_and_size(c_out, side, n, max_channels, max_samples):
    probe, x = conv_probe(c_out, side, n, max_channels=max_channels, max_samples=max_samples)
    rep = probe.run(x)["0"]
    rows, cols, tile = min(max_samples, n), min(max_channels, c_out), tile_side(side)
    assert tile >= min(side, R.MIN_TILE) and tile <= R.MAX_TILE
    assert rep.grid.dtype == torch.uint8 and rep.grid.device.type == "cpu"
    assert len(rep.channels) == cols and len(set(rep.channels)) == cols
    height = header_height(rep.channels, tile) + rows * (tile + R.PAD) - R.PAD
    width = cols * (tile + R.PAD) - R.PAD
    assert tuple(rep.grid.shape) == (3, height, width)


@pytest.mark.parametrize(("dims", "side", "tile_hw"), [(1, 10, (R.STRIP_HEIGHT, 40)), (3, 6, (36, 36))])
def test_1d_maps_are_strips_and_3d_maps_show_a_slice(dims, side, tile_hw):
    probe, x = conv_probe(4, side, 2, dims=dims, max_samples=4)
    rep = probe.run(x)["0"]
    h, w = tile_hw
    head = header_height(rep.channels, w)
    assert tuple(rep.grid.shape) == (3, head + 2 * (h + R.PAD) - R.PAD, 4 * (w + R.PAD) - R.PAD)


def test_layer_without_spatial_layout_has_stats_but_no_grid():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    result = FeatureMapProbe(model, layers=["0", nn.Linear], image_layers=["0", "2"]).run(torch.randn(2, 3, 8, 8))
    assert result["0"].grid is not None
    assert result["2"].grid is None and result["2"].channel_mean.shape == (5,)


def header_glyph(grid: torch.Tensor, col: int, tile: int, head: int) -> torch.Tensor:
    """The bright pixels above column ``col``, cropped to their bounding box."""
    left = col * (tile + R.PAD)
    ink = (grid[:, :head, left : left + tile] == HEADER_INK).all(dim=0)
    rows, cols = ink.any(dim=1).nonzero().flatten(), ink.any(dim=0).nonzero().flatten()
    assert len(rows) and len(cols), f"no channel index above column {col}"
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@pytest.mark.parametrize(("c_out", "side"), [(20, 8), (120, 8)])
def test_header_names_each_columns_channel(c_out, side):
    probe, x = conv_probe(c_out, side, 2, max_channels=12)
    rep = probe.run(x)["0"]
    tile = tile_side(side)
    head = header_height(rep.channels, tile)
    scale = 2 if max(len(str(c)) for c in rep.channels) * 8 <= tile else 1
    assert max(rep.channels) >= 10  # multi-digit indices are shown too
    for col, channel in enumerate(rep.channels):
        assert torch.equal(header_glyph(rep.grid, col, tile, head), R._digit_strip(channel, scale)), (col, channel)
    # the header ends in a background margin and the first row of tiles starts right below it
    assert (rep.grid[:, head - R.PAD : head] == R.BACKGROUND).all()
    assert not (rep.grid[:, head, :tile] == R.BACKGROUND).all()


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
    head = header_height(rep.channels, tile)
    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    grid = rep.grid.permute(1, 2, 0).numpy().astype(int)
    for col, channel in enumerate(rep.channels):
        shown = act[:max_samples, channel]
        lo, hi = shown.min(), shown.max()
        norm = (shown - lo) / (hi - lo) if hi > lo else torch.zeros_like(shown)
        for row in range(max_samples):
            want_idx = (norm[row] * 255).round().long()
            want_idx = want_idx.repeat_interleave(factor, 0).repeat_interleave(factor, 1).numpy()
            want = np.round(lut[want_idx] * 255).astype(int)
            top, left = head + row * (tile + R.PAD), col * (tile + R.PAD)
            got = grid[top : top + tile, left : left + tile]
            # identical (float32 vs float64 could differ by one colour step at a rounding boundary)
            diff = np.abs(got - want).max(axis=2)
            assert (diff == 0).mean() > 0.99 and diff.max() <= 3, (row, col, channel)
            if channel == 1:  # constant: the colormap's lowest colour, no NaN artefacts
                assert (got == np.round(lut[0] * 255).astype(int)).all()
    # tiles are separated by background padding
    assert (rep.grid[:, head:, tile : tile + R.PAD] == R.BACKGROUND).all()


def test_png_in_the_event_file_decodes_to_the_grid(tmp_path):
    """End to end: the PNG TensorBoard stores at step 0 is the grid a probe of the untrained model draws."""
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
            assert png.format == "PNG" and png.mode == "RGB"
            assert png.size == (event.width, event.height) == (grid.shape[2], grid.shape[1])
        first = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)))
        assert np.array_equal(first, grid.permute(1, 2, 0).numpy()), layer
        last = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
        assert not np.array_equal(first, last)  # the maps changed as the model learned
    probe_input = events.images["probe/input"][0]
    png = Image.open(io.BytesIO(probe_input.encoded_image_string))
    assert png.mode == "RGB" and png.size == (want.input_image.shape[2], want.input_image.shape[1])
    assert png.size == (3 * (tile_side(16) + R.PAD) - R.PAD, tile_side(16))
