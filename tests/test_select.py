"""Layer selection: names, glob patterns, types, mixed; forward order; ``name#k``; default picture layers; errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from conftest import make_trainer, tiny_loaders
from torch import nn

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback.select import select_layers


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class ResLike(nn.Module):
    """Names like a torchvision ResNet: stem, layer1.0.conv1, ..., fc."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.layer1 = nn.Sequential(Block(c), Block(c))
        self.layer2 = nn.Sequential(Block(c))
        self.fc = nn.Linear(c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean(dim=(2, 3)))


class Reordered(nn.Module):
    """Registers ``late`` before ``early`` but calls ``early`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 1)
        self.early = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


class SharedReLU(nn.Module):
    """One ReLU module called three times in a forward, as ResNet's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x)))) + self.relu(x[:, :1])


class DeepConvs(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 2, 2, 3, padding=1) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def x_img(n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def selected(model: nn.Module, layers) -> list[str]:
    return [name for name, _ in select_layers(model, layers)]


# ---- what gets selected -----------------------------------------------------------------------------------


def test_default_is_every_conv_layer():
    model = ResLike()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert selected(model, None) == convs
    assert "fc" not in selected(model, None) and "layer1.0.bn" not in selected(model, None)
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Conv1d(3, 3, 3))
    assert selected(conv1d, None) == ["0", "2"]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ("stem", ["stem"]),
        (["fc", "stem"], ["stem", "fc"]),  # named_modules order, whatever the order asked
        ("layer?.0.conv1", ["layer1.0.conv1", "layer2.0.conv1"]),
        ("layer1.*.conv2", ["layer1.0.conv2", "layer1.1.conv2"]),
        ("layer[2].*", ["layer2.0", "layer2.0.conv1", "layer2.0.bn", "layer2.0.conv2"]),
        (nn.Linear, ["fc"]),
        (nn.BatchNorm2d, ["layer1.0.bn", "layer1.1.bn", "layer2.0.bn"]),
        (
            ["fc", nn.BatchNorm2d, "layer1.1.conv?"],
            ["layer1.0.bn", "layer1.1.conv1", "layer1.1.bn", "layer1.1.conv2", "layer2.0.bn", "fc"],
        ),
        (  # matched three times over, listed once
            ["stem", "st*", nn.Conv2d],
            ["stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
            + ["layer2.0.conv1", "layer2.0.conv2"],
        ),
    ],
)
def test_names_patterns_types_and_mixed(layers, expected):
    assert selected(ResLike(), layers) == expected


def test_report_keys_follow_the_forward_not_the_registration():
    model = Reordered()
    assert selected(model, None) == ["late", "early"]
    result = FeatureMapProbe(model).run(x_img())
    assert result.names == ["early", "late"]
    assert result["early"].shape == (2, 4, 8, 8)


def test_a_module_called_several_times_gets_name_hash_k_in_call_order():
    model = SharedReLU()
    result = FeatureMapProbe(model, layers=["conv1", "conv2", "relu"]).run(x_img())
    assert result.names == ["conv1", "relu", "conv2", "relu#1", "relu#2"]
    assert result["relu"].shape == (2, 4, 8, 8)
    assert result["relu#2"].shape == (2, 1, 8, 8)  # the third call saw a 1-channel input
    # each call is reported on its own activation: the third call never sees a negative number either
    assert float(result["relu#2"].stats.min.min()) >= 0


def test_a_second_run_numbers_calls_from_zero_again():
    probe = FeatureMapProbe(SharedReLU(), layers="relu")
    assert probe.run(x_img()).names == probe.run(x_img()).names == ["relu", "relu#1", "relu#2"]


# ---- which layers get a picture ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (1, [0]),
        (3, [0, 1, 2]),
        (6, [0, 1, 2, 3, 4, 5]),
        (11, [0, 2, 4, 6, 8, 10]),
        (20, [0, 4, 8, 11, 15, 19]),
    ],
)
def test_default_picture_layers_at_most_six_spread_first_to_last(depth, expected):
    model = DeepConvs(depth)
    probe = FeatureMapProbe(model)
    names = [f"convs.{i}" for i in expected]
    result = probe.run(x_img())
    assert probe.image_names == names  # chosen at the first run, from what the layers put out
    assert [n for n, r in result.items() if r.grid is not None] == names
    assert len(result) == depth  # every layer still gets its statistics


