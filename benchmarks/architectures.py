"""What the default FeatureMapCallback shows on the networks people train: a short fit (random 64 px images, 2 epochs
of 4 steps, events at steps 0, 4, 8) with default arguments on torchvision resnet18 and mobilenet_v2, timm
efficientnet_b0, convnext_atto and vit_tiny_patch16_224 (random init: no download), then ``fm-callback report``.

    PYTHONPATH=. .venv/bin/python benchmarks/architectures.py [--models resnet18 ...] [--out benchmarks/results]

Per model: the picture layers chosen (and their maps), the layouts read, which dead rule applied to how many layers
and channels, the dead share at the last event, and the report's length in lines. Writes ``architectures.json`` and
prints the markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback.report import load_runs, print_summary, summarize


def _models() -> dict:
    import timm
    import torchvision.models as tvm

    return {
        "resnet18": lambda: tvm.resnet18(weights=None, num_classes=10),
        "mobilenet_v2": lambda: tvm.mobilenet_v2(weights=None, num_classes=10),
        "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=10),
        "convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10),
        "vit_tiny_patch16_224": lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64
        ),
    }


class Classifier(pl.LightningModule):
    """``net`` with a cross-entropy training step by SGD; ``net.<name>`` are the layer keys."""

    def __init__(self, net: torch.nn.Module, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.net, self.lr, self.momentum = net, lr, momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def measure(name: str, make, root: Path) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 64, 64, generator=generator), torch.randint(0, 10, (32,)))
    callback = FeatureMapCallback()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name=name),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(make()), DataLoader(data, batch_size=8))
    seconds = time.perf_counter() - start
    module = trainer.lightning_module
    probe = FeatureMapProbe(module, **callback.probe_options)  # the callback's probe, again on the trained model
    result = probe.run(callback.model_input)  # the last event's result (no step since)
    rules: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    for report in result.values():
        rules[report.rule] += 1
        channels[report.rule] += report.dead.numel()
    out = io.StringIO()
    console = Console(file=out, width=120, highlight=False)
    for run in load_runs(root / name):
        print_summary(console, summarize(run))
    return {
        "model": name,
        "layers": len(result),
        "layouts": dict(Counter(r.layout.split(" (")[0] for r in result.values())),
        "pictures": {n: list(result[n].shape[1:]) for n in probe.image_names},
        "rules": {rule: {"layers": rules[rule], "channels": channels[rule]} for rule in rules},
        "dead_fraction": result.dead_fraction,
        "report_lines": len(out.getvalue().splitlines()),
        "fit_seconds": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | layers (layouts) | picture layers: C x h x w | dead rule: layers / channels | dead | report lines |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        layouts = ", ".join(f"{n} {k}" for k, n in row["layouts"].items())
        pictures = "<br>".join(f"`{n}` {'x'.join(map(str, s))}" for n, s in row["pictures"].items())
        rules = "<br>".join(f"{r}: {v['layers']} / {v['channels']}" for r, v in row["rules"].items())
        lines.append(
            f"| {row['model']} | {row['layers']} ({layouts}) | {pictures} | {rules} | "
            f"{100 * row['dead_fraction']:.1f} % | {row['report_lines']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    models = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or list(models):
            with contextlib.redirect_stderr(io.StringIO()):
                rows.append(measure(name, models[name], Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "architectures.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
