"""A good Lightning citizen: faults lose nothing, a callback serves several runs, a resumed run writes no step
twice, the scalars reach every logger (and EarlyStopping, ModelCheckpoint), two callbacks stay apart, and the
smaller defects (a layer with its own batch size, a forward with two arguments, huge activations) are handled.

Every test runs a real Trainer on the CPU and reads the real event files (or metrics.csv, checkpoints) back.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jsonargparse
import lightning.pytorch as pl
import pytest
import torch
from conftest import SIZE_GUIDANCE, TinyCNN, event_files, make_trainer, read_events, tiny_dataset
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from fm_callback import FeatureMapCallback, FeatureMapProbe, background, names
from fm_callback.report import load_runs
from fm_callback.stats import channel_stats

ROOT = Path(__file__).resolve().parents[1]


def loaders(val_seed: int = 1) -> tuple[DataLoader, DataLoader]:
    """Train (32 images, 4 batches) and val loaders; ``val_seed`` picks other val images, hence another probe."""
    train = DataLoader(tiny_dataset(32, seed=0), batch_size=8, shuffle=True)
    return train, DataLoader(tiny_dataset(8, seed=val_seed), batch_size=8)


def record_steps(logdir: Path, tag: str = names.DEAD_STATE) -> list[int]:
    """Steps of the machine-readable dead-filter records (``fm-callback report`` reads them) under ``logdir``."""
    steps = []
    for path in event_files(logdir):
        acc = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
        acc.Reload()
        if tag in acc.Tags()["tensors"]:
            steps += [e.step for e in acc.Tensors(tag)]
    return sorted(steps)


def writer_threads(before: set[threading.Thread] = frozenset()) -> list[threading.Thread]:
    """The callback's writer threads alive now, leaving out those in ``before``."""
    return [t for t in threading.enumerate() if t.name == "fm_callback-writer" and t not in before]


class Recorder(FeatureMapCallback):
    """FeatureMapCallback that keeps every event's ProbeResult, to check what was shown."""

    def _measure(self, result, step, epoch):
        self.results = getattr(self, "results", [])
        self.results.append(result)
        return super()._measure(result, step, epoch)


# ---- faults lose nothing ----------------------------------------------------------------------------------


class FaultAt(TinyCNN):
    """Raises ``fault`` in the training step at ``step`` (after the events of the steps before it)."""

    def __init__(self, step: int, fault: type[BaseException]) -> None:
        super().__init__()
        self.fault_step, self.fault = step, fault

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.fault_step:
            raise self.fault(f"fault at step {self.fault_step}")
        return super().training_step(batch, batch_idx)


@pytest.fixture
def keep_sigint():
    """Lightning ignores SIGINT after a KeyboardInterrupt (a second Ctrl+C must not stop its shutdown): restore it."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("threaded", [False, True], ids=["training-thread", "writer-thread"])
@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt], ids=["exception", "ctrl-c"])
def test_a_fit_that_fails_keeps_every_event_before_the_fault(tmp_path, monkeypatch, keep_sigint, threaded, fault):
    monkeypatch.setattr(background, "write_in_background", lambda device: threaded)  # the GPU path, on the CPU
    model = FaultAt(step=5, fault=fault)
    trainer = make_trainer(tmp_path, [FeatureMapCallback(every_n_steps=2)], max_epochs=2)
    # Lightning re-raises an exception; after Ctrl+C it exits with status 1.
    expected = (SystemExit, "1") if fault is KeyboardInterrupt else (RuntimeError, "fault at step 5")
    before = set(threading.enumerate())
    with pytest.raises(expected[0], match=expected[1]):
        trainer.fit(model, *loaders())
    assert writer_threads(before) == []
    files = event_files(tmp_path)
    assert len(files) == 1, files  # no second event file opened by a write after the logger closed its writer
    events = read_events(tmp_path)
    assert events.steps("images", "feature_maps/conv1") == [0, 2, 4]
    assert events.steps("scalars", "dead_filters/all") == [0, 2, 4]
    assert record_steps(tmp_path) == [0, 2, 4]


CTRL_C_RUN = """
import os, signal, sys, threading
sys.path.insert(0, "tests")
from conftest import TinyCNN, make_trainer, tiny_dataset
from torch.utils.data import DataLoader
from fm_callback import FeatureMapCallback, background

