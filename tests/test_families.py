"""What users of each architecture family hit, planted: dead channels marked in the picture (conv-BN-ReLU, and a
healthy twin unmarked), MobileNetV2's ReLU6 (``hardtanh``), SiLU/GELU nets where the silencing rule cannot fire,
squeeze-excitation gate convs, ViT tokens (never counted as channels), channels-last ConvNeXt blocks, and a layout
that cannot be told apart."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import numpy as np
import pytest
import timm
import torch
import torchvision.models as tvm
from conftest import make_trainer, read_events
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fm_callback import FeatureMapCallback, FeatureMapProbe, marks, names
from fm_callback import channel_header as H
from fm_callback import render as R
from fm_callback.tracking import DeadFilterTracker

WIDTH = 12
PLANTED = [2, 5, 9]  # silenced by the ReLU after them: the conv's own output still varies
DEAD_RGB, DYING_RGB = (np.array(marks.COLOURS[kind][0]) for kind in (marks.DEAD, marks.DYING))


class ConvBNReLU(nn.Sequential):
    def __init__(self, planted: list[int]) -> None:
        super().__init__(nn.Conv2d(3, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU())
        self.planted = planted


class Net(pl.LightningModule):
    """conv -> BN -> ReLU -> pool -> linear; the planted channels' BatchNorm puts them far below zero with no slope,
    so the ReLU silences them and no gradient ever revives them."""

    def __init__(self, planted: list[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = ConvBNReLU(planted)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 2))
        with torch.no_grad():
            self.body[1].weight[planted] = 0.0
            self.body[1].bias[planted] = -5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=generator)
    return DataLoader(TensorDataset(x, torch.randint(0, 2, (16,), generator=generator)), batch_size=8)


def _column_corners(grid: np.ndarray, channels: int, rows: int, tile: int) -> list[tuple[int, int]]:
    """(y, x) of the top-left pixel of each column's first tile, in the grid's band layout
    (channel_header.with_header)."""
    body = rows * (tile + R.PAD) - R.PAD
    cols, digit = H.band_layout(channels, len(str(channels - 1)), tile, body)
    band = H.header_height(digit) + body
    assert grid.shape[0] == band * -(-channels // cols)
    return [((i // cols) * band + H.header_height(digit), (i % cols) * (tile + R.PAD)) for i in range(channels)]


@pytest.mark.parametrize("planted", [PLANTED, []], ids=["planted", "healthy-twin"])
def test_planted_dead_channels_are_marked_in_the_logged_grid(tmp_path, planted):
    callback = FeatureMapCallback(max_channels=WIDTH, channel_order="index", probe_size=8, similarity=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(Net(planted), _loader(), _loader())
    events = read_events(trainer.logger.log_dir)
    last = events.images["feature_maps/body.0"][-1]
    grid = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB")).astype(int)
    marked = [tuple(grid[y, x]) for y, x in _column_corners(grid, WIDTH, 4, 32)]  # 16 px maps: 32 px tiles
    assert [c for c, colour in enumerate(marked) if colour == tuple(DEAD_RGB)] == planted
    if not planted:  # the healthy twin: not a pixel of either mark
        assert not ((grid == DEAD_RGB).all(-1) | (grid == DYING_RGB).all(-1)).any()
    # the same verdict as the scalar at that event (the conv's own output varies: the ReLU silences it)
    dead = [e.value for e in events.scalars["dead_filters/body.0"] if e.step == last.step]
    assert dead == [pytest.approx(len(planted) / WIDTH)]
    assert Image.open(io.BytesIO(last.encoded_image_string)).getcolors(256) is not None  # marks and all: <= 256


def _mobilenet_v2(planted: list[int]) -> nn.Module:
    torch.manual_seed(0)
    model = tvm.mobilenet_v2(weights=None, width_mult=0.5)
    with torch.no_grad():
        for module in model.modules():  # calibrated BatchNorms (a fresh one is not judged)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
        model.features[2].conv[0][1].bias[planted] = -100.0  # dying planted before the ReLU6 (hardtanh(x, 0, 6))
    return model


def test_mobilenet_v2_relu6_silences_at_the_expansion_conv():
    x = torch.randn(4, 3, 32, 32)
    planted, twin = (FeatureMapProbe(_mobilenet_v2(p)).run(x) for p in ([3, 7], []))
    report = planted["features.2.conv.0.0"]
    assert report.rule == "silenced after hardtanh" and report.silencing
    newly = report.dead & ~twin["features.2.conv.0.0"].dead
    assert newly.nonzero().flatten().tolist() == [3, 7]  # dead where the filters died: at the expansion conv
    assert report.stats.dead.sum() == twin["features.2.conv.0.0"].stats.dead.sum()  # its own output still varies


class SiLUWithGate(nn.Module):
    """conv -> BN -> SiLU -> squeeze-excitation (1x1 convs, sigmoid gate) -> conv (logits map): no ReLU anywhere."""

    def __init__(self, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = act()
        self.se_reduce, self.se_expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.1)
            self.conv.bias[1] = -50.0  # never positive: SiLU/GELU still pass a (tiny) signal, nothing is silenced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        gate = self.se_expand(nn.functional.silu(self.se_reduce(x.mean((2, 3), keepdim=True)))).sigmoid()
        return self.out(x * gate)


@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU])
def test_silu_and_gelu_nets_do_not_report_a_reassuring_zero(act):
    result = FeatureMapProbe(SiLUWithGate(act)).run(torch.randn(4, 3, 16, 16))
    name = act.__name__.lower()
    assert result["conv"].rule == f"constant only ({name} cannot silence)"
    assert result["se_expand"].rule == "constant only (sigmoid gate)"
    assert result["out"].rule == "constant only (no activation follows)"
    metrics = names.scalar_metrics(result)
    assert "dead_filters/conv" in metrics and "dead_filters/all" in metrics  # a constant channel is dead anywhere
    assert not [m for m in metrics if m.startswith("dying_filters/")]  # no ReLU: the rule cannot fire, no 0 logged
    assert "never_positive/conv" in metrics and metrics["never_positive/conv"] == pytest.approx(1 / 8)
    assert "never_positive/se_expand" not in metrics and "never_positive/out" not in metrics  # gate input, logits
    tracker = DeadFilterTracker()
    tracker.update(result, 0, 0)
    record = tracker.record(result)["layers"]
    assert record["se_expand"]["never_positive"] == [] and record["conv"]["never_positive"] == [1]
    assert [record[n]["silencing"] for n in result.names] == [False] * 4
    # pictures: not the 1x1 squeeze-excitation convs
    assert [n for n, r in result.items() if r.grid is not None] == ["conv", "out"]


def _vit(**options) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, **options)


@pytest.mark.parametrize(
    ("options", "extra"),
    [({}, 1), ({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg"}, 0)],
    ids=["class-token", "class-and-4-register-tokens", "no-class-token"],
)
def test_vit_blocks_are_token_maps_of_their_channels(options, extra):
    model = _vit(**options)
    probe = FeatureMapProbe(model)
    result = probe.run(torch.randn(2, 3, 64, 64))
    assert result.names == ["patch_embed.proj", "blocks.0", "blocks.1", "blocks.2"]  # the blocks, by default
    assert probe.image_names == result.names  # their token maps over the depth, not only the patch embedding
    for name in result.names[1:]:
        report = result[name]
        assert report.shape == (2, 192, 4, 4) and report.dead.shape == (192,), name  # never 4 + extra "channels"
        assert report.layout == f"tokens ({extra} + 4x4)" and report.grid is not None
    tokens = {}
    model.blocks[1].register_forward_hook(lambda m, i, o: tokens.update(out=o))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert tokens["out"].shape == (2, extra + 16, 192)


def test_channels_last_convnext_blocks():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False)
    result = FeatureMapProbe(model, layers=["stages.0.blocks.0.mlp.fc1", "stages.0.blocks.0.conv_dw"]).run(
        torch.randn(2, 3, 64, 64)
    )
    fc1 = result["stages.0.blocks.0.mlp.fc1"]  # a Linear on (N, H, W, C)
    assert fc1.layout == "channels_last" and fc1.shape == (2, 160, 16, 16) and fc1.dead.shape == (160,)
    assert fc1.rule == "constant only (gelu cannot silence)" and fc1.grid is not None
    assert result["stages.0.blocks.0.conv_dw"].layout == "channels_first"


class Cube(nn.Module):
    """Puts out (N, 8, 8, 8): channels first or last, the shape cannot say."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_layout_that_cannot_be_told_apart_is_refused_with_the_fix():
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"could be \(N, C, H, W\) or \(N, H, W, C\).*layouts=\{'body.1'"):
        FeatureMapProbe(Cube(), layers=["body.1"]).run(x)
    report = FeatureMapProbe(Cube(), layers=["body.1"], layouts={"body.1": "channels_last"}).run(x)["body.1"]
    assert report.layout == "channels_last" and report.shape == (2, 8, 8, 8)
    assert FeatureMapProbe(Cube(), layers=["body.0"]).run(x)["body.0"].layout == "channels_first"  # a conv: known
