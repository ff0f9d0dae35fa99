"""The model ``fm-callback snapshot`` looks at: a torchvision model by name, or the user's own ``nn.Module`` class
by import path (``package.module:Class`` or LightningCLI's ``package.module.Class``, imported from the current
folder as ``python -m`` does), with weights from torchvision, a state_dict file or a Lightning checkpoint (always
``weights_only=True``). Every failure a user can cause ends in a :class:`SnapshotError` saying what to do.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import io
import os
import pickle
import pkgutil
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


class SnapshotError(Exception):
    """A problem the user can fix; the command prints the message (no traceback) and exits with 2."""


def load_model(model_name: str, weights: str | None, num_classes: int | None = None) -> tuple[nn.Module, Any, str]:
    """(model in eval mode, torchvision weights entry or None, a description of the weights)."""
    path = Path(weights).expanduser() if weights is not None else None
    if ":" in model_name or "." in model_name:  # torchvision's names have neither
        if num_classes is not None:
            raise SnapshotError("--num-classes is for torchvision models; your class builds its own head")
        if path is not None and not path.is_file():
            raise SnapshotError(f"--weights: no such file {weights!r} (your own class takes a checkpoint file)")
        model, note = load_class_model(model_name, path)
        return model.eval(), None, note
    if path is None:
        return build_model(model_name, num_classes=num_classes).eval(), None, "random initial weights (untrained)"
    if path.is_file():
        model, note = load_local_weights(model_name, path, num_classes)
        return model.eval(), None, f"{path}" + (f" ({note})" if note else "")
    if path.suffix in WEIGHT_FILE_SUFFIXES or "/" in weights or "\\" in weights:
        raise SnapshotError(f"--weights: no such file {weights!r}")
    build_model(model_name)  # a clear message for an unknown model name comes first
    entry = weights_enum(model_name, weights)
    return fetch_pretrained(model_name, entry, num_classes).eval(), entry, f"torchvision {entry}"


# ---- the user's own class -------------------------------------------------------------------------------


def import_class(spec: str) -> type[nn.Module]:
    """The ``nn.Module`` class ``package.module:Class`` (or ``package.module.Class``) names, importable from cwd."""
    module_name, _, class_name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if os.getcwd() not in sys.path:  # as python -m does: the current folder's packages are importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name and not module_name.startswith(f"{err.name}."):  # the module imports a missing one
            raise SnapshotError(f"--model {spec}: importing {module_name} failed: {err}; install {err.name}") from None
        package, _, leaf = err.name.rpartition(".")
        if package:  # the package is there, the module is not
            names = [m.name for m in pkgutil.iter_modules(getattr(sys.modules.get(package), "__path__", []))]
            close = difflib.get_close_matches(leaf, names, n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"its modules: {', '.join(names) or 'none'}"
            raise SnapshotError(f"--model {spec}: {package} has no module {leaf!r}; {hint}") from None
        raise SnapshotError(
            f"--model {spec}: no module named {err.name!r} in the current folder ({os.getcwd()}) or on sys.path; "
            f"run the command in the folder that holds {err.name}/ (or {err.name}.py), or add that folder to PYTHONPATH"
        ) from None
    except Exception as err:
        raise SnapshotError(f"--model {spec}: importing {module_name} failed ({type(err).__name__}: {err})") from None
    found = getattr(module, class_name, None)
    if found is None:
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        close = difflib.get_close_matches(class_name, classes, n=5, cutoff=0.5) or classes
        hint = f"did you mean {', '.join(close)}?" if close else "it defines no nn.Module class"
        raise SnapshotError(f"--model {spec}: {module_name} has no {class_name!r}; {hint}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        kind = "class" if isinstance(found, type) else type(found).__name__
        raise SnapshotError(f"--model {spec}: {class_name} is a {kind} but not an nn.Module subclass")
    return found


def load_class_model(spec: str, path: Path | None) -> tuple[nn.Module, str]:
    """The user's class with the file's weights: ``load_from_checkpoint`` for a LightningModule and a Lightning
    checkpoint, else built with no arguments and given the file's state_dict (a checkpoint's ``state_dict``)."""
    import lightning.pytorch as pl

    cls = import_class(spec)
    loaded = read_file(path) if path is not None else None
    if issubclass(cls, pl.LightningModule) and isinstance(loaded, dict) and "pytorch-lightning_version" in loaded:
        check_arguments(cls, spec, loaded.get("hyper_parameters") or {})
        try:
            model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        except Exception as err:
            if isinstance(err, RuntimeError) and "state_dict" in str(err):  # say how, with the file's keys
                check_fit(empty_from_checkpoint(cls, loaded), loaded["state_dict"], f"--weights {path}", spec)
            raise SnapshotError(f"--weights {path}: {cls.__name__}.load_from_checkpoint failed: {err}") from None
        return model, f"{path} (Lightning checkpoint, {cls.__name__}.load_from_checkpoint)"
    check_arguments(cls, spec, {})
    model = cls()
    if path is None:
        return model, "random initial weights (untrained)"
    state = strip_prefix(tensors_of(loaded, path), list(model.state_dict()))
    check_fit(model, state, f"--weights {path}", spec)
    model.load_state_dict(state)
    return model, f"{path} (state_dict)"


def check_arguments(cls: type, spec: str, given: dict[str, Any]) -> None:
    """Raise when ``cls`` needs constructor arguments that ``given`` (a checkpoint's hparams) does not hold."""
    needed = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given
    ]
    if needed:
        raise SnapshotError(
            f"--model {spec}: {cls.__name__}() needs the arguments {', '.join(needed)}, and no checkpoint "
            "hyper_parameters give them. Pass a Lightning checkpoint of a LightningModule that calls "
            "self.save_hyperparameters() in __init__, or give those arguments defaults (or write a subclass that does)"
        )


