"""A torchvision model (ResNet-18 by default, untrained) as the classifier of the shapes demo.

Used by ``configs/resnet18.yaml`` through ``examples/cli.py``; it keeps the demo's training and
validation steps and swaps the small CNN for ``torchvision.models.get_model(name, num_classes=...)``,
so layer names are torchvision's under ``net.`` (``net.conv1``, ``net.layer1.0.conv1``, ...).
"""

from __future__ import annotations

import torch
import torchvision
from shapes import CLASSES, ShapesCNN


class TorchvisionClassifier(ShapesCNN):
    """``torchvision.models.get_model(name)`` with a ``num_classes`` head, trained with ShapesCNN's steps."""

    def __init__(self, name: str = "resnet18", num_classes: int = len(CLASSES), lr: float = 1e-3) -> None:
        super().__init__(lr=lr, num_classes=num_classes)
        del self.features, self.head  # the small CNN of the parent class is not used
        self.save_hyperparameters()
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
