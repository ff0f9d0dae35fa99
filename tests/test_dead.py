"""Dead filters: the probe finds exactly the planted dead channels; persistence, warnings, revival, resume."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from shapes import ShapesDataset
from torch import nn
from torch.utils.data import DataLoader

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback.probe import LayerReport, ProbeResult
from fm_callback.report import load_records
from fm_callback.stats import channel_stats
from fm_callback.tracking import DeadFilterTracker, format_channels

# ---- exact detection on a planted model -------------------------------------------------------------------


class Planted(nn.Module):
    """conv1 -> BatchNorm -> ReLU -> conv2 -> ReLU, with dead channels planted in known places."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight[1] = 0.0  # constant 0.7 out of conv1, carried through BatchNorm and ReLU
            self.conv1.bias[1] = 0.7
            self.conv1.bias[5] = -1e3  # varies, but never positive: the ReLU after it never fires
            self.conv1.weight[6] *= 1e-3  # weak but varying: never dead
            self.conv1.bias[6] *= 1e-3
            self.bn1.weight[3] = 0.0  # BatchNorm itself makes channel 3 constant (its beta, 0)
            self.bn1.running_mean.uniform_(-0.1, 0.1)  # eval-mode statistics that are not the identity
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.running_mean[6] = 0.0  # or the shift would push the weak channel below zero: dead after ReLU
            self.conv2.weight[2] = 0.0  # constant 0
            self.conv2.bias[2] = 0.0
            self.conv2.bias[4] = -1e3  # never positive: relu2 channel 4 never fires

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))


# Dead where the filter dies: a channel the ReLU after it silences is dead at every watched layer on its way there.
PLANTED_DEAD = {"conv1": {1, 3, 5}, "bn1": {1, 3, 5}, "relu1": {1, 3, 5}, "conv2": {2, 4}, "relu2": {2, 4}}
PLANTED_NEVER_POSITIVE = {"conv1": {5}, "bn1": {3, 5}, "conv2": {2, 4}}


def _found(result: ProbeResult, attribute: str = "dead") -> set[tuple[str, int]]:
    return {(name, c) for name, rep in result.items() for c in getattr(rep, attribute).nonzero().flatten().tolist()}


def _pairs(planted: dict[str, set[int]]) -> set[tuple[str, int]]:
    return {(name, c) for name, channels in planted.items() for c in channels}


def test_probe_finds_exactly_the_planted_dead_channels() -> None:
    torch.manual_seed(0)
    model = Planted()
    probe = FeatureMapProbe(model, layers=[nn.Conv2d, nn.BatchNorm2d, nn.ReLU], image_layers=[])
    x = torch.randn(6, 3, 16, 16)
    result = probe.run(x)
    assert result.names == ["conv1", "bn1", "relu1", "conv2", "relu2"]
    found, planted = _found(result), _pairs(PLANTED_DEAD)
    true_positive = len(found & planted)
    precision, recall = true_positive / len(found), true_positive / len(planted)
    assert (precision, recall) == (1.0, 1.0), f"found {sorted(found)}, planted {sorted(planted)}"
    # conv outputs: which filters a following ReLU kills
    never = {(n, c) for n, c in _found(result, "never_positive") if n in PLANTED_NEVER_POSITIVE}
    assert never == _pairs(PLANTED_NEVER_POSITIVE)
    assert result["relu1"].dead_fraction == pytest.approx(3 / 8)


def test_weak_but_varying_channels_are_never_dead() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, 8)
    weak = x * torch.tensor([1.0, 1e-3, 1e-6, 1e3, 1e-3, 1.0]).view(1, -1, 1, 1)
    weak[:, 4] += 5.0  # a large offset with a weak (relative 2e-4) variation on top is still information
    stats = channel_stats(weak)
    assert not stats.dead.any(), stats.dead
    # ... while the same channels, made constant, are dead, whatever their scale
    constant = torch.ones(4, 6, 8, 8) * torch.tensor([0.0, 1e-3, -1e-6, 1e3, 5.0, -7.0]).view(1, -1, 1, 1)
    assert channel_stats(constant).dead.all()


