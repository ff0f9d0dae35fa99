"""FeatureMapCallback in a real Trainer: tags at the scheduled steps, values, where it writes, errors, hooks, modes."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import (
    BATCHES_PER_EPOCH,
    TinyCNN,
    all_forward_hooks,
    event_files,
    make_trainer,
    module_modes,
    read_events,
    tiny_dataset,
    tiny_loaders,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fm_callback import FeatureMapCallback, FeatureMapProbe

LAYERS = ("conv1", "conv2")  # TinyCNN's conv layers: the default selection


def contract_tags(layers=LAYERS) -> dict[str, list[str]]:
    """The contract's tags for these layers written at every event, by the kind of event TensorBoard reads them as.
    (``probe/input``, the same picture at every event, is written at the first one only.)"""
    return {
        "images": [f"feature_maps/{n}" for n in layers],
        "scalars": [f"dead_filters/{n}" for n in layers] + ["dead_filters/all"],
        "histograms": [f"channel_mean/{n}" for n in layers],
    }


def fm_tags(events) -> list[str]:
    """Every tag the callback may have written."""
    prefixes = ("feature_maps", "dead_filters", "channel_mean", "probe/", "never_positive")
    return [t for kind in ("images", "scalars", "histograms") for t in events.tags(kind) if t.startswith(prefixes)]


class EpochEndSteps(pl.Callback):
    """Records ``trainer.global_step`` at the end of every training epoch."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps.append(trainer.global_step)


# ---- schedule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "max_epochs", "expected"),
    [
        ({}, 2, lambda ends: [0, ends[0], ends[1]]),
        ({"every_n_epochs": 2}, 4, lambda ends: [0, ends[1], ends[3]]),
        ({"epochs": [2, 0]}, 3, lambda ends: [0, ends[0], ends[2]]),
        ({"every_n_epochs": 1, "log_at_start": False}, 2, lambda ends: ends),
        ({"every_n_steps": 3}, 2, lambda ends: [0, 3, 6]),
        ({"every_n_steps": BATCHES_PER_EPOCH}, 2, lambda ends: [0, ends[0], ends[1]]),
    ],
    ids=["default-every-epoch", "every-2-epochs", "epochs-list", "no-baseline", "every-3-steps", "steps-at-epoch-end"],
)
def test_contract_tags_at_step_0_and_every_scheduled_step(tmp_path, loaders, options, max_epochs, expected):
    ends = EpochEndSteps()
    trainer = make_trainer(tmp_path, [FeatureMapCallback(**options), ends], max_epochs=max_epochs)
    trainer.fit(TinyCNN(), *loaders)  # sanity checking runs first (val loader, num_sanity_val_steps=2)
    assert ends.steps == [BATCHES_PER_EPOCH * (e + 1) for e in range(max_epochs)]
    want = expected(ends.steps)
    events = read_events(trainer.logger.log_dir)
    for kind, tags in contract_tags().items():
        for tag in tags:
            assert events.steps(kind, tag) == want, (tag, events.steps(kind, tag))  # once per step, no extra
    assert events.steps("images", "probe/input") == want[:1]


def test_logged_values_are_the_probe_of_the_model_at_that_step(tmp_path, loaders):
    """Step 0 shows the untrained model: its dead fractions, channel means and grids, exactly."""
    model = TinyCNN()
    with torch.no_grad():  # one collapsed filter: 1 of conv2's 8 channels is dead before training
        model.conv2.weight[3] = 0
        model.conv2.bias[3] = 0.5
    untrained = copy.deepcopy(model)
    probe_batch = next(iter(loaders[1]))
    trainer = make_trainer(tmp_path, [FeatureMapCallback(probe_batch=probe_batch)], max_epochs=1)
    trainer.fit(model, *loaders)
    want = FeatureMapProbe(untrained).run(probe_batch[0])
    assert want["conv2"].dead.tolist() == [False, False, False, True, False, False, False, False]

    events = read_events(trainer.logger.log_dir)
    scalar = {tag: {e.step: e.value for e in events.scalars[tag]} for tag in events.tags("scalars", "dead_filters")}
    assert scalar["dead_filters/conv1"][0] == pytest.approx(want["conv1"].dead_fraction)
    assert scalar["dead_filters/conv2"][0] == pytest.approx(1 / 8)
    assert scalar["dead_filters/all"][0] == pytest.approx(1 / 12)  # 1 dead of 4 + 8 channels
    for layer in LAYERS:
        hist = next(e for e in events.histograms[f"channel_mean/{layer}"] if e.step == 0).histogram_value
        means = want[layer].channel_mean
        assert hist.num == means.numel()
        assert hist.min == pytest.approx(float(means.min()), abs=1e-6)
        assert hist.max == pytest.approx(float(means.max()), abs=1e-6)
        assert hist.sum == pytest.approx(float(means.sum()), abs=1e-5)
        image = next(e for e in events.images[f"feature_maps/{layer}"] if e.step == 0)
        assert (image.height, image.width) == tuple(want[layer].grid.shape[1:])


