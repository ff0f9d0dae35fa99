"""Where the callback's pictures, tables and records go on rank 0: a TensorBoard SummaryWriter, and each W&B
and MLflow logger of the Trainer (``wandb_writer.py``, ``mlflow_writer.py``), each behind its own
:class:`~.background.BackgroundWriter`.

The scalars go to every logger through Lightning's logger API (see the callback); here they are written only to a
SummaryWriter of our own, made in a folder of this run alone when the Trainer has no TensorBoardLogger.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from . import background
from . import tensorboard_writer as tb
from .logger_images import LoggerImages
from .mlflow_writer import MlflowImages
from .results import ProbeResult
from .wandb_writer import WandbImages


class EventWriter:
    """Every write goes to the SummaryWriter of the Trainer's first ``TensorBoardLogger`` (else one of our own in
    :func:`own_log_dir`, this run's folder), and to each W&B and MLflow logger of the Trainer.

    Each sits behind a :class:`~.background.BackgroundWriter`: TensorBoard's on a thread when training on an
    accelerator; MLflow's always on a thread (its uploads mostly wait on the tracking server); W&B's on the training
    thread, where Lightning calls ``wandb.Run.log`` too (W&B does not promise that it may be called from two).
    """

    def __init__(self, trainer: pl.Trainer, prefix: str) -> None:
        self.prefix = prefix
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        self.owns_writer = logger is None  # then it also writes the scalars, which no TensorBoardLogger wrote
        pictures = picture_loggers(trainer)
        if logger is not None:
            writer = logger.experiment
        else:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = own_log_dir(trainer)
            where = f"fm_callback: the Trainer has no TensorBoardLogger; writing TensorBoard event files to {log_dir}"
            if pictures:  # the pictures reach W&B or MLflow; the event files serve `fm-callback report` and `view`
                rank_zero_info(f"{where} (for fm-callback view and report)")
            else:
                rank_zero_warn(f"{where}. Add logger=TensorBoardLogger(...) to keep them beside your other logs.")
            writer = SummaryWriter(log_dir)
        threaded = background.write_in_background(trainer.strategy.root_device)  # not when training on the CPU
        self.tensorboard = background.BackgroundWriter(writer, threaded=threaded)
        self.others = [
            background.BackgroundWriter(images, threaded=isinstance(images, MlflowImages)) for images in pictures
        ]

    @property
    def log_dir(self) -> str:
        return str(getattr(self.tensorboard.writer, "log_dir", ""))

    def event(
        self,
        result: ProbeResult,
        step: int,
        table: str,
        record: dict[str, Any],
        metrics: dict[str, float],
        with_input: bool,
    ) -> None:
        """Every tag of one probe event (:func:`~.tensorboard_writer.write_result`); ``metrics``, the event's scalars,
        only into a SummaryWriter of our own (the Trainer's loggers have them)."""
        for writer in (self.tensorboard, *self.others):
            writer.submit(
                tb.write_result,
                result,
                step,
                table,
                record,
                prefix=self.prefix,
                scalars=metrics if self.owns_writer and writer is self.tensorboard else {},
                with_input=with_input,
                what=f"writing step {step}",
            )

    def examples(self, pictures: dict[str, Any], record: dict[str, Any], step: int) -> None:
        """The ``feature_examples/<layer>`` pictures and the examples record of one event, to every writer."""
        for writer in (self.tensorboard, *self.others):
            what = f"writing the examples of step {step}"
            writer.submit(tb.write_examples, pictures, record, step, self.prefix, what=what)

    def end_of_fit(
        self,
        step: int,
        dead_history: list[dict[str, Any]],
        change_history: list[dict[str, Any]],
        similarity: tuple[list[str], list[list[float | None]]] | None,
        similarity_step: int | None,
    ) -> None:
        """The figures of the whole fit: the dead timeline and the layer change map (from two events on), and the
        layers' similarity at the last event (``similarity_step``)."""
        prefix = self.prefix
        for writer in (self.tensorboard, *self.others):
            if len(dead_history) > 1:
                writer.submit(tb.write_timeline, dead_history, step, prefix, what="writing the dead timeline")
            if len(change_history) > 1:
                writer.submit(tb.write_change_map, change_history, step, prefix, what="writing the layer change map")
            if similarity is not None and similarity_step is not None:
                what = "writing the layer similarity"
                writer.submit(tb.write_similarity, *similarity, similarity_step, prefix, what=what)

    def flush(self) -> None:
        """Wait until every queued write is done, and flush the event file; the threads go on."""
        for writer in (self.tensorboard, *self.others):
            writer.flush()

    def close(self) -> None:
        """Finish every queued write, stop the threads, close the SummaryWriter if it is our own."""
        for writer in self.others:
            writer.close()
        self.tensorboard.close(close_writer=self.owns_writer)


def picture_loggers(trainer: pl.Trainer) -> list[LoggerImages]:
    """A writer for each of the Trainer's W&B and MLflow loggers (TensorBoard's is the SummaryWriter itself)."""
    writers: list[LoggerImages] = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            writers.append(WandbImages(logger))
        elif isinstance(logger, MLFlowLogger):
            writers.append(MlflowImages(logger))
    return writers


def own_log_dir(trainer: pl.Trainer) -> str:
    """The folder of this run alone for the event files the callback writes itself (no TensorBoardLogger).

    A ``CSVLogger``'s run folder (``<save_dir>/<name>/version_N``), else a W&B run's folder (beside its ``files``,
    so they are not uploaded), else ``<default_root_dir>/fm_callback/<name>/<version>`` by the first logger's name
    and version (MLflow: experiment and run id), outside every logger's store; always ``.../fm_callback``.
    """
    loggers = trainer.loggers
    csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    wandb = next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
    if csv is not None:
        return os.path.join(csv.log_dir, "fm_callback")
    if wandb is not None:
        return os.path.join(os.path.dirname(wandb.experiment.dir), "fm_callback")
    first: Logger | None = loggers[0] if loggers else None
    name, version = (str(first.name or ""), first.version) if first is not None else ("", None)
    folder = os.path.join(trainer.default_root_dir, "fm_callback", name)
    if version is None:  # a logger without versions: the next free version_N
        version = f"version_{len(os.listdir(folder)) if os.path.isdir(folder) else 0}"
    return os.path.join(folder, str(version))