# ---- the tracker on its own ---------------------------------------------------------------------------------


def _result(dead: dict[str, list[int]], channels: int = 4) -> ProbeResult:
    """A real ProbeResult from real activations: the listed channels constant, the others varying."""
    reports = {}
    generator = torch.Generator().manual_seed(0)
    for name, constant in dead.items():
        x = torch.randn(2, channels, 4, 4, generator=generator)
        x[:, constant] = 0.5
        reports[name] = LayerReport(name=name, shape=tuple(x.shape), stats=channel_stats(x))
    return ProbeResult(reports)


def test_tracker_warns_once_at_patience_and_notes_the_revival() -> None:
    tracker = DeadFilterTracker(patience=3)
    plan = [[1], [1, 2], [1, 2], [1, 2], [2], [2], [1, 2]]  # layer "a", dead channels per event
    died, revived = [], []
    for event, dead in enumerate(plan):
        change = tracker.update(_result({"a": dead}), step=10 * event, epoch=event)
        died.append(change.died.get("a", []))
        revived.append(change.revived.get("a", []))
    assert died == [[], [], [1], [2], [], [], []]
    assert revived == [[], [], [], [], [1], [], []]
    assert tracker.persistent() == {"a": [2]}
    assert tracker.revivals == [
        {"layer": "a", "channel": 1, "step": 40, "epoch": 4, "since_step": 0, "since_epoch": 0, "events": 4}
    ]
    record = tracker.record(_result({"a": [1, 2]}), None)
    assert record["layers"]["a"]["persistent"] == [{"channel": 2, "since_step": 10, "since_epoch": 1, "events": 6}]


def test_tracker_messages_name_layer_channels_and_epoch() -> None:
    tracker = DeadFilterTracker(patience=2)
    tracker.update(_result({"features.0": [0]}), step=0, epoch=0)
    tracker.update(_result({"features.0": [0, 3]}), step=5, epoch=1)
    change = tracker.update(_result({"features.0": [0, 3]}), step=10, epoch=2)
    assert change.warnings == [
        "fm_callback: layer 'features.0': channel 3 dead since epoch 1 (step 5) is persistently dead: constant or "
        "silenced by its ReLU over the whole probe batch for 2 or more consecutive probe events (now epoch 2, "
        "step 10). Check its weights, its bias and the learning rate."
    ]
    change = tracker.update(_result({"features.0": [3]}), step=15, epoch=3)
    assert change.notes == ["fm_callback: layer 'features.0': channel 0 revived at epoch 3, step 15"]
    assert "| features.0 | 1/4 | 3 | 3 (1) | 0 |" in tracker.table(_result({"features.0": [3]}), change)


def test_tracker_state_round_trip_and_changed_patience() -> None:
    tracker = DeadFilterTracker(patience=2)
    for step in range(3):
        tracker.update(_result({"a": [0]}), step=step, epoch=step)
    assert tracker.persistent() == {"a": [0]}
    state = torch.load(_save(tracker.state_dict()), weights_only=True)  # what a checkpoint does to it
    resumed = DeadFilterTracker(patience=4)  # a resume with a larger patience: no second warning for channel 0
    resumed.load_state_dict(state)
    assert resumed.streak == {"a": [3, 0, 0, 0]} and resumed.since["a"][0] == [0, 0]
    change = resumed.update(_result({"a": [0, 1]}), step=3, epoch=3)
    assert change.warnings == [] and resumed.persistent() == {"a": [0]}
    assert len(resumed.history) == 4


