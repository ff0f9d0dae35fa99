"""The Lightning adapter: schedule, probe batch, ranks, precision, state, logging."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, IterableDataset

from . import similarity
from . import tensorboard as tb
from .probe import FeatureMapProbe, ProbeResult, check_input, first_tensor, to_device
from .select import LayerSpec
from .stats import DEFAULT_ATOL, DEFAULT_RTOL
from .tracking import DeadFilterTracker

INPUT_KEYS = ("image", "images", "img", "x", "input", "inputs")


def default_input(batch: Any) -> Any:
    """The model input of a batch: the tensor itself, the first item of a tuple/list, or a dict's image/x/input."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        raise ValueError(
            f"fm_callback: cannot find the model input in a dict batch with keys {sorted(map(str, batch))}; "
            f"expected one of {', '.join(INPUT_KEYS)}. Pass input_fn=, a function batch -> model input "
            "(defined at module level so the callback stays picklable)."
        )
    numpy_hint = " (convert it with torch.as_tensor)" if type(batch).__module__.split(".")[0] == "numpy" else ""
    raise ValueError(
        f"fm_callback: cannot find the model input in a batch of type {type(batch).__name__}{numpy_hint}; give "
        "probe_batch= a torch.Tensor (or a batch as your dataloader yields it), or pass input_fn=, a function "
        "batch -> model input (defined at module level so the callback stays picklable)."
    )


def first_samples(loader: DataLoader, count: int) -> tuple[Any, int]:
    """The first ``count`` samples of a loader's dataset, collated as the loader would; (batch, samples taken).

    Map-style datasets are indexed directly (no iterator, so no sampler or worker draws a random number);
    an iterable dataset gives its first batch. Either way the global RNG is left as it was.
    """
    with isolate_rng():
        dataset = loader.dataset
        if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            taken = min(count, len(dataset))
            if taken == 0:
                raise ValueError("fm_callback: the dataloader's dataset is empty; pass probe_batch= instead")
            return loader.collate_fn([dataset[i] for i in range(taken)]), taken
        for batch in loader:
            return batch, count
    raise ValueError("fm_callback: the dataloader yielded no batch; pass probe_batch= instead")


def _probe_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    """Where the probe batch may come from, in order: the first val DataLoader, then the first train DataLoader."""
    found = (_first_loader(trainer.val_dataloaders), _first_loader(trainer.train_dataloader))
    return [loader for loader in found if loader is not None]  # no `or`: bool(loader) calls len(), which may raise


def _first_loader(loaders: Any) -> DataLoader | None:
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple):
        for loader in loaders:
            found = _first_loader(loader)
            if found is not None:
                return found
    return None


def _slice(batch: Any, count: int) -> Any:
    """The first ``count`` samples of a collated batch (tensors along dim 0)."""
    if isinstance(batch, torch.Tensor):
        return batch[:count]
    if isinstance(batch, dict):
        return {k: _slice(v, count) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_slice(v, count) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_slice(v, count) for v in batch)
    return batch


def found_normalisation(trainer: pl.Trainer, model_input: Any) -> tuple[list[float] | None, list[float] | None]:
    """The input's ``(mean, std)`` where Lightning exposes it, else ``(None, None)``.

    Looked for in the datamodule's ``mean``/``std`` attributes, then in a ``Normalize`` of the val (else train)
    dataset's ``transform`` (torchvision's ``Compose([..., Normalize(mean, std)])``). Used only when the user
    gave none, and only when it fits the probe input's channels, so ``probe/input`` shows what a person sees.
    """
    sources: list[Any] = [getattr(trainer, "datamodule", None)]
    loader = next(iter(_probe_loaders(trainer)), None)
    dataset = getattr(loader, "dataset", None)
    while hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):  # Subset and similar wrappers
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    sources += [t for t in [*getattr(transform, "transforms", []), transform] if type(t).__name__ == "Normalize"]
    tensor = first_tensor(model_input)
    channels = tensor.shape[1] if tensor is not None and tensor.dim() == 4 else None
    for source in sources:
        try:
            mean = torch.as_tensor(source.mean, dtype=torch.float32).flatten().tolist()
            std = torch.as_tensor(source.std, dtype=torch.float32).flatten().tolist()
        except (AttributeError, TypeError, ValueError, RuntimeError):
            continue
        if channels and len(mean) in (1, channels) and len(std) == len(mean) and min(std) > 0:
            return mean, std
    return None, None


