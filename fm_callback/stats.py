"""Per-channel statistics of one layer output and the dead-filter rule.

Everything here runs on the tensor's own device and reads the activation as few times as it can:
one pass for min and max, one for mean and variance, one for the zero count. Only the small
per-channel results (a few floats per channel) survive the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_ATOL = 1e-8
DEFAULT_RTOL = 1e-5


@dataclass
class ChannelStats:
    """Per-channel statistics of an ``(N, C, *spatial)`` activation, each a float32/bool tensor ``[C]``."""

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    zero_fraction: torch.Tensor
    nonfinite: torch.Tensor  # int64 [C]: count of NaN/Inf values
    dead: torch.Tensor  # bool [C]
    never_positive: torch.Tensor  # bool [C]

    def to(self, device: torch.device | str) -> ChannelStats:
        return ChannelStats(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def dead_rule(
    cmin: torch.Tensor, cmax: torch.Tensor, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> torch.Tensor:
    """Dead channels: ``max - min <= atol + rtol * max|x|``, each channel against its own scale.

    A channel holding a NaN is never called dead (its min/max are NaN and the comparison is False);
    it is counted in ``nonfinite`` instead.
    """
    scale = torch.maximum(cmin.abs(), cmax.abs())
    return (cmax - cmin) <= atol + rtol * scale


def channel_stats(x: torch.Tensor, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ChannelStats:
    """Statistics per channel (dim 1) of ``x`` over the batch and every spatial position, in float32."""
    if x.dim() < 2:
        raise ValueError(f"expected an output of shape (N, C, ...), got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()
    dims = [0, *range(2, x.dim())]
    per_channel = x.numel() // x.shape[1]
    cmin = x.amin(dim=dims)
    cmax = x.amax(dim=dims)
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    zeros = per_channel - torch.count_nonzero(x, dim=dims)
    finite = torch.isfinite(mean)
    if bool(finite.all()):
        nonfinite = torch.zeros_like(zeros)
    else:
        # Rare: only then pay for a pass that counts NaN/Inf, and keep the finite part's statistics.
        bad = ~torch.isfinite(x)
        nonfinite = bad.sum(dim=dims)
        clean = x.masked_fill(bad, 0.0)
        n_ok = (per_channel - nonfinite).clamp(min=1).float()
        mean = clean.sum(dim=dims) / n_ok
        var = (clean.square().sum(dim=dims) / n_ok - mean.square()).clamp(min=0)
        cmin = x.masked_fill(bad, float("inf")).amin(dim=dims)
        cmax = x.masked_fill(bad, float("-inf")).amax(dim=dims)
    dead = dead_rule(cmin, cmax, atol, rtol) & (nonfinite == 0)
    return ChannelStats(
        mean=mean,
        std=var.sqrt(),
        min=cmin,
        max=cmax,
        zero_fraction=zeros.float() / per_channel,
        nonfinite=nonfinite,
        dead=dead,
        never_positive=cmax <= 0,
    )
