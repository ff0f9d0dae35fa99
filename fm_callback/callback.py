"""The Lightning adapter: its hooks run the probe at scheduled steps on every rank, in the trainer's precision, and
hand what it found to the loggers (its arguments are checked in ``arguments.py``, its checkpoint state is
``run_state.py``, the schedule ``schedule.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from . import names
from .arguments import check_callback
from .dead import DEFAULT_ATOL, DEFAULT_PATIENCE, DEFAULT_RTOL
from .fit_notes import say_at_fit_start, warn_on_rank
from .layout import check_layouts
from .passes import check_input
from .probe import FeatureMapProbe
from .probe_batch import ProbeSource, dry_run, found_normalisation, take_model_input
from .results import ProbeResult
from .run_state import RunState
from .schedule import due_after_batch, due_at_epoch_end, logger_step
from .select import LayerSpec
from .writer import EventWriter


class FeatureMapCallback(RunState, pl.Callback):
    """Logs per-layer feature-map grids and dead-filter statistics to TensorBoard at set epochs or steps.

    Args:
        layers: module names, glob patterns (``"features.*"``) or ``nn.Module`` types; ``None``: every Conv1d/2d/3d
            and transformer block.
        image_layers: which watched layers get a picture; ``None``: at most 6 spread over the network.
        every_n_epochs: an event at the end of every n-th training epoch (the default, with n = 1).
        epochs: an event at the end of these epochs only (0-based), instead of every_n_epochs.
        every_n_steps: an event every n optimizer steps, instead of an epoch schedule.
        log_at_start: also an event before the first training step (step 0): the untrained baseline.
        probe_batch: the batch to probe (a tensor or a batch as the dataloader yields it); default: the first
            ``probe_size`` samples of the val dataloader, else of the train dataloader.
        probe_size: how many samples to take from the dataloader.
        input_fn: batch -> model input, for batches the default (tensor, first item, dict image/x/input) misses.
        forward_fn: ``forward_fn(model, model_input)`` runs the model, for a forward that takes more than one
            argument (``model(*model_input)``, keywords); default ``model(model_input)``. A module-level function.
        max_channels, max_samples: grid columns (channels) and rows (probe samples).
        channel_order: ``"std"`` (most varied first, chosen at the first event and kept) or ``"index"``.
        cmap: matplotlib colormap of the grids.
        atol, rtol: tolerances of the dead rule ``max - min <= atol + rtol * max|x|`` per channel.
        dead_patience: events a channel must stay dead before it is reported persistently dead (warned once).
        mean, std: the input normalisation, so ``probe/input`` and the overlays show the images as a person sees them.
        overlay: also log ``feature_maps_overlay/<layer>``, the mean |activation| over the probe input.
        prefix: put before every tag and metric name (``"student"``: ``student/dead_filters/all``), so that two
            callbacks in one Trainer stay apart.
        similarity: log how each layer's representation of the probe batch changes (``layer_change/*``: 1 - debiased
            linear CKA against the previous event, ``layer_change_from_start/*``: against the first; needs
            ``probe_size >= 4``), the layers' CKA matrix at the end of fit, and a histogram of each layer's values.
        examples: top-activating examples per shown channel of each picture layer (``feature_examples/<layer>``:
            crops of the inputs around where the channel peaks), at every event; 0 turns them off.
        examples_pool: how many samples to find them in: the first of the val dataset, else of the train dataset,
            scanned in chunks of ``probe_size``.
        layouts: ``{layer name or pattern: "channels_first" | "channels_last" | "tokens"}`` for a layer output whose
            layout its shape does not tell (the callback says which at set-up); the others are recognised.

    The scalars (``dead_filters/*``, ``dying_filters/*``, ``never_positive/*``, ``layer_change*/*``) go to every
    logger of the Trainer and into ``trainer.callback_metrics`` (``EarlyStopping`` and ``ModelCheckpoint`` can monitor
    them); the images go to the Trainer's first ``TensorBoardLogger`` (else to a SummaryWriter in a folder of this run
    alone) and to each ``WandbLogger`` and ``MLFlowLogger`` through their own image API (README, "Where it goes").
    """

    def __init__(
        self,
        layers: LayerSpec | Sequence[LayerSpec] | None = None,
        image_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        every_n_epochs: int | None = None,
        epochs: Sequence[int] | None = None,
        every_n_steps: int | None = None,
        log_at_start: bool = True,
        probe_batch: Any = None,
        probe_size: int = 16,
        input_fn: Callable[[Any], Any] | None = None,
        forward_fn: Callable[[torch.nn.Module, Any], Any] | None = None,
        max_channels: int = 16,
        max_samples: int = 4,
        channel_order: str = "std",
        cmap: str = "viridis",
        atol: float = DEFAULT_ATOL,
        rtol: float = DEFAULT_RTOL,
        dead_patience: int = DEFAULT_PATIENCE,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        overlay: bool = True,
        prefix: str = "",
        similarity: bool = True,
        examples: int = 0,
        examples_pool: int = 256,
        layouts: dict[str, str] | None = None,
    ) -> None:
        self.every_n_epochs, self.epochs, self.every_n_steps = check_callback(
            dict(every_n_epochs=every_n_epochs, epochs=epochs, every_n_steps=every_n_steps),
            dict(probe_size=probe_size, dead_patience=dead_patience, examples_pool=examples_pool),
            examples,
            dict(input_fn=input_fn, forward_fn=forward_fn),
            cmap,
            **dict(max_channels=max_channels, max_samples=max_samples, channel_order=channel_order),
            **dict(atol=atol, rtol=rtol, mean=mean, std=std),
        )
        self.examples, self.examples_pool = examples, examples_pool
        self.prefix = names.check_prefix(prefix)
        self.layers = layers
        self.image_layers = image_layers
        self.log_at_start = log_at_start
        self.probe_batch = probe_batch
        self.probe_size = probe_size
        self.input_fn = input_fn
        self.probe_options = dict(
            max_channels=max_channels,
            max_samples=max_samples,
            channel_order=channel_order,
            cmap=cmap,
            atol=atol,
            rtol=rtol,
            mean=mean,
            std=std,
            overlay=overlay,
            forward_fn=forward_fn,
            similarity=similarity,
            layouts=check_layouts(layouts),
        )
        self._new_run(dead_patience)
        # Set up per fit, never pickled with a value.
        self._probe: FeatureMapProbe | None = None
        self._writer: EventWriter | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_probe=None, _writer=None)
        return state

    # ---- set-up ------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()  # a writer an earlier fit left open
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(
                "FeatureMapCallback: the Trainer has no logger (logger=False), so there is nowhere to log the feature "
                "maps and dead-filter scalars. Pass logger=TensorBoardLogger(save_dir) (or True), or remove the "
                "callback."
            )
        self._next_fit(trainer.global_step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._disabled(trainer):
            return
        # Built here, not in setup: Lightning runs configure_model (where large models create their layers) and the
        # strategy's wrapping (DDP, FSDP2's fully_shard) after setup and before this hook.
        self._probe = FeatureMapProbe(pl_module, self.layers, self.image_layers, **self.probe_options)
        self._state_of_a_fit = True
        if self.model_input is None:
            self.model_input, source = take_model_input(trainer, self.probe_batch, self.probe_size, self.input_fn)
        else:
            source = ProbeSource("kept", "the probe batch this run started with (from its checkpoint)")
        if self._probe.mean is None:  # none given: the datamodule's or the dataset transform's, when they fit
            self._probe.mean, self._probe.std = found_normalisation(trainer, self.model_input)
        check_input(self.model_input, self._probe.mean, self._probe.std, argument="probe_batch")
        self._probe.pinned_channels = dict(self.pinned_channels)
        if trainer.is_global_zero:
            self._writer = EventWriter(trainer, self.prefix)
            say_at_fit_start(trainer, self.model_input, source, self.input_fn, self.epochs, self.probe_options)
        result = dry_run(lambda: self._run_probe(trainer), self.model_input)  # a batch the model cannot take raises
        self.pinned_channels = {name: r.channels for name, r in result.items() if r.channels}
        self._probe.pinned_channels = dict(self.pinned_channels)
        if self.examples_pass is not None:
            self.examples_pass.setup(trainer, self._probe, self.pinned_channels, self.input_fn)
        if self.log_at_start and trainer.global_step == 0 and self.last_event_step is None:
            self._event(trainer, logger_step(trainer), result)

    def _disabled(self, trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    def _run_probe(self, trainer: pl.Trainer) -> ProbeResult:
        model_input = trainer.precision_plugin.convert_input(self.model_input)
        with trainer.precision_plugin.forward_context():
            return self._probe.run(model_input)

    # ---- schedule ----------------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._disabled(trainer):
            return
        step = logger_step(trainer, batch_ended=True)
        if due_after_batch(trainer, step, self.every_n_epochs, self.epochs, self.every_n_steps):
            self._event(trainer, step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._disabled(trainer) and due_at_epoch_end(
            trainer, self.every_n_epochs, self.epochs, self.every_n_steps
        ):
            self._event(trainer, logger_step(trainer))

    def _event(self, trainer: pl.Trainer, step: int, result: ProbeResult | None = None) -> None:
        """One probe event at ``step`` (the x-axis of ``self.log``), on every rank; ``result``: its probe, already run.

        A failure warns on the rank where it happened and skips this event there; training goes on. Every rank takes
        part in the one broadcast of the scalars, so that all hold rank 0's values, failed or not.
        """
        if self._probe is None or self.model_input is None or step == self.last_event_step:
            return
        self.last_event_step = step  # also when it fails: not tried again at this step (on_train_epoch_end)
        metrics, record, found = {}, None, None
        try:
            result = result if result is not None else self._run_probe(trainer)
            metrics, record = self._measure(result, step, trainer.current_epoch)
            if self.examples_pass is not None:  # every rank scans: its forwards may all-gather (FSDP)
                found = self.examples_pass.run(trainer, self.probe_size)
        except Exception as err:
            message = f"the probe at step {step} failed and was skipped ({_described(err)}); training goes on"
            warn_on_rank(trainer, message)
        # Ranks disagree where the model differs per rank (BatchNorm running statistics without SyncBatchNorm):
        # EarlyStopping and ModelCheckpoint decide on every rank, so every rank gets rank 0's scalars.
        metrics = trainer.strategy.broadcast(metrics, src=0)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        try:
            for logger in trainer.loggers if metrics else []:  # they write on rank 0 only, as for self.log
                logger.log_metrics(metrics, step=step)
            if self._writer is not None and record is not None:
                self._writer.event(result, step, *record, metrics, with_input=self._input_changed(result))
            if self._writer is not None and found is not None:
                pictures, examples = self.examples_pass.picture_and_record(
                    found, result, self._probe.mean, self._probe.std
                )
                self._writer.examples(pictures, examples, step)
        except Exception as err:
            warn_on_rank(trainer, f"logging the probe at step {step} failed ({_described(err)}); training goes on")

    def _measure(self, result: ProbeResult, step: int, epoch: int) -> tuple[dict[str, float], tuple[str, dict]]:
        """Count one event: this rank's scalars, and the dead-filter table and record that rank 0 writes."""
        change = self.tracker.update(result, step, epoch)
        for message in change.warnings:  # one per layer whose channels just became persistently dead
            rank_zero_warn(message)
        for message in change.notes:  # revivals
            rank_zero_info(message)
        since_previous, since_first = self.changes.update(result, step, epoch)
        changes = {names.LAYER_CHANGE: since_previous, names.LAYER_CHANGE_FROM_START: since_first}
        metrics = names.scalar_metrics(result, self.prefix, changes)
        if self._writer is None:
            return metrics, None
        table, record = self.tracker.table(result, change), self.tracker.record(result, change)
        record.update(changes)  # read back by `fm-callback report` (the change heatmap, the settled layers)
        return metrics, (table, record)

    # ---- end ---------------------------------------------------------------------------------------------

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._writer is not None:  # rank 0 of a run that is not disabled
            dead, change = list(self.tracker.history), list(self.changes.history)
            similarity = self.changes.similarity()
            self._writer.end_of_fit(logger_step(trainer), dead, change, similarity, self.last_event_step)
            # Lightning finalizes the loggers (closing a TensorBoardLogger's SummaryWriter) right after teardown, and
            # without it when a hook is skipped: every write is done first, not left to a race with the thread.
            self._writer.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A fit that raised or was interrupted (Ctrl+C): Lightning calls this, then finalizes the loggers (which
        closes the TensorBoardLogger's SummaryWriter), but not ``teardown``. Every queued write is done first."""
        self._close()

    def _close(self) -> None:
        """Finish every queued write, stop the writer thread, close a SummaryWriter of our own; drop the probe."""
        writer, self._writer, self._probe = self._writer, None, None
        if writer is not None:
            writer.close()


def _described(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
