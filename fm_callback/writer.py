"""Where the callback's pictures, tables and records go on rank 0: a TensorBoard SummaryWriter, in the background.

The scalars go to every logger through Lightning's logger API (see the callback); here they are written only to a
SummaryWriter of our own, made when the Trainer has no TensorBoardLogger.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from . import background
from . import tensorboard as tb
from .probe import ProbeResult


class EventWriter:
    """The SummaryWriter of the Trainer's first ``TensorBoardLogger``, else one of our own under the Trainer's log
    dir, behind a :class:`~.background.BackgroundWriter` (a thread when training on an accelerator)."""

    def __init__(self, trainer: pl.Trainer, prefix: str) -> None:
        self.prefix = prefix
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        self.owns_writer = logger is None  # then it also writes the scalars, which no TensorBoardLogger wrote
        if logger is not None:
            writer = logger.experiment
        else:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "fm_callback")
            rank_zero_warn(
                f"fm_callback: the Trainer has no TensorBoardLogger; writing feature maps to {log_dir}. "
                "Add logger=TensorBoardLogger(...) to keep them beside your other logs."
            )
            writer = SummaryWriter(log_dir)
        threaded = background.write_in_background(trainer.strategy.root_device)  # not when training on the CPU
        self.background = background.BackgroundWriter(writer, threaded=threaded)

    @property
    def log_dir(self) -> str:
        return str(getattr(self.background.writer, "log_dir", ""))

    def event(
        self,
        result: ProbeResult,
        step: int,
        table: str,
        record: dict[str, Any],
        metrics: dict[str, float],
        with_input: bool,
    ) -> None:
        """Every tag of one probe event (:func:`~.tensorboard.write_result`); ``metrics``, the event's scalars, only
        into a SummaryWriter of our own (the Trainer's loggers have them)."""
        self.background.submit(
            tb.write_result,
            result,
            step,
            table,
            record,
            prefix=self.prefix,
            scalars=metrics if self.owns_writer else {},
            with_input=with_input,
            what=f"writing step {step}",
        )

    def examples(self, pictures: dict[str, Any], record: dict[str, Any], step: int) -> None:
        """The ``feature_examples/<layer>`` pictures and the examples record of one event."""
        submit = self.background.submit
        submit(tb.write_examples, pictures, record, step, self.prefix, what=f"writing the examples of step {step}")

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
        prefix, submit = self.prefix, self.background.submit
        if len(dead_history) > 1:
            submit(tb.write_timeline, dead_history, step, prefix, what="writing the dead timeline")
        if len(change_history) > 1:
            submit(tb.write_change_map, change_history, step, prefix, what="writing the layer change map")
        if similarity is not None and similarity_step is not None:
            submit(tb.write_similarity, *similarity, similarity_step, prefix, what="writing the layer similarity")

    def close(self) -> None:
        """Finish every queued write, stop the thread, close the SummaryWriter if it is our own."""
        self.background.close(close_writer=self.owns_writer)