def empty_from_checkpoint(cls: Any, checkpoint: dict[str, Any]) -> nn.Module:
    """The model ``cls.load_from_checkpoint`` builds from ``checkpoint``'s hparams, with its initial weights."""
    buffer = io.BytesIO()
    torch.save({**checkpoint, "state_dict": {}}, buffer)
    buffer.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "contains no parameters", "keys in the model but not in the checkpoint"
        return cls.load_from_checkpoint(buffer, map_location="cpu", weights_only=True, strict=False)


# ---- weights files --------------------------------------------------------------------------------------


def read_file(path: Path) -> Any:
    """What a weights file holds, loaded safely (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SnapshotError(
            f"--weights {path}: the file holds more than tensors, so it is not loaded (loading arbitrary pickles "
            f"can run code). Save the weights with torch.save(model.state_dict(), path). ({str(err).splitlines()[0]})"
        ) from None
    except Exception as err:
        raise SnapshotError(
            f"--weights {path}: not a PyTorch weights file ({type(err).__name__}: {err}); expected a file made by "
            "torch.save(model.state_dict(), path) or a Lightning .ckpt"
        ) from None


def tensors_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, or of a checkpoint's ``state_dict`` (Lightning) or ``model_state_dict``."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # Lightning, common training scripts
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise SnapshotError(
            f"--weights {path}: found no tensors in it (a {type(loaded).__name__}); expected a state_dict "
            "saved with torch.save(model.state_dict(), path) or a Lightning .ckpt"
        )
    return tensors


def strip_prefix(state: dict[str, torch.Tensor], model_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The file's tensors renamed to the model's keys, removing a wrapper prefix (``model.``, ``module.``, ...).

    The prefix is the one that lets the most model keys be found; keys outside it (a loss's buffers, say) go.
    """
    prefixes: Counter[str] = Counter()
    wanted = set(model_keys)
    for key in state:
        for model_key in wanted:
            if key == model_key or key.endswith("." + model_key):
                prefixes[key[: len(key) - len(model_key)]] += 1
    if not prefixes:
        return state
    best = max(prefixes.items(), key=lambda item: (item[1], -len(item[0])))[0]
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def fit_report(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, 'key: file shape vs model shape' lines) of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    return missing, unexpected, mismatched


