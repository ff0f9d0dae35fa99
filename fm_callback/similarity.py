"""How similar two representations of the probe batch are: debiased linear CKA, and the layer value histogram.

A layer's representation of the probe batch is its output flattened to ``X`` of shape ``(N, D)``. Linear CKA
compares two representations of the same N samples through their N x N Gram matrices ``K = X Xᵀ``; it is
invariant to an orthogonal transform (a rotation of the channels) and to isotropic scaling, so it measures
whether the layer sees the samples alike, not whether its weights moved. The debiased form (Nguyen et al. 2021,
"Do wide and deep networks learn the same things?") uses the unbiased HSIC estimator of Song et al. 2012, which
needs N >= 4 samples and has no bias towards 1 at small N. Only the Gram matrices are kept, never the activation.

Pure tensor functions, no Lightning: the probe computes :func:`gram` and :func:`value_histogram` inside its
hooks, on the activation's device; :func:`cka` and :func:`layer_change` compare Gram matrices on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

MIN_SAMPLES = 4  # the unbiased HSIC estimator divides by n - 3
HISTOGRAM_BINS = 64
HISTOGRAM_VALUES = 1 << 16  # values binned per layer at most (evenly spread over the output)
_CHUNK_VALUES = 1 << 22  # values per block of a half-precision activation: 16 MiB as float32, never all of it
_RELATIVE_VALUES = 1 << 20  # values per block of the relative Gram product: 4 MiB as float32, in cache
_SPREAD = 0.1  # below this share of the uncentred trace, the samples' spread is lost to float32 without centring


def flat_samples(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(N, D)``, a view where the memory allows: the feature order does not matter to a Gram matrix,
    so a channels-last activation is flattened in its own memory order instead of being copied."""
    n = x.shape[0]
    if x.is_contiguous():
        return x.reshape(n, -1)
    moved = x.movedim(1, -1)
    return moved.reshape(n, -1) if moved.is_contiguous() else x.reshape(n, -1)


def gram(x: torch.Tensor, check_overflow: bool = True, relative: bool | None = None) -> torch.Tensor:
    """The N x N Gram matrix ``X Xᵀ`` of ``x`` (``(N, ...)``, flattened per sample), as float64 on ``x``'s device.

    The debiased HSIC does not depend on an offset common to all samples, but float32 does: where the features share
    a large one (post-ReLU layers often do), the uncentred product loses 1 - CKA's digits (3x too large at a 30-sigma
    offset, N = 16, D = 2e5), so the samples are then taken relative to the first one (:func:`_relative_gram`).
    On the CPU that costs about two products, so it is done only where the offset dominates
    (:func:`offset_dominates`); on an accelerator always, since the check would wait for the device. ``relative``
    True or False skips the check: the probe, on the CPU, gives what the same layer's previous Gram matrix showed
    (and redoes the event where that was wrong). A product that overflows float32 (values near 1e16 and above) is
    redone in float64 blocks scaled by the largest magnitude, which CKA does not see. That check reads a value on
    the host (a GPU waits for everything queued): the probe skips it (``check_overflow=False``) and, when a Gram
    matrix it handed over is not finite, runs its careful second forward with it.
    """
    flat = flat_samples(x)
    n, d = flat.shape
    if d == 0:
        return torch.zeros(n, n, dtype=torch.float64, device=x.device)
    if relative or (relative is None and flat.device.type != "cpu"):
        result = _relative_gram(flat)
    else:
        result = (flat @ flat.T).double() if flat.dtype == torch.float32 else _blocked_gram(flat, torch.float32)
        if relative is None and bool(offset_dominates(result, result.trace())):
            result = _relative_gram(flat)
    if check_overflow and not bool(torch.isfinite(result).all()) and bool(torch.isfinite(flat).all()):
        result = _blocked_gram(flat, torch.float64, scaled=True)
    return result


