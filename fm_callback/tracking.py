"""Dead filters over time: per channel, how many consecutive probe events it has been dead.

Framework-free and small; its whole state is plain Python so it goes into a checkpoint as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .probe import ProbeResult


@dataclass
class DeadChange:
    """What one event changed: channels that just became persistently dead, and ones that revived."""

    died: dict[str, list[int]] = field(default_factory=dict)
    revived: dict[str, list[int]] = field(default_factory=dict)


class DeadFilterTracker:
    """Counts consecutive dead events per channel; a channel dead for ``patience`` events is persistent."""

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.streak: dict[str, list[int]] = {}
        self.since: dict[str, list[int | None]] = {}  # epoch at which the current streak began
        self.history: list[dict[str, Any]] = []  # per event: step, epoch, dead fraction per layer
        self.revivals: list[dict[str, Any]] = []  # layer, channel, step, epoch

    def update(self, result: ProbeResult, step: int, epoch: int) -> DeadChange:
        change = DeadChange()
        for name, report in result.items():
            dead = report.dead.tolist()
            streak = self.streak.setdefault(name, [0] * len(dead))
            since = self.since.setdefault(name, [None] * len(dead))
            if len(streak) != len(dead):  # the layer changed width (e.g. a new model): start over
                streak[:] = [0] * len(dead)
                since[:] = [None] * len(dead)
            for channel, is_dead in enumerate(dead):
                if is_dead:
                    if streak[channel] == 0:
                        since[channel] = epoch
                    streak[channel] += 1
                    if streak[channel] == self.patience:
                        change.died.setdefault(name, []).append(channel)
                else:
                    if streak[channel] >= self.patience:
                        change.revived.setdefault(name, []).append(channel)
                        self.revivals.append({"layer": name, "channel": channel, "step": step, "epoch": epoch})
                    streak[channel] = 0
                    since[channel] = None
        self.history.append(
            {"step": step, "epoch": epoch, "dead_fraction": {n: r.dead_fraction for n, r in result.items()}}
        )
        return change

    def persistent(self) -> dict[str, list[int]]:
        """Channels dead for at least ``patience`` consecutive events, per layer (layers with none left out)."""
        out = {}
        for name, streak in self.streak.items():
            channels = [c for c, n in enumerate(streak) if n >= self.patience]
            if channels:
                out[name] = channels
        return out

    def table(self, result: ProbeResult) -> str:
        """A markdown table of this event's dead and never-positive channels, and the persistent ones."""
        persistent = self.persistent()
        rows = [
            "| layer | dead | dead channels | persistently dead | never positive |",
            "|---|---|---|---|---|",
        ]
        for name, report in result.items():
            dead = report.dead.nonzero().flatten().tolist()
            never = report.never_positive.nonzero().flatten().tolist()
            rows.append(
                f"| {name} | {len(dead)}/{report.dead.numel()} | {_indices(dead)} | "
                f"{_indices(persistent.get(name, []))} | {_indices(never)} |"
            )
        return "\n".join(rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "streak": self.streak,
            "since": self.since,
            "history": self.history,
            "revivals": self.revivals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = {k: list(v) for k, v in state.get("streak", {}).items()}
        self.since = {k: list(v) for k, v in state.get("since", {}).items()}
        self.history = list(state.get("history", []))
        self.revivals = list(state.get("revivals", []))


def _indices(channels: list[int]) -> str:
    return ", ".join(map(str, channels)) if channels else "-"
