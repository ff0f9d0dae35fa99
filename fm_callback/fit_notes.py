"""What the callback says once at fit start, and how it reports a fault on any rank.

Where the probe batch came from (it depends on the data and on Trainer flags), and the settings that would
otherwise log less without a word: too few probe samples for ``layer_change``, scheduled epochs past
``max_epochs``, and a probe batch that does not look like the training data (:mod:`.input_check`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .input_check import input_mismatch
from .passes import first_tensor
from .probe_batch import ProbeSource, default_input, first_loader, first_samples
from .similarity import MIN_SAMPLES

TRAINING_SAMPLES = 16  # read by index for the input check


def warn_on_rank(trainer: pl.Trainer, message: str) -> None:
    """A warning on the rank where something failed (``rank_zero_warn`` would hide a fault on rank 1)."""
    rank = trainer.global_rank if trainer.world_size > 1 else None
    warnings.warn(rank_prefixed_message(f"fm_callback: {message}", rank), stacklevel=2)


def say_at_fit_start(
    trainer: pl.Trainer,
    model_input: Any,
    source: ProbeSource,
    input_fn: Callable[[Any], Any] | None,
    epochs: Sequence[int] | None,
    probe_options: dict[str, Any],
) -> None:
    """On rank 0: where the probe came from, and one message per setting that would log less than asked."""
    tensor = first_tensor(model_input)
    samples = tensor.shape[0] if tensor is not None and tensor.dim() else 1
    note = ""
    if source.kind == "train":
        note = (
            "; training data, since no val dataloader was loaded at fit start (with num_sanity_val_steps=0 "
            "Lightning loads it at the first validation). Pass probe_batch= to choose"
        )
    rank_zero_info(f"fm_callback: probing {samples} samples: {source.text}{note}")
    if probe_options.get("similarity") and samples < MIN_SAMPLES:
        rank_zero_warn(
            f"fm_callback: layer_change/* needs at least {MIN_SAMPLES} probe samples and the probe has {samples}, "
            f"so it is not logged. Pass probe_size={MIN_SAMPLES} or more (or a larger probe_batch=), or "
            "similarity=False to go without."
        )
    if epochs and trainer.max_epochs is not None and trainer.max_epochs >= 0:
        late = [e for e in epochs if e >= trainer.max_epochs]
        if late:
            rank_zero_warn(
                f"fm_callback: epochs={list(epochs)}: epoch(s) {', '.join(map(str, late))} come after this fit's last "
                f"epoch (max_epochs={trainer.max_epochs}, epochs count from 0), so no event happens there. Pass "
                f"epochs within 0-{trainer.max_epochs - 1}, or raise max_epochs."
            )
    if source.kind != "train" and tensor is not None:
        training = _training_input(trainer, input_fn)
        mismatch = input_mismatch(tensor, training) if training is not None else None
        if mismatch:
            rank_zero_warn(
                f"fm_callback: the probe batch ({source.text}) does not look like the training data: {mismatch}. "
                "Its feature maps show inputs the model never trained on. Likely cause: the val transform lacks the "
                "train transform's normalisation (Normalize) or differs from it; make them match, or pass "
                "probe_batch= with inputs prepared as for training."
            )


def _training_input(trainer: pl.Trainer, input_fn: Callable[[Any], Any] | None) -> Any:
    """The model input of the first training samples, read by index (no sampler, no RNG draw); ``None`` where the
    train data cannot be indexed or read."""
    loader = first_loader(trainer.train_dataloader)
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    try:
        batch, _ = first_samples(loader, TRAINING_SAMPLES)
        return first_tensor(input_fn(batch) if input_fn is not None else default_input(batch))
    except Exception:  # advisory only: a dataset that cannot be read this way is not checked
        return None