def test_picture_layers_can_be_chosen_or_turned_off():
    model = ResLike()
    result = FeatureMapProbe(model, image_layers="layer1.*.conv2").run(x_img())
    assert [n for n, r in result.items() if r.grid is not None] == ["layer1.0.conv2", "layer1.1.conv2"]
    result = FeatureMapProbe(model, image_layers=[]).run(x_img())
    assert all(r.grid is None for r in result.values())
    with pytest.raises(ValueError, match=r"image_layers: fc not among the watched layers"):
        FeatureMapProbe(model, image_layers=["fc"])


# ---- clear errors -----------------------------------------------------------------------------------------


def test_unknown_name_says_the_closest_names():
    with pytest.raises(ValueError, match=r"no module named 'layer1.0.conv3'.*Closest names: .*layer1\.0\.conv1"):
        FeatureMapProbe(ResLike(), layers=["stem", "layer1.0.conv3"])
    with pytest.raises(ValueError, match=r"'stemm'.*Closest names: stem"):
        FeatureMapProbe(ResLike(), layers="stemm")


def test_unknown_name_without_close_match_lists_the_names():
    with pytest.raises(ValueError, match=r"no module named 'zzz'\. Module names: stem, layer1, "):
        select_layers(ResLike(), "zzz")


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"layers: the pattern 'layer3\.\*' matches no module.*layer"):
        FeatureMapProbe(ResLike(), layers=["stem", "layer3.*"])


def test_type_missing_from_the_model_is_an_error():
    with pytest.raises(ValueError, match=r"layers: the model has no module of type LSTM"):
        FeatureMapProbe(ResLike(), layers=[nn.LSTM])


def test_no_conv_layer_and_no_layers_argument_says_to_pass_layers():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"no Conv1d, Conv2d, Conv3d layer.*pass layers="):
        FeatureMapProbe(mlp)


@pytest.mark.parametrize("bad", [[], [3], [nn.Module()], [int]])
def test_bad_layers_values(bad):
    with pytest.raises((ValueError, TypeError), match="layers"):
        FeatureMapProbe(ResLike(), layers=bad)


@pytest.fixture(scope="module")
def vgg11() -> nn.Module:
    return torchvision.models.vgg11()  # features.0 .. features.20, classifier.0 .. classifier.6


def hint(model: nn.Module, layers) -> str:
    with pytest.raises(ValueError) as caught:
        select_layers(model, layers)
    return str(caught.value).split("Closest names: ", 1)[1]


@pytest.mark.parametrize(
    ("typo", "first"),
    [
        ("features.O", "features.0"),  # letter O for digit zero
        ("features.o", "features.0"),
        ("features.l", "features.1"),  # letter l for digit one
        ("features.I6", "features.16"),
        ("features.2O", "features.20"),
        ("feature.3", "features.3"),
        ("classifier.S", "classifier.5"),
    ],
)
def test_a_typo_suggests_the_look_alike_name_first(vgg11, typo, first):
    assert hint(vgg11, typo).startswith(f"{first}, ")


def test_suggestions_at_the_same_distance_come_in_model_order(vgg11):
    assert hint(vgg11, "features.x") == "features.0, features.1, features.2, features.3, features.4."


def test_a_name_without_its_wrapper_prefix_is_suggested(vgg11):
    wrapped = nn.Sequential()
    wrapped.add_module("model", vgg11)
    assert hint(wrapped, "features.10").startswith("model.features.10, ")


class VGGFeatures(pl.LightningModule):
    """torchvision VGG-11's convolutional part, its names as in VGG (features.0 ..), with a small head."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features = vgg.features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_typo_in_the_callbacks_layers_names_the_look_alike_at_fit(vgg11, tmp_path):
    train, _ = tiny_loaders()
    trainer = make_trainer(tmp_path, [FeatureMapCallback(layers=["features.3", "features.O"])], max_steps=1)
    with pytest.raises(ValueError, match=r"no module named 'features\.O'\. Closest names: features\.0, features\.1, "):
        trainer.fit(VGGFeatures(vgg11), train_dataloaders=train)
