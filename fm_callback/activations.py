"""Which filters a following activation silences: tensor lineage through channel-keeping ops in one forward.

A conv filter can vary at its own output and still be dead to the network: in conv -> BatchNorm -> ReLU a
shift far below zero leaves the ReLU putting out zeros everywhere. Module hooks see the conv but not a
functional activation (``F.relu``, ``torch.relu``, ``x.relu()``), and one ReLU module is often reused. So
during the probe's forward a ``TorchFunctionMode`` watches every torch function call:

- a watched layer's output is labelled with the layer's key (by the probe's hook);
- the label follows the tensor through ops that keep channel ``c`` as channel ``c``: normalisation,
  dropout, pooling, resizing, copies, and the activations themselves;
- at a ReLU-family activation (``relu``, ``relu6``, ``hardtanh`` and ``clamp`` with a lower bound of 0, as a
  module or a function: torchvision's ``nn.ReLU6`` calls ``hardtanh``) the output's non-zero values are counted per
  channel, once, on the device, and credited to every layer on the label (when a channel has at least
  ``MIN_VALUES`` values: too few say nothing); which activations are of the family, and what the counts then say
  (silenced, dying), is the rule's business: ``dead.py``;
- at any other activation (GELU, SiLU, LeakyReLU, ELU, ...: they cannot silence a channel; a sigmoid or tanh gate)
  the kind of activation reached is noted for each layer on the label, and the label ends there;
- after a BatchNorm that has not seen a training batch yet (running statistics still 0 and 1) the activation
  reached is noted but nothing is counted (for a BatchNorm no module holds, the gate is a device tensor, so
  nothing waits for it);
- anything else (a residual add, a concatenation, a reshape, an in-place op on the labelled tensor) drops
  the label: there the channel mixes with others, no single filter is to blame, and nothing is credited.

Only the per-channel counts survive; no activation is kept.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .dead import MIN_VALUES, NONE, RELU, activation_kind, is_silenced
from .stats import firing_counts

# Ops whose output channel c comes from input channel c alone (or is a copy of it): the label carries over.
CHANNEL_KEEPING = frozenset(
    {
        "batch_norm",
        "instance_norm",
        "group_norm",
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "_max_pool1d",
        "_max_pool2d",
        "_max_pool3d",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "_adaptive_max_pool1d",
        "_adaptive_max_pool2d",
        "_adaptive_max_pool3d",
        "interpolate",
        "contiguous",
        "clone",
        "detach",
        "to",
        "float",
        "half",
        "bfloat16",
    }
)


def _mutates_first_argument(name: str, kwargs: dict[str, Any]) -> bool:
    """``add_``, ``x += y``, ``x[i] = v`` or ``out=``: the labelled tensor may now hold something else."""
    in_place = name.endswith("_") and not name.endswith("__")
    return in_place or name.startswith("__i") or name == "__setitem__" or "out" in kwargs


def batchnorm_calibration(model: torch.nn.Module) -> dict[int, bool]:
    """Whether each BatchNorm of ``model`` has left its initial running statistics (0 and 1), keyed by the id of
    its ``running_mean``: asked for all of them at once, one read on the host before the forward, instead of one
    at each BatchNorm inside it (a GPU would stop there and wait)."""
    pairs = [
        (module.running_mean, module.running_var)
        for module in model.modules()
        if isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
    ]
    if not pairs:
        return {}
    device = pairs[0][0].device
    flags = torch.stack([(mean.any() | (var != 1).any()).to(device) for mean, var in pairs]).tolist()
    return {id(mean): flag for (mean, _), flag in zip(pairs, flags, strict=True)}


def _calibrated(args: tuple, kwargs: dict[str, Any], known: dict[int, bool]) -> bool | torch.Tensor | None:
    """For an eval-mode ``batch_norm``, False while its running statistics are still their initial 0 and 1;
    ``None`` (no doubt) once they moved, in training mode, or without running statistics.

    Before its first training batch such a BatchNorm normalises nothing, so at a fresh model's baseline event
    deep channels sit far off zero and a ReLU after it silences many of them; that says nothing about the
    filters, and one training batch later it is gone. Those channels are not judged. The answer comes from
    ``known`` (:func:`batchnorm_calibration`); for running statistics that no module holds (a functional
    ``batch_norm``) it stays on the device, a 0-dim bool gate, since ``bool()`` here would make a GPU wait.
    """
    bound = dict(zip(("input", "running_mean", "running_var"), args, strict=False)) | kwargs
    mean, var = bound.get("running_mean"), bound.get("running_var")
    training = args[5] if len(args) > 5 else kwargs.get("training", False)
    if training or not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    if id(mean) in known:
        return None if known[id(mean)] else False
    return mean.any() | (var != 1).any()


def _both(a: bool | torch.Tensor | None, b: bool | torch.Tensor | None) -> bool | torch.Tensor | None:
    """Gates combined along a path: open only where both are. A gate is ``None`` (open), ``False`` (shut: after a
    BatchNorm known to be uncalibrated, the activation reached is noted but not counted) or a 0-dim bool tensor
    (decided on the device, read at the hand-over)."""
    if a is False or b is False:
        return False
    return b if a is None else a if b is None else a & b


def _either(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Gates combined over paths: measured once any path was open (``None`` is open)."""
    return None if a is None or b is None else a | b


