"""The argument checks of ``FeatureMapCallback(...)``, ``FeatureMapProbe(...)`` and ``DeadFilterTracker(...)``.

Each error names the argument at fault and the fix, before anything runs. A check of the callback starts its message
with ``FeatureMapCallback:`` (``who``), one of the probe or the tracker with the argument itself. Checks against a
vocabulary of their own stay with it: layer specs (``select.py``), layouts (``layout.py``), the tag prefix
(``names.py``), the colormap (``render.py``), the probe batch (``passes.check_input``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .render import colormap_lut

CALLBACK = "FeatureMapCallback"


def _said(who: str, message: str) -> str:
    return f"{who}: {message}" if who else message


def check_positive(name: str, value: Any, who: str = "") -> None:
    """A count must be a positive int (``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(_said(who, f"{name} must be a positive int, got {value!r}"))


def check_options(
    max_channels: Any,
    max_samples: Any,
    channel_order: Any,
    atol: float,
    rtol: float,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    who: str = "",
) -> None:
    """The probe's options, taken by the probe and the callback alike: grid size, channel order, the dead rule's
    tolerances, the input normalisation."""
    for name, value in (("max_channels", max_channels), ("max_samples", max_samples)):
        check_positive(name, value, who)
    if channel_order not in ("std", "index"):
        raise ValueError(_said(who, f"channel_order must be 'std' or 'index', got {channel_order!r}"))
    if atol < 0 or rtol < 0:
        raise ValueError(_said(who, f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}"))
    if (mean is None) != (std is None):
        # worded as each always was: the probe's message says what the pair is, the callback's docstring does
        fix = "pass both or neither" if who else "pass both (the input normalisation) or neither"
        raise ValueError(_said(who, f"mean and std go together: {fix}"))


def check_probe(model: Any, **options: Any) -> None:
    """``FeatureMapProbe(model, ...)``: ``model`` an ``nn.Module``, and :func:`check_options`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_options(**options)


def check_callback(
    schedule: dict[str, Any],
    counts: dict[str, Any],
    examples: Any,
    functions: dict[str, Any],
    cmap: str,
    **options: Any,
) -> tuple[int | None, list[int] | None, int | None]:
    """``FeatureMapCallback(...)``: the ``schedule`` (:func:`check_schedule`, whose result this returns), the
    positive ``counts``, ``examples``, the probe's ``options`` (:func:`check_options`), the ``functions`` (callable
    or ``None``) and ``cmap`` (a matplotlib colormap: it fails here, not at the first event)."""
    checked = check_schedule(**schedule)
    for name, value in counts.items():
        check_positive(name, value, CALLBACK)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"{CALLBACK}: examples must be an int >= 0 (0: none), got {examples!r}")
    check_options(**options, who=CALLBACK)
    for name, fn in functions.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{CALLBACK}: {name} must be callable, got {type(fn).__name__}")
    colormap_lut(cmap)
    return checked


def check_schedule(
    every_n_epochs: int | None, epochs: Sequence[int] | None, every_n_steps: int | None
) -> tuple[int | None, list[int] | None, int | None]:
    """The one schedule given, checked: ``(every_n_epochs, epochs, every_n_steps)``, ``epochs`` sorted without
    repeats; none given: every epoch."""
    schedules = {"every_n_epochs": every_n_epochs, "epochs": epochs, "every_n_steps": every_n_steps}
    given = [name for name, value in schedules.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"{CALLBACK}: choose one schedule, got {' and '.join(given)}")
    if not given:
        return 1, None, None
    if given != ["epochs"]:
        check_positive(given[0], schedules[given[0]], CALLBACK)
        return every_n_epochs, None, every_n_steps
    if isinstance(epochs, str) or not isinstance(epochs, Iterable):
        raise ValueError(
            f"{CALLBACK}: epochs must be a list of epoch indices (0-based), e.g. epochs=[0, 4, 9], "
            f"got {epochs!r}; for an event every n epochs pass every_n_epochs=n"
        )
    epochs = sorted(set(epochs))
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
        raise ValueError(f"{CALLBACK}: epochs must be a non-empty list of ints >= 0, got {epochs!r}")
    return None, epochs, None
