"""The picture path alone: from a layer's output to the PNG bytes the event file stores, against an older tree.

    python benchmarks/bench_pictures.py --against 923a278                 # ResNet-18, batch 8 at 224 px
    python benchmarks/bench_pictures.py --against 923a278 --model demo    # the demo's CNN on 16 of its images
    python benchmarks/bench_pictures.py --quick                           # a tiny CNN, this tree: a few seconds

The default probe runs once (this tree) to choose the picture layers, their channels and their dead/dying marks;
hooks keep those layers' outputs. Then, per picture layer, each tree does what its probe and writer do with such an
output, timed by stage and summed over the layers:

- grid: the hook's part (``render.render_feature_grid``: normalise, colour, tile);
- header: the host's part (the bands under their channel numbers, the marks, and the RGB ``LayerReport.grid``);
- encode: the PNG bytes the event file stores (``png.py``);

and the overlays' encoding (quantized). The trees run interleaved (the order alternates each repeat); medians of
wall-clock times. Also the bytes of each tree's PNGs, checked to decode to the same pixels.
``--against REV`` imports the package at a git revision beside this one (as ``bench_event.py`` does).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "examples")]
from bench_event import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    build,
    hooked_forward,
    machine,
    markdown,
    package_at,
)

from fm_callback import FeatureMapProbe  # noqa: E402
from fm_callback.marks import column_marks  # noqa: E402

STAGES = ("grid", "header", "encode")


class Tree:
    """One package's picture path, whatever its age: before issue 22 the header made an RGB grid and the encoder
    found its colours again; from it on the grid stays palette indices to the encoder."""

    def __init__(self, package: str) -> None:
        self.name = package
        self.render = importlib.import_module(f"{package}.render")
        try:
            self.png = importlib.import_module(f"{package}.png")
        except ModuleNotFoundError:  # before the house issue: in tensorboard.py
            self.png = importlib.import_module(f"{package}.tensorboard")
        try:
            self.header = importlib.import_module(f"{package}.channel_header")
        except ModuleNotFoundError:
            self.header = None

    def grid(self, output: torch.Tensor, channels: list[int], rows: int, lut: torch.Tensor) -> Any:
        return self.render.render_feature_grid(output, torch.tensor(channels), rows, lut)

    def with_header(self, body: Any, channels: list[int], marks: tuple, rows: int, lut: torch.Tensor) -> Any:
        if self.header is None:
            return self.render.with_header(body, channels, marks, rows)
        picture = self.header.with_header(body, channels, lut, marks, rows)
        picture.rgb()  # LayerReport.grid, as the probe makes it
        return picture

    def encode(self, grid: Any) -> bytes:
        if self.header is None:
            return self.png.png(grid.numpy().transpose(1, 2, 0))
        return self.png.picture_png(grid)

    def encode_overlay(self, overlay: torch.Tensor) -> bytes:
        return self.png.png(overlay.numpy().transpose(1, 2, 0), quantize=True)


def demo_model() -> tuple[nn.Module, torch.Tensor, tuple, tuple]:
    """The demo's ShapesCNN (seeded, untrained) and the first 16 images of its val set."""
    from shapes import MEAN, STD, ShapesCNN, ShapesDataset

    torch.manual_seed(0)
    images = ShapesDataset(256, 64, seed=1)
    return ShapesCNN().eval(), torch.stack([images[i][0] for i in range(16)]), MEAN, STD


def layer_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """A copy of each named layer's output, taken in its hook (before an in-place activation changes it)."""
    modules = dict(model.named_modules())
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            kept.setdefault(name, output.detach().clone())

        return hook

    hooked_forward(model, x, [(modules[name], keep(name)) for name in names])
    return kept


