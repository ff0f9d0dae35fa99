"""What changes over probe events: dead streaks per channel, and each layer's representation of the probe batch.

Dead filters: per channel, how many consecutive probe events it has been dead. A channel dead for ``patience``
consecutive events is *persistently dead*: reported once (a warning naming the layer, the channels and the epoch
their streak began), and reported again as *revived* if it ever carries information again (the rule:
``dead.next_streak``; this module keeps the counts, the dates and the messages). Representation
change: ``1 - CKA`` of each layer against the previous and the first event (:mod:`.similarity`).
Framework-free and small; the state is plain Python (ints, lists, dicts) and a few N x N Gram matrices, so it
goes into a Lightning checkpoint as it is and a resumed run carries on counting.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import similarity
from .arguments import check_positive
from .channel_lists import format_channels
from .dead import DEFAULT_PATIENCE, is_persistent, next_streak
from .results import ProbeResult

RECORD_VERSION = 1
MAX_HISTORY = 512  # events kept per history; past it, every other older event is dropped (the span stays whole)
MAX_REVIVALS = 256  # the latest revivals kept


@dataclass
class DeadChange:
    """What one event changed, per layer: channels that just became persistently dead, and ones that revived.

    ``warnings`` and ``notes`` are the ready-made messages for the user (one per layer at most).
    """

    died: dict[str, list[int]] = field(default_factory=dict)
    revived: dict[str, list[int]] = field(default_factory=dict)
    revivals: list[dict[str, Any]] = field(default_factory=list)  # this event's entries of tracker.revivals
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class DeadFilterTracker:
    """Counts consecutive dead events per channel; a channel dead for ``patience`` events is persistent.

    State, per layer and channel: ``streak`` (consecutive dead events up to now), ``since`` (``[step, epoch]``
    of the event its streak began, else ``None``) and ``reported`` (whether it was announced as persistently
    dead, so each death is warned about exactly once, even across a resume with a different patience).
    """

    def __init__(self, patience: int = DEFAULT_PATIENCE) -> None:
        check_positive("dead_patience", patience)
        self.patience = patience
        self.streak: dict[str, list[int]] = {}
        self.since: dict[str, list[list[int] | None]] = {}
        self.reported: dict[str, list[bool]] = {}
        self.history: list[dict[str, Any]] = []  # per event: step, epoch, dead fraction per layer
        self.revivals: list[dict[str, Any]] = []  # layer, channel, step, epoch, since_step, since_epoch, events

    def update(self, result: ProbeResult, step: int, epoch: int) -> DeadChange:
        """Count one probe event; returns what it changed and the messages to show."""
        change = DeadChange()
        for name, report in result.items():
            dead = report.dead.tolist()
            if len(self.streak.get(name, [])) != len(dead):  # a new layer, or one that changed width: start over
                self.streak[name] = [0] * len(dead)
                self.since[name] = [None] * len(dead)
                self.reported[name] = [False] * len(dead)
            streak, since, reported = self.streak[name], self.since[name], self.reported[name]
            for channel, is_dead in enumerate(dead):
                events = streak[channel]  # consecutive dead events before this one
                streak[channel], reported[channel], died, revived = next_streak(
                    is_dead, events, reported[channel], self.patience
                )
                if is_dead and events == 0:
                    since[channel] = [step, epoch]
                if died:
                    change.died.setdefault(name, []).append(channel)
                if revived:
                    change.revived.setdefault(name, []).append(channel)
                    since_step, since_epoch = since[channel]
                    change.revivals.append(
                        {
                            "layer": name,
                            "channel": channel,
                            "step": step,
                            "epoch": epoch,
                            "since_step": since_step,
                            "since_epoch": since_epoch,
                            "events": events,
                        }
                    )
                if not is_dead:
                    since[channel] = None
        self.revivals = [*self.revivals, *change.revivals][-MAX_REVIVALS:]
        self.history = thinned(
            [
                *self.history,
                {"step": step, "epoch": epoch, "dead_fraction": {n: r.dead_fraction for n, r in result.items()}},
            ]
        )
        for name, channels in change.died.items():
            change.warnings.append(
                f"fm_callback: layer {name!r}: {self._since_text(name, channels)} "
                f"persistently dead: constant or silenced by its ReLU over the whole probe batch for {self.patience} "
                f"or more consecutive probe events (now epoch {epoch}, step {step}). Check its weights, its bias "
                "and the learning rate."
            )
        for name, channels in change.revived.items():
            change.notes.append(
                f"fm_callback: layer {name!r}: {_plural(channels)} revived at epoch {epoch}, step {step}"
            )
        return change

    def _since_text(self, name: str, channels: list[int]) -> str:
        """``channels 2, 5 dead since epoch 0 (step 0) and channel 7 dead since epoch 3 (step 12)``."""
        groups: dict[tuple[int, int], list[int]] = {}
        for channel in channels:
            step, epoch = self.since[name][channel]
            groups.setdefault((epoch, step), []).append(channel)
        parts = [f"{_plural(chs)} dead since epoch {e} (step {s})" for (e, s), chs in sorted(groups.items())]
        return " and ".join(parts) + (" is" if len(channels) == 1 else " are")

    def persistent(self) -> dict[str, list[int]]:
        """Channels dead for at least ``patience`` consecutive events, per layer (layers with none left out)."""
        out = {}
        for name, streak in self.streak.items():
            channels = [c for c, n in enumerate(streak) if is_persistent(n, self.patience)]
            if channels:
                out[name] = channels
        return out

    def record(self, result: ProbeResult, change: DeadChange | None = None) -> dict[str, Any]:
        """The machine-readable form of the event just counted (what ``fm-callback report`` reads back).

        Per layer: channel count, dead and never-positive channels at this event, the persistently dead
        ones with the step/epoch their streak began, and the ones that revived at this event.
        """
        event = self.history[-1] if self.history else {"step": 0, "epoch": 0}
        revivals = change.revivals if change is not None else []
        layers = {}
        for name, report in result.items():
            streak, since = self.streak.get(name, []), self.since.get(name, [])
            never_positive = report.never_positive.nonzero().flatten().tolist() if report.never_positive_applies else []
            layers[name] = {
                "channels": int(report.dead.numel()),
                "dead": report.dead.nonzero().flatten().tolist(),
                "rule": report.rule,  # which dead rule applied: silenced after a ReLU-family activation, or constant
                "silencing": report.silencing,
                "layout": report.layout,
                "never_positive": never_positive,  # only before a ReLU-like activation (not logits, not a gate)
                "persistent": [
                    {"channel": c, "since_step": since[c][0], "since_epoch": since[c][1], "events": n}
                    for c, n in enumerate(streak)
                    if is_persistent(n, self.patience)
                ],
                "revived": [
                    {k: r[k] for k in ("channel", "since_step", "since_epoch", "events")}
                    for r in revivals
                    if r["layer"] == name
                ],
            }
        return {
            "version": RECORD_VERSION,
            "step": event["step"],
            "epoch": event["epoch"],
            "patience": self.patience,
            "layers": layers,
        }

    def table(self, result: ProbeResult, change: DeadChange | None = None) -> str:
        """A markdown table of this event: dead, persistently dead (with since), revived, never-positive channels."""
        persistent = self.persistent()
        revived = change.revived if change is not None else {}
        rows = [
            "| layer | dead | dead channels | persistently dead (since epoch) | revived now | never positive | rule |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, report in result.items():
            dead = report.dead.nonzero().flatten().tolist()
            never = report.never_positive.nonzero().flatten().tolist() if report.never_positive_applies else []
            lasting = ", ".join(f"{c} ({self.since[name][c][1]})" for c in persistent.get(name, [])) or "-"
            rows.append(
                f"| {name} | {len(dead)}/{report.dead.numel()} | {format_channels(dead)} | {lasting} | "
                f"{format_channels(revived.get(name, []))} | {format_channels(never)} | {report.rule} |"
            )
        return "\n".join(rows)

    def state_dict(self) -> dict[str, Any]:
        """A copy: a checkpoint taken now does not change as training goes on."""
        return copy.deepcopy(
            {
                "patience": self.patience,
                "streak": self.streak,
                "since": self.since,
                "reported": self.reported,
                "history": self.history,
                "revivals": self.revivals,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counts from a checkpoint; ``patience`` stays as configured now."""
        self.streak = {k: list(v) for k, v in state.get("streak", {}).items()}
        self.since = {k: [list(s) if s is not None else None for s in v] for k, v in state.get("since", {}).items()}
        self.reported = {
            k: list(state.get("reported", {}).get(k, [is_persistent(n, self.patience) for n in v]))
            for k, v in self.streak.items()
        }
        self.history = thinned(copy.deepcopy(list(state.get("history", []))))
        self.revivals = copy.deepcopy(list(state.get("revivals", [])))[-MAX_REVIVALS:]


