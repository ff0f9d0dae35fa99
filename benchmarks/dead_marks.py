"""What a grid tile should show, measured: the layer's own output (with the dead/dying mark) or what its activation
lets through. On the probe the callback uses (the first 16 validation images of the demo's shapes), per default
picture layer:

- ``shown``: channels in the grid (all of the layer's); ``dead``/``dying``: of them, marked dead / dying (the verdict of
  ``dead_filters/<layer>`` on all 16 samples);
- ``dead_lively``: dead channels whose own output still varies on the 4 samples shown (a lively tile: without the
  mark it looks alive);
- ``quiet_alive``: live channels that the activation silences on the 4 shown samples (a flat tile after the ReLU,
  the same as a dead one's) but not on all 16: after the activation they could not be told from dead ones.

    PYTHONPATH=. .venv/bin/python benchmarks/dead_marks.py --demo-checkpoint runs/demo/lr0.1/.../last.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision.models as tvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from shapes import ShapesCNN, ShapesDataset  # noqa: E402

from fm_callback import FeatureMapProbe  # noqa: E402

PROBE_SIZE, SHOWN_SAMPLES = 16, 4


def measure(model: torch.nn.Module, x: torch.Tensor) -> dict:
    probe = FeatureMapProbe(model, max_channels=4096, similarity=False, overlay=False)  # every channel in the grid
    verdict = probe.run(x)
    shown = FeatureMapProbe(model, similarity=False, overlay=False, image_layers=[]).run(x[:SHOWN_SAMPLES])
    rows = {}
    for name in probe.image_names:
        report, few = verdict[name], shown[name]
        channels = report.channels
        dead, dying = report.dead[channels], report.dying[channels] & ~report.dead[channels]
        lively = ~few.stats.dead[channels]
        silenced_here = few.silenced[channels] if few.silenced is not None else torch.zeros(len(channels), dtype=bool)
        rows[name] = {
            "shown": len(channels),
            "dead": int(dead.sum()),
            "dying": int(dying.sum()),
            "dead_lively": int((dead & lively).sum()),
            "quiet_alive": int((silenced_here & ~report.dead[channels]).sum()),
            "rule": report.rule,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-checkpoint", required=True, help="a checkpoint of examples/demo.py --lr 0.1")
    args = parser.parse_args()
    x = torch.stack([ShapesDataset(256, 64, seed=1)[i][0] for i in range(PROBE_SIZE)])
    demo = ShapesCNN.load_from_checkpoint(args.demo_checkpoint, map_location="cpu")
    torch.manual_seed(0)
    resnet = tvm.resnet18(weights=None, num_classes=4)
    resnet.train()
    with torch.no_grad():  # calibrated BatchNorms: a few train-mode forwards of the shapes
        for i in range(4):
            resnet(torch.stack([ShapesDataset(64, 64, seed=2 + i)[j][0] for j in range(64)]))
    out = {"demo lr 0.1": measure(demo, x), "resnet18 (random init, calibrated)": measure(resnet, x)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
