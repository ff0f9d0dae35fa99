"""A 2-process CPU fit (gloo) of a model whose layers are made in ``configure_model``, run as a script.

``python tests/strategy_fit.py ddp|fsdp2 OUT``. A script, because Lightning starts the other process of ``ddp`` and
of ``ModelParallelStrategy`` by running the command line again (under pytest that would rerun the tests). The model
has BatchNorm without SyncBatchNorm and each rank trains on its own data, so its running statistics (and what the
probe measures) differ per rank. Under DDP the probe's second forward fails on rank 1 only (step 2). Each rank
saves its ``callback_metrics`` and its own probe statistics to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fm_callback import FeatureMapCallback


class BuiltLate(pl.LightningModule):
    """Creates its layers in configure_model, Lightning's pattern for large models; FSDP2 shards each conv."""

    def __init__(self, fail_on_rank_1: int = 0) -> None:
        super().__init__()
        self.net: nn.Sequential | None = None
        self.fail_on_rank_1, self.probe_forwards = fail_on_rank_1, 0

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, 2)
        if isinstance(self.trainer.strategy, pl.strategies.ModelParallelStrategy):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for module in (self.net[0], self.net[3], self.head):
                fully_shard(module, mesh=mesh)
            fully_shard(self, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.global_rank == 1:  # the probe's forwards (no validation here)
            self.probe_forwards += 1
            if self.probe_forwards == self.fail_on_rank_1:
                raise RuntimeError("probe forward failed on rank 1 only")
        return self.head(self.net(x).mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Report(pl.Callback):
    """Each rank saves the scalars EarlyStopping would see, and the probe's statistics on its own model."""

    def __init__(self, fm: FeatureMapCallback, out: Path) -> None:
        self.fm, self.out = fm, out

    def on_train_end(self, trainer, pl_module):
        own = self.fm._run_probe(trainer)
        torch.save(
            {
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "own_mean": {name: report.channel_mean for name, report in own.items()},
                "event_steps": [h["step"] for h in self.fm.tracker.history],
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


def main(strategy: str, out: Path) -> None:
    if strategy == "fsdp2":
        strategy = pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    rank = int(__import__("os").environ.get("LOCAL_RANK", 0))
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    data = TensorDataset(torch.rand(16, 3, 8, 8, generator=g) * (1 + 4 * rank), torch.randint(0, 2, (16,), generator=g))
    fm = FeatureMapCallback(every_n_steps=2, probe_size=4)
    trainer = pl.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=TensorBoardLogger(out, name="tb"),
        callbacks=[fm, Report(fm, out)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    model = BuiltLate(fail_on_rank_1=2 if strategy == "ddp" else 0)  # FSDP2: a fault mid-forward would hang
    trainer.fit(model, DataLoader(data, batch_size=4))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
