"""The framework-free core: hooks on, one forward, per-layer reports out, hooks off (in ``finally``).

Inside each hook the layer output is reduced at once on its own device (statistics, and for picture
layers the rendered grid), so no activation outlives its hook and an in-place op later in the forward
(``ReLU(inplace=True)``) cannot change what was read. The reduced results stay on the device until one hand-over
after the forward (``handover.py``): a read of device memory from the host inside a hook would make a GPU stop
and wait for the forward at every layer. No Lightning import here: the probe works in a
plain PyTorch loop too.
"""

from __future__ import annotations

import contextlib
import random
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from . import handover, render, similarity
from .activations import ActivationLineage, batchnorm_calibration, outside_lineage
from .results import LayerReport, ProbeResult
from .select import LayerSpec, select_layers, unwrap_compiled
from .stats import DEFAULT_ATOL, DEFAULT_RTOL, channel_stats

DEFAULT_IMAGE_LAYERS = 6


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


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class FeatureMapProbe:
    """Hooks chosen layers for exactly one forward pass and reports what they produced.

    Args:
        model: any ``nn.Module`` (a ``torch.compile`` wrapper is unwrapped so hooks fire).
        layers: module names, glob patterns (``"features.*"``) or ``nn.Module`` types, mixed;
            ``None`` watches every Conv1d/2d/3d.
        image_layers: which watched layers get a picture: names/patterns/types, or ``None`` for at most
            6 spread from the first to the last watched layer; ``[]`` for none.
        max_channels: columns per grid. max_samples: rows per grid (probe samples shown).
        channel_order: ``"std"`` shows the most varied channels first, ``"index"`` the first ones.
        cmap: matplotlib colormap of the grids. atol, rtol: the dead rule's tolerances.
        mean, std: the input normalisation, to show the probe input (and overlays) as a person sees it.
        overlay: also render each picture layer's mean |activation| over the probe input.
        follow_activations: also count, per watched channel, what the ReLU it reaches (through BatchNorm,
            dropout, pooling) lets through, so a channel that ReLU silences is dead (see ``activations.py``);
            ``False`` judges each watched output on its own.
        forward_fn: ``forward_fn(model, x)`` runs the model, for a forward that takes more than one argument;
            default ``model(x)``.
        similarity: also keep each layer's N x N Gram matrix of the probe batch (``LayerReport.gram``, compared
            with ``similarity.layer_change``) and a histogram of its values (``LayerReport.histogram``).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Sequence[LayerSpec] | None = None,
        image_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        max_channels: int = 16,
        max_samples: int = 4,
        channel_order: str = "std",
        cmap: str = "viridis",
        atol: float = DEFAULT_ATOL,
        rtol: float = DEFAULT_RTOL,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        overlay: bool = True,
        follow_activations: bool = True,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        similarity: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for arg, value in (("max_channels", max_channels), ("max_samples", max_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if channel_order not in ("std", "index"):
            raise ValueError(f"channel_order must be 'std' or 'index', got {channel_order!r}")
        if atol < 0 or rtol < 0:
            raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together: pass both (the input normalisation) or neither")
        self.model = unwrap_compiled(model)
        self.layers = select_layers(self.model, layers)
        self.image_names = self._image_names(image_layers)
        self.max_channels = max_channels
        self.max_samples = max_samples
        self.channel_order = channel_order
        self.lut = render.colormap_lut(cmap)
        self.overlay_lut = render.colormap_lut("inferno")
        self.atol, self.rtol = atol, rtol
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.overlay = overlay
        self.follow_activations = follow_activations
        self.forward_fn = forward_fn
        self.similarity = similarity
        self.pinned_channels: dict[str, list[int]] = {}
        self._device_constants: dict[tuple, torch.Tensor] = {}  # see _on_device
        self._warned: set[str] = set()  # layers already warned about: one warning per layer, not per event

    def _image_names(self, image_layers: LayerSpec | Sequence[LayerSpec] | None) -> list[str]:
        names = [name for name, _ in self.layers]
        if image_layers is None:
            count = min(DEFAULT_IMAGE_LAYERS, len(names))
            if count == 1:
                return names[:1]
            picks = {round(i * (len(names) - 1) / (count - 1)) for i in range(count)}
            return [names[i] for i in sorted(picks)]
        if isinstance(image_layers, Sequence) and not isinstance(image_layers, str) and len(image_layers) == 0:
            return []
        chosen = [name for name, _ in select_layers(self.model, image_layers, argument="image_layers")]
        missing = [name for name in chosen if name not in names]
        if missing:
            raise ValueError(
                f"image_layers: {', '.join(missing)} not among the watched layers; add them to layers as well"
            )
        return chosen

    def run(self, x: Any) -> ProbeResult:
        """One forward of ``model(x)`` in eval mode under ``no_grad`` with hooks attached for its duration.

        Every module's train/eval mode and the RNG state are restored afterwards, whatever happens. Everything
        the hooks compute stays on the device until one hand-over after the forward (``handover.py``), so a
        GPU forward is not stopped layer after layer. When that shows a non-finite statistic or Gram matrix
        (NaN/Inf values, or a float32 overflow: rare), the forward runs once more with the exact, slower
        statistics, which do read values on the host.
        """
        check_input(x, self.mean, self.std)
        event = handover.hand_over(*self._forward(x, careful=False))
        if event.careful:
            event = handover.hand_over(*self._forward(x, careful=True))
        return self._collect(event, x)

    def _forward(self, x: Any, careful: bool) -> tuple[dict[str, dict[str, Any]], ActivationLineage, Any]:
        """The hooked forward: per layer key, its shape and device results; the lineage; the input images."""
        model = self.model
        device = model_device(model)
        modes = [(module, module.training) for module in model.modules()]
        calls: Counter[str] = Counter()
        raw: dict[str, dict[str, Any]] = {}
        handles = []
        warned = self._warned
        # which of these channels a following ReLU silences (not judged after a BatchNorm still at 0 and 1)
        lineage = ActivationLineage(batchnorm_calibration(model) if self.follow_activations else None)

        def make_hook(name: str, picture: bool):
            def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                key = name if calls[name] == 0 else f"{name}#{calls[name]}"
                calls[name] += 1
                tensor = first_tensor(output)
                if tensor is None or tensor.dim() < 2:
                    if name not in warned:
                        warned.add(name)
                        warnings.warn(
                            f"fm_callback: layer {name!r} returned {type(output).__name__} with no (N, C, ...) "
                            "tensor; it is skipped",
                            stacklevel=2,
                        )
                    return
                with outside_lineage():  # the probe's own reductions are not part of the model's forward
                    raw[key] = {"shape": tuple(tensor.shape), **self._reduce(key, tensor.detach(), picture, careful)}
                    lineage.label(tensor, key)

            return hook

        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        try:
            model.eval()
            for name, module in self.layers:
                handles.append(module.register_forward_hook(make_hook(name, name in self.image_names)))
            following = lineage if self.follow_activations else contextlib.nullcontext()
            moved = to_device(x, device)
            with keep_rng(cuda_devices), run_eagerly(), torch.no_grad(), following:
                self.forward_fn(model, moved) if self.forward_fn else model(moved)
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes:
                module.training = mode
        first = first_tensor(moved)
        images = None if first is None else render.input_images(first.detach(), self.max_samples, self.mean, self.std)
        return raw, lineage, images

    def _reduce(self, name: str, output: torch.Tensor, picture: bool, careful: bool) -> dict[str, Any]:
        """Statistics, (for picture layers) grid, channels and energy map, and (with ``similarity``) the Gram
        matrix and value histogram, all still on the device; nothing is read on the host unless ``careful``."""
        stats = channel_stats(output, self.atol, self.rtol, careful)
        reduced: dict[str, Any] = {"stats": stats}
        if self.similarity and output.numel():
            reduced["gram"] = similarity.gram(output, check_overflow=careful)
            reduced["histogram"] = similarity.value_histogram(output, stats.min.amin(), stats.max.amax())
        module = name.split("#")[0]  # once per module, not per call of a reused one
        if picture and output.dim() < 3 and module not in self._warned:
            self._warned.add(module)
            warnings.warn(
                f"fm_callback: layer {module!r} puts out shape {tuple(output.shape)}, with no spatial dimension to "
                "draw, so it gets no picture; its statistics are still logged",
                stacklevel=3,
            )
        if not picture or output.dim() < 3:
            return reduced
        pinned = self.pinned_channels.get(name)
        if pinned is not None and max(pinned) < output.shape[1]:
            channels = self._on_device(("pinned", name, tuple(pinned)), lambda: torch.tensor(pinned), output.device)
        else:
            channels = render.choose_channels(stats.std, self.max_channels, self.channel_order)
        lut = self._on_device(("lut",), lambda: self.lut, output.device)
        reduced["grid"] = render.render_feature_grid(output, channels, self.max_samples, lut)
        reduced["channels"] = channels
        if self.overlay:
            reduced["energy"] = render.activation_energy(output, self.max_samples)
        return reduced

    def _on_device(self, key: tuple, make: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """A small CPU constant (pinned channel numbers, the colour table) copied to ``device`` once per run, not
        per event: a copy to a GPU waits for its queue too."""
        cached = self._device_constants.get((*key, device))
        if cached is None:
            cached = self._device_constants[(*key, device)] = make().to(device)
        return cached

    def _collect(self, event: handover.Event, x: Any) -> ProbeResult:
        """Reports from the host copies, and the pictures finished on the CPU (header, overlay)."""
        images = event.images
        first = first_tensor(x)
        reports = {}
        for key, layer in event.layers.items():
            shape = layer["shape"]
            report = LayerReport(name=key, shape=shape, stats=layer["stats"])
            report.gram, report.histogram = layer.get("gram"), layer.get("histogram")
            report.silenced, report.firing = layer.get("silenced"), layer.get("firing")
            grid = layer.get("grid")
            if grid is not None:
                report.grid = render.with_header(grid, layer["channels"])
                report.channels = layer["channels"]
                energy = layer.get("energy")
                if energy is not None and images is not None and shape[0] == first.shape[0]:  # same samples
                    report.overlay = render.overlay(images, energy, self.overlay_lut)
            reports[key] = report
        input_image = render.image_row(images) if images is not None else None
        return ProbeResult(reports, input_image)
