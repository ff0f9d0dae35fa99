"""``fm-callback snapshot --examples DIR``: the top examples of a trained model's shown channels over a folder.

The folder's images (sorted by name) are the pool, loaded and scanned in chunks (see :mod:`.top_examples`), so a
large folder never sits in memory whole; written to ``--out`` as ``feature_examples/<layer>.png`` and
``examples.json`` (the record the callback logs, with the image files in pool order).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .example_pictures import draw_examples
from .models import SnapshotError
from .names import FEATURE_EXAMPLES, layer_tag
from .probe import FeatureMapProbe
from .results import ProbeResult
from .top_examples import ExampleScanner, examples_record

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 16  # images per forward


def folder_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, by name; SnapshotError when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise SnapshotError(f"--examples: {str(root)!r} is not a folder; pass a folder of images")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SnapshotError(f"--examples: no image file ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(root)!r}")
    return paths


def write_examples(
    probe: FeatureMapProbe,
    result: ProbeResult,
    folder: str | Path,
    load: Callable[[Sequence[Path]], torch.Tensor],
    k: int,
    out: Path,
) -> dict[str, Any]:
    """Scan the folder's images for the top ``k`` of each channel the probe's grids show; write the pictures and
    ``examples.json`` under ``out``; returns the record. ``load(paths)`` gives the model inputs of image files."""
    paths = folder_images(folder)
    modules = dict(probe.layers)
    channels = {name: report.channels for name, report in result.items() if report.channels and name in modules}
    scanner = ExampleScanner(probe.model, {name: modules[name] for name in channels}, channels, k, probe.forward_fn)
    found = scanner.scan((start, load(paths[start : start + CHUNK])) for start in range(0, len(paths), CHUNK))
    found = {name: examples.to("cpu") for name, examples in found.items()}
    pictures, marks = draw_examples(found, result, lambda i: load(paths[i : i + 1]), probe.mean, probe.std)
    for name, picture in pictures.items():
        from torchvision.io import write_png

        path = out / f"{layer_tag(FEATURE_EXAMPLES, name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(picture, str(path))
    record = {**examples_record(found, marks, len(paths), k), "images": [str(p) for p in paths]}
    (out / "examples.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
