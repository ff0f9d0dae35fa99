"""Per-channel statistics of one layer output and the dead-filter rule.

Everything here runs on the tensor's own device and reads the activation as little as it can.
The fast path views the output as rows ``(N*C, L)`` and walks them in blocks small enough to stay in
a core's L2 cache: each block is read once from memory and then reduced five times from cache (min,
max, sum, sum of squares, zero count) along its contiguous rows. The only temporary is one block-sized
buffer, never a copy of the activation; the variance is redone centred for the channels where
``E[x^2] - mean^2`` would lose digits. Only the small per-channel results survive the call.
"""

from __future__ import annotations

import functools
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
        if self.mean.device == torch.device(device):
            return self  # already there: skip eight no-op copies per layer
        return ChannelStats(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def dead_rule(
    cmin: torch.Tensor, cmax: torch.Tensor, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> torch.Tensor:
    """Dead channels: ``max - min <= atol + rtol * max|x|``, each channel against its own scale.

    Defaults: ``atol=1e-8`` (an all-zero channel) and ``rtol=1e-5`` (about 80 float32 steps: the rounding
    noise of a constant, not a signal). A weak channel that still varies, at any scale, is not dead.

    A channel holding a NaN is never called dead (its min/max are NaN and the comparison is False);
    it is counted in ``nonfinite`` instead.
    """
    scale = torch.maximum(cmin.abs(), cmax.abs())
    return (cmax - cmin) <= atol + rtol * scale


BLOCK_VALUES_PER_THREAD = 1 << 17  # 512 KiB of float32 per CPU thread: a block stays in L2 for all five reductions
GPU_BLOCK_VALUES = 1 << 22  # on a GPU, caches are not the point: few, large blocks (a 16 MiB buffer)
_EXACT_FLOAT32_COUNT = 1 << 24  # counts of 0/1 values summed in float32 are exact below this
_RUN = 1024  # sums of squares in float32 over runs this short, added up in float64: about 1e-7 relative
_CENTRE_ABOVE = 16  # redo a channel's variance centred when mean^2 > this * variance (error ~ 1e-7 * ratio)


def channel_stats(x: torch.Tensor, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ChannelStats:
    """Statistics per channel (dim 1) of ``x`` over the batch and every spatial position, in float32."""
    if x.dim() < 2:
        raise ValueError(f"expected an output of shape (N, C, ...), got {tuple(x.shape)}")
    if x.numel() and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        stats = None
        if x.is_contiguous():
            stats = _channel_stats_fast(x, _RowLayout(x), atol, rtol)
        elif _channels_last(x) is not None:
            stats = _channel_stats_fast(x, _ColumnLayout(x), atol, rtol)
        if stats is not None:
            return stats
    return _channel_stats_general(x, atol, rtol)


def _channels_last(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as a contiguous ``(N * spatial, C)`` matrix when its channels are innermost in memory, else None."""
    moved = x.movedim(1, -1)
    return moved.view(-1, x.shape[1]) if moved.is_contiguous() else None


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def block_values(device: torch.device) -> int:
    """Values per block of the blocked reductions: what the CPU threads' L2 caches hold, or a large GPU block."""
    if device.type == "cpu":
        return BLOCK_VALUES_PER_THREAD * max(1, torch.get_num_threads())
    return GPU_BLOCK_VALUES


@functools.lru_cache(maxsize=64)
def _run_length(width: int) -> int:
    """A run length near ``_RUN`` that divides ``width`` when one exists (one reduction instead of two)."""
    if width <= _RUN:
        return width
    for run in range(_RUN, _RUN // 4 - 1, -1):
        if width % run == 0:
            return run
    return _RUN


def _run_norms(block: torch.Tensor) -> torch.Tensor:
    """Float32 ``(k, m)`` Euclidean norms of the runs of each row of a ``(k, w)`` block with contiguous rows.

    ``vector_norm`` reads the data once without a temporary; over a whole long row its float32 running
    sum drifts (about 1e-6 relative at 50k values), over runs of about 1024 it stays near 1e-7.
    """
    k, width = block.shape
    run = _run_length(width)
    head = width - width % run
    norms = torch.linalg.vector_norm(block[:, :head].reshape(k, head // run, run), dim=2, dtype=torch.float32)
    if head == width:
        return norms
    tail = torch.linalg.vector_norm(block[:, head:], dim=1, keepdim=True, dtype=torch.float32)
    return torch.cat([norms, tail], dim=1)


class _RowLayout:
    """Channels-first ``(N, C, *spatial)``: rows ``(N*C, L)``, reduced along their contiguous length.

    Whole rows per block when a row fits the block budget, else one row cut into segments.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.n, self.c = x.shape[0], x.shape[1]
        self.rows = x.view(self.n * self.c, -1)  # row r: sample r // c, channel r % c
        self.length = self.rows.shape[1]
        self.values = self.n * self.length  # per channel

    def reduce(self, budget: int, threads: int) -> tuple[torch.Tensor, ...]:
        """Per channel: min, max (dtype of x), sum, sum of squares, zero count (float64)."""
        n, c, rows, length = self.n, self.c, self.rows, self.length
        count = n * c
        width = length if length <= budget else budget // _RUN * _RUN  # values of a row per block
        per_block = max(1, budget // width)  # rows per block (1 when rows are cut into segments)
        if per_block > threads:
            per_block -= per_block % threads  # whole rows per thread: each op splits its rows evenly
        segments = -(-length // width)
        count_dtype = torch.float32 if width < _EXACT_FLOAT32_COUNT else torch.float64
        buf = torch.empty(min(per_block, count) * width, dtype=torch.float32, device=rows.device)
        mins, maxs, sums, norms, zeros = [], [], [], [], []
        for first in range(0, count, per_block):
            for start in range(0, length, width):
                block = rows[first : first + per_block, start : start + width]
                k, w = block.shape
                mins.append(block.amin(dim=1))
                maxs.append(block.amax(dim=1))
                sums.append(block.sum(dim=1, dtype=torch.float32))
                runs = _run_norms(block)
                norms.append(runs if segments == 1 else runs.double().square().sum(dim=1))
                is_zero = torch.eq(block, 0, out=buf[: k * w].view(k, w))  # 0/1 as float32: fast, exact count
                zeros.append(is_zero.sum(dim=1, dtype=count_dtype))

        def per_channel(parts: list[torch.Tensor], reduce, dtype: torch.dtype | None = None) -> torch.Tensor:
            by_row = _cat(parts) if dtype is None else _cat(parts).to(dtype)
            if segments > 1:
                by_row = reduce(by_row.view(count, segments), dim=1)
            return reduce(by_row.view(n, c), dim=0)

        squares = [_cat(norms).double().square().sum(dim=1)] if segments == 1 else norms
        return (
            per_channel(mins, torch.amin),
            per_channel(maxs, torch.amax),
            per_channel(sums, torch.sum, torch.float64),
            per_channel(squares, torch.sum),
            per_channel(zeros, torch.sum, torch.float64),
        )

    def centred_sums(self, channels: torch.Tensor, shift: torch.Tensor, budget: int) -> tuple[torch.Tensor, ...]:
        """Float64 sums and sums of squares of the given channels' values minus ``shift``."""
        flat = self.rows.view(self.n, self.c, self.length)
        step = max(1, 32 * budget // (len(channels) * self.length))  # samples per copy: up to 32 blocks
        total = torch.zeros(len(channels), dtype=torch.float64, device=flat.device)
        squares = torch.zeros_like(total)
        for start in range(0, self.n, step):
            part = flat[start : start + step].index_select(1, channels).float().sub_(shift.view(1, -1, 1))
            k = part.shape[0]
            total += part.sum(dim=2).double().sum(dim=0)
            runs = _run_norms(part.view(k * len(channels), self.length))
            squares += runs.double().square().sum(dim=1).view(k, -1).sum(dim=0)
        return total, squares


class _ColumnLayout:
    """Channels-last memory (ConvNeXt's convolutions, ``channels_last`` models): a contiguous ``(M, C)``
    matrix of positions by channels, reduced down its columns a block of positions at a time."""

    def __init__(self, x: torch.Tensor) -> None:
        self.matrix = _channels_last(x)
        self.values, self.c = self.matrix.shape

    def reduce(self, budget: int, threads: int) -> tuple[torch.Tensor, ...]:
        matrix = self.matrix
        per_block = max(1, min(4 * _RUN, budget // self.c))  # positions per block: float32 sums stay short
        buf = torch.empty(min(per_block, self.values) * self.c, dtype=torch.float32, device=matrix.device)
        mins, maxs, sums, norms, zeros = [], [], [], [], []
        for first in range(0, self.values, per_block):
            block = matrix[first : first + per_block]
            mins.append(block.amin(dim=0))
            maxs.append(block.amax(dim=0))
            sums.append(block.sum(dim=0, dtype=torch.float32))
            norms.append(torch.linalg.vector_norm(block, dim=0, dtype=torch.float32))
            zeros.append(torch.eq(block, 0, out=buf[: block.numel()].view(block.shape)).sum(dim=0))
        return (
            torch.stack(mins).amin(dim=0),
            torch.stack(maxs).amax(dim=0),
            torch.stack(sums).double().sum(dim=0),
            torch.stack(norms).double().square().sum(dim=0),
            torch.stack(zeros).double().sum(dim=0),
        )

    def centred_sums(self, channels: torch.Tensor, shift: torch.Tensor, budget: int) -> tuple[torch.Tensor, ...]:
        per_block = max(1, min(4 * _RUN, 32 * budget // len(channels)))  # short float32 sums, as above
        total = torch.zeros(len(channels), dtype=torch.float64, device=self.matrix.device)
        squares = torch.zeros_like(total)
        for first in range(0, self.values, per_block):
            part = self.matrix[first : first + per_block].index_select(1, channels).float().sub_(shift)
            total += part.sum(dim=0).double()
            squares += torch.linalg.vector_norm(part, dim=0).double().square()
        return total, squares


def _channel_stats_fast(x: torch.Tensor, layout: _RowLayout | _ColumnLayout, atol: float, rtol: float):
    """Floating-point ``x`` in a layout the blocks can walk; ``None`` (use the general path) on NaN/Inf.

    Each block is read once from memory and reduced five times from cache; per-block results are
    float32, combined per channel in float64.
    """
    threads = torch.get_num_threads() if x.device.type == "cpu" else 1
    budget = block_values(x.device)
    cmin, cmax, total, sumsq, zero_count = layout.reduce(budget, threads)
    cmin, cmax = cmin.float(), cmax.float()
    if not bool((torch.isfinite(cmin) & torch.isfinite(cmax) & torch.isfinite(total) & torch.isfinite(sumsq)).all()):
        return None  # NaN/Inf (or float32 overflow): the general path counts and skips them
    values = layout.values
    mean = total / values
    var = sumsq / values - mean.square()
    # E[x^2] - mean^2 cancels when |mean| is large against the spread: redo those channels around their mean.
    risky = (mean.square() > _CENTRE_ABOVE * var).nonzero().flatten()
    if risky.numel():
        centred_sum, centred_sq = layout.centred_sums(risky, mean[risky].float(), budget)
        var[risky] = centred_sq / values - (centred_sum / values).square()
    half_range = (cmax.double() - cmin.double()) / 2
    var = torch.minimum(var.clamp(min=0), half_range.square())  # a constant channel has std exactly 0
    return ChannelStats(
        mean=mean.float(),
        std=var.sqrt().float(),
        min=cmin,
        max=cmax,
        zero_fraction=(zero_count / values).float(),
        nonfinite=torch.zeros(layout.c, dtype=torch.int64, device=x.device),
        dead=dead_rule(cmin, cmax, atol, rtol),
        never_positive=cmax <= 0,
    )


def _channel_stats_general(x: torch.Tensor, atol: float, rtol: float) -> ChannelStats:
    """Any layout and dtype, NaN/Inf counted and skipped: whole-tensor reductions over dims ``(0, 2, ...)``."""
    if x.dtype != torch.float32:
        x = x.float()
    dims = [0, *range(2, x.dim())]
    per_channel = x.numel() // x.shape[1]
    cmin = x.amin(dim=dims)
    cmax = x.amax(dim=dims)
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    zeros = per_channel - torch.count_nonzero(x, dim=dims)
    if bool((torch.isfinite(mean) & torch.isfinite(var)).all()):
        nonfinite = torch.zeros_like(zeros)
    else:
        # Rare: NaN/Inf values, or finite ones so large (|x| above ~1.8e19) that their float32 squares overflow.
        # Only then pay for a pass that counts NaN/Inf, and take the finite part's statistics in float64.
        bad = ~torch.isfinite(x)
        nonfinite = bad.sum(dim=dims)
        cmin = x.masked_fill(bad, float("inf")).amin(dim=dims)
        cmax = x.masked_fill(bad, float("-inf")).amax(dim=dims)
        clean = x.masked_fill(bad, 0.0).double()
        n_ok = (per_channel - nonfinite).clamp(min=1)
        mean = clean.sum(dim=dims) / n_ok
        var = (clean.square().sum(dim=dims) / n_ok - mean.square()).clamp(min=0)
        half_range = (cmax.double() - cmin.double()) / 2  # E[x^2] - mean^2 rounds; a constant channel has std 0
        var = torch.minimum(var, half_range.square())
        mean = mean.float()
    std = var.sqrt().float()  # the variance itself may not fit a float32 (std above ~1.8e19)
    dead = dead_rule(cmin, cmax, atol, rtol) & (nonfinite == 0)
    return ChannelStats(
        mean=mean,
        std=std,
        min=cmin,
        max=cmax,
        zero_fraction=zeros.float() / per_channel,
        nonfinite=nonfinite,
        dead=dead,
        never_positive=cmax <= 0,
    )
