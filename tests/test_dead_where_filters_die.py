"""Dead where filters die: with default arguments, channels that the activation after conv -> BatchNorm silences
are found by layer and channel, whether the ReLU is a module (in-place or not, reused as in ResNet) or a function."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_trainer, read_events
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback.probe import ProbeResult

SIZE = 32


def images(n: int = 8, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """Normalised images with structure (smooth blobs), as a data pipeline gives them."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear")
    return (x - x.mean()) / x.std()


def calibrate(model: nn.Module, size: int = SIZE, batches: int = 8) -> nn.Module:
    """BatchNorm running statistics as after training on this data: the plain average over train-mode batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average, not an exponential one that still remembers the 0/1 start
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model(images(16, seed=100 + seed, size=size))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


class ConvBNReLU(nn.Module):
    """conv -> BatchNorm -> nn.ReLU, three times; ``inplace`` as in most model zoos."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        layers, width = [], 3
        for out in (16, 24, 32):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=inplace)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class ConvBNFunctional(nn.Module):
    """conv -> BatchNorm -> F.relu, then x.relu(), then torch.relu after max pooling: no ReLU module at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.conv3, self.bn3 = nn.Conv2d(24, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x)).relu()
        x = torch.relu(F.max_pool2d(self.bn3(self.conv3(x)), 2))
        return self.head(x.mean(dim=(2, 3)))


class PlainTorchRelu(nn.Module):
    """conv -> torch.relu, no BatchNorm: the conv's own bias decides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


RESNET_SIZE = 64  # layer3 at 4x4; at 32 px its 2x2 and layer4's 1x1 maps are too few values for a verdict


# (model factory, {conv layer: [(BatchNorm or conv whose bias is driven down, channel), ...]})
PLANTS = {
    "conv-bn-relu": (ConvBNReLU, {"features.0": ("features.1", [2, 9]), "features.6": ("features.7", [0, 31])}),
    "conv-bn-relu-not-inplace": (lambda: ConvBNReLU(inplace=False), {"features.3": ("features.4", [5])}),
    "conv-bn-functional": (ConvBNFunctional, {"conv1": ("bn1", [4]), "conv2": ("bn2", [7, 8]), "conv3": ("bn3", [1])}),
    "plain-torch-relu": (PlainTorchRelu, {"conv1": ("conv1", [3, 11]), "conv2": ("conv2", [15])}),
    "resnet18": (
        resnet18,
        {"conv1": ("bn1", [5]), "layer1.0.conv1": ("layer1.0.bn1", [3, 40]), "layer3.1.conv1": ("layer3.1.bn1", [77])},
    ),
}


