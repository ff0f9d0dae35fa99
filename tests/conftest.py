"""Shared test helpers: a tiny real LightningModule, tiny data, a quiet Trainer, and event files read back.

Test modules import these directly (``from conftest import TinyCNN, read_events``): pytest puts ``tests/``
on ``sys.path``. Everything is small so a fit takes well under a second on one CPU core.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# TensorBoard keeps everything when the size guidance is 0 (its default drops images past 4 per tag).
SIZE_GUIDANCE = {"images": 0, "scalars": 0, "histograms": 0, "tensors": 0}
IMAGE_SIZE = 16
NUM_SAMPLES = 32
BATCH_SIZE = 8
BATCHES_PER_EPOCH = NUM_SAMPLES // BATCH_SIZE


# ---- models and data ---------------------------------------------------------------------------------------


class TinyCNN(pl.LightningModule):
    """conv1 -> bn1 -> ReLU(inplace) -> conv2 -> ReLU -> pool -> linear; counts the steps and epochs it saw."""

    def __init__(self, width: int = 4, num_classes: int = 2, lr: float = 0.05) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
        self.lr = lr
        self.train_steps = 0
        self.train_epochs_started = 0
        self.val_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.train_steps += 1
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def on_train_epoch_start(self) -> None:
        self.train_epochs_started += 1

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_steps += 1
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def tiny_dataset(num_samples: int = NUM_SAMPLES, image_size: int = IMAGE_SIZE, seed: int = 0) -> TensorDataset:
    """Random RGB images and binary labels, the same on every run."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 3, image_size, image_size, generator=g)
    y = torch.randint(0, 2, (num_samples,), generator=g)
    return TensorDataset(x, y)


def tiny_loaders(num_samples: int = NUM_SAMPLES, batch_size: int = BATCH_SIZE) -> tuple[DataLoader, DataLoader]:
    """(train, val) loaders over different random images; the train loader shuffles."""
    train = DataLoader(tiny_dataset(num_samples, seed=0), batch_size=batch_size, shuffle=True)
    val = DataLoader(tiny_dataset(BATCH_SIZE, seed=1), batch_size=batch_size)
    return train, val


def make_trainer(
    tmp_path: Path, callbacks: list[pl.Callback], logger: Any = "tensorboard", **kwargs: Any
) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``tmp_path``; ``logger="tensorboard"`` gives a TensorBoardLogger there."""
    if logger == "tensorboard":
        logger = TensorBoardLogger(tmp_path, name="tb")
    options: dict[str, Any] = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


# ---- event files ------------------------------------------------------------------------------------------


@dataclass
class Events:
    """Every image, scalar and histogram event found in the event files under a directory, by tag."""

    files: list[Path]
    images: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    scalars: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    histograms: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def steps(self, kind: str, tag: str) -> list[int]:
        """Steps of ``tag``'s events of ``kind`` ("images", "scalars" or "histograms"), in order."""
        return sorted(event.step for event in getattr(self, kind).get(tag, []))

    def tags(self, kind: str, prefix: str = "") -> list[str]:
        return sorted(tag for tag in getattr(self, kind) if tag.startswith(prefix))


def event_files(root: Path | str) -> list[Path]:
    """Event files under ``root`` in the order they were written: per folder, by the time then the writer counter
    in the name (``events.out.tfevents.<time>.<host>.<pid>.<counter>``; a plain sort puts ``.10`` before ``.9``)."""

    def written(path: Path) -> tuple:
        time, counter = path.name.split(".")[3], path.name.rsplit(".", 1)[-1]
        number = [int(part) if part.isdigit() else -1 for part in (time, counter)]
        return str(path.parent), *number, path.name

    return sorted(Path(root).rglob("events.out.tfevents.*"), key=written)


def read_events(root: Path | str) -> Events:
    """Read every event file under ``root`` (recursively) with TensorBoard's own loader, keeping all events."""
    events = Events(files=event_files(root))
    for path in events.files:
        acc = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
        acc.Reload()
        tags = acc.Tags()
        for tag in tags["images"]:
            events.images[tag].extend(acc.Images(tag))
        for tag in tags["scalars"]:
            events.scalars[tag].extend(acc.Scalars(tag))
        for tag in tags["histograms"]:
            events.histograms[tag].extend(acc.Histograms(tag))
    return events


def all_forward_hooks(model: nn.Module) -> dict[str, int]:
    """Module name -> number of forward (pre-)hooks on it, for modules that have any."""
    counts = {}
    for name, module in model.named_modules():
        n = len(module._forward_hooks) + len(module._forward_pre_hooks)
        if n:
            counts[name] = n
    return counts


def module_modes(model: nn.Module) -> dict[str, bool]:
    """Module name -> ``training`` flag, for every module (the root is ``""``)."""
    return {name: module.training for name, module in model.named_modules()}


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    return tiny_loaders()