class ActivationLineage(TorchFunctionMode):
    """Active for one forward: labels watched outputs, follows them, and counts what activations let through.

    ``silenced[key]``: bool ``[C]``, zero at every position of every sample after every activation the layer
    reached; ``firing[key]``: float32 ``[C]``, share of positions where the activation's output is non-zero
    (the larger one where a channel reaches several activations; -1 where none was measured). Both stay on the
    activation's device. ``measured[key]``: ``None``, or a 0-dim bool, False when every activation the layer
    reached came after an uncalibrated BatchNorm (then ``silenced`` and ``firing`` say nothing).
    ``reached[key]``: ``(kind, function name)`` of the activation the layer reached (a ReLU-family one first).
    """

    def __init__(self, calibration: dict[int, bool] | None = None) -> None:
        super().__init__()
        self.calibration = calibration or {}  # see batchnorm_calibration
        # per labelled tensor: the layer keys on it, each with its gate (see _both)
        self._labels: dict[int, tuple[weakref.ref, tuple[tuple[str, Any], ...]]] = {}
        self._widths: dict[str, tuple[int, int]] = {}  # key -> (channel dim, channels)
        self.silenced: dict[str, torch.Tensor] = {}
        self.firing: dict[str, torch.Tensor] = {}
        self.measured: dict[str, torch.Tensor | None] = {}
        self.reached: dict[str, tuple[str, str]] = {}

    def label(self, tensor: torch.Tensor, key: str, channel_dim: int = 1) -> None:
        """Mark ``tensor`` (a watched layer's output, channels in ``channel_dim``) as coming from layer ``key``."""
        if tensor.dim() < 2:
            return
        self._widths[key] = (channel_dim % tensor.dim(), tensor.shape[channel_dim])
        self._set(tensor, (*self._keys(tensor), (key, None)))

    def _keys(self, tensor: Any) -> tuple[tuple[str, Any], ...]:
        """The layers ``tensor`` comes from, each with its gate: whether an activation after it is counted."""
        entry = self._labels.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is tensor else ()

    def _set(self, tensor: Any, keys: tuple[tuple[str, Any], ...]) -> None:
        if isinstance(tensor, torch.Tensor):
            if keys:
                self._labels[id(tensor)] = (weakref.ref(tensor), keys)
            else:
                self._labels.pop(id(tensor), None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        source = args[0] if args else kwargs.get("input")
        keys = self._keys(source)
        if not keys:
            return out
        name = getattr(func, "__name__", "")
        result = out[0] if isinstance(out, tuple) and out else out
        kind = activation_kind(name, args, kwargs)
        if kind is not None:
            for key, _ in keys:  # a ReLU-family activation reached on any path decides
                if self.reached.get(key, (NONE,))[0] != RELU:
                    self.reached[key] = (kind, name.rstrip("_"))
        if kind == RELU:
            self._count(keys, result)
            self._set(result, keys)
        elif kind is not None:
            self._set(source, ())  # its own output, if in place: the channel's path ends at this activation
        elif name == "batch_norm":  # a fresh model's step-0 BatchNorm: a silence after it is not the filter's doing
            calibrated = _calibrated(args, kwargs, self.calibration)
            self._set(result, tuple((key, _both(gate, calibrated)) for key, gate in keys))
        elif name in CHANNEL_KEEPING:
            self._set(result, keys)
        elif _mutates_first_argument(name, kwargs):
            self._set(source, ())
            self._set(kwargs.get("out"), ())
        return out

    def _count(self, keys: tuple[tuple[str, Any], ...], output: Any) -> None:
        """Per channel: does the activation's output hold any non-zero value, and at what share of positions."""
        if not isinstance(output, torch.Tensor) or output.dim() < 2 or output.numel() == 0:
            return
        counted: dict[int, torch.Tensor] = {}
        for key, gate in keys:
            dim, channels = self._widths.get(key, (1, 0))
            if gate is False or dim >= output.dim() or output.shape[dim] != channels:
                continue
            if output.numel() // channels < MIN_VALUES:
                continue  # a 1x1 map of a few samples: silence there is a selective channel as often as a dead one
            if dim not in counted:
                counted[dim] = firing_counts(output, dim).div_(output.numel() // channels)
            firing = counted[dim]
            shown, silent = firing, is_silenced(firing)
            if gate is not None:  # after an uncalibrated BatchNorm: neutral for the max and the AND below
                shown, silent = torch.where(gate, firing, -1.0), silent | ~gate
            if key in self.firing:
                self.firing[key] = torch.maximum(self.firing[key], shown)
                self.silenced[key] = self.silenced[key] & silent
                self.measured[key] = _either(self.measured[key], gate)
            else:
                self.firing[key], self.silenced[key], self.measured[key] = shown, silent, gate


@contextlib.contextmanager
def outside_lineage() -> Iterator[None]:
    """Torch calls made here (the probe's own reductions inside a hook) skip the mode: no cost, no labels."""
    with torch._C.DisableTorchFunction():
        yield