class ChangeTracker:
    """Each layer's representation change since the previous and since the first event (``1 - CKA``).

    Keeps only the layers' Gram matrices of the probe batch (float64 [N, N], CPU) at the first and the previous
    event, and per event the change since the previous one (``history``, for the change map at the end of fit).
    """

    def __init__(self) -> None:
        self.first_grams: dict[str, torch.Tensor] = {}
        self.previous_grams: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []  # per event: step, epoch, layer_change per layer

    def new_batch(self) -> None:
        """CKA compares representations of the same samples: a new probe batch starts the comparisons afresh."""
        self.first_grams, self.previous_grams = {}, {}

    def update(self, result: ProbeResult, step: int, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        """This event's changes per layer ``(since the previous event, since the first)``, finite values only
        (none at the first event, nor with fewer than 4 probe samples); keeps this event's Gram matrices."""
        grams = similarity.grams_of(result)
        since_previous, since_first = [
            {name: v for name, v in similarity.layer_change(before, grams).items() if math.isfinite(v)}
            for before in (self.previous_grams, self.first_grams)
        ]
        self.previous_grams = grams
        for name, gram in grams.items():
            self.first_grams.setdefault(name, gram)
        if since_previous:
            self.history = thinned([*self.history, {"step": step, "epoch": epoch, "change": since_previous}])
        return since_previous, since_first

    def similarity(self) -> tuple[list[str], list[list[float | None]]] | None:
        """The layers' CKA matrix at the last event (``None`` for a missing value: strict JSON); ``None`` with
        fewer than two layers."""
        if len(self.previous_grams) < 2:
            return None
        names, matrix = similarity.similarity_matrix(self.previous_grams)
        return names, [[v if math.isfinite(v) else None for v in row] for row in matrix.tolist()]

    def state_dict(self) -> dict[str, Any]:
        """A copy: a checkpoint taken now does not change as training goes on."""
        state = {"first_grams": self.first_grams, "previous_grams": self.previous_grams, "change_history": self.history}
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_grams = copy.deepcopy(dict(state.get("first_grams", {})))
        self.previous_grams = copy.deepcopy(dict(state.get("previous_grams", {})))
        self.history = thinned(copy.deepcopy(list(state.get("change_history", []))))


def thinned(history: list[dict[str, Any]], limit: int = MAX_HISTORY) -> list[dict[str, Any]]:
    """``history`` (one entry per event), at most ``limit`` long: past it, every other entry but the last is dropped,
    so a long run keeps a summary of its whole span (the figures show fewer, evenly spread events)."""
    if len(history) <= limit:
        return history
    return [*history[:-1:2], history[-1]]


def _plural(channels: list[int]) -> str:
    return f"channel {channels[0]}" if len(channels) == 1 else f"channels {', '.join(map(str, channels))}"
