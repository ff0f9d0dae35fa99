"""Train a small CNN on procedural shapes with FeatureMapCallback attached, then open TensorBoard.

    python examples/demo.py [--epochs 12] [--logdir runs/demo] [--lr 0.003]

Runs on the CPU in about two minutes; no download. The default learning rate trains a healthy network;
``--lr 0.1`` is too large for Adam here and kills ReLU channels, which the callback reports as dead filters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import MEAN, STD, ShapesCNN, ShapesDataModule  # noqa: E402

from fm_callback import FeatureMapCallback  # noqa: E402
from fm_callback.cli import command_line  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--logdir", default="runs/demo")
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate; 0.1 makes ReLUs die")
    args = parser.parse_args(argv)

    pl.seed_everything(0, workers=True)
    callback = FeatureMapCallback(mean=MEAN, std=STD, examples=4)  # and the 4 top examples of each shown channel
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        logger=TensorBoardLogger(args.logdir, name="shapes"),
        callbacks=[callback],
        log_every_n_steps=10,
    )
    trainer.fit(ShapesCNN(lr=args.lr), datamodule=ShapesDataModule(train_size=args.train_size))
    logdir = Path(trainer.logger.log_dir)
    print(f"\nFeature maps and dead filters written to {logdir}")
    print(f"Look at them:  {command_line('fm-callback', 'view', args.logdir)}")
    tensorboard = command_line("tensorboard", "--logdir", args.logdir, "--samples_per_plugin", "images=1000")
    print(f"   or:         {tensorboard}")
    print(f"Dead filters:  {command_line('fm-callback', 'report', args.logdir)}")


if __name__ == "__main__":
    main()
