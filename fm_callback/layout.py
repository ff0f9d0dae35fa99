"""Which dimension of a layer output holds the channels, and a channels-first view of it.

A conv puts out ``(N, C, *spatial)``. Modern vision nets also have channels-last blocks ``(N, H, W, C)`` (timm's
ConvNeXt MLP blocks, Swin) and token layers ``(N, T, C)`` (a ViT: ``T = extra + h * w``, the class and register
tokens first). Each output is recognised from its shape, the module type and the probe input's aspect ratio, and
seen as ``(N, C, h, w)`` (a view, no copy) by statistics and pictures alike. An output that could be read two ways is
refused, never silently transposed: ``layouts={"name": ...}`` says which, or ``layers=`` leaves it out.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

CHANNELS_FIRST, CHANNELS_LAST, TOKENS = "channels_first", "channels_last", "tokens"
KINDS = (CHANNELS_FIRST, CHANNELS_LAST, TOKENS)
MAX_EXTRA_TOKENS = 8  # class, distillation and register tokens before the patch grid
# Modules whose output is channels-first by definition.
CHANNELS_FIRST_TYPES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


@dataclass(frozen=True)
class Layout:
    """How to read one output: ``kind``, and for tokens the ``extra`` tokens before an ``h x w`` ``grid``."""

    kind: str = CHANNELS_FIRST
    extra: int = 0
    grid: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.kind == TOKENS:
            return f"tokens ({self.extra} + {self.grid[0]}x{self.grid[1]})"
        return self.kind

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(N, C, *spatial)``: a view of it, no copy."""
        if self.kind == CHANNELS_LAST:
            return x.movedim(-1, 1)
        if self.kind == TOKENS:
            return x[:, self.extra :].unflatten(1, self.grid).permute(0, 3, 1, 2)
        return x


def check_layouts(layouts: Mapping[str, str] | None) -> dict[str, str]:
    """``layouts=`` as given, checked: layer names or glob patterns to one of :data:`KINDS`."""
    layouts = dict(layouts or {})
    for name, kind in layouts.items():
        if not isinstance(name, str) or kind not in KINDS:
            raise ValueError(
                f"layouts: each entry maps a layer name or pattern to one of {', '.join(KINDS)}; got {name!r}: {kind!r}"
            )
    return layouts


def _fits(h: int, w: int, aspect: float | None) -> bool:
    """Whether an ``h x w`` map (at least 2 x 2) has the probe input's aspect ratio (square without an image input),
    give or take the rounding of strided convs and pooling."""
    if h < 2 or w < 2:
        return False
    aspect = aspect or 1.0
    return abs(h - w * aspect) < 1


def token_grid(tokens: int, aspect: float | None) -> tuple[int, tuple[int, int]] | None:
    """``(extra, (h, w))`` with the fewest extra tokens such that ``tokens = extra + h * w`` at the input's
    aspect ratio; ``None`` if there is none."""
    aspect = aspect or 1.0
    for extra in range(min(MAX_EXTRA_TOKENS, tokens - 4) + 1):
        positions = tokens - extra
        h = round(math.sqrt(positions * aspect))
        if h >= 2 and positions % h == 0 and _fits(h, positions // h, aspect) and extra < positions:
            return extra, (h, positions // h)
    return None


def recognise(
    name: str, module: nn.Module, shape: tuple[int, ...], input_shape: tuple[int, ...] | None, given: str | None
) -> Layout:
    """The layout of ``module``'s output of ``shape``; ``input_shape`` is the probe input's (an image when 4-D),
    ``given`` what ``layouts=`` says for this layer. ValueError naming the fix where it cannot be told."""
    image = input_shape is not None and len(input_shape) == 4
    aspect = input_shape[2] / input_shape[3] if image else None
    if given == TOKENS or (given is None and len(shape) == 3 and image):
        found = token_grid(shape[1], aspect) if len(shape) == 3 else None
        if given == TOKENS and found is None:
            raise ValueError(
                f"layouts: layer {name!r} is said to put out tokens, but its output {tuple(shape)} is not (N, extra "
                f"+ h*w, C) with at most {MAX_EXTRA_TOKENS} extra tokens and the input's aspect ratio"
            )
    if given is not None:
        return Layout(given, *found) if given == TOKENS else Layout(given)
    if isinstance(module, CHANNELS_FIRST_TYPES) or len(shape) not in (3, 4):
        return Layout()
    if len(shape) == 3:
        if not image:
            return Layout()  # (N, C, L): a 1-D signal
        if found is None:
            return Layout()  # (N, C, L)
        if token_grid(shape[2], aspect) is None:
            return Layout(TOKENS, *found)
        reading = "(N, tokens, C) or (N, C, tokens)"
    else:
        first, last = _fits(shape[2], shape[3], aspect), _fits(shape[1], shape[2], aspect)
        if not last:
            return Layout()
        if not first:
            return Layout(CHANNELS_LAST)
        reading = "(N, C, H, W) or (N, H, W, C)"
    raise ValueError(
        f"layer {name!r} ({type(module).__name__}) puts out {tuple(shape)}, which could be {reading}; say which with "
        f"layouts={{{name!r}: 'channels_first'}} (or 'channels_last', 'tokens'), or leave it out of layers="
    )


def given_layout(layouts: Mapping[str, str], name: str) -> str | None:
    """What ``layouts=`` says for layer ``name`` (exact name first, then the first matching pattern)."""
    if name in layouts:
        return layouts[name]
    return next((kind for pattern, kind in layouts.items() if fnmatch.fnmatchcase(name, pattern)), None)
