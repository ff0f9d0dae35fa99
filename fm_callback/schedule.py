"""The callback's schedule, checked: at the end of every n-th training epoch, of chosen epochs, or every n steps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def check_positive(name: str, value: Any) -> None:
    """A count argument of the callback must be a positive int (``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FeatureMapCallback: {name} must be a positive int, got {value!r}")


def check_schedule(
    every_n_epochs: int | None, epochs: Sequence[int] | None, every_n_steps: int | None
) -> tuple[int | None, list[int] | None, int | None]:
    """The one schedule given, checked: ``(every_n_epochs, epochs, every_n_steps)``, ``epochs`` sorted without
    repeats; none given: every epoch."""
    schedules = {"every_n_epochs": every_n_epochs, "epochs": epochs, "every_n_steps": every_n_steps}
    given = [name for name, value in schedules.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"FeatureMapCallback: choose one schedule, got {' and '.join(given)}")
    if not given:
        return 1, None, None
    if given != ["epochs"]:
        check_positive(given[0], schedules[given[0]])
        return every_n_epochs, None, every_n_steps
    if isinstance(epochs, str) or not isinstance(epochs, Iterable):
        raise ValueError(
            f"FeatureMapCallback: epochs must be a list of epoch indices (0-based), e.g. epochs=[0, 4, 9], "
            f"got {epochs!r}; for an event every n epochs pass every_n_epochs=n"
        )
    epochs = sorted(set(epochs))
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
        raise ValueError(f"FeatureMapCallback: epochs must be a non-empty list of ints >= 0, got {epochs!r}")
    return None, epochs, None


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
