"""Where it runs: DDP on CPU with 2 processes (gloo), pickling, and bf16-mixed precision.

In the DDP run the dataset and the model differ per rank (a rank-dependent offset), so a probe batch read on
each rank instead of broadcast from rank 0 would differ, and so would the statistics. Each rank writes what it
saw to a file, since ``ddp_spawn`` children do not share the test's objects.
"""

from __future__ import annotations

import faulthandler
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fm_callback import FeatureMapCallback

SIZE = {"images": 0, "scalars": 0, "histograms": 0, "tensors": 0}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RankDataset(Dataset):
    """Images offset by the rank that reads them: without a broadcast, each rank would probe different data."""

    def __init__(self, size: int = 16) -> None:
        self.images = torch.randn(size, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index] + 100.0 * _rank(), index % 2


class CountingNet(pl.LightningModule):
    """Counts the forwards it runs in eval mode outside validation: those are the probe's."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.probe_forwards = 0

    def forward(self, x):
        features = self.net(x)
        if not self.training and not self.trainer.validating and not self.trainer.sanity_checking:
            self.probe_forwards += 1
            self.probe_dtype = features.dtype
        return self.head(features.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Report(pl.Callback):
    """Each rank saves its probe input, the probe forwards it ran and the events it recorded."""

    def __init__(self, fm: FeatureMapCallback, out: str) -> None:
        self.fm, self.out = fm, out

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "rank": trainer.global_rank,
                "world": trainer.world_size,
                "model_input": self.fm.model_input,
                "probe_forwards": pl_module.probe_forwards,
                "event_steps": [h["step"] for h in self.fm.tracker.history],
                "dead_metric": trainer.callback_metrics.get("dead_filters/all"),
                "mean": {n: r.channel_mean for n, r in self.fm._probe.run(self.fm.model_input).items()},
            },
            Path(self.out) / f"rank{trainer.global_rank}.pt",
        )


def two_process_trainer(tmp_path: Path, strategy: str, callbacks: list, **options) -> pl.Trainer:
    """Two CPU processes for two epochs, logging to TensorBoard under ``tmp_path/tb``."""
    return pl.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **options,
    )


def _images_per_step(logdir: Path, prefix: str) -> dict[str, list[int]]:
    files = sorted(logdir.rglob("events.out.tfevents.*"))
    steps: dict[str, list[int]] = {}
    for file in files:
        acc = EventAccumulator(str(file), size_guidance=SIZE)
        acc.Reload()
        for tag in acc.Tags()["images"]:
            if tag.startswith(prefix):
                steps.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    return steps


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_ddp_two_cpu_processes(tmp_path, strategy):
    faulthandler.dump_traceback_later(300, exit=True)  # a hang fails CI instead of stalling it
    try:
        fm = FeatureMapCallback(every_n_steps=2, probe_size=4)
        pickle.dumps(fm)  # picklable before a fit (ddp_spawn pickles it too)
        trainer = two_process_trainer(tmp_path, strategy, [fm, Report(fm, str(tmp_path))], log_every_n_steps=1)
        loader = DataLoader(RankDataset(), batch_size=4, shuffle=True)
        trainer.fit(CountingNet(), loader)
    finally:
        faulthandler.cancel_dump_traceback_later()
    pickle.loads(pickle.dumps(fm))  # and after

    reports = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world"] for r in reports] == [2, 2]
    # 16 samples / 2 ranks / batch 4 = 2 steps per epoch, 4 in all: events at steps 0, 2, 4.
    for report in reports:
        assert report["event_steps"] == [0, 2, 4], report
        assert report["probe_forwards"] == 3, "the probe forward must run on every rank, once per event"
    # Same probe batch on both ranks: rank 0's samples (no +100 offset), broadcast to rank 1.
    assert torch.equal(reports[0]["model_input"], reports[1]["model_input"])
    assert reports[0]["model_input"].abs().max() < 50
    # DDP keeps the weights in sync, so the same batch gives the same statistics on both ranks.
    for name, mean in reports[0]["mean"].items():
        assert torch.allclose(mean, reports[1]["mean"][name])
    # ... and the same scalars for EarlyStopping and ModelCheckpoint, which decide on every rank.
    assert reports[0]["dead_metric"] is not None and reports[0]["dead_metric"] == reports[1]["dead_metric"]

    # Only rank 0 writes: every event is in the event files exactly once.
    steps = _images_per_step(tmp_path / "tb", "feature_maps/")
    assert set(steps) == {"feature_maps/net.0", "feature_maps/net.2"}
    for tag, logged in steps.items():
        assert sorted(logged) == [0, 2, 4], (tag, logged)
    assert sorted(_images_per_step(tmp_path / "tb", "probe/input")["probe/input"]) == [0]  # the same picture
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*"))), size_guidance=SIZE)
    acc.Reload()
    assert [e.step for e in acc.Scalars("dead_filters/all")] == [0, 2, 4]


def test_ddp_configuration_error_on_rank_0_reaches_every_rank(tmp_path):
    """Rank 0 reads the probe batch; its error is broadcast, so rank 1 raises too instead of waiting for it."""
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        trainer = pl.Trainer(
            strategy="ddp_fork",
            accelerator="cpu",
            devices=2,
            max_epochs=1,
            logger=TensorBoardLogger(tmp_path),  # (with logger=False the callback would refuse to run at setup)
            callbacks=[RaisedOn(str(tmp_path), probe_batch="cat.png")],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        with pytest.raises(Exception, match="cannot find the model input in a batch of type str"):
            trainer.fit(CountingNet(), DataLoader(RankDataset(), batch_size=4))
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert sorted(p.name for p in tmp_path.glob("raised-on-rank*")) == ["raised-on-rank0", "raised-on-rank1"]


class RaisedOn(FeatureMapCallback):
    """FeatureMapCallback that leaves a file per rank on which its set-up raised the configuration error."""

    def __init__(self, out: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out = out

    def on_train_start(self, trainer, pl_module):
        try:
            super().on_train_start(trainer, pl_module)
        except ValueError as err:
            if "probe_batch=" in str(err):
                (Path(self.out) / f"raised-on-rank{trainer.global_rank}").touch()
            raise


def test_callback_pickles_before_during_and_after_a_fit(tmp_path):
    """No hook, lambda, writer or thread is held where pickling would reach it."""
    fm = FeatureMapCallback(every_n_steps=1, probe_size=2)
    seen = []

    class PickleMidFit(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(len(pickle.dumps(fm)))

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path),
        callbacks=[fm, PickleMidFit()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(CountingNet(), DataLoader(RankDataset(8), batch_size=4))
    assert len(seen) == 2
    copy = pickle.loads(pickle.dumps(fm))
    assert torch.equal(copy.model_input, fm.model_input)
    assert copy.last_event_step == fm.last_event_step == 2


def test_bf16_mixed_on_cpu_statistics_are_float32(tmp_path):
    fm = FeatureMapCallback(probe_size=4)
    captured = {}

    class Capture(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            with trainer.precision_plugin.forward_context():
                captured["autocast_dtype"] = torch.get_autocast_dtype("cpu")
                captured["autocast"] = torch.is_autocast_enabled("cpu")
            captured["result"] = fm._run_probe(trainer)

    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=TensorBoardLogger(tmp_path),
        callbacks=[fm, Capture()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = CountingNet()
    trainer.fit(model, DataLoader(RankDataset(8), batch_size=4))
    assert captured["autocast"] and captured["autocast_dtype"] == torch.bfloat16
    assert model.probe_dtype == torch.bfloat16  # the probe's forward ran under the trainer's autocast
    result = captured["result"]
    assert result.names == ["net.0", "net.2"]
    for report in result.values():
        assert report.channel_mean.dtype == torch.float32
        assert report.channel_std.dtype == torch.float32
        assert report.zero_fraction.dtype == torch.float32
        assert report.stats.min.dtype == torch.float32
        assert report.grid.dtype == torch.uint8
        assert torch.isfinite(report.channel_mean).all()
    assert len(fm.tracker.history) == 3  # step 0 and two epochs, none skipped
    acc = EventAccumulator(str(next(Path(tmp_path).rglob("events.out.tfevents.*"))), size_guidance=SIZE)
    acc.Reload()
    assert [e.step for e in acc.Images("feature_maps/net.0")] == [0, 2, 4]


class ExamplesReport(pl.Callback):
    """Each rank saves its examples pool, the probe forwards it ran and the top examples it found at the end."""

    def __init__(self, fm: FeatureMapCallback, out: str) -> None:
        self.fm, self.out = fm, out

    def on_train_end(self, trainer, pl_module):
        found = self.fm.examples_pass.run(trainer, self.fm.probe_size)
        torch.save(
            {
                "pool": self.fm.examples_pass.pool,
                "probe_forwards": pl_module.probe_forwards,
                "indices": {name: examples.indices for name, examples in found.items()},
            },
            Path(self.out) / f"examples{trainer.global_rank}.pt",
        )


def test_ddp_examples_pass_runs_on_every_rank_over_rank_0s_pool(tmp_path):
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        fm = FeatureMapCallback(every_n_steps=2, probe_size=4, examples=2, examples_pool=8)
        trainer = two_process_trainer(tmp_path, "ddp_fork", [fm, ExamplesReport(fm, str(tmp_path))])
        trainer.fit(CountingNet(), DataLoader(RankDataset(), batch_size=4, shuffle=True))
    finally:
        faulthandler.cancel_dump_traceback_later()
    reports = [torch.load(tmp_path / f"examples{r}.pt", weights_only=False) for r in range(2)]
    assert torch.equal(reports[0]["pool"], reports[1]["pool"]), "rank 0's pool, broadcast"
    assert reports[0]["pool"].shape[0] == 8 and reports[0]["pool"].abs().max() < 50
    # Every forward on every rank: per event 1 probe + 2 pool chunks, 3 events, the radius measured once per layer
    # (2), the pass of ExamplesReport (2 chunks).
    assert [r["probe_forwards"] for r in reports] == [3 * 3 + 2 + 2] * 2
    for name, indices in reports[0]["indices"].items():
        assert torch.equal(indices, reports[1]["indices"][name])
    steps = _images_per_step(tmp_path / "tb", "feature_examples/")
    assert steps == {"feature_examples/net.0": [0, 2, 4], "feature_examples/net.2": [0, 2, 4]}
