"""The callback's probe batch: given, or the first samples of the Trainer's val (else train) data.

Taken once on rank 0 and broadcast to every rank, kept on the CPU, and tried through the model at set-up; the
input normalisation is found where Lightning exposes it, so that ``probe/input`` shows what a person sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader, IterableDataset

from .passes import check_input, first_tensor, to_device
from .results import ProbeResult

INPUT_KEYS = ("image", "images", "img", "x", "input", "inputs")
_PICKLABLE = "(defined at module level so the callback stays picklable)"


def default_input(batch: Any) -> Any:
    """The model input of a batch: the tensor itself, the first item of a tuple/list, or a dict's image/x/input."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        raise ValueError(
            f"fm_callback: cannot find the model input in a dict batch with keys {sorted(map(str, batch))}; "
            f"expected one of {', '.join(INPUT_KEYS)}. Pass input_fn=, a function batch -> model input {_PICKLABLE}."
        )
    numpy_hint = " (convert it with torch.as_tensor)" if type(batch).__module__.split(".")[0] == "numpy" else ""
    raise ValueError(
        f"fm_callback: cannot find the model input in a batch of type {type(batch).__name__}{numpy_hint}; give "
        "probe_batch= a torch.Tensor (or a batch as your dataloader yields it), or pass input_fn=, a function "
        f"batch -> model input {_PICKLABLE}."
    )


def first_samples(loader: DataLoader, count: int) -> tuple[Any, int]:
    """The first ``count`` samples of a loader's dataset, collated as the loader would; (batch, samples taken).

    Map-style datasets are indexed directly (no iterator, so no sampler or worker draws a random number); an
    iterable dataset gives its first batches until ``count`` samples are in, joined. Either way the global RNG is
    left as it was.
    """
    with isolate_rng():
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            taken = min(count, len(dataset))
            if taken == 0:
                raise ValueError("fm_callback: the dataloader's dataset is empty; pass probe_batch= instead")
            return loader.collate_fn([dataset[i] for i in range(taken)]), taken
        batches: list[Any] = []
        for batch in loader:
            batches.append(batch)
            if sum(_batch_size(b) for b in batches) >= count:
                break
    if not batches:
        raise ValueError("fm_callback: the dataloader yielded no batch; pass probe_batch= instead")
    try:
        joined = _joined(batches)
    except TypeError:  # a batch of something other than tensors, lists, tuples and dicts: its first batch only
        batches = batches[:1]
        joined = batches[0]
    return joined, min(count, sum(_batch_size(b) for b in batches))


def _batch_size(batch: Any) -> int:
    tensor = first_tensor(batch)
    return tensor.shape[0] if tensor is not None and tensor.dim() else 1


