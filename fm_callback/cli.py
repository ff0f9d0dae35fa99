"""The ``fm-callback`` command: ``report``, ``snapshot`` and ``view``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm-callback",
        description="Feature maps and dead filters of CNNs, from TensorBoard logs or images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    report = sub.add_parser(
        "report",
        help="dead filters over time, read back from a run's event files",
        description="Per run and layer: the dead fraction at each probe event, the persistently dead channels "
        "(with the epoch they died) and revived channels, and the layers that have settled (their representation "
        "of the probe batch no longer changes). Exit status 1 when LOGDIR holds no fm_callback data.",
    )
    report.add_argument("logdir", help="a TensorBoard log directory (searched recursively for runs)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.add_argument(
        "--plot",
        metavar="PNG",
        help="also save the dead-filter timeline picture here, and the layer change and similarity pictures beside it",
    )
    report.add_argument(
        "--settled-below",
        type=float,
        default=0.01,
        metavar="X",
        help="a layer has settled when its layer_change (1 - CKA) stayed below X (default 0.01) ...",
    )
    report.add_argument(
        "--settled-events", type=int, default=3, metavar="K", help="... at each of the last K events (default 3)"
    )
    add_snapshot_parser(sub)
    add_view_parser(sub)
    return parser


def add_snapshot_parser(sub: argparse._SubParsersAction) -> None:
    snap = sub.add_parser(
        "snapshot",
        help="feature maps of a model on image files, written as PNGs and JSON (no training)",
        description="Run image files through a torchvision model or your own and write, to --out: input.png, a "
        "feature-map grid and an overlay per layer (feature_maps/, feature_maps_overlay/) and stats.json.",
    )
    snap.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...); grids show the first 16"
    )
    snap.add_argument(
        "--model",
        required=True,
        help="a torchvision model name (resnet18, vgg16, mobilenet_v3_small, ...) or your own nn.Module class as "
        "package.module:Class, e.g. examples.shapes:ShapesCNN, imported with the current folder on sys.path (as "
        "python -m does); it is built with no arguments unless --weights is a Lightning checkpoint of a "
        "LightningModule (then Class.load_from_checkpoint, with the saved hyper_parameters)",
    )
    snap.add_argument(
        "--weights",
        help="DEFAULT (or another torchvision weights name; downloads once, needs internet), a local state_dict "
        "file (.pth) or a Lightning checkpoint (.ckpt); left out: random initial weights",
    )
    snap.add_argument("--out", required=True, help="output folder (created)")
    snap.add_argument("--layers", nargs="+", help="module names or glob patterns (default: every conv layer)")
    snap.add_argument("--max-channels", type=int, default=16, help="channels per grid (default 16, most varied)")
    snap.add_argument("--num-classes", type=int, help="classes of the model's head (default: read from the file)")
    snap.add_argument("--size", type=int, help="input size in px (default: the weights' own, else 224)")
    snap.add_argument("--mean", type=float, nargs=3, help="input normalisation mean (default: ImageNet's)")
    snap.add_argument("--std", type=float, nargs=3, help="input normalisation std (default: ImageNet's)")
    snap.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    snap.add_argument(
        "--examples",
        metavar="DIR",
        help="also find, in this folder of images, the 4 that activate each shown channel most, and write them as "
        "crops around the peak (feature_examples/<layer>.png) and examples.json",
    )


def add_view_parser(sub: argparse._SubParsersAction) -> None:
    view = sub.add_parser(
        "view",
        help="start TensorBoard on 127.0.0.1 with every logged step on the Images slider",
        description="Start TensorBoard on 127.0.0.1 over LOGDIR, keeping every logged step of each image tag "
        "(TensorBoard keeps only 10 by default), and print its address.",
    )
    view.add_argument("logdir", help="a TensorBoard log directory (searched recursively), e.g. lightning_logs")
    view.add_argument("--port", type=int, help="port (default: 6006, or the next free one)")
    view.add_argument(
        "--samples", type=int, default=100_000, help="steps kept per image/text tag (default 100000: every step)"
    )


def command_line(script: str, *args: str) -> str:
    """``script args`` as a shell line that runs in this Python's environment, activated or not: the script beside
    this Python (``.venv/bin/fm-callback``; relative when under the current folder), else ``python -m``."""
    path = Path(sys.executable).parent / script
    if path.is_file():
        program = [os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)]
    else:
        program = [sys.executable, "-m", "fm_callback" if script == "fm-callback" else script]
    return shlex.join([*program, *args])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        from .report import report_command

        return report_command(args)
    if args.command == "snapshot":
        from .snapshot import snapshot_command

        return snapshot_command(args)
    if args.command == "view":
        from .view import view_command

        return view_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