def plant(model: nn.Module, plan: dict[str, tuple[str, list[int]]], bias: float = -1e3) -> set[tuple[str, int]]:
    """Drive the listed channels' bias strongly negative before their ReLU: the dying ReLU users get."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for target, channels in plan.values():
            modules[target].bias[channels] = bias
    return {(layer, c) for layer, (_, channels) in plan.items() for c in channels}


def found(result: ProbeResult, attribute: str = "dead") -> set[tuple[str, int]]:
    return {(name, c) for name, rep in result.items() for c in getattr(rep, attribute).nonzero().flatten().tolist()}


@pytest.mark.parametrize("case", list(PLANTS))
def test_default_probe_finds_exactly_the_planted_dying_relus(case: str) -> None:
    factory, plan = PLANTS[case]
    size = RESNET_SIZE if case == "resnet18" else SIZE
    torch.manual_seed(0)
    model = calibrate(factory(), size)
    healthy = FeatureMapProbe(model).run(images(size=size))
    assert found(healthy) == set(), f"a healthy {case} reports dead channels"
    planted = plant(model, plan)
    result = FeatureMapProbe(model).run(images(size=size))
    hits = found(result)
    precision = len(hits & planted) / len(hits) if hits else 0.0
    recall = len(hits & planted) / len(planted)
    assert (precision, recall) == (1.0, 1.0), f"found {sorted(hits)}, planted {sorted(planted)}"
    # the conv output itself still varies: only the activation after it shows the death
    assert not any(bool(result[layer].stats.dead.any()) for layer in plan)
    assert result.dead_fraction > 0 and result.dying_fraction >= result.dead_fraction


def test_weak_channel_that_still_fires_somewhere_is_dying_not_dead() -> None:
    torch.manual_seed(0)
    model = calibrate(ConvBNReLU())
    x = images()
    bn = model.features[1]
    # Put channel 6 so low that only its highest few positions stay above zero.
    with torch.no_grad():
        pre = bn(model.features[0](x))[:, 6].flatten()
        bn.bias[6] -= torch.quantile(pre, 0.997)
    result = FeatureMapProbe(model).run(x)
    rep = result["features.0"]
    assert 0 < float(rep.firing[6]) <= 0.01, rep.firing[6]
    assert not bool(rep.dead[6]) and bool(rep.dying[6])
    assert found(result) == set()


def test_uncalibrated_batchnorm_is_not_judged() -> None:
    """At a fresh model's baseline, eval BatchNorm with running stats 0/1 normalises nothing: no verdict there."""
    torch.manual_seed(0)
    model = resnet18().eval()
    result = FeatureMapProbe(model).run(images())
    assert found(result) == set()
    assert all(result[name].silenced is None for name in ("conv1", "layer1.0.conv1", "layer4.1.conv1"))


def test_residual_add_and_concat_are_not_attributed() -> None:
    """Where a channel mixes with a skip path or other channels, no single filter is blamed."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            summed = torch.relu(a + b)
            a += 0  # an in-place op on the labelled tensor: it may now hold anything
            return torch.cat([summed, torch.relu(torch.cat([a, b], dim=1))], dim=1)

    model = Mixed()
    with torch.no_grad():
        model.a.bias[2] = -1e3
    result = FeatureMapProbe(model).run(images())
    assert result["a"].silenced is None and result["b"].silenced is None
    assert found(result) == set()


def test_no_hook_or_mode_left_after_the_probe() -> None:
    model = calibrate(ConvBNFunctional())
    FeatureMapProbe(model).run(images())
    assert not torch.overrides._get_current_function_mode_stack()
    assert all(not m._forward_hooks for m in model.modules())


# ---- with a real Trainer and TensorBoard ---------------------------------------------------------------------


class DyingNet(pl.LightningModule):
    """conv -> BatchNorm -> F.relu twice; channels 1 and 6 of conv1 die (BatchNorm bias -1e3, no gradient back)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.bn1.bias[[1, 6]] = -1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_callback_reports_the_dying_relus_in_scalars_table_and_warning(tmp_path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(images(32, size=16), torch.randint(0, 2, (32,)))
    callback = FeatureMapCallback(dead_patience=2)
    trainer = make_trainer(tmp_path, [callback], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DyingNet(), DataLoader(data, batch_size=8))
    events = read_events(tmp_path)
    dead = {e.step: e.value for e in events.scalars["dead_filters/conv1"]}
    assert dead[0] == 0.0  # the baseline: BatchNorm not calibrated yet, no verdict
    assert [dead[s] for s in (4, 8, 12)] == [pytest.approx(2 / 8)] * 3
    assert {e.value for e in events.scalars["dead_filters/conv2"]} == {0.0}
    assert events.scalars["dead_filters/all"][-1].value == pytest.approx(2 / 16)
    assert events.scalars["dying_filters/conv1"][-1].value >= 2 / 8
    messages = [str(w.message) for w in caught if "persistently dead" in str(w.message)]
    assert len(messages) == 1 and "layer 'conv1': channels 1, 6 dead since epoch 0" in messages[0], messages
    assert callback.tracker.persistent() == {"conv1": [1, 6]}