def _joined(batches: list[Any]) -> Any:
    """Collated batches joined along the sample dimension (tensors concatenated, lists extended)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {key: _joined([b[key] for b in batches]) for key in first}
    if isinstance(first, tuple):
        return type(first)(*map(_joined, zip(*batches, strict=True)))  # a namedtuple too
    if isinstance(first, list) and all(isinstance(b, list) for b in batches):
        if all(isinstance(item, torch.Tensor) for item in first):  # per-field tensors, as default_collate gives
            return [_joined(list(parts)) for parts in zip(*batches, strict=True)]
        return [item for b in batches for item in b]
    raise TypeError(f"cannot join batches of type {type(first).__name__}")


def probe_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    """Where the probe batch may come from, in order: the first val DataLoader, then the first train DataLoader."""
    found = (first_loader(trainer.val_dataloaders), first_loader(trainer.train_dataloader))
    return [loader for loader in found if loader is not None]  # no `or`: bool(loader) calls len(), which may raise


def first_loader(loaders: Any) -> DataLoader | None:
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple):
        for loader in loaders:
            found = first_loader(loader)
            if found is not None:
                return found
    return None


@dataclass
class ProbeSource:
    """Where the probe batch came from: ``kind`` is ``"val"``, ``"train"`` or ``"given"``; ``text`` says it."""

    kind: str
    text: str


def _read(
    trainer: pl.Trainer, probe_batch: Any, probe_size: int, input_fn: Callable[[Any], Any] | None, what: str
) -> tuple[Any, ProbeSource]:
    """The model input of ``probe_batch``, else of the first ``probe_size`` samples of the val (else train) data
    (``what``: the argument that asked for them, for the warning when there are fewer)."""
    batch, source = probe_batch, ProbeSource("given", "probe_batch= as given")
    if batch is None:
        loaders = probe_loaders(trainer)
        if not loaders:
            raise ValueError("FeatureMapCallback: no DataLoader to take the probe batch from; pass probe_batch=")
        for loader in loaders:  # an empty val loader falls back to the train loader
            try:
                batch, taken = first_samples(loader, probe_size)
                break
            except ValueError:
                if loader is loaders[-1]:
                    raise
        source = _source(trainer, loader, taken)
        if taken < probe_size:
            rank_zero_warn(
                f"fm_callback: {what}={probe_size} but only {taken} samples were there to take ({source.text}); "
                f"probing with {taken}. "
                f"Pass probe_batch= (a batch of {probe_size} samples) or a smaller {what} to silence this."
            )
    try:
        model_input = input_fn(batch) if input_fn is not None else default_input(batch)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            f"FeatureMapCallback: input_fn failed on the probe batch ({type(err).__name__}: {err}); it gets a "
            "batch as your dataloader yields it (or probe_batch= as given) and must return what the model takes"
        ) from err
    if probe_batch is None:  # the first probe_size samples of every tensor of the collated batch
        model_input = apply_to_collection(model_input, torch.Tensor, lambda tensor: tensor[:probe_size])
    if any(t.is_meta for t in _tensors(model_input)):
        raise ValueError(
            "FeatureMapCallback: the probe batch is on the meta device (tensors with a shape but no values, as made "
            "under `with torch.device('meta')`), so there is nothing to probe; pass probe_batch= with real values "
            "(on the CPU)"
        )
    return to_device(model_input, torch.device("cpu")), source


def _source(trainer: pl.Trainer, loader: DataLoader, taken: int) -> ProbeSource:
    kind = "val" if loader is first_loader(trainer.val_dataloaders) else "train"
    name = f"the {kind} dataloader"
    if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
        return ProbeSource(kind, f"the first {taken} samples {name} yielded (an iterable dataset)")
    return ProbeSource(kind, f"samples 0-{taken - 1} of {name}'s dataset (read by index)")


def _tensors(collection: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(collection, torch.Tensor, found.append)
    return found


def take_model_input(
    trainer: pl.Trainer,
    probe_batch: Any,
    probe_size: int,
    input_fn: Callable[[Any], Any] | None,
    what: str = "probe_size",
) -> tuple[Any, ProbeSource | None]:
    """The probe's model input (or the examples pool's, ``what="examples_pool"``) and where it came from, taken once
    on rank 0 and broadcast, kept on the CPU."""
    model_input, source, error = None, None, None
    if trainer.is_global_zero:
        try:
            model_input, source = _read(trainer, probe_batch, probe_size, input_fn, what)
        except Exception as err:  # sent to every rank, so that all raise instead of the others waiting
            error = err
    model_input, source, error = trainer.strategy.broadcast((model_input, source, error), src=0)
    if error is not None:
        raise error
    check_input(model_input, argument="probe_batch")
    return to_device(model_input, torch.device("cpu")), source


def found_normalisation(trainer: pl.Trainer, model_input: Any) -> tuple[list[float] | None, list[float] | None]:
    """The input's ``(mean, std)`` where Lightning exposes it, else ``(None, None)``.

    Looked for in the datamodule's ``mean``/``std`` attributes, then in a ``Normalize`` of the val (else train)
    dataset's ``transform`` (torchvision's ``Compose([..., Normalize(mean, std)])``). Used only when the user
    gave none, and only when it fits the probe input's channels, so ``probe/input`` shows what a person sees.
    """
    sources: list[Any] = [getattr(trainer, "datamodule", None)]
    loader = next(iter(probe_loaders(trainer)), None)
    dataset = getattr(loader, "dataset", None)
    while hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):  # Subset and similar wrappers
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    sources += [t for t in [*getattr(transform, "transforms", []), transform] if type(t).__name__ == "Normalize"]
    tensor = first_tensor(model_input)
    channels = tensor.shape[1] if tensor is not None and tensor.dim() == 4 else None
    for source in sources:
        try:
            mean = torch.as_tensor(source.mean, dtype=torch.float32).flatten().tolist()
            std = torch.as_tensor(source.std, dtype=torch.float32).flatten().tolist()
        except (AttributeError, TypeError, ValueError, RuntimeError):
            continue
        if channels and len(mean) in (1, channels) and len(std) == len(mean) and min(std) > 0:
            return mean, std
    return None, None


def dry_run(run: Callable[[], ProbeResult], model_input: Any) -> ProbeResult:
    """``run()``, the probe's first forward at set-up: a batch the model cannot take is a configuration error."""
    try:
        result = run()
    except Exception as err:
        raise ValueError(
            f"FeatureMapCallback: the probe batch ({_describe(model_input)}) could not go through the model: "
            f"{type(err).__name__}: {err}. Pass probe_batch= with an input the model takes, input_fn= to "
            "pick the model input out of the batch, or forward_fn= to call a model that takes more than one "
            "argument."
        ) from err
    if not len(result):
        raise ValueError(
            "FeatureMapCallback: none of the watched layers ran during the model's forward (a module that exists "
            "but is not called in forward() reports nothing); check layers="
        )
    return result


def _describe(model_input: Any) -> str:
    """``input of shape (2, 3, 16, 16), dtype float32``, for error messages."""
    tensor = first_tensor(model_input)
    if tensor is None:
        return f"a {type(model_input).__name__}"
    return f"input of shape {tuple(tensor.shape)}, dtype {str(tensor.dtype).replace('torch.', '')}"
