"""A picture of at most 256 colours, in the form its PNG encoder writes: a byte a pixel, indices into a palette.

This is the one place of the contract the picture path keeps: a feature-map grid has at most 256 colours, because
render.py draws it from one palette (:func:`~.render.grid_palette`: the header's greys, the dead and dying marks'
colours, the NaN colour and the colormap's levels) and never mixes colours. So the grid travels as
palette indices from the hook on the device to ``png.py``, which writes them as they are (a palette PNG), and a
user gets the same pixels as RGB from :meth:`Picture.rgb` (``LayerReport.grid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_COLOURS = 256  # a palette PNG's index is one byte


@dataclass(frozen=True)
class Picture:
    """``indices`` ``uint8 [H, W]``: pixel ``(y, x)`` has colour ``palette[indices[y, x]]``; ``palette``
    ``uint8 [n, 3]`` RGB, ``n`` at most :data:`MAX_COLOURS`, every index below ``n``. CPU tensors."""

    indices: torch.Tensor
    palette: torch.Tensor

    def __post_init__(self) -> None:
        if self.indices.dtype != torch.uint8 or self.indices.dim() != 2:
            raise ValueError(f"indices: uint8 [H, W], got {self.indices.dtype} {tuple(self.indices.shape)}")
        count = self.palette.shape[0]
        if self.palette.dtype != torch.uint8 or self.palette.shape[1:] != (3,) or not 0 < count <= MAX_COLOURS:
            raise ValueError(
                f"palette: uint8 [n, 3] with 1 to {MAX_COLOURS} colours, got {self.palette.dtype} "
                f"{tuple(self.palette.shape)}"
            )

    def rgb(self) -> torch.Tensor:
        """The pixels as a new ``uint8 [3, H, W]`` RGB tensor: what ``LayerReport.grid`` holds."""
        height, width = self.indices.shape
        index = self.indices.reshape(1, -1).long().expand(3, -1)
        return self.palette.T.contiguous().gather(1, index).view(3, height, width)

    def pixels(self) -> np.ndarray:
        """The pixels as ``uint8 [H, W, 3]`` RGB in NumPy, with no torch op: for a writer thread, where a torch op
        would start a second OpenMP team beside the training thread's (see ``tensorboard_writer.add_png``)."""
        return self.palette.numpy()[self.indices.numpy()]
