"""The callback's schedule: an event at the end of every n-th training epoch, of chosen epochs, or every n steps,
at the step Lightning's loggers use (the schedule's arguments are checked in ``arguments.py``)."""

from __future__ import annotations

from typing import Any


def due_after_batch(
    trainer: Any, step: int, every_n_epochs: int | None, epochs: list[int] | None, every_n_steps: int | None
) -> bool:
    """Whether the training batch that just ended (``on_train_batch_end``, at ``step``) brings an event: every n
    steps, or after the last batch of a due epoch."""
    if every_n_steps is not None:
        return step > 0 and step % every_n_steps == 0
    # An epoch's event comes after its last batch, before the epoch-end validation: a checkpoint saved at
    # validation end (val_check_interval < 1, check_val_every_n_epoch > 1) then holds it, and a run
    # resumed from there, which replays on_train_epoch_end, does not log that step again. EarlyStopping
    # and ModelCheckpoint see this event's scalars wherever they are in the callback list.
    is_last = getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False)
    return is_last and epoch_due(trainer.current_epoch, every_n_epochs, epochs)


def due_at_epoch_end(
    trainer: Any, every_n_epochs: int | None, epochs: list[int] | None, every_n_steps: int | None
) -> bool:
    """Whether the training epoch that just ended brings an event: one cut short (max_steps, a stop request) had no
    last batch, so its event comes here (one that had comes once: the callback skips a step already logged)."""
    return every_n_steps is None and epoch_due(trainer.current_epoch, every_n_epochs, epochs)


def epoch_due(epoch: int, every_n_epochs: int | None, epochs: list[int] | None) -> bool:
    """Whether epoch ``epoch`` (0-based) is one of ``epochs``, or else the n-th of ``every_n_epochs``."""
    return epoch in epochs if epochs is not None else (epoch + 1) % every_n_epochs == 0


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
