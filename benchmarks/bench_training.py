"""Training overhead of FeatureMapCallback on the demo: the same fit with and without it.

    python benchmarks/bench_training.py                     # 3 epochs of the shapes demo, 5 repeats of each
    python benchmarks/bench_training.py --quick             # a few seconds: every column, no meaningful figure

The fit is the demo's (examples/shapes.py: ShapesCNN on ShapesDataModule, 64 px, batch 64, validation each
epoch, a TensorBoardLogger in both runs) with the callback's defaults as the demo uses them: an event at the
end of every epoch plus the step-0 baseline. The two kinds of fit alternate (the order flips each repeat);
the figure is the median of each, and the median of the per-pair ratios. A small checker callback also
counts the forward hooks on the model before every training step: there must be none between events.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from results_json import save_results  # noqa: E402
from shapes import MEAN, STD, ShapesCNN, ShapesDataModule  # noqa: E402

from fm_callback import FeatureMapCallback  # noqa: E402

COLUMNS = [
    "fit",
    "epochs",
    "events",
    "without callback (s)",
    "with callback (s)",
    "overhead (medians)",
    "overhead (paired median)",
    "hooks between events",
]


class HookCounter(pl.Callback):
    """Records the most forward hooks seen on the model at the start of any training step."""

    def __init__(self) -> None:
        self.most = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pl_module.modules())
        self.most = max(self.most, hooks)


def fit(args: argparse.Namespace, with_callback: bool, logdir: str) -> tuple[float, int, int]:
    """One fit from the same seed; (seconds, events logged, most hooks seen at a training step)."""
    pl.seed_everything(0, workers=True, verbose=False)
    counter = HookCounter()
    callbacks: list[pl.Callback] = [counter]
    fm = FeatureMapCallback(mean=MEAN, std=STD) if with_callback else None
    if fm is not None:
        callbacks.append(fm)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=TensorBoardLogger(logdir, name="with" if with_callback else "without"),
        callbacks=callbacks,
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = ShapesCNN()
    data = ShapesDataModule(train_size=args.train_size, val_size=args.val_size)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    events = len(fm.tracker.history) if fm is not None else 0
    return seconds, events, counter.most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=2000, help="training samples (the demo's 2000)")
    p.add_argument("--val-size", type=int, default=256, help="validation samples (the demo's 256)")
    p.add_argument("--repeats", type=int, default=5, help="fits of each kind")
    p.add_argument("--threads", type=int, default=cores, help=f"torch.set_num_threads (default: {cores}, the cores)")
    p.add_argument("--accelerator", default="auto", help="Lightning's accelerator (auto: GPU when there is one)")
    p.add_argument("--quick", action="store_true", help="1 epoch of 128 samples, 1 repeat: a few seconds")
    p.add_argument("--json", type=Path, default=None, help="where to write the results (default benchmarks/results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size, args.val_size, args.repeats = 1, 128, 64, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice about workers and logging intervals, in every fit
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    times: dict[str, list[float]] = {"without": [], "with": []}
    events, hooks = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        fit(args, True, tmp)  # warm-up: imports, first-call costs, page cache; not timed
        for r in range(args.repeats):
            for kind in ("without", "with") if r % 2 == 0 else ("with", "without"):
                seconds, n_events, most = fit(args, kind == "with", tmp)
                times[kind].append(seconds)
                hooks = max(hooks, most)
                events = max(events, n_events)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(w / wo for w, wo in zip(times["with"], times["without"], strict=True))
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "torch_threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "repeats": args.repeats,
        "events_per_fit": events,
        "seconds": times,
        "median_s": med,
        "overhead_medians": med["with"] / med["without"] - 1,
        "overhead_paired": paired - 1,
        "hooks_between_events": hooks,
    }
    row = [
        f"shapes demo, {args.train_size} samples",
        str(args.epochs),
        str(events),
        f"{med['without']:.2f}",
        f"{med['with']:.2f}",
        f"{result['overhead_medians'] * 100:+.1f} %",
        f"{result['overhead_paired'] * 100:+.1f} %",
        str(hooks),
    ]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    print("| " + " | ".join(row) + " |")
    save_results(result, args.json, "bench_training", args.quick)
    return result


if __name__ == "__main__":
    main()
