"""``fm-callback snapshot``: feature maps of a torchvision model on image files, with no training.

The classic standalone workflow: pick a model by name, load weights (torchvision's own with
``--weights DEFAULT`` when online, a local state_dict file or a Lightning checkpoint otherwise), load
images with PIL and the weights' own transforms, run one probe, and write what it saw to a folder:
``input.png``, ``feature_maps/<layer>.png``, ``feature_maps_overlay/<layer>.png`` and ``stats.json``.
Every failure a user can cause ends in a :class:`SnapshotError` whose message says what to do.
"""

from __future__ import annotations

import difflib
import json
import math
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .probe import FeatureMapProbe, ProbeResult
from .select import select_layers
from .tensorboard import FEATURE_MAPS, OVERLAYS, layer_tag

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
MAX_ROWS = 16  # images shown per grid; the statistics use every image


class SnapshotError(Exception):
    """A problem the user can fix; the command prints the message (no traceback) and exits with 2."""


# ---- model and weights ----------------------------------------------------------------------------------


def build_model(name: str, num_classes: int | None = None, weights: Any = None) -> nn.Module:
    """A torchvision classification model by name, e.g. ``resnet18``; ``weights`` as torchvision takes them."""
    from torchvision import models

    available = models.list_models(module=models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(available[:12])}, ..."
        raise SnapshotError(f"--model: torchvision has no classification model {name!r}; {hint}")
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


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file or a Lightning checkpoint, loaded safely (``weights_only=True``)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
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
    """The model with a local file's weights; (model, a note for the summary)."""
    state = read_weights_file(path)
    model = build_model(model_name, num_classes=num_classes)
    state = strip_prefix(state, list(model.state_dict()))
    note = ""
    if num_classes is None:
        classes = _head_classes(model, state)
        if classes is not None:
            model = build_model(model_name, num_classes=classes)
            note = f"{classes} classes, read from the file"
    missing, unexpected, mismatched = fit_report(model, state)
    if missing or unexpected or mismatched:
        lines = [f"--weights {path}: the weights do not fit torchvision's {model_name}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
                lines.append(f"  {title}: {', '.join(keys[:5])}{more}")
        lines.append("Check --model names the architecture the file was trained with (and --num-classes its classes).")
        raise SnapshotError("\n".join(lines))
    model.load_state_dict(state)
    return model, note


def load_model(model_name: str, weights: str | None, num_classes: int | None = None) -> tuple[nn.Module, Any, str]:
    """(model in eval mode, torchvision weights entry or None, a description of the weights)."""
    if weights is None:
        return build_model(model_name, num_classes=num_classes).eval(), None, "random initial weights (untrained)"
    path = Path(weights).expanduser()
    if path.is_file():
        model, note = load_local_weights(model_name, path, num_classes)
        return model.eval(), None, f"{path}" + (f" ({note})" if note else "")
    if path.suffix in WEIGHT_FILE_SUFFIXES or "/" in weights or "\\" in weights:
        raise SnapshotError(f"--weights: no such file {weights!r}")
    build_model(model_name)  # a clear message for an unknown model name comes first
    entry = weights_enum(model_name, weights)
    return fetch_pretrained(model_name, entry, num_classes).eval(), entry, f"torchvision {entry}"


# ---- images ---------------------------------------------------------------------------------------------


def image_transform(
    entry: Any = None,
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Callable, list[float], list[float]]:
    """(PIL image -> normalised tensor, mean, std): the weights' own transforms, else ImageNet's at 224 px."""
    from torchvision import transforms as T

    if entry is not None and size is None and mean is None and std is None:
        transform = entry.transforms()
        return transform, list(transform.mean), list(transform.std)
    size = size or DEFAULT_SIZE
    mean = list(mean or IMAGENET_MEAN)
    std = list(std or IMAGENET_STD)
    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    return transform, mean, std


def load_images(paths: Sequence[str | Path], transform: Callable) -> torch.Tensor:
    """Image files -> one ``(N, 3, H, W)`` batch through ``transform``."""
    from PIL import Image, UnidentifiedImageError

    batch = []
    for path in paths:
        try:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB")))
        except FileNotFoundError:
            raise SnapshotError(f"IMAGE: no such file {str(path)!r}") from None
        except (UnidentifiedImageError, OSError) as err:
            raise SnapshotError(f"IMAGE: cannot read {str(path)!r} as an image ({err})") from None
    return torch.stack(batch)


# ---- writing --------------------------------------------------------------------------------------------


def save_png(image: torch.Tensor, path: Path) -> None:
    """A ``uint8 [3, H, W]`` tensor as a PNG file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


def _floats(values: torch.Tensor) -> list[float | None]:
    """JSON-safe floats: NaN and Inf become null."""
    return [round(v, 6) if math.isfinite(v) else None for v in values.float().tolist()]


def layer_stats(name: str, report: Any) -> dict[str, Any]:
    """The JSON record of one layer."""
    s = report.stats
    return {
        "shape": list(report.shape),
        "channels": int(s.dead.numel()),
        "dead_fraction": round(report.dead_fraction, 6),
        "dead_channels": s.dead.nonzero().flatten().tolist(),
        "never_positive_channels": s.never_positive.nonzero().flatten().tolist(),
        "nonfinite_channels": (s.nonfinite > 0).nonzero().flatten().tolist(),
        "shown_channels": list(report.channels),
        "channel_mean": _floats(s.mean),
        "channel_std": _floats(s.std),
        "channel_min": _floats(s.min),
        "channel_max": _floats(s.max),
        "zero_fraction": _floats(s.zero_fraction),
    }


def top_classes(logits: torch.Tensor, categories: Sequence[str] | None, k: int = 3) -> list[list[dict[str, Any]]]:
    """Per image, the ``k`` most likely classes and their probabilities."""
    probs = logits.float().softmax(dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [
            {"class": int(i), "name": categories[i] if categories else str(i), "probability": round(float(p), 4)}
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(values, indices, strict=True)
    ]


def known_categories(model_name: str, entry: Any, classes: int) -> list[str] | None:
    """Class names: the weights' own, or torchvision's default ones when the class count matches (ImageNet)."""
    from torchvision import models

    if entry is not None:
        return entry.meta.get("categories")
    try:
        categories = models.get_model_weights(model_name).DEFAULT.meta.get("categories")
    except (ValueError, KeyError, AttributeError):
        return None
    return categories if categories and len(categories) == classes else None


def run_probe(model: nn.Module, batch: torch.Tensor, probe: FeatureMapProbe) -> tuple[ProbeResult, torch.Tensor]:
    """The probe's result and the model's own output on ``batch`` (caught by a hook during the same forward)."""
    caught: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, inputs, output: caught.append(output))
    try:
        result = probe.run(batch)
    finally:
        handle.remove()
    output = caught[0] if caught and isinstance(caught[0], torch.Tensor) else None
    return result, output


# ---- the command ----------------------------------------------------------------------------------------


def snapshot_command(args: Any) -> int:
    """``fm-callback snapshot``: see the module docstring. Returns the exit status."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return _snapshot(args, console)
    except SnapshotError as err:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2


def _snapshot(args: Any, console: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(args.out)
    counts = (("--size", args.size), ("--max-channels", args.max_channels), ("--num-classes", args.num_classes))
    for option, value in counts:
        if value is not None and value < 1:
            raise SnapshotError(f"{option} must be a positive number, got {value}")
    if out.exists() and not out.is_dir():
        raise SnapshotError(f"--out: {out} exists and is not a folder")
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(f"loading {args.model}", total=1)
        model, entry, weights_note = load_model(args.model, args.weights, args.num_classes)
        try:
            model.to(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
        except (RuntimeError, AssertionError) as err:
            raise SnapshotError(f"--device {args.device}: {err}") from None
        progress.update(task, advance=1)

        transform, mean, std = image_transform(entry, args.size, args.mean, args.std)
        task = progress.add_task("loading images", total=len(args.images))
        batch = []
        for path in args.images:
            batch.append(load_images([path], transform))
            progress.update(task, advance=1)
        batch = torch.cat(batch)

        try:
            names = [name for name, _ in select_layers(model, args.layers or None)]
            probe = FeatureMapProbe(
                model,
                layers=names,
                image_layers=names,
                max_channels=args.max_channels,
                max_samples=min(len(args.images), MAX_ROWS),
                mean=mean,
                std=std,
            )
        except (ValueError, TypeError) as err:
            raise SnapshotError(f"--{err}" if str(err).startswith("layers") else str(err)) from None
        task = progress.add_task("forward pass", total=1)
        result, logits = run_probe(model, batch, probe)
        progress.update(task, advance=1)

        task = progress.add_task("writing pictures", total=len(result) + 1)
        out.mkdir(parents=True, exist_ok=True)
        if result.input_image is not None:
            save_png(result.input_image, out / "input.png")
        progress.update(task, advance=1)
        layers: dict[str, Any] = {}
        for name, report in result.items():
            record = layer_stats(name, report)
            if report.grid is not None:
                record["grid"] = f"{layer_tag(FEATURE_MAPS, name)}.png"
                save_png(report.grid, out / record["grid"])
            if report.overlay is not None:
                record["overlay"] = f"{layer_tag(OVERLAYS, name)}.png"
                save_png(report.overlay, out / record["overlay"])
            layers[name] = record
            progress.update(task, advance=1)

    classes = logits.shape[1] if logits is not None and logits.dim() == 2 else 0
    categories = known_categories(args.model, entry, classes)
    summary = {
        "model": args.model,
        "weights": weights_note,
        "images": [str(p) for p in args.images],
        "input_shape": list(batch.shape),
        "mean": mean,
        "std": std,
        "dead_fraction": round(result.dead_fraction, 6),
        "predictions": top_classes(logits, categories) if logits is not None and logits.dim() == 2 else None,
        "layers": layers,
    }
    (out / "stats.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print_summary(summary, out)
    return 0


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """A table of the layers and where the files went, on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    title = f"{summary['model']} on {len(summary['images'])} image(s): {summary['weights']}"
    table = Table(title=escape(title))
    table.add_column("layer")
    table.add_column("output shape")
    table.add_column("dead", justify="right")
    table.add_column("never positive", justify="right")
    for name, record in summary["layers"].items():
        dead, total = len(record["dead_channels"]), record["channels"]
        table.add_row(
            escape(name),
            "×".join(map(str, record["shape"][1:])),
            f"[red]{dead}/{total}[/]" if dead else f"0/{total}",
            f"{len(record['never_positive_channels'])}/{total}",
        )
    console.print(table)
    if summary["predictions"]:
        for image, top in zip(summary["images"], summary["predictions"], strict=True):
            guesses = ", ".join(f"{t['name']} {t['probability']:.0%}" for t in top)
            console.print(escape(f"{Path(image).name}: {guesses}"))
    grids = sum("grid" in r for r in summary["layers"].values())
    overlays = sum("overlay" in r for r in summary["layers"].values())
    console.print(
        f"Wrote {grids} feature-map grids (feature_maps/), {overlays} overlays (feature_maps_overlay/), "
        f"input.png and stats.json to [bold]{escape(str(out))}[/]"
    )
