"""Top-activating examples: the running top-k, the measured receptive field, and a real fit with a planted detector.

The detector fit is the issue's "done when": one channel of the first layer is a frozen matched filter of an X
pattern planted in three known pool images; its top examples must be exactly those images (read back through
``fm-callback report --json``), centred on the pattern.
"""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import read_events
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fm_callback import FeatureMapCallback
from fm_callback.cli import main
from fm_callback.example_pictures import TILE, render_examples
from fm_callback.marks import column_marks
from fm_callback.top_examples import ExampleScanner, LayerExamples, merge, receptive_radius

X = torch.tensor(
    [[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32
)
PLANTED = {3: (6, 15), 11: (17, 5), 20: (12, 12)}  # pool index -> centre (row, column) of the planted X
SIZE = 24


def test_chunked_top_k_equals_the_top_k_of_the_whole_pool():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 40, generator=g).round(decimals=1)  # ties, which the earlier sample must win
    positions = torch.randint(0, 9, (5, 40, 2), generator=g)
    indices = torch.arange(40).expand(5, -1)
    best = None
    for start in range(0, 40, 6):
        chunk = slice(start, start + 6)
        best = merge(best, (values[:, chunk], indices[:, chunk], positions[:, chunk]), 4)
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :4]
    assert torch.equal(best[0], values.gather(1, order))
    assert torch.equal(best[1], order)
    assert torch.equal(best[2], positions.gather(1, order.unsqueeze(-1).expand(-1, -1, 2)))


def test_receptive_radius_is_measured_through_strides_and_a_branch():
    """3x3 conv (r 1), then 3x3 stride 2 (r 2), then 3x3 on the stride-2 map (r 4); a 1x1 shortcut beside the last
    one does not widen it, and a global average makes the centre see everything (None)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.c = nn.Conv2d(4, 4, 3, padding=1)
            self.shortcut = nn.Conv2d(4, 4, 1)
            self.glob = nn.Identity()

        def forward(self, x):
            y = self.b(self.a(x))
            y = self.c(y) + self.shortcut(y)
            return self.glob(y + y.mean(dim=(2, 3), keepdim=True))

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 1, 32, 32)
    layers = {name: getattr(net, name) for name in ("a", "b", "c", "glob")}
    sizes = {"a": (32, 32), "b": (16, 16), "c": (16, 16), "glob": (16, 16)}
    assert receptive_radius(net, layers, x, sizes) == {"a": 1, "b": 2, "c": 4, "glob": None}


class Detector(nn.Module):
    """Channel 0: a frozen matched filter of the X pattern; channels 1-3 learn."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(1, 1, 5, padding=2)
        self.learned = nn.Conv2d(1, 3, 5, padding=2)
        with torch.no_grad():
            self.frozen.weight.copy_((X - X.mean()).reshape(1, 1, 5, 5))
            self.frozen.bias.zero_()
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return torch.cat([self.frozen(x), self.learned(x)], dim=1)


class DetectorNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(Detector(), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def pool_with_pattern(count: int = 32, seed: int = 0) -> TensorDataset:
    """Noise images; the X pattern, 3 times the noise, planted at PLANTED's places."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 * torch.randn(count, 1, SIZE, SIZE, generator=g)
    for index, (row, col) in PLANTED.items():
        if index < count:
            images[index, 0, row - 2 : row + 3, col - 2 : col + 3] += 3 * X
    return TensorDataset(images, torch.randint(0, 2, (count,), generator=g))


def test_a_frozen_detector_finds_exactly_the_images_with_its_pattern_centred(tmp_path, capsys):
    torch.manual_seed(0)
    model = DetectorNet()
    fm = FeatureMapCallback(
        layers=["features.0", "features.2"], channel_order="index", max_channels=4, probe_size=8, examples=3,
        examples_pool=32,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="run"),
        callbacks=[fm],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    train = DataLoader(pool_with_pattern(32, seed=1), batch_size=8, shuffle=True)
    trainer.fit(model, train, DataLoader(pool_with_pattern(), batch_size=8))
    weights = model.features[0].frozen.weight
    assert torch.equal(weights[0, 0], X - X.mean()), "the detector stayed frozen"

    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    examples = report["runs"][0]["examples"]
    assert [event["step"] for event in examples] == [0, 4, 8]  # at every event
    for event in examples:
        detector = event["layers"]["features.0"]["channels"]["0"]
        assert sorted(detector["indices"]) == sorted(PLANTED)
        assert [tuple(at) for at in detector["at"]] == [PLANTED[i] for i in detector["indices"]]
        assert event["layers"]["features.0"]["radius"] == 2  # the 5x5 kernel
    changed = report["runs"][0]["examples_changed"]["features.0"]
    assert changed[0] is None and all(isinstance(n, int) for n in changed[1:])  # nothing before the first event
    assert main(["report", str(tmp_path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Channels whose top examples changed since the previous examples event (step 8):" in text
    assert f"features.0 {changed[-1]} of 4" in text
    tags = read_events(tmp_path).tags("images", "feature_examples")
    assert tags == ["feature_examples/features.0", "feature_examples/features.2"]


def test_examples_picture_rows_marks_and_dead_rows():
    pool = torch.rand(6, 3, 32, 32)
    examples = LayerExamples(
        channels=[5, 2, 7],
        values=torch.tensor([[3.0, 2.0], [1.0, float("-inf")], [0.0, 0.0]]),
        indices=torch.tensor([[4, 1], [0, -1], [2, 3]]),
        positions=torch.tensor([[[3, 3], [0, 7]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]]),
        map_size=(8, 8),
        input_size=(32, 32),
        radius=5,
    )
    dead, dying = torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)
    dead[7], dying[2], dying[7] = True, True, True
    marks = column_marks(dead, dying, examples.channels)
    assert marks == (None, "dying", "dead")
    picture = render_examples("conv", examples, lambda i: pool[i : i + 1], marks)
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3
    assert picture.shape[2] >= 2 * TILE
    # Not an image batch: no picture.
    assert render_examples("conv", LayerExamples([0], *examples_row(), (8,), None, None), lambda i: pool, [""]) is None


def examples_row():
    return torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 2, dtype=torch.long)


def test_scanner_without_a_spatial_map_finds_nothing_and_leaves_no_hook():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    scanner = ExampleScanner(model, {"1": model[1]}, {"1": [0, 1]}, k=2)
    found = scanner.scan([(0, torch.randn(3, 3, 2, 2))])
    assert found == {}
    assert not model[1]._forward_hooks


@pytest.mark.parametrize("k", [-1, True, 1.5])
def test_examples_must_be_a_count(k):
    with pytest.raises(ValueError, match="examples must be an int >= 0"):
        FeatureMapCallback(examples=k)


def fit_detector(tmp_path, epochs: int, val_seed: int = 0, ckpt_path=None) -> FeatureMapCallback:
    fm = FeatureMapCallback(layers=["features.0"], probe_size=8, examples=3, examples_pool=16)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        callbacks=[fm],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    train = DataLoader(pool_with_pattern(16, seed=1), batch_size=8)
    trainer.fit(DetectorNet(), train, DataLoader(pool_with_pattern(seed=val_seed), batch_size=8), ckpt_path=ckpt_path)
    return fm


def test_a_resume_scans_the_same_pool_and_warns_when_the_data_changed(tmp_path, recwarn):
    first = fit_detector(tmp_path, 1)
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert first.state_dict()["examples_pool_digest"] == first.examples_pass.digest is not None
    resumed = fit_detector(tmp_path, 2, ckpt_path=checkpoint)
    assert resumed.examples_pass.digest == first.examples_pass.digest
    assert not [w for w in recwarn if "examples pool" in str(w.message)]
    with pytest.warns(UserWarning, match="the examples pool .* differs from the one this run scanned"):
        fit_detector(tmp_path, 2, val_seed=5, ckpt_path=checkpoint)


@pytest.mark.parametrize("pool", [0, 2.5])
def test_examples_pool_must_be_a_positive_count(pool):
    with pytest.raises(ValueError, match="examples_pool must be a positive int"):
        FeatureMapCallback(examples=4, examples_pool=pool)


def test_picture_crops_are_centred_on_the_peak():
    """A bright pixel at the peak's input point lands in the middle of its crop, inside the red box."""
    pool = torch.zeros(1, 1, 32, 32)
    pool[0, 0, 20, 12] = 1.0
    examples = LayerExamples(
        channels=[0],
        values=torch.tensor([[1.0]]),
        indices=torch.tensor([[0]]),
        positions=torch.tensor([[[10, 6]]]),  # stride 2: input point (20, 12)
        map_size=(16, 16),
        input_size=(32, 32),
        radius=3,
    )
    picture = render_examples("conv", examples, lambda i: pool[i : i + 1], [""]).permute(1, 2, 0)
    white = (picture == 255).all(dim=-1).nonzero()
    rows, cols = white[:, 0].float().mean(), white[:, 1].float().mean()
    tile_top, tile_left = 18, 64  # the title line, the label column
    assert abs(rows - (tile_top + TILE / 2)) < TILE / 7 and abs(cols - (tile_left + TILE / 2)) < TILE / 7
