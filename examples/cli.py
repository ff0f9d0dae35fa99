"""LightningCLI entry point for the shapes demo, with FeatureMapCallback configured from YAML.

    python examples/cli.py fit --config configs/demo.yaml
    python examples/cli.py fit --config configs/demo.yaml --trainer.max_epochs 2 --data.train_size 256

Then: ``tensorboard --logdir runs/cli --samples_per_plugin images=1000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import ShapesCNN, ShapesDataModule  # noqa: E402


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: the command line) and run the chosen subcommand (``run=False``: only build)."""
    # subclass mode: configs/resnet18.yaml swaps in a torchvision model (examples/torchvision_model.py)
    return LightningCLI(ShapesCNN, ShapesDataModule, subclass_mode_model=True, args=args, run=run)


if __name__ == "__main__":
    main()
