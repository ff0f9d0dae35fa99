"""Dead and dying, defined: every rule of the verdict on a channel, in one place.

A channel of a watched layer (a filter's output) is judged on the probe batch, at each probe event:

- **constant** (:func:`is_constant`): ``max - min <= atol + rtol * max|x|`` at the layer's own output;
- **silenced** (:func:`is_silenced`): the ReLU-family activation it reaches (:func:`activation_kind`,
  :func:`module_silences`) lets none of its values through, at any position of any sample (judged only on
  :data:`MIN_VALUES` values or more);
- **dead** (:func:`is_dead`): constant, or silenced;
- **dying** (:func:`is_dying`): fires on at most :data:`DYING_FIRING` of the positions, dead ones included, where a
  ReLU-family activation follows (:func:`can_silence`); elsewhere (nothing else leaves a channel at 0) the dead;
- **persistently dead** (:func:`is_persistent`, :func:`next_streak`): dead at ``patience`` consecutive events, then
  **revived** if it carries information again.

The measuring is done elsewhere: each channel's min and max by ``stats.channel_stats``, what the activation after a
layer lets through by ``activations.ActivationLineage`` (a ``TorchFunctionMode`` that follows each output through the
forward), the streaks by ``tracking.DeadFilterTracker``. The rules on tensors are plain tensor operations on the
tensors' own device: none reads a value on the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# ---- constant ---------------------------------------------------------------------------------------------------

DEFAULT_ATOL = 1e-8  # an all-zero channel
DEFAULT_RTOL = 1e-5  # about 80 float32 steps: the rounding noise of a constant, not a signal


def is_constant(
    cmin: torch.Tensor,
    cmax: torch.Tensor,
    nonfinite: torch.Tensor,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> torch.Tensor:
    """Constant channels: ``max - min <= atol + rtol * max|x|``, each channel against its own scale.

    A weak channel that still varies, at any scale, is not constant. A channel holding a NaN or an Inf is never
    called dead: its min/max are NaN (the comparison is False), or, taken over its finite values, its ``nonfinite``
    count is not 0.
    """
    scale = torch.maximum(cmin.abs(), cmax.abs())
    return ((cmax - cmin) <= atol + rtol * scale) & (nonfinite == 0)


# ---- silenced: what a following activation can do --------------------------------------------------------------

# What a layer's channels reach decides which rules apply (see ``LayerReport``): the kinds of activation.
RELU = "relu"  # the ReLU family: zero below 0, so a filter can be silenced
SMOOTH = "smooth"  # GELU, SiLU, LeakyReLU, ELU, ...: negative inputs pass (a little), nothing is silenced
GATE = "gate"  # sigmoid, tanh, softmax: a gate or a bounded output, where negative values are normal
NONE = "none"  # no activation on the way (logits, a residual add or a reshape first)
# Function names (torch's overridable API: torch.*, torch.nn.functional.*, Tensor methods) that put a
# channel to exactly zero below a threshold of 0: a channel whose output is zero everywhere is silenced.
SILENCING = frozenset({"relu", "relu_", "relu6"})
# The same, when their lower bound (argument 1 or the keyword) is 0.
SILENCING_AT_ZERO = {"hardtanh": "min_val", "hardtanh_": "min_val", "clamp": "min", "clamp_": "min"}
SILENCING_AT_ZERO |= {"clamp_min": "min", "clamp_min_": "min", "clip": "min", "clip_": "min"}
# ReLU-family modules, for a layer that is one (``Hardtanh`` only with ``min_val=0``, as ``nn.ReLU6``).
SILENCING_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh"}
ACTIVATIONS = {
    **dict.fromkeys(("gelu", "silu", "silu_", "mish", "mish_", "elu", "elu_", "selu", "selu_", "celu"), SMOOTH),
    **dict.fromkeys(("celu_", "leaky_relu", "leaky_relu_", "hardswish", "hardswish_", "softplus", "prelu"), SMOOTH),
    **dict.fromkeys(("rrelu", "rrelu_", "hardshrink", "softshrink", "tanhshrink", "logsigmoid"), SMOOTH),
    **dict.fromkeys(("sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "tanh", "tanh_"), GATE),
    **dict.fromkeys(("softmax", "log_softmax", "softmin", "hardtanh", "hardtanh_"), GATE),
}

# Fewer values per channel than this (samples x positions) are too little evidence for a verdict of silence:
# measured on torchvision's resnet18 at 32 px, layer4's 1x1 maps left 40 of 512 healthy channels silent on 8
# calibrated samples (and 8 on 32 samples), while 2x2 maps and larger left none.
MIN_VALUES = 64


def activation_kind(name: str, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """:data:`RELU`, :data:`SMOOTH` or :data:`GATE` for a call of an activation function ``name``; ``None`` for
    anything else (a ``clamp`` whose lower bound is not 0 is no activation). Reads Python scalars only."""
    if name in SILENCING:
        return RELU
    if name in SILENCING_AT_ZERO:
        keyword = SILENCING_AT_ZERO[name]
        bound = args[1] if len(args) > 1 else kwargs.get(keyword, -1.0 if name.startswith("hardtanh") else None)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound == 0:
            return RELU
    return ACTIVATIONS.get(name)


def module_silences(module: nn.Module) -> str | None:
    """The function name of a ReLU-family module (``Hardtanh`` only with a lower bound of 0, as ``ReLU6``), else
    ``None``: a watched layer that is one is judged by what it lets through itself."""
    if type(module) in SILENCING_MODULES and getattr(module, "min_val", 0.0) == 0:
        return SILENCING_MODULES[type(module)]
    return None


def can_silence(kind: str) -> bool:
    """Whether an activation of this kind can silence a channel: only then can the silenced and dying rules fire."""
    return kind == RELU


def is_silenced(firing: torch.Tensor) -> torch.Tensor:
    """Silenced channels: the activation's output is zero at every position of every sample (``firing``: the share
    of positions where it is not)."""
    return firing == 0


# ---- dead and dying ---------------------------------------------------------------------------------------------

DYING_FIRING = 0.01  # a channel that fires on at most 1 % of the probe batch's positions is dying


def is_dead(constant: torch.Tensor, silenced: torch.Tensor | None) -> torch.Tensor:
    """Channels that carry no information: constant at the layer's own output, or silenced by the activation that
    follows (``None``: none was measured)."""
    return constant if silenced is None else constant | silenced


def is_dying(dead: torch.Tensor, kind: str, firing: torch.Tensor | None, zero_fraction: torch.Tensor) -> torch.Tensor:
    """Channels that fire on at most :data:`DYING_FIRING` of the positions (dead ones included): the early warning.

    Measured after the following ReLU-family activation (``firing``), else (a fresh BatchNorm first) on the layer's
    own output (``1 - zero_fraction``); only the ``dead`` ones where no ReLU-family activation follows (nothing else
    leaves a channel at 0).
    """
    if not can_silence(kind):
        return dead
    firing = firing if firing is not None else 1.0 - zero_fraction
    return (firing <= DYING_FIRING) | dead


def rule_in_words(kind: str, activation: str | None, silenced: Any, firing: Any) -> str:
    """Which dead rule applied, in words: ``silenced after hardtanh``, ``constant only (gelu cannot silence)``.
    ``silenced`` and ``firing``: what was measured after the activation (``None``: nothing)."""
    if silenced is not None:
        return f"silenced after {activation}"
    if can_silence(kind):
        return f"{activation}: own output" if firing is not None else f"constant ({activation} not counted)"
    reason = {SMOOTH: f"{activation} cannot silence", GATE: f"{activation} gate"}
    return f"constant only ({reason.get(kind, 'no activation follows')})"


# ---- persistently dead, revived ---------------------------------------------------------------------------------

DEFAULT_PATIENCE = 3  # consecutive dead events before a channel is persistently dead


def is_persistent(streak: int, patience: int) -> bool:
    """Persistently dead: dead at ``streak >= patience`` consecutive probe events."""
    return streak >= patience


def next_streak(dead: bool, streak: int, announced: bool, patience: int) -> tuple[int, bool, bool, bool]:
    """One channel after one more event: ``(streak, announced, died, revived)``.

    ``streak`` counts consecutive dead events. A channel that reaches ``patience`` of them *died*: it is announced
    as persistently dead once (``announced`` stays True while it stays dead, so each death is told exactly once,
    even across a resume with another patience). An announced channel that is no longer dead *revived*.
    """
    if dead:
        streak += 1
        died = is_persistent(streak, patience) and not announced
        return streak, announced or died, died, False
    return 0, False, False, announced