# ---- never during sanity checking, validate() or fast_dev_run --------------------------------------------


def test_no_event_during_sanity_checking(tmp_path, loaders):
    model = TinyCNN()
    callback = FeatureMapCallback(epochs=[3], log_at_start=False)  # nothing due in a 1-epoch fit
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(model, *loaders)
    assert model.val_steps >= 2  # sanity checking did run (and a validation epoch)
    events = read_events(tmp_path)
    assert "val_loss" in events.scalars  # the file is there and readable ...
    assert fm_tags(events) == []  # ... with nothing of ours in it


def test_no_event_during_validate(tmp_path, loaders):
    model = TinyCNN()
    trainer = make_trainer(tmp_path, [FeatureMapCallback()])
    trainer.validate(model, loaders[1])
    assert model.val_steps == 1
    events = read_events(tmp_path)
    assert "val_loss" in events.scalars
    assert fm_tags(events) == []
    assert all_forward_hooks(model) == {}


@pytest.mark.parametrize("fast_dev_run", [True, 2])
def test_no_event_during_fast_dev_run(tmp_path, loaders, fast_dev_run):
    model = TinyCNN()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [FeatureMapCallback(every_n_steps=1)], fast_dev_run=fast_dev_run)
        trainer.fit(model, *loaders)
    assert model.train_steps == int(fast_dev_run)
    assert all(fm_tags(read_events(path.parent)) == [] for path in event_files(tmp_path))
    assert not list(tmp_path.rglob("fm_callback"))
    assert not [w for w in caught if "fm_callback" in str(w.message)]


# ---- where it writes --------------------------------------------------------------------------------------


def fm_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "no TensorBoardLogger" in str(w.message)]


@pytest.mark.parametrize("extra_csv", [False, True])
def test_writes_through_the_runs_tensorboard_logger(tmp_path, loaders, extra_csv):
    tb_logger = TensorBoardLogger(tmp_path, name="tb")
    logger = [CSVLogger(tmp_path, name="csv"), tb_logger] if extra_csv else tb_logger
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [FeatureMapCallback()], logger=logger, max_epochs=2)
        trainer.fit(TinyCNN(), *loaders)
    assert fm_warnings(caught) == []
    files = event_files(tmp_path)
    assert files == event_files(tb_logger.log_dir) and len(files) == 1  # one file: the logger's own
    events = read_events(tb_logger.log_dir)
    assert "val_loss" in events.scalars and "feature_maps/conv1" in events.images
    assert not list(tmp_path.rglob("fm_callback"))


def test_without_tensorboard_logger_warns_once_and_writes_under_the_log_dir(tmp_path, loaders):
    logger = CSVLogger(tmp_path, name="csv")  # (with logger=False the callback refuses to run: test_lightning_citizen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning would be counted, not folded
        trainer = make_trainer(tmp_path, [FeatureMapCallback()], logger=logger, max_epochs=3)
        trainer.fit(TinyCNN(), *loaders)
    messages = fm_warnings(caught)
    assert len(messages) == 1, messages
    own_dir = Path(trainer.log_dir) / "fm_callback"
    assert str(own_dir) in messages[0]
    assert own_dir.parent == Path(logger.log_dir)
    assert event_files(tmp_path) == event_files(own_dir) != []
    events = read_events(own_dir)
    for kind, tags in contract_tags().items():
        for tag in tags:
            assert events.steps(kind, tag) == [0, 4, 8, 12], tag
    assert events.steps("images", "probe/input") == [0]


# ---- errors before the first training epoch ---------------------------------------------------------------


class DictImages(Dataset):
    """Samples as dicts whose keys the default input reader does not know."""

    def __init__(self, n: int = 16) -> None:
        self.data = tiny_dataset(n)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = self.data[i]
        return {"pixels": x, "target": y}


class DictCNN(TinyCNN):
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["pixels"], batch["target"]), batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step((batch["pixels"], batch["target"]), batch_idx)


def dict_loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(DictImages(16), batch_size=8), DataLoader(DictImages(8), batch_size=8)


def pick_pixels(batch: dict[str, Any]) -> torch.Tensor:
    return batch["pixels"]


def pick_missing(batch: dict[str, Any]) -> torch.Tensor:
    return batch["image"]