def unfiltered(picture: Any) -> bytes:
    """A picture's palette PNG as Pillow writes it (no row filters, zlib level 6): what the filters save."""
    image = Image.fromarray(picture.indices.numpy(), "P")
    image.putpalette(picture.palette.numpy().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "demo":
        model, x, mean, std = demo_model()
    else:
        model, x = build(args.model, args.batch, args.size, torch.device("cpu"))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    probe = FeatureMapProbe(model, mean=mean, std=std)
    result = probe.run(x)
    shown = [name for name in result.names if result[name].grid is not None and result[name].layout == "channels_first"]
    outputs = layer_outputs(model, x, shown)
    rows = min(probe.max_samples, x.shape[0])
    layers = [
        (
            outputs[name],
            result[name].channels,
            column_marks(result[name].dead, result[name].dying, result[name].channels),
        )
        for name in shown
    ]
    overlays = [result[name].overlay for name in shown if result[name].overlay is not None]
    trees = [Tree("fm_callback")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            package_at(args.against, Path(tmp) / "then")
            trees.append(Tree("fm_callback_then"))
        files = {tree.name: ([], []) for tree in trees}
        plain = 0  # bytes of this tree's grids without the row filters
        for tree in trees:  # warm-up (header caches, fonts), the bytes, and the pixels compared
            for output, channels, marks in layers:
                grid = tree.with_header(tree.grid(output, channels, rows, probe.lut), channels, marks, rows, probe.lut)
                files[tree.name][0].append(tree.encode(grid))
                plain += len(unfiltered(grid)) if tree is trees[0] else 0
            files[tree.name][1].extend(tree.encode_overlay(overlay) for overlay in overlays)
        for (output, channels, marks), name in zip(layers, shown, strict=True):  # as the probe drew it
            body = trees[0].grid(output, channels, rows, probe.lut)
            drawn = trees[0].with_header(body, channels, marks, rows, probe.lut)
            assert torch.equal(drawn.rgb() if hasattr(drawn, "rgb") else drawn, result[name].grid), name
        for kind in (0, 1):
            for a, b in zip(files[trees[0].name][kind], files[trees[-1].name][kind], strict=True):
                assert np.array_equal(decoded(a), decoded(b)), "the trees' pictures differ"
        times: dict[str, dict[str, list[float]]] = {t.name: {s: [] for s in (*STAGES, "overlays")} for t in trees}
        for repeat in range(args.repeats):
            for tree in trees[repeat % 2 :] + trees[: repeat % 2]:
                spent = dict.fromkeys(STAGES, 0.0)
                for output, channels, marks in layers:
                    start = time.perf_counter()
                    body = tree.grid(output, channels, rows, probe.lut)
                    drawn = time.perf_counter()
                    grid = tree.with_header(body, channels, marks, rows, probe.lut)
                    headed = time.perf_counter()
                    tree.encode(grid)
                    spent["grid"] += drawn - start
                    spent["header"] += headed - drawn
                    spent["encode"] += time.perf_counter() - headed
                start = time.perf_counter()
                for overlay in overlays:
                    tree.encode_overlay(overlay)
                spent["overlays"] = time.perf_counter() - start
                for stage, seconds in spent.items():
                    times[tree.name][stage].append(seconds)
    names = {"fm_callback": "this tree", "fm_callback_then": f"before ({args.against})"}
    return {
        "model": args.model,
        "layers": shown,
        "marked_columns": sum(mark is not None for _, _, marks in layers for mark in marks),
        "repeats": args.repeats,
        "grid_bytes_unfiltered": plain,
        "trees": {
            names[t.name]: {
                "seconds": times[t.name],
                "median_ms": {stage: 1e3 * statistics.median(s) for stage, s in times[t.name].items()},
                "render_to_bytes_ms": 1e3
                * statistics.median(map(sum, zip(*(times[t.name][s] for s in STAGES), strict=True))),
                "grid_bytes": sum(len(f) for f in files[t.name][0]),
                "overlay_bytes": sum(len(f) for f in files[t.name][1]),
            }
            for t in trees
        },
    }


def table(report: dict[str, Any]) -> str:
    columns = ["package", "grid (ms)", "header + RGB (ms)", "encode (ms)", "render to bytes (ms)", "grid bytes"]
    columns += ["overlays: encode (ms)", "overlay bytes"]
    rows = []
    for name, tree in report["trees"].items():
        ms = tree["median_ms"]
        rows.append(
            [name, *(f"{ms[s]:.1f}" for s in STAGES), f"{tree['render_to_bytes_ms']:.1f}", str(tree["grid_bytes"])]
            + [f"{ms['overlays']:.1f}", str(tree["overlay_bytes"])]
        )
    return markdown(columns, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="a torchvision model name, 'demo' or 'tiny'")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--repeats", type=int, default=9, help="timed runs of each tree (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's, the cores)")
    p.add_argument("--against", metavar="REV", help="also time the package at this git revision (before/after)")
    p.add_argument("--quick", action="store_true", help="tiny CNN, batch 2, 32 px, 3 repeats: a few seconds")
    p.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.size, args.repeats = "tiny", 2, 32, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **bench(args)}
    print(f"{args.model}: {len(report['layers'])} picture layers, {report['marked_columns']} marked columns")
    print(table(report))
    print(f"this tree's grids without the PNG row filters (Pillow's P mode): {report['grid_bytes_unfiltered']} bytes")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
