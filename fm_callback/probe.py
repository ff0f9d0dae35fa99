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
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import arguments, handover, picture_layers, render, similarity
from .activations import ActivationLineage, batchnorm_calibration, outside_lineage
from .channel_header import with_header
from .dead import DEFAULT_ATOL, DEFAULT_RTOL, RELU, is_silenced, module_silences
from .layout import check_layouts, given_layout, recognise
from .marks import mark_codes, marks_of
from .passes import check_input, first_tensor, forward, model_device, probing, to_device
from .results import LayerReport, ProbeResult
from .select import LayerSpec, select_layers, unwrap_compiled
from .stats import channel_stats


class FeatureMapProbe:
    """Hooks chosen layers for exactly one forward pass and reports what they produced.

    Args:
        model: any ``nn.Module`` (a ``torch.compile`` wrapper is unwrapped so hooks fire).
        layers: module names, glob patterns (``"features.*"``) or ``nn.Module`` types, mixed;
            ``None`` watches every Conv1d/2d/3d and transformer block (see ``select.py``).
        image_layers: which watched layers get a picture: names/patterns/types, or ``None`` for at most
            6 spread from the first to the last watched layer with maps worth showing (not 1x1, not a conv that
            feeds a sigmoid gate), chosen at the first ``run``; ``[]`` for none.
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
        layouts: ``{layer name or pattern: "channels_first" | "channels_last" | "tokens"}`` for outputs whose
            layout cannot be told from their shape (see ``layout.py``); the others are recognised.
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
        layouts: dict[str, str] | None = None,
    ) -> None:
        arguments.check_probe(
            model,
            max_channels=max_channels,
            max_samples=max_samples,
            channel_order=channel_order,
            atol=atol,
            rtol=rtol,
            mean=mean,
            std=std,
        )
        self.model = unwrap_compiled(model)
        self.layers = select_layers(self.model, layers)
        self.layouts = check_layouts(layouts)
        self.image_names = picture_layers.asked_for(self.model, [name for name, _ in self.layers], image_layers)
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
        self._relative: dict[str, bool] = {}  # per layer key: its last Gram matrix needed the relative product
        self._warned: set[str] = set()  # layers already warned about: one warning per layer, not per event

    def run(self, x: Any) -> ProbeResult:
        """One forward of ``model(x)`` in eval mode under ``no_grad`` with hooks attached for its duration.

        Every module's train/eval mode and the RNG state are restored afterwards, whatever happens. The first run
        with default picture layers draws every layer with maps, then keeps the pictures of those it chooses.
        Everything the hooks compute stays on the device until one hand-over after the forward (``handover.py``),
        so a GPU forward is not stopped layer after layer. When that shows a non-finite statistic or Gram matrix
        (NaN/Inf values, or a float32 overflow: rare), the forward runs once more with the exact, slower
        statistics, which do read values on the host.
        """
        check_input(x, self.mean, self.std)
        event = self._event(x, careful=False)
        if event.careful:
            event = self._event(x, careful=True)
        return self._collect(event, x)

    def _event(self, x: Any, careful: bool) -> handover.Event:
        """One hooked forward, handed over to the host; with default picture layers, the first chooses them."""
        raw, lineage, images = self._forward(x, careful)
        if self.image_names is None:
            self.image_names = picture_layers.default_choice(raw, lineage.reached)
            picture_layers.keep_chosen(raw, self.image_names)
        for key, reached in lineage.reached.items():
            raw[key]["reached"] = reached  # Python values: they travel as they are
        for key, layer in raw.items():
            if "grid" in layer:
                layer["marks"] = self._mark_codes(key, layer, lineage)
        event = handover.hand_over(raw, lineage, images)
        for key, layer in event.layers.items():
            if "offset" in layer:  # on the CPU: the next event's Gram product (see similarity.gram)
                self._relative[key] = bool(layer["offset"][0])
                event.careful |= layer["relative"] is False and self._relative[key]  # a bare product lost digits
        return event

    def _forward(self, x: Any, careful: bool) -> tuple[dict[str, dict[str, Any]], ActivationLineage, Any]:
        """Hooks on, one forward, hooks off: per layer key its (channels-first) shape, layout and what
        :meth:`_reduce` made of its output, on the device; what the activations after it let through; the input
        images (see ``render.input_images``), on the device too."""
        calls: Counter[str] = Counter()
        raw: dict[str, dict[str, Any]] = {}
        warned = self._warned
        # which of these channels a following ReLU silences (not judged after a BatchNorm still at 0 and 1)
        lineage = ActivationLineage(batchnorm_calibration(self.model) if self.follow_activations else None)
        moved = to_device(x, model_device(self.model))
        first = first_tensor(moved)
        input_shape = tuple(first.shape) if first is not None else None

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
                layout = recognise(name, module, tuple(tensor.shape), input_shape, given_layout(self.layouts, name))
                view = layout.view(tensor.detach())
                own = module_silences(module)
                draw = picture if self.image_names is not None else view.dim() >= 3  # choosing: draw every map
                with outside_lineage():  # the probe's own reductions are not part of the model's forward
                    reduced = self._reduce(key, view, draw, careful)
                    raw[key] = {"shape": tuple(view.shape), "layout": layout, "own": own, **reduced}
                    lineage.label(tensor, key, 1 if layout.kind == "channels_first" else -1)

            return hook

        hooks = [(module, make_hook(name, name in (self.image_names or ()))) for name, module in self.layers]
        following = lineage if self.follow_activations else contextlib.nullcontext()
        with probing(self.model, hooks), following:
            forward(self.model, moved, self.forward_fn)
        images = None if first is None else render.input_images(first.detach(), self.max_samples, self.mean, self.std)
        return raw, lineage, images

    def _reduce(self, name: str, output: torch.Tensor, picture: bool, careful: bool) -> dict[str, Any]:
        """Statistics, (for picture layers) grid, channels and energy map, and (with ``similarity``) the Gram
        matrix and value histogram, all still on the device; nothing is read on the host unless ``careful``."""
        stats = channel_stats(output, self.atol, self.rtol, careful)
        reduced: dict[str, Any] = {"stats": stats}
        if self.similarity and output.numel():
            on_cpu = output.device.type == "cpu"
            # on the CPU, after a layer's first event, what its previous Gram matrix showed (no check, no read)
            reduced["relative"] = self._relative.get(name) if on_cpu and not careful else None
            reduced["gram"] = similarity.gram(output, check_overflow=careful, relative=reduced["relative"])
            if on_cpu:
                squares = (stats.std.double().square() + stats.mean.double().square()).sum()
                trace = squares * (output.numel() // output.shape[1])  # the uncentred trace, from the statistics
                reduced["offset"] = similarity.offset_dominates(reduced["gram"], trace)
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

    def _report(self, key: str, layer: dict[str, Any]) -> LayerReport:
        """The report of one layer from its fields: on the device before the hand-over (for the marks), on the host
        after it."""
        report = LayerReport(name=key, shape=layer["shape"], stats=layer["stats"], layout=str(layer["layout"]))
        report.gram, report.histogram = layer.get("gram"), layer.get("histogram")
        report.activation_kind, report.activation = layer.get("reached", (report.activation_kind, None))
        if "silenced" in layer:
            report.silenced, report.firing = layer["silenced"], layer["firing"]
        elif layer["own"] is not None:  # a ReLU-family layer watched itself: its output is what it lets through
            report.activation_kind, report.activation = RELU, layer["own"]
            report.firing = 1.0 - report.stats.zero_fraction
            report.silenced = is_silenced(report.firing)
        return report

    def _mark_codes(self, key: str, layer: dict[str, Any], lineage: ActivationLineage) -> torch.Tensor:
        """The grid's dead/dying marks (``marks.mark_codes``), on the device, as :meth:`_collect` will judge the
        layer: with what the activation after it let through where that was measured."""
        report = self._report(key, layer)
        alone = mark_codes(report.dead, report.dying, layer["channels"])
        if key not in lineage.firing:
            return alone
        followed = self._report(key, {**layer, "silenced": lineage.silenced[key], "firing": lineage.firing[key]})
        codes = mark_codes(followed.dead, followed.dying, layer["channels"])
        measured = lineage.measured[key]  # None, or a device-side gate (a BatchNorm no module holds)
        return codes if measured is None else torch.where(measured, codes, alone)

    def _collect(self, event: handover.Event, x: Any) -> ProbeResult:
        """Reports from the host copies, and the pictures finished on the CPU (header, overlay), with the dead and
        dying marks (only known now, after the activations that follow each layer)."""
        images = event.images
        first = first_tensor(x)
        reports = {}
        for key, layer in event.layers.items():
            shape = layer["shape"]
            report = self._report(key, layer)
            grid = layer.get("grid")
            if grid is not None:
                channels = layer["channels"]
                marks = marks_of(layer["marks"])
                report.picture = with_header(grid, channels, self.lut, marks, min(self.max_samples, shape[0]))
                report.channels = channels
                energy = layer.get("energy")
                if energy is not None and images is not None and shape[0] == first.shape[0]:  # same samples
                    report.overlay = render.overlay(images, energy, self.overlay_lut)
            reports[key] = report
        input_image = render.image_row(images) if images is not None else None
        return ProbeResult(reports, input_image)