def _save(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_format_channels() -> None:
    assert format_channels([]) == "-"
    assert format_channels([0, 2, 3, 4, 5, 9, 10]) == "0, 2-5, 9, 10"


# ---- a real training run with a frozen dead filter -----------------------------------------------------------

DEAD_LAYER, DEAD_CHANNEL = "conv2", 3  # held at zero at every step: dead for the whole run
REVIVE_LAYER, REVIVE_CHANNEL, REVIVE_EPOCH = "conv1", 6, 2  # zero until epoch 2 starts, then its weights return


class FrozenDeadNet(pl.LightningModule):
    """conv1 -> ReLU -> conv2 -> ReLU -> pool -> linear, with a dead filter held dead and one that revives."""

    def __init__(self, revive_epoch: int = REVIVE_EPOCH) -> None:
        super().__init__()
        self.revive_epoch = revive_epoch
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.kept = (self.conv1.weight[REVIVE_CHANNEL].detach().clone(), self.conv1.bias[REVIVE_CHANNEL].item())
        self._hold_dead()

    def _hold_dead(self) -> None:
        with torch.no_grad():
            self.conv2.weight[DEAD_CHANNEL] = 0.0
            self.conv2.bias[DEAD_CHANNEL] = 0.0
            if self.current_epoch < self.revive_epoch:
                self.conv1.weight[REVIVE_CHANNEL] = 0.0
                self.conv1.bias[REVIVE_CHANNEL] = 0.0

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.revive_epoch:
            with torch.no_grad():
                self.conv1.weight[REVIVE_CHANNEL] = self.kept[0]
                self.conv1.bias[REVIVE_CHANNEL] = self.kept[1]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._hold_dead()  # the dead filter's weights are frozen at zero: every step undoes the update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def train_planted(
    root: str | Path,
    epochs: int = 4,
    name: str = "planted",
    ckpt_path: str | None = None,
    model: pl.LightningModule | None = None,
    callback: FeatureMapCallback | None = None,
) -> tuple[pl.Trainer, FeatureMapCallback, list[str]]:
    """A tiny real run (16 samples of 16 px, 2 steps per epoch); returns the fm_callback warnings it raised."""
    pl.seed_everything(0, verbose=False)
    callback = callback or FeatureMapCallback(probe_size=4)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(root), name=name, version=0),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    loader = DataLoader(ShapesDataset(16, image_size=16), batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model or FrozenDeadNet(), train_dataloaders=loader, ckpt_path=ckpt_path)
    messages = [str(w.message) for w in caught if str(w.message).startswith("fm_callback: layer")]
    return trainer, callback, messages


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead")
    trainer, callback, messages = train_planted(root, epochs=4)
    return trainer, callback, messages


def test_frozen_dead_filter_is_persistently_dead_after_patience_with_one_warning(planted_run) -> None:
    trainer, callback, messages = planted_run
    records = load_records(trainer.logger.log_dir)
    assert [(r["step"], r["epoch"]) for r in records] == [(0, 0), (2, 0), (4, 1), (6, 2), (8, 3)]
    # exact at every event: the frozen filter always, the other one until it revives, nothing else
    for i, record in enumerate(records):
        assert record["layers"][DEAD_LAYER]["dead"] == [DEAD_CHANNEL], record
        assert record["layers"][REVIVE_LAYER]["dead"] == ([REVIVE_CHANNEL] if i < 3 else []), record
    # persistent from the third event (dead_patience=3) on, with the epoch it died
    persistent = [r["layers"][DEAD_LAYER]["persistent"] for r in records]
    assert persistent[:2] == [[], []]
    assert persistent[2] == [{"channel": DEAD_CHANNEL, "since_step": 0, "since_epoch": 0, "events": 3}]
    assert persistent[4] == [{"channel": DEAD_CHANNEL, "since_step": 0, "since_epoch": 0, "events": 5}]
    # exactly one warning per planted layer, naming layer, channel and the epoch it died
    frozen = [m for m in messages if f"layer {DEAD_LAYER!r}" in m]
    assert len(frozen) == 1, messages
    assert f"channel {DEAD_CHANNEL} dead since epoch 0 (step 0) is persistently dead" in frozen[0]
    assert "now epoch 1, step 4" in frozen[0]
    assert len(messages) == 2, messages  # the other: conv1 channel 6, before it revived
    other = next(m for m in messages if m is not frozen[0])
    assert f"layer {REVIVE_LAYER!r}: channel {REVIVE_CHANNEL} dead since epoch 0 (step 0)" in other
    # the revival is recorded, and in the tracker that goes into the checkpoint
    assert records[3]["layers"][REVIVE_LAYER]["revived"] == [
        {"channel": REVIVE_CHANNEL, "since_step": 0, "since_epoch": 0, "events": 3}
    ]
    assert callback.tracker.persistent() == {DEAD_LAYER: [DEAD_CHANNEL]}
    assert [(r["layer"], r["channel"], r["epoch"]) for r in callback.tracker.revivals] == [
        (REVIVE_LAYER, REVIVE_CHANNEL, REVIVE_EPOCH)
    ]


