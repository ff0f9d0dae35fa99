"""The end of an event: every small result the probe kept on the device goes to the host in one copy.

While a GPU runs the probe's forward, the host only queues work; each read of device memory from the host
(``.cpu()``, ``.item()``, ``bool()``, ``.tolist()``) makes it wait until the device has finished everything
queued, and a read per layer turns the forward into a start-stop sequence. So the probe's hooks keep every
statistic, mask, Gram matrix, histogram and picture of an event as a device tensor, and :func:`hand_over` moves
them all at once after the forward (:func:`to_host`: their bytes concatenated into one buffer per device, one
copy of it into a host buffer, page-locked and ``non_blocking`` on CUDA, so the host waits once), then reads the
few values the host decides on (the channels a picture shows, whether a layer's activation could be measured,
whether to redo the event carefully) as one list.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .activations import ActivationLineage
from .stats import ChannelStats

_ALIGN = 8  # bytes: every tensor starts at a multiple of the largest element size, so it can be viewed in place
# Fields the host decides on (a grid's channels and their marks, whether a Gram matrix needed the relative product):
# handed over as lists of ints, read with the event's one list
NUMBERS = frozenset({"channels", "marks", "offset"})


@dataclass
class Event:
    """One forward's results on the host. ``layers[key]``: what the hook kept (``shape``, ``stats``, ``gram``,
    ``grid``, ... as CPU tensors; :data:`NUMBERS` as lists of ints), plus ``silenced``/``firing`` where the layer's
    activation was measured. ``careful``: a statistic or Gram matrix was not finite, so the event is redone."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: torch.Tensor | None = None  # the probe input as float RGB (see render.input_images)
    careful: bool = False


def hand_over(raw: dict[str, dict[str, Any]], lineage: ActivationLineage, images: torch.Tensor | None) -> Event:
    """``raw[key]`` (the hook's ``shape`` and device results: any tensor field travels, ``stats`` field by field,
    :data:`NUMBERS` as lists of ints) and the lineage's counts, to the host in one copy and one read of values."""
    tensors: dict[Hashable, torch.Tensor] = {}
    decisions: list[torch.Tensor] = []  # int64 pieces, read as one list after the copy
    finite: list[torch.Tensor] = []
    for key, reduced in raw.items():
        for name, value in reduced.items():
            if isinstance(value, ChannelStats):
                tensors.update({(key, name, f): getattr(value, f) for f in value.__dataclass_fields__})
                finite.append(torch.isfinite(value.mean + value.std + value.min + value.max).all())
            elif name in NUMBERS:
                decisions.append(value.long().view(-1))
            elif isinstance(value, torch.Tensor):
                tensors[key, name] = value
        if isinstance(reduced.get("gram"), torch.Tensor):
            finite.append(torch.isfinite(reduced["gram"]).all())
    for key in lineage.firing:
        tensors[key, "silenced"], tensors[key, "firing"] = lineage.silenced[key], lineage.firing[key]
        if lineage.measured[key] is not None:
            decisions.append(lineage.measured[key].long().view(1))
    if finite:
        decisions.append((~torch.stack([f.to(finite[0].device) for f in finite]).all()).long().view(1))
    if images is not None:
        tensors["input"] = images
    if decisions:
        tensors["decisions"] = torch.cat([d.to(decisions[0].device) for d in decisions])
    host = to_host(tensors)
    values = iter(host["decisions"].tolist() if decisions else [])  # the one read of values, from the host copy
    event = Event(images=host.get("input"))
    for key, reduced in raw.items():
        layer = event.layers[key] = {}
        for name, value in reduced.items():
            if isinstance(value, ChannelStats):
                layer[name] = ChannelStats(**{f: host[key, name, f] for f in value.__dataclass_fields__})
            elif name in NUMBERS:
                layer[name] = [next(values) for _ in range(value.numel())]
            else:
                layer[name] = host.get((key, name), value)
    for key in lineage.firing:
        if lineage.measured[key] is None or next(values):
            event.layers[key]["silenced"], event.layers[key]["firing"] = host[key, "silenced"], host[key, "firing"]
    event.careful = bool(next(values)) if finite else False
    return event


def to_host(tensors: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
    """The same tensors (same keys, dtypes and shapes) on the CPU, through one copy per device they are on.

    Each returned tensor is a view of a host buffer. From a CUDA device the buffer is pinned and the copy
    ``non_blocking``, followed by one wait for the device's stream; from elsewhere the same copy runs
    synchronously (the path a CPU run, and its tests, take).
    """
    by_device: dict[torch.device, dict[Hashable, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        by_device.setdefault(tensor.device, {})[key] = tensor
    host: dict[Hashable, torch.Tensor] = {}
    for device, group in by_device.items():
        host.update(_copy_to_host(group, device))
    return {key: host[key] for key in tensors}


def _copy_to_host(tensors: dict[Hashable, torch.Tensor], device: torch.device) -> dict[Hashable, torch.Tensor]:
    pieces, layout, size = [], [], 0
    padding = torch.zeros(_ALIGN, dtype=torch.uint8, device=device)
    for key, tensor in tensors.items():
        raw = tensor.detach().reshape(-1).view(torch.uint8)  # its bytes (a copy only if it was not contiguous)
        layout.append((key, size, raw.numel(), tensor.dtype, tensor.shape))
        pad = -raw.numel() % _ALIGN
        pieces += [raw, padding[:pad]] if pad else [raw]
        size += raw.numel() + pad
    pinned = device.type == "cuda"
    host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
    host.copy_(torch.cat(pieces), non_blocking=pinned)
    if pinned:
        torch.cuda.current_stream(device).synchronize()  # the one wait of the event
    return {key: host[start : start + nbytes].view(dtype).view(shape) for key, start, nbytes, dtype, shape in layout}
