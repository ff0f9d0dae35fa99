"""``fm-callback snapshot``: feature maps of a model on image files, with no training.

The classic standalone workflow: a torchvision model by name or the user's own class by import path, with its
weights (see :mod:`fm_callback.models`); images loaded with PIL and the weights' own transforms; one probe; and
what it saw written to a folder: ``input.png``, ``feature_maps/<layer>.png``, ``feature_maps_overlay/<layer>.png``
and ``stats.json``. Every failure a user can cause ends in a :class:`SnapshotError` whose message says what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import SnapshotError, load_model
from .names import FEATURE_MAPS, OVERLAYS, layer_tag
from .probe import FeatureMapProbe
from .results import ProbeResult
from .select import select_layers
from .snapshot_examples import folder_images, write_examples

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
MAX_ROWS = 16  # images shown per grid; the statistics use every image


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
    from torchvision.io import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))


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
        "dead_channels": report.dead.nonzero().flatten().tolist(),  # the rule of dead_fraction: constant or silenced
        "constant_channels": s.dead.nonzero().flatten().tolist(),
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
    except (ValueError, KeyError, AttributeError):  # not a torchvision name (the user's own class), no weights
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

    console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    try:
        return _snapshot(args, console)
    except SnapshotError as err:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2


def _snapshot(args: Any, console: Any) -> int:
    out = Path(args.out)
    counts = (("--size", args.size), ("--max-channels", args.max_channels), ("--num-classes", args.num_classes))
    for option, value in counts:
        if value is not None and value < 1:
            raise SnapshotError(f"{option} must be a positive number, got {value}")
    if out.exists() and not out.is_dir():
        raise SnapshotError(f"--out: {out} exists and is not a folder")
    if args.examples:
        folder_images(args.examples)  # a wrong folder fails now, not after the model is loaded
    with console.status(f"loading {args.model}") as status:
        model, entry, weights_note = load_model(args.model, args.weights, args.num_classes)
        try:
            model.to(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
        except (RuntimeError, AssertionError) as err:
            raise SnapshotError(f"--device {args.device}: {err}") from None
        status.update(f"loading {len(args.images)} image(s)")
        transform, mean, std = image_transform(entry, args.size, args.mean, args.std)
        batch = load_images(args.images, transform)
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
        status.update("forward pass")
        result, logits = run_probe(model, batch, probe)
        status.update("writing pictures")
        out.mkdir(parents=True, exist_ok=True)
        if result.input_image is not None:
            save_png(result.input_image, out / "input.png")
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
        if args.examples:
            status.update(f"top examples over {args.examples}")
            write_examples(probe, result, args.examples, lambda paths: load_images(paths, transform), 4, out)

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

    console = Console(highlight=False, soft_wrap=True, emoji=False)
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
    if (out / "examples.json").exists():
        console.print("Wrote the top examples of each shown channel (feature_examples/) and examples.json")
