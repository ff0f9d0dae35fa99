"""Make the README's pictures the way a user gets them: train, start TensorBoard, screenshot it with Chromium.

    .venv/bin/python docs/make_screenshots.py [--keep runs/docs [--no-train]] [--quick] [--pages NAME.png ...]

Trains, on the CPU, into one logdir, ``examples/demo.py`` exactly as the README runs it (default
FeatureMapCallback), twice:

- ``shapes``: at the demo's learning rate, a healthy run;
- ``lr0.1/shapes``: with ``--lr 0.1``, a learning rate too high for it, where ReLU channels die;

then starts TensorBoard with the flags ``fm-callback view`` gives it (``TensorBoardServer`` of the tests'
``tests/tensorboard_page.py``) and saves with headless Chromium (Debian's ``chromium``) into docs/:

- ``images_tab.png``: Images, filtered to ``feature_maps/`` of the demo run, in a 1600 px window (the width
  the grids' channel numbers are sized for): the first row of cards, one per layer;
- ``images_tab_dead.png``: the same of the run at lr 0.1, its dead channels marked;
- ``overlays_tab.png``: Images, ``feature_maps_overlay/`` and ``probe/input`` of the demo run;
- ``examples_tab.png``: Images, ``feature_examples/`` of the demo run's three deeper picture layers, in a 1600 px
  window: each shown channel's top examples out of the val set, cropped around where the channel fires;
- ``scalars_tab.png``: Scalars, ``dead_filters/`` of the two runs side by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from tensorboard_page import TensorBoardServer, screenshot  # noqa: E402

from fm_callback.view import dashboard_url  # noqa: E402

DOCS = ROOT / "docs"
PAGES = [
    # (file, dashboard, window width, window height, settings the page keeps in its address)
    ("images_tab.png", "images", 1600, 700, {"tagFilter": "^feature_maps/", "regexInput": "^shapes/"}),
    # the same card, of the run at lr 0.1: dead channels marked red (the README's legend of the marks)
    ("images_tab_dead.png", "images", 1600, 700, {"tagFilter": "^feature_maps/", "regexInput": "^lr0\\.1/shapes/"}),
    (
        "overlays_tab.png",
        "images",
        1500,
        650,
        {"tagFilter": "^(feature_maps_overlay|probe)/", "regexInput": "^shapes/"},
    ),
    (
        "examples_tab.png",
        "images",
        1600,
        900,
        {"tagFilter": r"^feature_examples/features\.(4|8|12)$", "regexInput": "^shapes/"},
    ),
    (
        "scalars_tab.png",
        "scalars",
        1150,
        760,
        {
            "tagFilter": r"^dead_filters/(all|features\.(0|4|8|12))$",
            "regexInput": r"^(shapes|lr0\.1/shapes)/",
            "_smoothingWeight": 0,
        },
    ),
]


def run(command: list[str]) -> None:
    print("$", " ".join(str(c) for c in command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def train(logdir: Path, quick: bool) -> None:
    """The demo as users run it, with default callback arguments: at its learning rate and at 0.1."""
    epochs, size = ("2", "256") if quick else ("12", "3000")
    demo = [sys.executable, "examples/demo.py", "--epochs", epochs, "--train-size", size]
    run([*demo, "--logdir", str(logdir)])
    run([*demo, "--lr", "0.1", "--logdir", str(logdir / "lr0.1")])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="train into this folder and keep it (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny runs, to try the script (not for the README)")
    parser.add_argument("--no-train", action="store_true", help="only the screenshots, of the runs already in --keep")
    parser.add_argument("--scale", type=float, default=2.0, help="device scale factor: sharper text and grids")
    parser.add_argument("--pages", nargs="+", metavar="PNG", help="only these pictures (e.g. examples_tab.png)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fm_callback_docs_") as tmp:
        logdir = Path(args.keep or tmp).resolve()
        if not args.no_train:
            train(logdir, args.quick)
        elif not args.keep:
            parser.error("--no-train needs --keep, the folder of an earlier run of this script")
        with TensorBoardServer(logdir) as server:
            served = server.wait_until_loaded()
            print(f"TensorBoard on {server.url} serves runs {sorted(served)}")
            for name, dashboard, width, height, settings in PAGES:
                if args.pages and name not in args.pages:
                    continue
                url = dashboard_url(server.url, dashboard, **settings)
                flags = [f"--force-device-scale-factor={args.scale}"]
                out = screenshot(url, DOCS / name, width, height, extra_flags=flags)
                print(f"wrote {out.relative_to(ROOT)}  ({url})")


if __name__ == "__main__":
    main()
