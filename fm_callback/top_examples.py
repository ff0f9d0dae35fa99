"""What each shown channel looks for: the pool samples that activate it most, and where (framework-free).

A fixed pool of samples goes through the model in chunks inside :func:`.passes.probing` (eval mode, ``no_grad``,
every RNG kept, hooks only for the pass). In the hook of each picture layer the chunk's output is reduced at once:
per sample and shown channel, its maximum over positions and the position of that maximum. Only each channel's
running top ``k`` (values, pool indices, peak positions) stays on the device, never the pool's activations, so the
extra memory is about one layer output of one chunk.

The rule: a sample's activation for a channel is its maximum over positions, the strongest single place the
channel fires, which is what a crop around that place shows (a mean would favour samples full of weak texture).

The crops are sized to the layer's receptive field, measured once (:func:`receptive_radius`): the smallest box
around an output position's centre outside which the input can change without changing that position's output.
Measured, not computed from kernels and strides, so that branches (ResNet's shortcuts), dilations and pooling
count as they are; no gradient is taken, so parameters, their gradients and sharded strategies are untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .passes import first_tensor, forward, probing
from .render import as_maps

# Box half-widths tried by the receptive-field measurement, in input pixels (all in one batch).
RADII = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256)


@dataclass
class LayerExamples:
    """One picture layer's top examples. Row ``i`` belongs to ``channels[i]``; entries best first.

    A slot no sample filled (a pool smaller than ``k``) has index ``-1`` and value ``-inf``.
    """

    channels: list[int]
    values: torch.Tensor  # float32 [K, k]: the channel's maximum over positions in that sample
    indices: torch.Tensor  # int64 [K, k]: the sample's index in the pool
    positions: torch.Tensor  # int64 [K, k, 2]: (row, column) of the maximum in the layer's map
    map_size: tuple[int, int]  # (h, w) of the layer's map
    input_size: tuple[int, int] | None = None  # (H, W) of the model input, when it is an image batch
    radius: int | None = None  # receptive field half-width in input pixels; None: unknown (the whole input)

    def to(self, device: torch.device | str) -> LayerExamples:
        return LayerExamples(
            self.channels,
            self.values.to(device),
            self.indices.to(device),
            self.positions.to(device),
            self.map_size,
            self.input_size,
            self.radius,
        )

    def top(self, row: int) -> list[tuple[int, float, tuple[int, int]]]:
        """``(pool index, value, (row, column))`` of channel ``channels[row]``'s filled slots, best first."""
        found = []
        for index, value, (y, x) in zip(
            self.indices[row].tolist(), self.values[row].tolist(), self.positions[row].tolist(), strict=True
        ):
            if index >= 0:
                found.append((index, value, (y, x)))
        return found