background.write_in_background = lambda device: True  # the writer thread, as on a GPU


class CtrlC(TinyCNN):
    def on_train_batch_start(self, batch, batch_idx):
        if self.trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)


trainer = make_trainer(sys.argv[1], [FeatureMapCallback(every_n_steps=1)], max_epochs=2)
try:
    trainer.fit(CtrlC(), DataLoader(tiny_dataset(), batch_size=8), DataLoader(tiny_dataset(8, seed=1), batch_size=8))
finally:
    print("threads:", sorted(t.name for t in threading.enumerate()))
"""


def test_ctrl_c_on_the_writer_thread_path_exits_as_lightning_does(tmp_path):
    """A real SIGINT in a child process: Lightning's exit status 1, not an abort at interpreter shutdown."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_RUN, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "fm_callback-writer" not in done.stdout, done.stdout
    assert len(event_files(tmp_path)) == 1
    assert read_events(tmp_path).steps("images", "feature_maps/conv1") == [0, 1, 2, 3, 4, 5]
    assert record_steps(tmp_path) == [0, 1, 2, 3, 4, 5]


def test_setup_closes_a_writer_an_earlier_fit_left_open(tmp_path, monkeypatch):
    """A fit that ended without teardown or on_exception (a hook skipped) leaves no thread behind the next fit."""
    monkeypatch.setattr(background, "write_in_background", lambda device: True)
    fm = FeatureMapCallback()
    monkeypatch.setattr(fm, "teardown", lambda *args, **kwargs: None)  # the first fit ends without it
    before = set(threading.enumerate())
    make_trainer(tmp_path / "a", [fm]).fit(TinyCNN(), *loaders())
    assert len(writer_threads(before)) == 1
    monkeypatch.undo()
    make_trainer(tmp_path / "b", [fm]).fit(TinyCNN(), *loaders())
    assert writer_threads(before) == []
    assert read_events(tmp_path / "a").steps("images", "feature_maps/conv1") == [0, 4]


# ---- reuse, re-fit, resume --------------------------------------------------------------------------------


def test_a_callback_in_a_second_trainer_probes_that_runs_own_data(tmp_path):
    fm = Recorder(max_channels=2, probe_size=4)
    torch.manual_seed(0)
    make_trainer(tmp_path / "a", [fm]).fit(TinyCNN(), *loaders(val_seed=1))
    first_input, first_pins = fm.model_input, fm.pinned_channels

    torch.manual_seed(1)
    model = TinyCNN()
    want = FeatureMapProbe(model, max_channels=2).run(tiny_dataset(8, seed=2).tensors[0][:4])
    assert want["conv1"].channels != first_pins["conv1"]  # the test can tell the two runs' pins apart
    make_trainer(tmp_path / "b", [fm], max_epochs=2).fit(model, *loaders(val_seed=2))
    assert torch.equal(fm.model_input, tiny_dataset(8, seed=2).tensors[0][:4])
    assert not torch.equal(fm.model_input, first_input)
    assert fm.pinned_channels["conv1"] == want["conv1"].channels
    assert [h["step"] for h in fm.tracker.history] == [0, 4, 8]  # this run's events only
    pictures = read_events(tmp_path / "b").images["probe/input"]
    assert [p.step for p in pictures] == [0]


def test_a_second_fit_of_the_same_trainer_goes_on_with_its_history_and_the_new_data(tmp_path):
    fm = FeatureMapCallback(probe_size=4)
    model = TinyCNN()
    trainer = make_trainer(tmp_path, [fm], max_epochs=1)
    trainer.fit(model, *loaders(val_seed=1))
    pins = dict(fm.pinned_channels)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model, *loaders(val_seed=2))  # goes on counting steps: 4 -> 8
    assert trainer.global_step == 8
    assert [h["step"] for h in fm.tracker.history] == [0, 4, 8]
    assert fm.pinned_channels == pins  # a column stays the same filter over the run
    assert torch.equal(fm.model_input, tiny_dataset(8, seed=2).tensors[0][:4])
    events = read_events(tmp_path)
    assert events.steps("images", "feature_maps/conv1") == [0, 4, 8]
    pictures = events.images["probe/input"]
    assert [p.step for p in pictures] == [0, 8]  # written again: the probe batch changed
    assert pictures[0].encoded_image_string != pictures[1].encoded_image_string