@pytest.mark.parametrize(
    ("options", "dict_batches", "message"),
    [
        ({"layers": ["conv1", "conv3"]}, False, r"no module named 'conv3'.*Closest names: .*conv"),
        ({"layers": "block*"}, False, r"layers: the pattern 'block\*' matches no module"),
        ({"layers": [nn.LSTM]}, False, r"no module of type LSTM"),
        ({"image_layers": ["head.2"]}, False, r"image_layers: head.2 not among the watched layers"),
        ({"probe_batch": torch.zeros(2, 5, 16, 16)}, False, r"batch \(input of shape \(2, 5, 16, 16\).*probe_batch="),
        ({"probe_batch": torch.zeros(2, 3, 16)}, False, r"shape \(2, 3, 16\)"),
        ({}, True, r"keys \['pixels', 'target'\].*Pass input_fn="),
        ({"input_fn": pick_missing}, True, r"input_fn failed on the probe batch \(KeyError"),
    ],
    ids=["unknown-name", "pattern-matches-nothing", "missing-type", "image-layer-not-watched", "wrong-channels",
         "wrong-rank", "dict-batch-without-input-fn", "input-fn-fails"],
)  # fmt: skip
def test_configuration_errors_are_raised_before_the_first_training_epoch(tmp_path, options, dict_batches, message):
    model = DictCNN() if dict_batches else TinyCNN()
    trainer = make_trainer(tmp_path, [FeatureMapCallback(**options)], max_epochs=2)
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, *(dict_loaders() if dict_batches else tiny_loaders()))
    assert model.train_epochs_started == 0 and model.train_steps == 0
    assert all_forward_hooks(model) == {}


def test_dict_batches_work_with_input_fn(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureMapCallback(input_fn=pick_pixels, probe_size=3)], max_epochs=1)
    trainer.fit(DictCNN(), *dict_loaders())
    events = read_events(trainer.logger.log_dir)
    assert events.steps("images", "feature_maps/conv1") == [0, 2]
    assert events.images["probe/input"][0].width == 3 * (32 + 2) - 2  # three samples: probe_size was honoured


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_n_epochs": 2, "every_n_steps": 10}, r"choose one schedule, got every_n_epochs and every_n_steps"),
        ({"epochs": [1], "every_n_epochs": 1}, r"choose one schedule"),
        ({"every_n_epochs": 0}, r"every_n_epochs must be a positive int, got 0"),
        ({"every_n_steps": -3}, r"every_n_steps must be a positive int, got -3"),
        ({"probe_size": 0}, r"probe_size must be a positive int"),
        ({"max_channels": 0}, r"max_channels must be a positive int"),
        ({"max_samples": -1}, r"max_samples must be a positive int"),
        ({"dead_patience": 0}, r"dead_patience must be a positive int"),
        ({"every_n_epochs": 1.5}, r"every_n_epochs must be a positive int, got 1.5"),
        ({"epochs": []}, r"epochs must be a non-empty list of ints >= 0"),
        ({"epochs": [0, -1]}, r"epochs must be a non-empty list of ints >= 0"),
        ({"channel_order": "random"}, r"channel_order must be 'std' or 'index'"),
        ({"cmap": "no-such-map"}, r"unknown matplotlib colormap 'no-such-map'"),
        ({"mean": [0.5, 0.5, 0.5]}, r"mean and std go together"),
    ],
)
def test_bad_arguments_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        FeatureMapCallback(**options)


# ---- hooks and modes around fit ---------------------------------------------------------------------------


class FrozenBN(TinyCNN):
    """Keeps bn1 in eval while the rest trains: a mix of modes the callback must leave as it is."""

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.bn1.eval()


class ModeSpy(pl.Callback):
    """Records every module's mode and hooks at the hooks where the callback runs its probe."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, bool], dict[str, int]]] = []

    def _record(self, where: str, pl_module: pl.LightningModule) -> None:
        self.seen.append((where, module_modes(pl_module), all_forward_hooks(pl_module)))

    def on_train_start(self, trainer, pl_module):
        self._record("train_start", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(f"step {trainer.global_step}", pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._record(f"epoch {trainer.current_epoch}", pl_module)


@pytest.mark.parametrize("schedule", [{"every_n_epochs": 1}, {"every_n_steps": 2}])
def test_modes_as_before_and_no_hook_left_around_every_event_and_after_fit(tmp_path, loaders, schedule):
    model = FrozenBN()
    before, after = ModeSpy(), ModeSpy()
    trainer = make_trainer(tmp_path, [before, FeatureMapCallback(**schedule), after], max_epochs=2)
    trainer.fit(model, *loaders)
    assert len(read_events(trainer.logger.log_dir).steps("images", "feature_maps/conv1")) >= 3  # events did happen
    assert [w for w, _, _ in before.seen] == [w for w, _, _ in after.seen]
    for (where, modes_before, _), (_, modes_after, hooks) in zip(before.seen, after.seen, strict=True):
        assert modes_after == modes_before, where
        assert hooks == {}, where
    mixed = [modes for where, modes, _ in before.seen if where.startswith("step")]
    assert all(m["bn1"] is False and m["conv1"] is True and m[""] is True for m in mixed)
    assert all_forward_hooks(model) == {}


def test_a_callback_reused_in_a_new_trainer_logs_that_fit_in_full(tmp_path, loaders):
    """A fresh Trainer counts steps from 0 again: its events must not be skipped as already seen."""
    model, callback = TinyCNN(), FeatureMapCallback()
    for name in ("first", "second"):
        trainer = make_trainer(tmp_path, [callback], logger=TensorBoardLogger(tmp_path, name=name), max_epochs=1)
        trainer.fit(model, *loaders)
        assert read_events(trainer.logger.log_dir).steps("images", "feature_maps/conv1") == [0, 4], name
