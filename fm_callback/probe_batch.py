"""The callback's probe batch: given, or the first samples of the Trainer's val (else train) data.

Taken once on rank 0 and broadcast to every rank, kept on the CPU, and tried through the model at set-up; the
input normalisation is found where Lightning exposes it, so that ``probe/input`` shows what a person sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader, IterableDataset

from .probe import ProbeResult, check_input, first_tensor, to_device

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

    Map-style datasets are indexed directly (no iterator, so no sampler or worker draws a random number);
    an iterable dataset gives its first batch. Either way the global RNG is left as it was.
    """
    with isolate_rng():
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            taken = min(count, len(dataset))
            if taken == 0:
                raise ValueError("fm_callback: the dataloader's dataset is empty; pass probe_batch= instead")
            return loader.collate_fn([dataset[i] for i in range(taken)]), taken
        for batch in loader:
            return batch, count
    raise ValueError("fm_callback: the dataloader yielded no batch; pass probe_batch= instead")


def probe_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    """Where the probe batch may come from, in order: the first val DataLoader, then the first train DataLoader."""
    found = (_first_loader(trainer.val_dataloaders), _first_loader(trainer.train_dataloader))
    return [loader for loader in found if loader is not None]  # no `or`: bool(loader) calls len(), which may raise


def _first_loader(loaders: Any) -> DataLoader | None:
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple):
        for loader in loaders:
            found = _first_loader(loader)
            if found is not None:
                return found
    return None


def _read(
    trainer: pl.Trainer, probe_batch: Any, probe_size: int, input_fn: Callable[[Any], Any] | None, what: str
) -> Any:
    """The model input of ``probe_batch``, else of the first ``probe_size`` samples of the val (else train) data
    (``what``: the argument that asked for them, for the warning when the dataset has fewer)."""
    batch = probe_batch
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
        if taken < probe_size:
            rank_zero_warn(
                f"fm_callback: {what}={probe_size} but the dataset has {taken} samples; probing with {taken}"
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
    return to_device(model_input, torch.device("cpu"))


def take_model_input(
    trainer: pl.Trainer,
    probe_batch: Any,
    probe_size: int,
    input_fn: Callable[[Any], Any] | None,
    what: str = "probe_size",
) -> Any:
    """The probe's model input (or the examples pool's, ``what="examples_pool"``), taken once on rank 0 and
    broadcast, kept on the CPU."""
    model_input, error = None, None
    if trainer.is_global_zero:
        try:
            model_input = _read(trainer, probe_batch, probe_size, input_fn, what)
        except Exception as err:  # sent to every rank, so that all raise instead of the others waiting
            error = err
    model_input, error = trainer.strategy.broadcast((model_input, error), src=0)
    if error is not None:
        raise error
    check_input(model_input, argument="probe_batch")
    return to_device(model_input, torch.device("cpu"))


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