class SharedReLU(pl.LightningModule):
    """One ReLU module called twice per forward: ``relu`` and ``relu#1``, 8 channels each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.relu(self.conv2(self.relu(self.conv1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_each_call_of_a_reused_module_keeps_its_own_channels(tmp_path):
    torch.manual_seed(0)
    fm = Recorder(layers=["relu"], max_channels=3)
    make_trainer(tmp_path, [fm], max_epochs=3).fit(SharedReLU(), *loaders())
    first = fm.results[0]
    assert first["relu"].channels != first["relu#1"].channels  # the two calls choose differently
    assert len(fm.results) == 4
    for result in fm.results:
        assert result["relu"].channels == first["relu"].channels
        assert result["relu#1"].channels == first["relu#1"].channels
    assert fm.pinned_channels["relu#1"] == first["relu#1"].channels


@pytest.mark.parametrize(
    "validation",
    [{"check_val_every_n_epoch": 2}, {"val_check_interval": 0.5}],
    ids=["val-every-2-epochs", "val-twice-per-epoch"],
)
def test_a_run_resumed_from_a_checkpoint_saved_at_validation_end_writes_no_step_twice(tmp_path, validation):
    """There ModelCheckpoint saves at validation end, and a resumed run replays that epoch's end."""
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = FeatureMapCallback()
    trainer = make_trainer(tmp_path, [first, ckpt], logger, enable_checkpointing=True, max_epochs=2, **validation)
    trainer.fit(TinyCNN(), *loaders())
    second = FeatureMapCallback()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = make_trainer(tmp_path, [second], logger, max_epochs=4, **validation)
    trainer.fit(TinyCNN(), *loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    events = read_events(tmp_path / "tb")
    assert events.steps("images", "feature_maps/conv1") == [0, 4, 8, 12, 16]
    assert events.steps("scalars", "dead_filters/all") == [0, 4, 8, 12, 16]
    assert record_steps(tmp_path / "tb") == [0, 4, 8, 12, 16]
    assert [h["step"] for h in second.tracker.history] == [0, 4, 8, 12, 16]
    assert events.steps("images", "probe/input") == [0]  # the same probe batch, restored: not written again


def test_a_run_resumed_into_a_new_log_dir_writes_the_probe_input_there(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [FeatureMapCallback(), ckpt], enable_checkpointing=True, max_epochs=1)
    trainer.fit(TinyCNN(), *loaders())
    trainer = make_trainer(tmp_path, [FeatureMapCallback()], max_epochs=2)  # the logger's next version
    trainer.fit(TinyCNN(), *loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert read_events(tmp_path / "tb" / "version_0").steps("images", "probe/input") == [0]
    assert read_events(tmp_path / "tb" / "version_1").steps("images", "probe/input") == [8]


# ---- every logger of the Trainer --------------------------------------------------------------------------


def test_scalars_reach_every_logger_and_the_callback_metrics(tmp_path):
    csv_logger, tb_logger = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(tmp_path, [FeatureMapCallback()], [csv_logger, tb_logger], max_epochs=2)
    trainer.fit(TinyCNN(), *loaders())
    names = ["dead_filters/conv1", "dead_filters/conv2", "dead_filters/all", "dying_filters/conv1"]
    names += ["dying_filters/all", "never_positive/conv2"]
    with open(Path(csv_logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    for name in names:
        assert sorted(int(row["step"]) for row in rows if row.get(name)) == [0, 4, 8], name
        assert isinstance(trainer.callback_metrics[name], torch.Tensor)
    events = read_events(tb_logger.log_dir)
    for name in names:
        assert events.steps("scalars", name) == [0, 4, 8], name  # once per step: not from two writers
    last = {name: float(row[name]) for row in rows for name in names if row.get(name) and row["step"] == "8"}
    assert last == pytest.approx({name: float(trainer.callback_metrics[name]) for name in names})


class DyingOnSchedule(TinyCNN):
    """Weights never move (lr 0); at the start of epoch e, the first ``DEAD[e]`` filters of conv2 are made constant
    (weight 0, bias 0.5), so the dead share over conv1 + conv2 (12 channels) is ``DEAD[e] / 12`` at epoch e's end."""

    DEAD = [2, 0, 1, 1, 1, 1]

    def __init__(self) -> None:
        super().__init__(lr=0.0)
        self.original = (self.conv2.weight.detach().clone(), self.conv2.bias.detach().clone())

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        k = self.DEAD[self.current_epoch]
        with torch.no_grad():
            self.conv2.weight.copy_(self.original[0])
            self.conv2.bias.copy_(self.original[1])
            self.conv2.weight[:k] = 0
            self.conv2.bias[:k] = 0.5


def test_early_stopping_and_model_checkpoint_watch_the_dead_share(tmp_path):
    # EarlyStopping first in the list: it still sees the event of the epoch it judges.
    stop = EarlyStopping(monitor="dead_filters/all", mode="min", patience=1)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="dead_filters/all", mode="min", save_top_k=1)
    trainer = make_trainer(
        tmp_path, [stop, FeatureMapCallback(), best], enable_checkpointing=True, max_epochs=len(DyingOnSchedule.DEAD)
    )
    trainer.fit(DyingOnSchedule(), *loaders())
    # dead share 2/12, 0, 1/12 (worse), 1/12 (no better: patience 1 spent) -> stops after epoch 2
    assert trainer.current_epoch == 3 and trainer.global_step == 12 and stop.stopped_epoch == 2
    assert float(best.best_model_score) == 0.0
    assert Path(best.best_model_path).name == "epoch=1-step=8.ckpt"
    assert float(stop.best_score) == 0.0


def test_without_a_logger_the_callback_refuses_to_run(tmp_path):
    model = TinyCNN()
    trainer = make_trainer(tmp_path, [FeatureMapCallback()], logger=False)
    with pytest.raises(MisconfigurationException, match=r"no logger \(logger=False\).*logger=TensorBoardLogger"):
        trainer.fit(model, *loaders())
    assert model.train_steps == 0
    assert event_files(tmp_path) == []


def test_two_callbacks_with_prefixes_stay_apart(tmp_path):
    """Same layers and schedule: without prefixes they would share every tag (and a checkpoint key)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    a, b = FeatureMapCallback(prefix="a", max_channels=2), FeatureMapCallback(prefix="b/", max_samples=1)
    assert a.state_key != b.state_key and FeatureMapCallback().state_key == FeatureMapCallback(prefix="").state_key
    trainer = make_trainer(tmp_path, [a, b, ckpt], enable_checkpointing=True, max_epochs=1)
    trainer.fit(TinyCNN(), *loaders())
    events = read_events(trainer.logger.log_dir)
    for prefix in ("a", "b"):
        for kind, name in [("images", "feature_maps/conv1"), ("images", "feature_maps_overlay/conv2")]:
            assert events.steps(kind, f"{prefix}/{name}") == [0, 4], (prefix, name)
        assert events.steps("images", f"{prefix}/probe/input") == [0]
        assert events.steps("scalars", f"{prefix}/dead_filters/all") == [0, 4]
        assert events.steps("histograms", f"{prefix}/channel_mean/conv1") == [0, 4]
        assert f"{prefix}/dead_filters/all" in trainer.callback_metrics
        assert record_steps(trainer.logger.log_dir, f"{prefix}/{names.DEAD_STATE}") == [0, 4]
    # each with its own settings: b shows one probe sample (one row per band), a shows four
    assert events.images["a/feature_maps/conv1"][0].height > events.images["b/feature_maps/conv1"][0].height
    assert not [tag for kind in ("images", "scalars", "histograms") for tag in events.tags(kind, "feature_maps")]
    assert not [tag for tag in events.tags("scalars") if tag.startswith(("dead_filters", "dying_filters"))]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert {a.state_key, b.state_key} <= set(saved)
    # fm-callback report shows each callback's records as a run of its own, not merged by step
    runs = load_runs(tmp_path)
    assert sorted(run.name for run in runs) == ["tb/version_0 [a]", "tb/version_0 [b]"]
    assert all([r["step"] for r in run.records] == [0, 4] for run in runs)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"prefix": "my run"}, ValueError, r"prefix must be a str of letters.*got 'my run'.*prefix='student'"),
        ({"prefix": 3}, ValueError, r"prefix must be a str"),
        ({"forward_fn": "model.forward"}, TypeError, r"forward_fn must be callable, got str"),
    ],
)
def test_bad_new_arguments_fail_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        FeatureMapCallback(**options)


# ---- smaller defects --------------------------------------------------------------------------------------


class FlipAugmented(TinyCNN):
    """Averages its prediction over the image and its mirror: layers after the ``cat`` see twice the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        n = x.shape[0]
        x = self.stem(x)
        both = super().forward(torch.cat([x, x.flip(3)]))
        return both.view(2, n, -1).mean(dim=0)


def test_a_layer_with_its_own_batch_size_gets_no_overlay_and_the_rest_is_logged(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureMapCallback(probe_size=2)], max_epochs=1)
    trainer.fit(FlipAugmented(), *loaders())
    events = read_events(trainer.logger.log_dir)
    assert events.tags("images", "feature_maps_overlay") == ["feature_maps_overlay/stem"]
    for layer in ("stem", "conv1", "conv2"):
        assert events.steps("images", f"feature_maps/{layer}") == [0, 4], layer
        assert events.steps("scalars", f"dead_filters/{layer}") == [0, 4], layer


class Gated(TinyCNN):
    """A forward with two arguments: the images and a per-sample gain."""

    def forward(self, x, gain):
        return super().forward(x * gain.view(-1, 1, 1, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_steps += 1
        return nn.functional.cross_entropy(self(x, torch.ones(len(x))), y)

    def validation_step(self, batch, batch_idx):
        pass


def with_gain(batch):
    """input_fn: the images and a gain of 2 per sample."""
    return batch[0], torch.full((len(batch[0]),), 2.0)


def call_gated(model, model_input):
    """forward_fn: the model takes the images and the gain as two arguments."""
    return model(*model_input)


def test_forward_fn_runs_a_model_that_takes_two_arguments(tmp_path):
    fm = Recorder(input_fn=with_gain, forward_fn=call_gated, probe_size=4)
    model = Gated()
    trainer = make_trainer(tmp_path, [fm], max_epochs=1)
    trainer.fit(model, *loaders())
    assert model.train_steps == 4 and len(fm.results) == 2
    x = tiny_dataset(8, seed=1).tensors[0][:4]
    with torch.no_grad():
        want = model.conv1(2 * x).mean(dim=(0, 2, 3))  # the probe saw the gain of input_fn
    assert torch.allclose(fm.results[-1]["conv1"].channel_mean, want, atol=1e-5)
    events = read_events(trainer.logger.log_dir)
    assert events.steps("images", "feature_maps/conv1") == [0, 4]
    assert events.steps("images", "probe/input") == [0]

    # The same function for the framework-free probe, and by import path in a config (LightningCLI, YAML).
    result = FeatureMapProbe(model, forward_fn=call_gated).run(with_gain((x,)))
    assert torch.allclose(result["conv1"].channel_mean, fm.results[-1]["conv1"].channel_mean)
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(FeatureMapCallback, "fm")
    config = parser.parse_args(["--fm.forward_fn=test_lightning_citizen.call_gated", "--fm.prefix=student"])
    built = parser.instantiate_classes(config).fm
    assert built.probe_options["forward_fn"] is call_gated and built.prefix == "student"


def test_std_of_huge_finite_activations_is_finite():
    """Float32 squares overflow above ~1.8e19; the statistics of finite values stay finite (and right)."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1e20
    x[:, 2] = 3e38  # a constant channel near float32's largest value
    for layout in (x, x.to(memory_format=torch.channels_last), x.transpose(2, 3)):
        stats = channel_stats(layout)
        reference = x.double().std(dim=(0, 2, 3), correction=0)
        assert torch.isfinite(stats.std).all() and torch.isfinite(stats.mean).all()
        assert torch.allclose(stats.std.double(), reference, rtol=1e-5)
        assert stats.dead.tolist() == [False, False, True] and stats.nonfinite.tolist() == [0, 0, 0]


def test_probe_input_is_written_once_per_run(tmp_path):
    trainer = make_trainer(tmp_path, [FeatureMapCallback(every_n_steps=2)], max_epochs=2)
    trainer.fit(TinyCNN(), *loaders())
    events = read_events(trainer.logger.log_dir)
    assert events.steps("images", "feature_maps/conv1") == [0, 2, 4, 6, 8]
    assert events.steps("images", "probe/input") == [0]