def check_fit(model: nn.Module, state: dict[str, torch.Tensor], what: str, model_name: str, fix: str = "") -> None:
    """Raise, listing the keys, when ``state`` does not fit ``model`` exactly."""
    missing, unexpected, mismatched = fit_report(model, state)
    if missing or unexpected or mismatched:
        lines = [f"{what}: the weights do not fit {model_name}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
                lines.append(f"  {title}: {', '.join(keys[:5])}{more}")
        lines.append(fix or "Check --model names the class the file was saved from.")
        raise SnapshotError("\n".join(lines))


# ---- torchvision ----------------------------------------------------------------------------------------


def build_model(name: str, num_classes: int | None = None, weights: Any = None) -> nn.Module:
    """A torchvision classification model by name, e.g. ``resnet18``; ``weights`` as torchvision takes them."""
    from torchvision import models

    available = models.list_models(module=models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(available[:12])}, ..."
        raise SnapshotError(
            f"--model: torchvision has no classification model {name!r}; {hint} "
            "(your own class: --model package.module:Class)"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return models.get_model(name, weights=weights, **kwargs)


def weights_enum(model_name: str, spec: str) -> Any:
    """The torchvision weights entry ``spec`` names (``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.DEFAULT``)."""
    from torchvision import models

    enum = models.get_model_weights(model_name)
    key = spec.split(".", 1)[1] if spec.startswith(enum.__name__ + ".") else spec
    try:
        return enum[key]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise SnapshotError(
            f"--weights: {spec!r} is neither a file nor a weights name of {model_name} ({names}); "
            "pass DEFAULT, one of those names, or the path of a .pth state_dict / Lightning .ckpt file"
        ) from None


def fetch_pretrained(model_name: str, weights: Any, num_classes: int | None) -> nn.Module:
    """torchvision's pretrained model, downloaded into torch.hub's cache unless it is there already."""
    if num_classes is not None and num_classes != len(weights.meta.get("categories") or [num_classes]):
        raise SnapshotError(
            f"--num-classes {num_classes} does not fit the {weights} weights "
            f"({len(weights.meta['categories'])} classes); leave --num-classes out"
        )
    try:
        return build_model(model_name, weights=weights)
    except SnapshotError:
        raise
    except Exception as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        file_name = weights.url.rsplit("/", 1)[-1]
        raise SnapshotError(
            f"--weights {weights.name}: could not fetch {weights.url} ({type(err).__name__}: {err}).\n"
            f"Offline? Download that file on a machine with internet and either pass its path "
            f"(--weights {file_name}) or put it into {cache}/ where torchvision looks first."
        ) from None


def _head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The file's class count when only the last layer differs from the model in its output size."""
    own = model.state_dict()
    last = next(reversed(own)).rsplit(".", 1)[0] + "."
    sizes = set()
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            if not key.startswith(last) or value.shape[1:] != own[key].shape[1:]:
                return None
            sizes.add(value.shape[0])
    return sizes.pop() if len(sizes) == 1 else None


def load_local_weights(model_name: str, path: Path, num_classes: int | None) -> tuple[nn.Module, str]:
    """torchvision's ``model_name`` with a local file's weights; (model, a note for the summary)."""
    state = tensors_of(read_file(path), path)
    model = build_model(model_name, num_classes=num_classes)
    state = strip_prefix(state, list(model.state_dict()))
    note = ""
    if num_classes is None:
        classes = _head_classes(model, state)
        if classes is not None:
            model = build_model(model_name, num_classes=classes)
            note = f"{classes} classes, read from the file"
    fix = "Check --model names the architecture the file was trained with (and --num-classes its classes)."
    check_fit(model, state, f"--weights {path}", f"torchvision's {model_name}", fix)
    model.load_state_dict(state)
    return model, note
