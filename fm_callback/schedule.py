"""The callback's schedule: the step Lightning's loggers use (the schedule's arguments are checked in
``arguments.py``)."""

from __future__ import annotations

from typing import Any


def logger_step(trainer: Any, batch_ended: bool = False) -> int:
    """The step Lightning's loggers put ``self.log`` values at: training batches that stepped the optimizers.

    ``trainer.global_step`` counts optimizer steps, twice per batch with two optimizers (a GAN); Lightning's own
    logging and ``LearningRateMonitor`` use the epoch loop's count of batches that stepped. ``batch_ended``: called
    from ``on_train_batch_end``, before Lightning counts that batch; it counts when it stepped (not accumulating).
    """
    loop = trainer.fit_loop.epoch_loop
    step = loop._batches_that_stepped
    if batch_ended and not loop._should_accumulate():
        step += 1
    return step
