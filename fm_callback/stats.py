"""Per-channel statistics of one layer output (the constant-channel rule they feed is in ``dead.py``).

Plain reductions over the batch and spatial dimensions, one per statistic, a block of channels at a time, on the
tensor's own device and in whatever memory layout it has (PyTorch picks the loop order). Only the small
per-channel results survive the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dead import DEFAULT_ATOL, DEFAULT_RTOL, is_constant

_BLOCK_VALUES = 1 << 20  # values of a block of channels: 4 MiB as float32, in a CPU's cache


@dataclass
class ChannelStats:
    """Per-channel statistics of an ``(N, C, *spatial)`` activation, each a float32/bool tensor ``[C]``."""

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    zero_fraction: torch.Tensor
    nonfinite: torch.Tensor  # int64 [C]: count of NaN/Inf values
    dead: torch.Tensor  # bool [C]: constant (``dead.is_constant``)
    never_positive: torch.Tensor  # bool [C]

    def to(self, device: torch.device | str) -> ChannelStats:
        if self.mean.device == torch.device(device):
            return self  # already there: skip eight no-op copies per layer
        return ChannelStats(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def channel_stats(
    x: torch.Tensor, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, careful: bool = True
) -> ChannelStats:
    """Statistics per channel (dim 1) of ``x`` over the batch and every spatial position, in float32.

    One pass per statistic (see :func:`_reductions`): min, max, sum, zero count, and the sum of squares around each
    channel's mean (so a channel whose mean is large against its spread loses no precision to ``E[x^2] - mean^2``).

    NaN/Inf values (and finite ones whose squares overflow float32), rare, are counted and skipped by a second,
    slower pass, which asks the host whether there are any. ``careful=False`` skips that question, so nothing here
    reads a value on the host and a GPU forward runs on while these are queued; such channels then come out
    non-finite, and the probe, seeing that after its forward, redoes the event with ``careful=True``.
    """
    if x.dim() < 2:
        raise ValueError(f"expected an output of shape (N, C, ...), got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()  # half/bfloat16 outputs get float32 statistics
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]  # values per channel
    cmin, cmax, total, centre, squares, nonzero = _reductions(x, dims)
    mean = total.double() / count
    var = squares.double() / count - (mean - centre.double()).square()  # around the centre used
    zeros = count - nonzero
    nonfinite = torch.zeros(x.shape[1], dtype=torch.int64, device=x.device)
    if careful and not bool((torch.isfinite(cmin) & torch.isfinite(cmax) & torch.isfinite(var)).all()):
        # NaN/Inf values, or finite ones so large (|x| above ~1.8e19) that their float32 squares overflow:
        # count NaN/Inf, and take the finite part's statistics in float64.
        bad = ~torch.isfinite(x)
        nonfinite = bad.sum(dim=dims)
        zeros = (x == 0).sum(dim=dims)  # the NaN values left the fast count NaN
        cmin = x.masked_fill(bad, float("inf")).amin(dim=dims)
        cmax = x.masked_fill(bad, float("-inf")).amax(dim=dims)
        clean = x.masked_fill(bad, 0.0).double()
        n_ok = (count - nonfinite).clamp(min=1)
        mean = clean.sum(dim=dims) / n_ok
        var = clean.square().sum(dim=dims) / n_ok - mean.square()
    half_range = (cmax.double() - cmin.double()) / 2  # a constant channel has std 0, whatever rounding says
    var = torch.minimum(var.clamp(min=0), half_range.square())
    return ChannelStats(
        mean=mean.float(),
        std=var.sqrt().float(),  # the variance itself may not fit a float32 (std above ~1.8e19)
        min=cmin,
        max=cmax,
        zero_fraction=(zeros.double() / count).float(),
        nonfinite=nonfinite,
        dead=is_constant(cmin, cmax, nonfinite, atol, rtol),
        never_positive=cmax <= 0,
    )


def firing_counts(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per channel (``channel_dim``) of a ReLU-family output (never below 0), how many values are above 0, as
    float32 ``[C]``; NaN in a channel holding a NaN, which is then neither silenced nor dying.

    ``clamp(max=1).ceil_()`` is 1 above 0 and 0 at 0; its sum is about 2x faster on a CPU than summing
    ``x != 0`` (whose bools are converted to an integer type first) and 8x faster than ``count_nonzero``. Float32
    counts are exact to 2**24 values per channel, and a count of 0 always is.
    """
    channel_dim %= x.dim()
    dims = [d for d in range(x.dim()) if d != channel_dim]
    return _joined([block.clamp(max=1).ceil_().sum(dim=dims, dtype=torch.float32) for block in _blocks(x, channel_dim)])


def _reductions(x: torch.Tensor, dims: list[int]) -> list[torch.Tensor]:
    """Per channel of ``x``: min, max, sum, the centre used (the float32 mean), the sum of squares around it and the
    count of non-zero values (a NaN counts as 0 here: the careful pass recounts), each ``[C]``.

    A block of channels at a time, small enough to stay in the CPU's cache: it is read from memory once and its
    other passes (the centred squares, the count as the sum of ``|sign(x)|``) run on cached values, and the model's
    own weights and activations are evicted less. The centred squares keep a channel whose mean is large against
    its spread from losing its variance to ``E[x^2] - mean^2``.
    """
    count = x.numel() // max(1, x.shape[1])
    shape = [1, -1, *[1] * (x.dim() - 2)]
    parts = []
    for block in _blocks(x):
        total = block.sum(dim=dims)
        centre = total / count
        squares = (block - centre.view(shape)).square_().sum(dim=dims)
        nonzero = torch.sign(block).abs_().sum(dim=dims)
        parts.append((block.amin(dim=dims), block.amax(dim=dims), total, centre, squares, nonzero))
    return [_joined(column) for column in zip(*parts, strict=True)]


def _joined(parts: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The per-channel results of the blocks as one ``[C]`` tensor (no copy for a single block)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _blocks(x: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, ...]:
    """``x`` in blocks of whole channels, so that a temporary made of one holds ``_BLOCK_VALUES`` values at most."""
    per_channel = x.numel() // max(1, x.shape[channel_dim])
    return x.split(max(1, _BLOCK_VALUES // max(1, per_channel)), dim=channel_dim)
