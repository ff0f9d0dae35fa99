"""Our passes through the model under training: eval mode, ``no_grad``, every RNG kept, hooks on for the
forward and off after it, whatever happens; the input moved to the model's device as Lightning moves a batch.

Shared by the probe (``probe.py``) and the top-examples scan (``top_examples.py``). No Lightning import.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) list/tuple/dict/dataclass to ``device``, as Lightning moves a batch.

    A frozen dataclass is passed through unchanged, since it cannot be rebuilt with moved fields."""
    return apply_to_collection(batch, torch.Tensor, torch.Tensor.to, device, allow_frozen=True)


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a hook should read: the output itself, or the first tensor in a (nested) tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, list | tuple) else []
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def keep_rng(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Every generator a forward might draw from (torch CPU and CUDA, Python's, NumPy's) is as before afterwards."""
    python_state = random.getstate()
    numpy = sys.modules.get("numpy")  # only if already imported: NumPy is not a dependency of the probe
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)


def run_eagerly() -> contextlib.AbstractContextManager:
    """``torch.compile``d code runs eagerly inside: hooks fire, and nothing is recompiled for eval/no_grad."""
    if "torch._dynamo" not in sys.modules:  # nothing was ever compiled; importing dynamo costs ~1 s and ~150 MB
        return contextlib.nullcontext()
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def check_input(
    x: Any, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, argument: str = "x"
) -> None:
    """Raise ``ValueError`` naming ``argument`` for a probe input with no sample, or a normalisation that does
    not fit its channels (errors that would otherwise surface as an obscure failure inside a hook)."""
    tensor = first_tensor(x)
    if tensor is not None and tensor.dim() > 0 and tensor.shape[0] == 0:
        raise ValueError(f"{argument}: no sample in the probe batch (shape {tuple(tensor.shape)}); pass at least one")
    if mean is None or tensor is None or tensor.dim() != 4 or not tensor.is_floating_point():
        return
    channels = tensor.shape[1]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(
                f"{name}: {len(values)} values, but the probe input has {channels} channels "
                f"(shape {tuple(tensor.shape)}); pass one value per input channel, or none"
            )


@contextlib.contextmanager
def probing(model: nn.Module, hooks: Sequence[tuple[nn.Module, Callable[..., None]]] = ()) -> Iterator[None]:
    """Eval mode, ``no_grad``, every RNG kept, compiled code run eagerly and the forward ``hooks`` on, for the
    forward(s) run inside; afterwards the hooks are off and every module's train/eval mode is as before, whatever
    happens. The machinery every pass of ours through the model under training shares (the probe, the examples)."""
    device = model_device(model)
    modes = [(module, module.training) for module in model.modules()]
    handles = []
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        model.eval()
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        with keep_rng(cuda_devices), run_eagerly(), torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode


def forward(model: nn.Module, x: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None) -> Any:
    """``forward_fn(model, x)``, else ``model(x)``, with ``x`` moved to the model's device."""
    x = to_device(x, model_device(model))
    return forward_fn(model, x) if forward_fn is not None else model(x)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer); the CPU for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")
