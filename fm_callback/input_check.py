"""Does the probe batch look like the training data? Its per-channel input statistics against a few training samples.

The article this project grew from warns that feature maps of wrongly normalised inputs are hard to trust. The
common bug: a val transform that forgot the train transform's ``Normalize``; the probe, taken from the val data,
then shows inputs the model never trained on. Pure tensor functions, no Lightning.
"""

from __future__ import annotations

import torch

MEAN_GAP = 0.75  # a channel's means differ by more than this many of the training data's standard deviations
STD_RATIO = 2.0  # or its standard deviations differ by more than this factor


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of a ``(N, C, ...)`` input (float64, CPU); ``(N, D)``: one channel."""
    x = x.detach().to("cpu", torch.float64)
    per_channel = x.movedim(1, 0).reshape(x.shape[1], -1) if x.dim() >= 3 else x.reshape(1, -1)
    return per_channel.mean(dim=1), per_channel.std(dim=1, correction=0)


def input_mismatch(probe: torch.Tensor, training: torch.Tensor) -> str | None:
    """The figures, where ``probe``'s per-channel statistics clearly differ from ``training``'s; else ``None``.

    Clearly: a mean apart by more than ``MEAN_GAP`` training standard deviations, or a standard deviation off by
    more than a factor ``STD_RATIO`` (a missing ``Normalize`` on [0, 1] images changes it about fourfold).
    """
    if not (probe.is_floating_point() and training.is_floating_point()) or probe.dim() != training.dim():
        return None
    if probe.dim() >= 3 and probe.shape[1] != training.shape[1]:
        return None
    (p_mean, p_std), (t_mean, t_std) = channel_statistics(probe), channel_statistics(training)
    scale = t_std.clamp(min=1e-6)
    gap = ((p_mean - t_mean).abs() / scale).max()
    ratio = torch.maximum(p_std.clamp(min=1e-6) / scale, scale / p_std.clamp(min=1e-6)).max()
    if not (gap > MEAN_GAP or ratio > STD_RATIO):
        return None
    return (
        f"per-channel mean {_figures(p_mean)} and std {_figures(p_std)} in the probe batch, against mean "
        f"{_figures(t_mean)} and std {_figures(t_std)} in {training.shape[0]} training samples"
    )


def _figures(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values.tolist()[:8]) + (", ...]" if values.numel() > 8 else "]")
