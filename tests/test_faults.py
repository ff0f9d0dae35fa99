"""Faults inside one event: the model's forward, the rendering, the disk. Each warns with the reason, skips that
event, and training goes on, with hooks removed and modes restored. Configuration errors still raise early.

The faults are real where that is possible (a model that raises on its n-th probe forward); rendering and a full
disk are injected into the real objects (a render function that raises once, a real SummaryWriter whose writes
raise ``OSError(ENOSPC)``), since neither can be produced on demand in a test.
"""

from __future__ import annotations

import errno
import warnings

import pytest
import torch
from conftest import TinyCNN, all_forward_hooks, make_trainer, module_modes, read_events, tiny_loaders
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from fm_callback import FeatureMapCallback, render


class FailingProbeForward(TinyCNN):
    """Raises on the ``fail_on``-th forward run in eval mode outside validation (the probe's forwards)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.probe_calls = 0
        self.frozen = torch.nn.BatchNorm2d(3)  # kept in eval mode while the model trains

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        if not self.training and not self.trainer.validating and not self.trainer.sanity_checking:
            self.probe_calls += 1
            if self.probe_calls == self.fail_on:
                raise RuntimeError(f"probe forward {self.fail_on} exploded")
        return super().forward(self.frozen(x))


class Watch(FeatureMapCallback):
    """FeatureMapCallback that records, after each of its epoch-end hooks, the hooks and modes left behind."""

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        self.after = getattr(self, "after", [])
        self.after.append((all_forward_hooks(pl_module), module_modes(pl_module)))


def _messages(record) -> list[str]:
    return [str(w.message) for w in record if "fm_callback" in str(w.message)]


def test_model_raising_in_one_event_skips_only_that_event(tmp_path):
    model = FailingProbeForward(fail_on=3)  # 1: set-up/step 0, 2: epoch 0, 3: epoch 1 (fails), 4: epoch 2
    fm = Watch()
    trainer = make_trainer(tmp_path, [fm], max_epochs=3)
    modes = module_modes(model.train())
    with pytest.warns(UserWarning) as record:
        trainer.fit(model, *tiny_loaders())
    failed = [m for m in _messages(record) if "failed and was skipped" in m]
    assert len(failed) == 1
    assert "step 8" in failed[0] and "RuntimeError: probe forward 3 exploded" in failed[0]
    assert "training goes on" in failed[0]
    assert trainer.global_step == 12 and model.train_steps == 12  # training finished
    assert [h["step"] for h in fm.tracker.history] == [0, 4, 12]
    events = read_events(tmp_path)
    assert events.steps("images", "feature_maps/conv1") == [0, 4, 12]
    assert events.steps("scalars", "dead_filters/all") == [0, 4, 12]
    # After every epoch end, the failed one included: no hook left, every mode as in training.
    assert len(fm.after) == 3
    for hooks, after_modes in fm.after:
        assert hooks == {}
        assert after_modes == modes
    assert not model.frozen.training


def test_rendering_raising_in_one_event_skips_only_that_event(tmp_path, monkeypatch):
    real = render.render_feature_grid
    calls = {"n": 0}

    def render_once_broken(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first picture of the epoch-0 event (step 0 draws two: conv1, conv2)
            raise MemoryError("no memory for the grid")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_feature_grid", render_once_broken)
    model = TinyCNN()
    fm = Watch()
    trainer = make_trainer(tmp_path, [fm], max_epochs=2)
    modes = module_modes(model.train())
    with pytest.warns(UserWarning) as record:
        trainer.fit(model, *tiny_loaders())
    failed = [m for m in _messages(record) if "failed and was skipped" in m]
    assert len(failed) == 1 and "MemoryError: no memory for the grid" in failed[0] and "step 4" in failed[0]
    assert trainer.global_step == 8
    assert read_events(tmp_path).steps("images", "feature_maps/conv1") == [0, 8]
    for hooks, after_modes in fm.after:
        assert hooks == {} and after_modes == modes


class DiskFullWriter(SummaryWriter):
    """A real SummaryWriter whose image writes fail with ENOSPC from the ``fail_from``-th image on."""

    def __init__(self, *args, fail_from: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images, self.fail_from = 0, fail_from

    def add_image(self, *args, **kwargs):
        self.images += 1
        if self.images >= self.fail_from:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().add_image(*args, **kwargs)


class DiskFullLogger(TensorBoardLogger):
    def __init__(self, *args, fail_from: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_from = fail_from
        self._writer = None

    @property
    def experiment(self):
        if self._writer is None:
            self._writer = DiskFullWriter(self.log_dir, fail_from=self.fail_from)
        return self._writer


def test_full_disk_warns_and_training_goes_on(tmp_path):
    model = TinyCNN()
    fm = FeatureMapCallback(every_n_steps=2)
    logger = DiskFullLogger(tmp_path, name="tb", fail_from=4)  # the step-0 event writes 3 images, then full
    trainer = make_trainer(tmp_path, [fm], logger=logger, max_epochs=2)
    with pytest.warns(UserWarning) as record:
        trainer.fit(model, *tiny_loaders())
    full = [m for m in _messages(record) if "No space left on device" in m]
    assert full, _messages(record)
    assert all("training goes on" in m for m in full)
    assert "writing step" in full[0]
    assert trainer.global_step == 8 and model.train_steps == 8
    assert [h["step"] for h in fm.tracker.history] == [0, 2, 4, 6, 8]  # every probe ran; only writes failed
    assert read_events(tmp_path).steps("images", "feature_maps/conv1") == [0]  # what was written before is kept


def test_configuration_errors_still_raise_before_the_first_epoch(tmp_path):
    """A probe batch the model cannot take is not a transient fault: fit stops before training."""
    model = TinyCNN()
    fm = FeatureMapCallback(probe_batch=torch.randn(2, 1, 16, 16))  # 1 channel, the model takes 3
    trainer = make_trainer(tmp_path, [fm], max_epochs=2)
    with pytest.raises(ValueError, match="probe batch .*could not go through the model"):
        trainer.fit(model, *tiny_loaders())
    assert model.train_steps == 0
    assert all_forward_hooks(model) == {}


def test_probe_failure_inside_fit_leaves_no_warning_when_nothing_fails(tmp_path):
    """The control for the tests above: the same runs without a fault warn nothing of the kind."""
    model = FailingProbeForward(fail_on=-1)
    trainer = make_trainer(tmp_path, [FeatureMapCallback()], max_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, *tiny_loaders())
    assert not [m for m in _messages(record) if "failed" in m]
    assert read_events(tmp_path).steps("images", "feature_maps/conv1") == [0, 4, 8]