def _positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FeatureMapCallback: {name} must be a positive int, got {value!r}")


class FeatureMapCallback(pl.Callback):
    """Logs per-layer feature-map grids and dead-filter statistics to TensorBoard at set epochs or steps.

    Args:
        layers: module names, glob patterns (``"features.*"``) or ``nn.Module`` types; ``None``: every Conv1d/2d/3d.
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

    The scalars (``dead_filters/*``, ``dying_filters/*``, ``never_positive/*``, ``layer_change*/*``) go to every
    logger of the Trainer and into ``trainer.callback_metrics`` (``EarlyStopping`` and ``ModelCheckpoint`` can monitor
    them); the images go to the Trainer's first ``TensorBoardLogger``, else to a SummaryWriter under the Trainer's
    log dir.
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
        dead_patience: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        overlay: bool = True,
        prefix: str = "",
        similarity: bool = True,
    ) -> None:
        given = [
            n
            for n, v in (
                ("every_n_epochs", every_n_epochs),
                ("epochs", epochs),
                ("every_n_steps", every_n_steps),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"FeatureMapCallback: choose one schedule, got {' and '.join(given)}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            _positive(name, value)
        for name, value in (
            ("probe_size", probe_size),
            ("max_channels", max_channels),
            ("max_samples", max_samples),
            ("dead_patience", dead_patience),
        ):
            _positive(name, value, allow_none=False)
        if epochs is not None:
            if isinstance(epochs, str) or not isinstance(epochs, Iterable):
                raise ValueError(
                    f"FeatureMapCallback: epochs must be a list of epoch indices (0-based), e.g. epochs=[0, 4, 9], "
                    f"got {epochs!r}; for an event every n epochs pass every_n_epochs=n"
                )
            epochs = sorted(set(epochs))
            if not epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
                raise ValueError(f"FeatureMapCallback: epochs must be a non-empty list of ints >= 0, got {epochs!r}")
        if channel_order not in ("std", "index"):
            raise ValueError(f"FeatureMapCallback: channel_order must be 'std' or 'index', got {channel_order!r}")
        if atol < 0 or rtol < 0:
            raise ValueError(f"FeatureMapCallback: atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
        if (mean is None) != (std is None):
            raise ValueError("FeatureMapCallback: mean and std go together: pass both or neither")
        for name, fn in (("input_fn", input_fn), ("forward_fn", forward_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"FeatureMapCallback: {name} must be callable, got {type(fn).__name__}")
        self.prefix = tb.check_prefix(prefix)
        self.layers = layers
        self.image_layers = image_layers
        self.every_n_epochs = 1 if not given else every_n_epochs
        self.epochs = epochs
        self.every_n_steps = every_n_steps
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
        )
        from .render import colormap_lut

        colormap_lut(cmap)  # fail now, not at the first event, on an unknown colormap
        # Run state: what a checkpoint keeps. It belongs to one run (a Trainer's fits, or a resumed one).
        self.model_input: Any = None
        self.pinned_channels: dict[str, list[int]] = {}
        self.last_event_step: int | None = None
        self.tracker = DeadFilterTracker(dead_patience)
        self.input_written: tuple[str, str] | None = None  # (log dir, digest) of the last probe/input written
        # Gram matrices of the probe batch per layer (float64 [N, N], CPU) at the first and the previous event.
        self.first_grams: dict[str, torch.Tensor] = {}
        self.previous_grams: dict[str, torch.Tensor] = {}
        self.change_history: list[dict[str, Any]] = []  # per event: step, epoch, layer_change per layer
        self._state_of_a_fit = False  # the run state above came from a fit (not from load_state_dict, not new)
        # Set up per fit, never pickled with a value.
        self._probe: FeatureMapProbe | None = None
        self._writer: tb.BackgroundWriter | None = None
        self._owns_writer = False

    @property
    def state_key(self) -> str:
        key = dict(
            layers=self.layers,
            image_layers=self.image_layers,
            every_n_epochs=self.every_n_epochs,
            epochs=self.epochs,
            every_n_steps=self.every_n_steps,
        )
        if self.prefix:  # only then: checkpoints of callbacks without a prefix keep their key
            key["prefix"] = self.prefix
        return self._generate_state_key(**key)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_probe=None, _writer=None, _owns_writer=False)
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
        self._probe = FeatureMapProbe(pl_module, self.layers, self.image_layers, **self.probe_options)
        if self._state_of_a_fit:  # state given with load_state_dict is kept: a resume (ckpt_path) gives it later
            self._state_of_a_fit = False
            self.model_input = None  # the probe batch is this fit's own data
            # CKA compares representations of the same samples: this fit's batch starts the comparisons afresh
            self.first_grams, self.previous_grams = {}, {}
            if trainer.global_step == 0:
                # A new run (a new Trainer). A further fit of the same Trainer goes on counting steps, and keeps
                # its schedule position, pinned channels, dead streaks and the probe input it wrote.
                self.pinned_channels = {}
                self.last_event_step = None
                self.tracker = DeadFilterTracker(self.tracker.patience)
                self.input_written = None
                self.change_history = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._disabled(trainer):
            return
        if self._probe is None:
            self._probe = FeatureMapProbe(pl_module, self.layers, self.image_layers, **self.probe_options)
        self._state_of_a_fit = True
        if self.model_input is None:
            self.model_input = self._take_model_input(trainer)
        if self._probe.mean is None:  # none given: the datamodule's or the dataset transform's, when they fit
            self._probe.mean, self._probe.std = found_normalisation(trainer, self.model_input)
        check_input(self.model_input, self._probe.mean, self._probe.std, argument="probe_batch")
        self._probe.pinned_channels = dict(self.pinned_channels)
        if trainer.is_global_zero:
            self._writer, self._owns_writer = self._open_writer(trainer)
        result = self._dry_run(trainer)
        if self.log_at_start and trainer.global_step == 0 and self.last_event_step is None:
            self._record(trainer, result)

    def _disabled(self, trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    def _take_model_input(self, trainer: pl.Trainer) -> Any:
        """The probe's model input, taken once on rank 0 and broadcast, kept on the CPU."""
        model_input, error = None, None
        if trainer.is_global_zero:
            try:
                model_input = self._read_probe_batch(trainer)
            except Exception as err:  # sent to every rank, so that all raise instead of the others waiting
                error = err
        model_input, error = trainer.strategy.broadcast((model_input, error), src=0)
        if error is not None:
            raise error
        check_input(model_input, argument="probe_batch")
        return to_device(model_input, torch.device("cpu"))

    def _read_probe_batch(self, trainer: pl.Trainer) -> Any:
        batch = self.probe_batch
        if batch is None:
            loaders = _probe_loaders(trainer)
            if not loaders:
                raise ValueError("FeatureMapCallback: no DataLoader to take the probe batch from; pass probe_batch=")
            for loader in loaders:  # an empty val loader falls back to the train loader
                try:
                    batch, taken = first_samples(loader, self.probe_size)
                    break
                except ValueError:
                    if loader is loaders[-1]:
                        raise
            if taken < self.probe_size:
                rank_zero_warn(
                    f"fm_callback: probe_size={self.probe_size} but the dataset has {taken} samples; "
                    f"probing with {taken}"
                )
        try:
            model_input = self.input_fn(batch) if self.input_fn is not None else default_input(batch)
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(
                f"FeatureMapCallback: input_fn failed on the probe batch ({type(err).__name__}: {err}); it gets a "
                "batch as your dataloader yields it (or probe_batch= as given) and must return what the model takes"
            ) from err
        if self.probe_batch is None:
            model_input = _slice(model_input, self.probe_size)
        return to_device(model_input, torch.device("cpu"))

    def _dry_run(self, trainer: pl.Trainer) -> ProbeResult:
        """Run the probe once at set-up; a batch the model cannot take is a configuration error."""
        try:
            result = self._run_probe(trainer)
        except Exception as err:
            shape = _describe(self.model_input)
            raise ValueError(
                f"FeatureMapCallback: the probe batch ({shape}) could not go through the model: "
                f"{type(err).__name__}: {err}. Pass probe_batch= with an input the model takes, input_fn= to "
                "pick the model input out of the batch, or forward_fn= to call a model that takes more than one "
                "argument."
            ) from err
        if not len(result):
            raise ValueError(
                "FeatureMapCallback: none of the watched layers ran during the model's forward (a module that exists "
                "but is not called in forward() reports nothing); check layers="
            )
        self.pinned_channels = {name: r.channels for name, r in result.items() if r.channels}
        self._probe.pinned_channels = dict(self.pinned_channels)
        return result

    def _run_probe(self, trainer: pl.Trainer) -> ProbeResult:
        model_input = trainer.precision_plugin.convert_input(self.model_input)
        with trainer.precision_plugin.forward_context():
            return self._probe.run(model_input)

    def _open_writer(self, trainer: pl.Trainer) -> tuple[tb.BackgroundWriter, bool]:
        threaded = tb.write_in_background(trainer.strategy.root_device)  # not when training on the CPU
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return tb.BackgroundWriter(logger.experiment, threaded=threaded), False
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "fm_callback")
        rank_zero_warn(
            f"fm_callback: the Trainer has no TensorBoardLogger; writing feature maps to {log_dir}. "
            "Add logger=TensorBoardLogger(...) to keep them beside your other logs."
        )
        return tb.BackgroundWriter(SummaryWriter(log_dir), threaded=threaded), True

    # ---- schedule ----------------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._disabled(trainer):
            return
        if self.every_n_steps is not None:
            due = trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0
        else:
            # An epoch's event comes after its last batch, before the epoch-end validation: a checkpoint saved at
            # validation end (val_check_interval < 1, check_val_every_n_epoch > 1) then holds it, and a run
            # resumed from there, which replays on_train_epoch_end, does not log that step again. EarlyStopping
            # and ModelCheckpoint see this event's scalars wherever they are in the callback list.
            is_last = getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False)
            due = is_last and self._epoch_due(trainer.current_epoch)
        if due:
            self._event(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch cut short (max_steps, a stop request) had no last batch: its event comes here.
        if self.every_n_steps is None and not self._disabled(trainer) and self._epoch_due(trainer.current_epoch):
            self._event(trainer)

    def _epoch_due(self, epoch: int) -> bool:
        return epoch in self.epochs if self.epochs is not None else (epoch + 1) % self.every_n_epochs == 0

    def _event(self, trainer: pl.Trainer) -> None:
        """One scheduled probe: a failure warns and skips this event; training goes on."""
        step = trainer.global_step
        if self._probe is None or self.model_input is None or step == self.last_event_step:
            return
        self.last_event_step = step  # also when it fails: not tried again at this step (on_train_epoch_end)
        try:
            self._record(trainer, self._run_probe(trainer))
        except Exception as err:
            rank_zero_warn(
                f"fm_callback: the probe at step {step} failed and was skipped ({type(err).__name__}: {err}); "
                "training goes on"
            )

    def _record(self, trainer: pl.Trainer, result: ProbeResult) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        self.last_event_step = step
        change = self.tracker.update(result, step, epoch)
        for message in change.warnings:  # one per layer whose channels just became persistently dead
            rank_zero_warn(message)
        for message in change.notes:  # revivals
            rank_zero_info(message)
        # Every rank ran the same probe, so every rank has the same scalars for EarlyStopping and ModelCheckpoint;
        # the loggers write on rank 0 only, as they do for Lightning's own logging.
        changes = self._changes(result)
        if changes[tb.LAYER_CHANGE]:
            self.change_history.append({"step": step, "epoch": epoch, "change": changes[tb.LAYER_CHANGE]})
        metrics = tb.scalar_metrics(result, self.prefix, changes)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self._writer is not None:
            table, record = self.tracker.table(result, change), self.tracker.record(result, change)
            record.update(changes)  # read back by `fm-callback report` (the change heatmap, the settled layers)
            self._writer.submit(
                tb.write_result,
                result,
                step,
                table,
                record,
                prefix=self.prefix,
                changes=changes,
                with_scalars=self._owns_writer,  # a TensorBoardLogger among the loggers has written them
                with_input=self._input_changed(result),
                what=f"writing step {step}",
            )

    def _changes(self, result: ProbeResult) -> dict[str, dict[str, float]]:
        """Each layer's representation change since the previous and since the first event (1 - CKA), finite values
        only (none at the first event, nor with fewer than 4 probe samples); keeps this event's Gram matrices."""
        grams = similarity.grams_of(result)
        changes = {
            tb.LAYER_CHANGE: similarity.layer_change(self.previous_grams, grams),
            tb.LAYER_CHANGE_FROM_START: similarity.layer_change(self.first_grams, grams),
        }
        self.previous_grams = grams
        for name, gram in grams.items():
            self.first_grams.setdefault(name, gram)
        return {kind: {name: v for name, v in values.items() if math.isfinite(v)} for kind, values in changes.items()}

    def _input_changed(self, result: ProbeResult) -> bool:
        """Whether ``probe/input`` is due: not yet written into this log dir, or a different picture from the last.

        The probe batch is the same at every event of a run, so its picture is written once, not per event.
        """
        if result.input_image is None:
            return False
        log_dir = str(getattr(self._writer.writer, "log_dir", ""))
        written = (log_dir, hashlib.sha1(result.input_image.numpy().tobytes()).hexdigest())
        if written == self.input_written:
            return False
        self.input_written = written
        return True

    # ---- end ---------------------------------------------------------------------------------------------

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._writer is None:  # rank > 0, or a disabled run
            return
        if len(self.tracker.history) > 1:
            history = list(self.tracker.history)
            self._writer.submit(
                tb.write_timeline, history, trainer.global_step, self.prefix, what="writing the dead timeline"
            )
        if len(self.change_history) > 1:
            history = list(self.change_history)
            self._writer.submit(
                tb.write_change_map, history, trainer.global_step, self.prefix, what="writing the layer change map"
            )
        if self.last_event_step is not None and len(self.previous_grams) > 1:
            names, matrix = similarity.similarity_matrix(self.previous_grams)
            self._writer.submit(
                tb.write_similarity,
                names,
                [[v if math.isfinite(v) else None for v in row] for row in matrix.tolist()],  # strict JSON
                self.last_event_step,
                self.prefix,
                what="writing the layer similarity",
            )

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
            writer.close(close_writer=self._owns_writer)

    # ---- checkpoint state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model_input": self.model_input,
            "pinned_channels": self.pinned_channels,
            "last_event_step": self.last_event_step,
            "tracker": self.tracker.state_dict(),
            "input_written": self.input_written,
            "first_grams": self.first_grams,
            "previous_grams": self.previous_grams,
            "change_history": self.change_history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state_of_a_fit = False
        self.model_input = state_dict.get("model_input")
        self.pinned_channels = dict(state_dict.get("pinned_channels", {}))
        self.last_event_step = state_dict.get("last_event_step")
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        written = state_dict.get("input_written")
        self.input_written = tuple(written) if written is not None else None
        self.first_grams = dict(state_dict.get("first_grams", {}))
        self.previous_grams = dict(state_dict.get("previous_grams", {}))
        self.change_history = list(state_dict.get("change_history", []))


def _describe(model_input: Any) -> str:
    tensor = first_tensor(model_input) if not isinstance(model_input, torch.Tensor) else model_input
    if tensor is None:
        return f"a {type(model_input).__name__}"
    return f"input of shape {tuple(tensor.shape)}, dtype {str(tensor.dtype).replace('torch.', '')}"
