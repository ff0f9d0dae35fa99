"""PNG bytes of the pictures, encoded for speed and size (the SummaryWriter's own ``add_image`` is slow and large).

A grid comes as a :class:`~.picture.Picture` (palette indices) and is written as it is, a byte a pixel
(:func:`picture_png`). An RGB picture is written as RGB, or as a palette PNG where it has at most 256 colours or
may be brought down to 256 (the overlays: :func:`png`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .picture import MAX_COLOURS, Picture

LUMINANCE = np.array([299, 587, 114])  # ITU-R 601 weights: the order of a palette of many colours


def picture_png(picture: Picture) -> bytes:
    """A :class:`~.picture.Picture` as a palette PNG, its palette in its own order (a grid's puts neighbouring
    colormap levels at neighbouring indices), its rows filtered (see :func:`palette_png`)."""
    return palette_png(picture.indices.numpy(), picture.palette.numpy())


def png(pixels: Any, quantize: bool = False) -> bytes:
    """``uint8 [H, W, C]`` pixels as PNG bytes, encoded for speed and size.

    A picture of at most 256 colours becomes a palette PNG, losslessly. ``quantize=True`` first brings a picture
    of more colours down to 256 (Pillow's fast octree; about 4/255 off on average): for the overlays, a photo
    under a heat map, a third of their lossless size. Either way the palette is put in order of luminance, so that
    similar colours get near indices for the row filters. Any other picture: an RGB PNG at zlib level 1 with
    run-length matching, about the size of level 6 in a fraction of the time.
    """
    import io
    import zlib

    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
    indexed = None
    if picture.mode == "RGB":
        colours = picture.getcolors(MAX_COLOURS)
        if colours is not None:  # median cut keeps every colour of a picture with no more than it asks for
            indexed = picture.quantize(len(colours), method=Image.Quantize.MEDIANCUT)
            if not np.array_equal(np.asarray(indexed.convert("RGB")), np.asarray(picture)):  # lossless, or RGB
                indexed = None
        elif quantize:
            indexed = picture.quantize(MAX_COLOURS, method=Image.Quantize.FASTOCTREE)
    if indexed is None:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
        return buffer.getvalue()
    palette = np.asarray(indexed.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
    order = np.argsort(palette @ LUMINANCE, kind="stable")
    rank = np.empty(len(order), dtype=np.uint8)
    rank[order] = np.arange(len(order))  # an index -> index permutation of the palette
    return palette_png(rank[np.asarray(indexed)], palette[order])


def palette_png(indices: Any, palette: Any) -> bytes:
    """A palette PNG of ``uint8 [H, W]`` indices into ``uint8 [n, 3]`` colours, each row filtered by the PNG
    filter (None, Sub, Up or Paeth) with the smallest sum of absolute differences, as libpng chooses, then zlib
    level 6. Pillow writes palette PNGs unfiltered, which leaves a smooth map's steps to zlib as they are; filtered,
    a step between neighbouring indices is a run of ones, and the grids' files are smaller (BENCHMARKS.md, "The
    picture path")."""
    import struct
    import zlib

    height, width = indices.shape
    x = indices.astype(np.int16)
    left, up, corner = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    left[:, 1:], up[1:], corner[1:, 1:] = x[:, :-1], x[:-1], x[:-1, :-1]
    guess = left + up - corner
    near_left, near_up, near_corner = abs(guess - left), abs(guess - up), abs(guess - corner)
    paeth = np.where(
        (near_left <= near_up) & (near_left <= near_corner), left, np.where(near_up <= near_corner, up, corner)
    )
    filtered = np.stack([x, x - left, x - up, x - paeth]) % 256  # PNG filter types 0, 1, 2, 4
    cost = np.minimum(filtered, 256 - filtered).sum(axis=2)
    choice = cost.argmin(axis=0)
    rows = filtered[choice, np.arange(height)].astype(np.uint8)
    kind = np.array([0, 1, 2, 4], dtype=np.uint8)[choice]
    data = zlib.compress(np.concatenate([kind[:, None], rows], axis=1).tobytes(), 6)

    def chunk(name: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette.tobytes())
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