def offset_dominates(g: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """0-dim bool, on ``g``'s device: the samples' spread (the centred trace of the Gram matrix ``g``, the same for
    the relative product) is under ``_SPREAD`` of the uncentred ``trace`` (the sum of squares of every value); then
    10x the float32 error of a bare product is no longer far below 1 - CKA's digits."""
    return (trace > 0) & (g.trace() - g.sum() / g.shape[0] < _SPREAD * trace)


def _relative_gram(flat: torch.Tensor) -> torch.Tensor:
    """``(X - x₀)(X - x₀)ᵀ`` of the rows ``X`` of ``flat`` less its first row ``x₀``, float64.

    In float32 blocks of ``_RELATIVE_VALUES`` values, each subtracted into one reused buffer that stays in the
    CPU's cache, its product summed in float64: about twice a bare product's time, no copy of the activation.
    """
    n, d = flat.shape
    width = max(1, min(d, _RELATIVE_VALUES // n))
    buffer = torch.empty(n, width, dtype=torch.float32, device=flat.device)
    result = torch.zeros(n, n, dtype=torch.float64, device=flat.device)
    for block in flat.split(width, dim=1):
        relative = buffer[:, : block.shape[1]]
        if block.dtype == torch.float32:
            torch.sub(block, block[:1], out=relative)
        else:  # half precision: subtract in float32
            relative.copy_(block)
            relative -= relative[:1].clone()
        result += (relative @ relative.T).double()
    return result


def _blocked_gram(flat: torch.Tensor, dtype: torch.dtype, scaled: bool = False) -> torch.Tensor:
    """``flat @ flat.T`` summed over blocks of ``_CHUNK_VALUES`` values in ``dtype``, optionally divided by the
    square of the largest magnitude; float64."""
    n = flat.shape[0]
    scale = None
    if scaled:
        low, high = torch.aminmax(flat)
        scale = torch.maximum(low.abs(), high.abs()).to(dtype).reciprocal()
    result = torch.zeros(n, n, dtype=torch.float64, device=flat.device)
    for block in flat.split(max(1, _CHUNK_VALUES // n), dim=1):
        block = block.to(dtype) if scale is None else block.to(dtype) * scale
        result += (block @ block.T).double()
    return result


def value_histogram(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Counts of ``x``'s values in ``bins`` equal bins over ``[low, high]`` (0-dim tensors on ``x``'s device, such
    as the statistics' min and max), as int64 on the device: no copy of ``x`` leaves it, nothing waits for it.

    Binning every value of a large output costs as much as a forward layer on a CPU, so at most
    ``HISTOGRAM_VALUES`` values are binned, every k-th of the output (k odd, so that a power-of-two width cannot
    make the sample fall on the same columns). Each value's bin is computed (a value on an edge counts in the bin
    below it, as TensorBoard's upper bucket limits say), then counted by an unweighted bincount: both deterministic
    on CUDA (``torch.histc`` is not, and needs its range as Python floats, a device sync per layer), and several
    times faster on a CPU than a binary search (``bucketize``). A constant activation falls in the first bin.
    """
    flat = flat_samples(x).reshape(-1)
    stride = -(-flat.numel() // HISTOGRAM_VALUES)
    sample = flat[:: stride | 1].float()
    low, high = low.float(), high.float()
    width = torch.where(high > low, high - low, torch.ones_like(high))
    index = (sample - low).mul_(bins / width).ceil_().sub_(1).clamp_(0, bins - 1).to(torch.int32)
    index.clamp_(0, bins - 1)  # a NaN value: its integer is arbitrary; the writer skips a non-finite histogram
    return torch.bincount(index, minlength=bins)[:bins].long()


def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 (the papers' names)
    """The unbiased HSIC estimator of Song et al. (2012) of two N x N Gram matrices, N >= 4, in float64."""
    n = k.shape[0]
    k, l = k.double().clone(), l.double().clone()  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=torch.float64, device=k.device)
    trace = (k * l).sum()
    sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
    cross = 2 * (ones @ k) @ (l @ ones) / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def cka(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Debiased linear CKA of two Gram matrices of the same N samples; NaN for N < 4, mismatched sizes, or a
    representation without variance (a layer whose output is the same for every sample)."""
    if k.shape != l.shape or k.dim() != 2 or k.shape[0] < MIN_SAMPLES:
        return math.nan
    denominator = float(hsic(k, k) * hsic(l, l))
    if not denominator > 0:  # also NaN
        return math.nan
    return float(hsic(k, l)) / math.sqrt(denominator)


def grams_of(result: Mapping) -> dict[str, torch.Tensor]:
    """The Gram matrix of every layer of a probe result (a ``ProbeResult``, or a ``{layer: gram}`` dict)."""
    found = {}
    for name, value in result.items():
        value = getattr(value, "gram", value)
        if isinstance(value, torch.Tensor):
            found[name] = value
    return found


def layer_change(before: Mapping, after: Mapping) -> dict[str, float]:
    """``1 - CKA`` per layer present in both: 0 when the layer sees the probe samples exactly as before, near 1
    when it sees them unrelatedly. ``before`` and ``after`` are probe results on the same batch (or Gram dicts)."""
    old, new = grams_of(before), grams_of(after)
    return {name: 1.0 - cka(old[name], gram) for name, gram in new.items() if name in old}


def similarity_matrix(grams: Mapping) -> tuple[list[str], torch.Tensor]:
    """CKA between every pair of layers of one probe result (or Gram dict): ``(names, [L, L] float64 matrix)``."""
    found = grams_of(grams)
    names = list(found)
    matrix = torch.full((len(names), len(names)), math.nan, dtype=torch.float64)
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            matrix[i, j] = matrix[j, i] = cka(found[a], found[names[j]])
    return names, matrix
