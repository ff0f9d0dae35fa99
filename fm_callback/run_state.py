"""The callback's run state: what a checkpoint keeps, so that a resumed run goes on where it stopped.

A run (a Trainer's fits, or one resumed from a checkpoint) has one probe batch, the channels each picture shows, the
step of its last event, its dead streaks and layer-change Gram matrices, its examples pool, and the probe input it
wrote last. :class:`RunState` holds them as attributes of the callback itself (``callback.tracker``,
``callback.model_input``: users and tests read them there), starts them afresh for a new run, carries them over to a
further fit of the same Trainer, and saves and loads them, versioned, copied and bounded in size.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from .examples_pass import ExamplesPass
from .results import ProbeResult
from .tracking import ChangeTracker, DeadFilterTracker

STATE_VERSION = 2  # 1: no version key; 2: histories bounded (tracking.MAX_HISTORY), returned as copies


class RunState:
    """The run state of :class:`~fm_callback.callback.FeatureMapCallback`, mixed into it (before
    ``lightning.pytorch.Callback``, whose ``state_key``, ``state_dict`` and ``load_state_dict`` it gives)."""

    # the callback's arguments this reads
    examples: int
    examples_pool: int
    layers: Any
    image_layers: Any
    every_n_epochs: int | None
    epochs: list[int] | None
    every_n_steps: int | None
    prefix: str
    _writer: Any

    def _new_run(self, dead_patience: int) -> None:
        """Run state: what a checkpoint keeps. It belongs to one run (a Trainer's fits, or a resumed one)."""
        self.model_input: Any = None
        self.pinned_channels: dict[str, list[int]] = {}
        self.last_event_step: int | None = None
        self.tracker = DeadFilterTracker(dead_patience)
        self.changes = ChangeTracker()
        self.examples_pass = ExamplesPass(self.examples, self.examples_pool) if self.examples else None
        self.input_written: tuple[str, str] | None = None  # (log dir, digest) of the last probe/input written
        self._state_of_a_fit = False  # the run state above came from a fit (not from load_state_dict, not new)

    def _next_fit(self, global_step: int) -> None:
        """At the set-up of a fit: the state of an earlier fit starts afresh for a new run, or carries over to a
        further fit of the same Trainer. State given with ``load_state_dict`` is kept: a resume (``ckpt_path``)
        gives it later."""
        if not self._state_of_a_fit:
            return
        if global_step == 0:  # a new run (a new Trainer)
            self._new_run(self.tracker.patience)
            return
        # A further fit of the same Trainer goes on counting steps, and keeps its schedule position, pinned
        # channels, dead streaks and the probe input it wrote; its probe batch is this fit's own data.
        self._state_of_a_fit = False
        self.model_input = None
        self.changes.new_batch()
        if self.examples_pass is not None:  # and its examples pool too
            self.examples_pass.load_state_dict({})

    def _input_changed(self, result: ProbeResult) -> bool:
        """Whether ``probe/input`` is due: not yet written into this log dir, or a different picture from the last.

        The probe batch is the same at every event of a run, so its picture is written once, not per event.
        """
        if result.input_image is None:
            return False
        written = (self._writer.log_dir, hashlib.sha1(result.input_image.numpy().tobytes()).hexdigest())
        if written == self.input_written:
            return False
        self.input_written = written
        return True

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
        return self._generate_state_key(**key)  # lightning.pytorch.Callback's

    def state_dict(self) -> dict[str, Any]:
        """The run state, copied (a checkpoint does not change as training goes on) and bounded in size."""
        return {
            "version": STATE_VERSION,
            "model_input": copy.deepcopy(self.model_input),
            "pinned_channels": copy.deepcopy(self.pinned_channels),
            "last_event_step": self.last_event_step,
            "tracker": self.tracker.state_dict(),
            "input_written": self.input_written,
            **self.changes.state_dict(),  # first_grams, previous_grams, change_history
            **(self.examples_pass.state_dict() if self.examples_pass is not None else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint of this version or an earlier one (version 1 had no ``version`` key)."""
        version = state_dict.get("version", 1)
        if version > STATE_VERSION:
            rank_zero_warn(
                f"fm_callback: the checkpoint's callback state is version {version}, newer than this fm_callback "
                f"reads ({STATE_VERSION}); loading what it knows. Upgrade fm_callback to keep all of it."
            )
        self._state_of_a_fit = False
        self.model_input = copy.deepcopy(state_dict.get("model_input"))
        self.pinned_channels = copy.deepcopy(dict(state_dict.get("pinned_channels", {})))
        self.last_event_step = state_dict.get("last_event_step")
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        written = state_dict.get("input_written")
        self.input_written = tuple(written) if written is not None else None
        self.changes.load_state_dict(state_dict)
        if self.examples_pass is not None:
            self.examples_pass.load_state_dict(state_dict)
