"""Count the reads of device memory from the host that a piece of code makes, on the CPU.

A GPU runs kernels asynchronously: the host queues them and goes on. Every read of a value from the host
(``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``, a copy to the CPU) and every op
whose output shape depends on the data (``nonzero``, boolean indexing) makes the host wait until the device has
finished everything queued before it. So the number of such reads in one probe event decides how often a GPU
forward stops and starts again, and it can be counted on a CPU, where the same code makes the same calls:

- a ``TorchDispatchMode`` counts ``aten._local_scalar_dense`` (what ``item``/``bool``/``float``/``int`` run),
  ``aten.nonzero``/``masked_select`` (data-dependent shapes), and ``_to_copy``/``copy_`` that cross from another
  device to the CPU (on a CPU-only machine there are none);
- a ``TorchFunctionMode`` counts ``.cpu()``, ``.numpy()``, ``.tolist()`` and ``copy_`` into a CPU tensor, which
  on a CPU tensor dispatch nothing (every such call is counted, as on a GPU it would copy from the device);
  boolean indexing counts as a ``nonzero`` (on the CPU it runs one inside ``aten.index`` unseen).

    python benchmarks/host_reads.py                 # resnet18 and resnet50, 8 x 128 px, the second event
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a fresh clone runs without installing the package

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default: "item/bool/float"}
DATA_SHAPED = {aten.nonzero.default: "nonzero", aten.masked_select.default: "nonzero"}
COPIES = {aten._to_copy.default, aten.copy_.default}
HOST_METHODS = {torch.Tensor.cpu: ".cpu()", torch.Tensor.numpy: ".cpu()", torch.Tensor.tolist: ".cpu()"}
KINDS = ("item/bool/float", "nonzero", ".cpu()")


def _crosses_to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    """A ``_to_copy`` to the CPU of a tensor elsewhere, or a ``copy_`` into a CPU tensor from elsewhere."""
    if func is aten._to_copy.default:
        source, target = args[0], kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and source.device.type != "cpu"
    destination, source = args[0], args[1]
    return destination.device.type == "cpu" and isinstance(source, torch.Tensor) and source.device.type != "cpu"


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SCALAR_READS:
            self.counts[SCALAR_READS[func]] += 1
        elif func in DATA_SHAPED:
            self.counts[DATA_SHAPED[func]] += 1
        elif func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.counts["nonzero"] += 1  # boolean indexing: its output shape is the mask's count
        elif func in COPIES and _crosses_to_host(func, args, kwargs):
            self.counts[".cpu()"] += 1
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_METHODS or (func is torch.Tensor.copy_ and args[0].device.type == "cpu"):
            self.counts[HOST_METHODS.get(func, ".cpu()")] += 1  # copy_ into a CPU tensor: the hand-over's kind
        return func(*args, **(kwargs or {}))


def count_host_reads(fn: Callable[[], Any]) -> tuple[Any, Counter]:
    """Run ``fn()`` and count its host reads by kind (``item/bool/float``, ``nonzero``, ``.cpu()``);
    returns ``(what fn returned, counts)``. ``sum(counts.values())`` is the total."""
    counts: Counter = Counter({kind: 0 for kind in KINDS})
    with _FunctionCounter(counts), _DispatchCounter(counts):
        value = fn()
    return value, counts


def event_reads(model_name: str, batch: int = 8, size: int = 128) -> tuple[int, Counter]:
    """``(watched layers, host reads by kind)`` of the second ``FeatureMapProbe(model).run(x)`` on a torchvision
    model with random weights (the first event is a warm-up: first-call costs are not per event)."""
    import torchvision

    from fm_callback import FeatureMapProbe

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    probe = FeatureMapProbe(model)
    probe.run(x)
    _, counts = count_host_reads(lambda: probe.run(x))
    return len(probe.layers), counts


def table(models: list[str], batch: int, size: int) -> str:
    rows = [
        "| model | watched layers | `_local_scalar_dense` (item/bool/float) | `nonzero` | `.cpu()` | total |",
        "|---|---|---|---|---|---|",
    ]
    for name in models:
        layers, counts = event_reads(name, batch, size)
        cells = " | ".join(str(counts[kind]) for kind in KINDS)
        rows.append(f"| torchvision {name} | {layers} | {cells} | {sum(counts.values())} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(table(args.models, args.batch, args.size))