def test_run_logs_the_dead_table_and_the_timeline(planted_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _, _ = planted_run
    size = {"images": 0, "scalars": 0, "histograms": 0, "tensors": 0}
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance=size)
    acc.Reload()
    tables = acc.Tensors("dead_filters/table/text_summary")
    assert len(tables) == 5
    last = tables[-1].tensor_proto.string_val[0].decode()
    assert f"| {DEAD_LAYER} | 1/8 | {DEAD_CHANNEL} | {DEAD_CHANNEL} (0) |" in last
    revived = tables[3].tensor_proto.string_val[0].decode()
    assert f"| {REVIVE_LAYER} | 0/8 | - | - | {REVIVE_CHANNEL} |" in revived
    assert [e.value for e in acc.Scalars(f"dead_filters/{DEAD_LAYER}")] == [1 / 8] * 5
    timeline = acc.Images("dead_filters/timeline")
    assert len(timeline) == 1 and timeline[0].step == trainer.global_step and timeline[0].width > 300


def test_persistence_survives_a_checkpoint_resume(tmp_path: Path) -> None:
    model = FrozenDeadNet(revive_epoch=99)
    trainer, callback, messages = train_planted(tmp_path, epochs=1, name="resume", model=model)
    assert messages == []  # two events (step 0, end of epoch 0): not yet persistent with dead_patience=3
    ckpt = tmp_path / "epoch0.ckpt"
    trainer.save_checkpoint(ckpt)

    trainer, callback, messages = train_planted(
        tmp_path, epochs=2, name="resume", ckpt_path=str(ckpt), model=FrozenDeadNet(revive_epoch=99)
    )
    # the third event is the first of the resumed run; only the restored streaks make it the third
    assert sorted(messages) == sorted(
        f"fm_callback: layer {layer!r}: channel {channel} dead since epoch 0 (step 0) is persistently dead: "
        "constant or silenced by its ReLU over the whole probe batch for 3 or more consecutive probe events "
        "(now epoch 1, step 4). Check its weights, its bias and the learning rate."
        for layer, channel in ((DEAD_LAYER, DEAD_CHANNEL), (REVIVE_LAYER, REVIVE_CHANNEL))
    )
    assert [(h["step"], h["epoch"]) for h in callback.tracker.history] == [(0, 0), (2, 0), (4, 1)]
    records = load_records(trainer.logger.log_dir)  # both runs' event files, one log directory
    assert [r["step"] for r in records] == [0, 2, 4]
    assert records[-1]["layers"][DEAD_LAYER]["persistent"][0]["events"] == 3

    # the same callback in a new fit (no checkpoint) starts counting afresh: nothing carried over
    _, again, messages = train_planted(tmp_path, epochs=1, name="fresh", model=FrozenDeadNet(), callback=callback)
    assert again is callback and messages == []
    assert [(h["step"], h["epoch"]) for h in callback.tracker.history] == [(0, 0), (2, 0)]