def peaks(output: torch.Tensor, channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None:
    """Per shown channel and sample, the maximum over positions and where: ``(values [K, n], positions [K, n, 2],
    (h, w))``; ``None`` for an output with no spatial layout. A NaN counts as the lowest value."""
    maps = as_maps(output.index_select(1, channels.to(output.device)))
    if maps is None:
        return None
    n, k, h, w = maps.shape
    flat = torch.nan_to_num(maps.reshape(n, k, h * w).float(), nan=-torch.inf)
    values, where = flat.max(dim=2)
    positions = torch.stack((where // w, where % w), dim=-1)
    return values.T, positions.transpose(0, 1), (h, w)


def merge(
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` per row of two ``(values [K, a], indices [K, a], positions [K, a, 2])``, best first; on a tie
    the earlier pool sample wins (``best`` holds earlier samples than ``new``). ``best=None``: only ``new``."""
    values, indices, positions = (
        new if best is None else (torch.cat(pair, dim=1) for pair in zip(best, new, strict=True))
    )
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order), positions.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))


class ExampleScanner:
    """Scans a pool through ``model`` and keeps, per layer and channel, the ``k`` samples that activate it most.

    Args:
        model: the model under training (left as it was: see :func:`.passes.probing`).
        layers: ``{name: module}`` of the picture layers; a module called more than once is read at its first call.
        channels: ``{name: [channel, ...]}``, the shown channels of each layer (the grid's columns, in order).
        k: examples per channel.
        forward_fn: ``forward_fn(model, x)`` runs the model, as for the probe; default ``model(x)``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        channels: dict[str, list[int]],
        k: int,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        self.model = model
        self.layers = {name: module for name, module in layers.items() if channels.get(name)}
        self.channels = {name: list(channels[name]) for name in self.layers}
        self.k = k
        self.forward_fn = forward_fn
        self.radius: dict[str, int | None] | None = None  # measured at the first scan

    def scan(self, chunks: Iterable[tuple[int, Any]]) -> dict[str, LayerExamples]:
        """``chunks``: ``(pool index of the chunk's first sample, model input)`` in pool order. Every layer that
        put out a spatial map gets its :class:`LayerExamples`, still on the model's device."""
        best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        seen: set[str] = set()
        start = [0]  # pool index of the current chunk's first sample

        def make_hook(name: str) -> Callable[..., None]:
            chosen = torch.tensor(self.channels[name])

            def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                tensor = first_tensor(output)
                if name in seen or tensor is None or tensor.dim() < 3 or max(self.channels[name]) >= tensor.shape[1]:
                    return
                seen.add(name)
                found = peaks(tensor.detach(), chosen)
                if found is None:
                    return
                values, positions, sizes[name] = found
                indices = torch.arange(start[0], start[0] + values.shape[1], device=values.device).expand_as(values)
                new = (values, indices, positions)
                best[name] = merge(best.get(name), new, self.k)

            return hook

        hooks = [(module, make_hook(name)) for name, module in self.layers.items()]
        first = None
        with probing(self.model, hooks):
            for start[0], x in chunks:
                first = first if first is not None else x
                seen.clear()
                forward(self.model, x, self.forward_fn)
        if self.radius is None and first is not None:
            self.radius = receptive_radius(self.model, self.layers, first, sizes, self.forward_fn)
        image = first_tensor(first) if first is not None else None
        input_size = tuple(image.shape[2:]) if image is not None and image.dim() == 4 else None
        return {
            name: LayerExamples(
                self.channels[name], *best[name], sizes[name], input_size, (self.radius or {}).get(name)
            )
            for name in self.layers
            if name in best
        }


def receptive_radius(
    model: nn.Module,
    layers: dict[str, nn.Module],
    x: Any,
    map_sizes: dict[str, tuple[int, int]],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, int | None]:
    """Per layer of ``map_sizes`` (its map's ``(h, w)``), the half-width in input pixels of its receptive field,
    measured on the first sample of ``x``, in forwards of at most ``len(x)`` samples.

    The sample, then copies of it with everything outside a box of half-width ``r`` (one per ``RADII``) around the
    input point under the centre of the layer's map replaced by noise from a generator of its own (layers whose
    centres fall on the same point share the forwards). The radius is the smallest ``r`` from which on the centre's
    output (all channels) stays as it was. ``None`` for a layer whose centre sees the whole input (global pooling,
    attention), and for inputs that are not one image batch ``(N, C, H, W)`` (then crops show the whole input).
    """
    image = x if isinstance(x, torch.Tensor) else None
    if image is None or image.dim() != 4 or not image.is_floating_point():
        return dict.fromkeys(map_sizes)
    sample = image[:1].float()
    height, width = sample.shape[2:]
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0)).to(sample.device)
    noisy = sample + 3 * (sample.std() + 1) * noise
    groups: dict[tuple[float, float], list[str]] = {}
    for name, (h, w) in map_sizes.items():
        groups.setdefault(input_point((h // 2, w // 2), (h, w), (height, width)), []).append(name)
    out: dict[str, int | None] = dict.fromkeys(map_sizes)
    for (cy, cx), names in groups.items():
        reach = max(cy, height - 1 - cy, cx, width - 1 - cx)  # a box this wide holds the whole input
        radii = [r for r in RADII if r < reach]
        centres = _centre_outputs(
            model,
            {n: layers[n] for n in names},
            _boxed(sample, noisy, radii, (cy, cx)).to(image.dtype),
            len(image),
            forward_fn,
        )
        for name, centre in centres.items():
            tolerance = 1e-3 * (centre[0].abs().max() + 1e-6)
            changed = ((centre[1:] - centre[:1]).abs().amax(dim=1) > tolerance).tolist()
            unchanged_from = len(radii)
            while unchanged_from > 0 and not changed[unchanged_from - 1]:
                unchanged_from -= 1
            out[name] = radii[unchanged_from] if unchanged_from < len(radii) else None
    return out


def _centre_outputs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batch: torch.Tensor,
    chunk: int,
    forward_fn: Callable[[nn.Module, Any], Any] | None,
) -> dict[str, torch.Tensor]:
    """Per layer, its output at the centre of its map for each sample of ``batch`` (``[N, C]``), in forwards of
    ``chunk`` samples; a layer with no map, or that did not run, is left out."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    seen: set[str] = set()

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = first_tensor(output)
            maps = as_maps(tensor) if tensor is not None else None
            if name not in seen and maps is not None:
                seen.add(name)
                parts[name].append(maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2].float())

        return hook

    with probing(model, [(module, make_hook(name)) for name, module in layers.items()]):
        for piece in batch.split(chunk):
            seen.clear()
            forward(model, piece, forward_fn)
    return {name: torch.cat(found) for name, found in parts.items() if len(found) == len(batch.split(chunk))}


def input_point(
    position: tuple[int, int], map_size: tuple[int, int], input_size: tuple[int, int]
) -> tuple[float, float]:
    """The input pixel (row, column) under the centre of a map position, for maps ``stride = input / map`` times
    smaller: ``position * stride``, where PyTorch's convolutions and pooling with ``padding = kernel // 2`` centre
    each output (ResNet's stem: ``p * 4``)."""
    return tuple(p * size / m for p, m, size in zip(position, map_size, input_size, strict=True))


def _boxed(sample: torch.Tensor, noisy: torch.Tensor, radii: list[int], centre: tuple[float, float]) -> torch.Tensor:
    """``[sample, sample inside a box of half-width r around centre and noise outside, for each r]``."""
    height, width = sample.shape[2:]
    rows = (torch.arange(height, device=sample.device) - centre[0]).abs()
    cols = (torch.arange(width, device=sample.device) - centre[1]).abs()
    copies = [sample]
    for r in radii:
        inside = (rows[:, None] <= r + 0.5) & (cols[None, :] <= r + 0.5)
        copies.append(torch.where(inside, sample, noisy))
    return torch.cat(copies)


def examples_record(
    found: dict[str, LayerExamples], marks: dict[str, list[str]], pool_size: int, k: int
) -> dict[str, Any]:
    """The JSON record of one examples pass (read back by ``fm-callback report``): per layer and shown channel,
    the top examples' dataset indices (the pool is the dataset's first samples), activations and the input point
    ``[row, column]`` the crop is centred on; a dead channel (``marks``) has none and says so."""
    layers = {}
    for name, examples in found.items():
        channels = {}
        for row, channel in enumerate(examples.channels):
            dead = marks.get(name, [""] * (row + 1))[row] == "dead"
            top = [] if dead else examples.top(row)
            at = (
                [input_point(p, examples.map_size, examples.input_size) for _, _, p in top]
                if examples.input_size
                else []
            )
            channels[str(channel)] = {
                "indices": [index for index, _, _ in top],
                "values": [round(value, 6) for _, value, _ in top],
                "at": [[round(y, 1), round(x, 1)] for y, x in at],
                "dead": dead,
            }
        layers[name] = {"radius": examples.radius, "map_size": list(examples.map_size), "channels": channels}
    return {"version": 1, "k": k, "pool": pool_size, "layers": layers}
