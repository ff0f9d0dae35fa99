"""Procedural images made on the fly (no download): shapes and textures on noisy backgrounds.

Four classes: disc, square, triangle, stripes. Each sample is drawn from its own seeded generator,
so the dataset is the same on every machine and every run.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

CLASSES = ("disc", "square", "triangle", "stripes")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class ShapesDataset(Dataset):
    """``size`` RGB images of ``image_size`` px, normalised with MEAN/STD, and their class index."""

    def __init__(self, size: int = 2000, image_size: int = 64, seed: int = 0) -> None:
        self.size, self.image_size, self.seed = size, image_size, seed
        grid = torch.linspace(-1, 1, image_size)
        self.yy, self.xx = torch.meshgrid(grid, grid, indexing="ij")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = index % len(CLASSES)
        cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.8
        radius = 0.3 + 0.35 * torch.rand((), generator=g)
        xx, yy = self.xx - cx, self.yy - cy
        if label == 0:
            mask = (xx**2 + yy**2) < radius**2
        elif label == 1:
            mask = (xx.abs() < radius * 0.85) & (yy.abs() < radius * 0.85)
        elif label == 2:
            mask = (yy < radius * 0.8) & (yy > -radius + 2 * xx.abs())
        else:
            angle = torch.rand((), generator=g) * torch.pi
            freq = 6 + 8 * torch.rand((), generator=g)
            mask = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) * torch.pi) > 0
        colour = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
        background = torch.rand(3, 1, 1, generator=g) * 0.3
        noise = 0.08 * torch.randn(3, self.image_size, self.image_size, generator=g)
        image = torch.where(mask, colour, background) + noise
        image = (image.clamp(0, 1) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return image, label


class ShapesDataModule(pl.LightningDataModule):
    """Train and validation splits of :class:`ShapesDataset` (different seeds, so no sample is shared)."""

    def __init__(self, train_size: int = 2000, val_size: int = 256, image_size: int = 64, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mean, self.std = MEAN, STD

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self.train_set = ShapesDataset(h.train_size, h.image_size, seed=0)
        self.val_set = ShapesDataset(h.val_size, h.image_size, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class ShapesCNN(pl.LightningModule):
    """A small VGG-like CNN: four conv blocks (conv, BatchNorm, in-place ReLU, pool) and a linear head."""

    def __init__(self, width: int = 16, lr: float = 3e-3, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.save_hyperparameters()
        chans = [3, width, width * 2, width * 4, width * 4]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(chans[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
