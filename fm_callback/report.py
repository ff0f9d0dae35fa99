"""``fm-callback report``: the callback's JSON record of each probe event (tag ``fm_callback/dead_state``, see
``tensorboard_writer.py``) read back per run and layer (:mod:`.read_records`): dead, never-positive, persistently dead
(since when) and revived channels, and the representation change (``layer_change``, 1 - CKA against the previous
event). A layer whose change stayed below ``SETTLED_BELOW`` at the last ``SETTLED_EVENTS`` events has settled. This
module summarizes each run and runs the command; :mod:`.report_tables` prints the summaries.

Reading side: no torch; NumPy, matplotlib and PIL only for ``--plot``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from . import names
from .read_records import ReportError, Run, load_records, load_runs
from .report_tables import print_summary

__all__ = [
    "ReportError",
    "Run",
    "examples_changed",
    "history",
    "load_records",
    "load_runs",
    "print_summary",
    "report_command",
    "save_plots",
    "summarize",
]

SETTLED_BELOW = 0.01  # layer_change below this ...
SETTLED_EVENTS = 3  # ... at each of the last this many events: the layer has settled


def summarize(run: Run, settled_below: float = SETTLED_BELOW, settled_events: int = SETTLED_EVENTS) -> dict[str, Any]:
    """A JSON-ready summary of one run: per layer the dead fraction at each event, the channels dead now,
    the persistently dead ones (with the epoch/step they died), never-positive ones, and every revival."""
    records = run.records
    layers = []
    for name in dict.fromkeys(name for record in records for name in record["layers"]):
        at = [record["layers"].get(name) for record in records]
        now = at[-1] or {"channels": None, "dead": [], "persistent": [], "never_positive": []}
        change = [record.get(names.LAYER_CHANGE, {}).get(name) for record in records]
        last = change[-settled_events:]
        layers.append(
            {
                "layer": name,
                "channels": now["channels"],
                "rule": now.get("rule"),  # which dead rule applied (records before 0.x: None)
                "silencing": now.get("silencing"),
                "dead_fraction": [len(la["dead"]) / la["channels"] if la and la["channels"] else None for la in at],
                "dead": now["dead"],
                "persistent": now["persistent"],
                # still varying and not silenced: no ReLU right after (logits), or a BatchNorm shifts it first
                "never_positive_alive": sorted(set(now["never_positive"]) - set(now["dead"])),
                "layer_change": change,  # 1 - CKA against the previous event; None where not measured
                "layer_change_from_start": [
                    record.get(names.LAYER_CHANGE_FROM_START, {}).get(name) for record in records
                ],
                "settled": len(last) == settled_events and all(v is not None and v < settled_below for v in last),
            }
        )
    revived = [
        {"layer": name, **entry, "step": record["step"], "epoch": record["epoch"]}
        for record in records
        for name, layer in record["layers"].items()
        for entry in layer.get("revived", [])
    ]
    return {
        "run": run.name,
        "path": run.path,
        "patience": records[-1].get("patience"),
        "events": [{"step": r["step"], "epoch": r["epoch"]} for r in records],
        "layers": layers,
        "revived": revived,
        "settled_rule": {"below": settled_below, "events": settled_events},
        "layer_similarity": run.similarity,
        "examples": [{k: v for k, v in record.items() if k != "kind"} for record in run.examples],
        "examples_changed": examples_changed(run.examples),
    }


def examples_changed(records: list[dict[str, Any]]) -> dict[str, list[int | None]]:
    """Per picture layer and examples event, how many of its channels changed their set of top examples since
    the previous examples event (``None`` at the first, and where the layer was not scanned before): a filter
    that keeps changing what it looks for has not settled."""
    changed: dict[str, list[int | None]] = {}
    previous: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(records):
        for name, layer in record["layers"].items():
            counts = changed.setdefault(name, [None] * i)
            before = previous.get(name)
            counts.append(
                None
                if before is None
                else sum(
                    set(entry["indices"]) != set(before["channels"].get(channel, {}).get("indices", []))
                    for channel, entry in layer["channels"].items()
                )
            )
            previous[name] = layer
        for counts in changed.values():
            counts.extend([None] * (i + 1 - len(counts)))
    return changed


def history(summary: dict[str, Any], key: str = "dead_fraction", as_key: str = "dead_fraction") -> list[dict]:
    """The summary's events in the form the figures take, ``{"step", "epoch", as_key: {layer: layer[key][i]}}``
    (``timeline_figure``: the defaults; ``change_figure``: ``"layer_change", "change"``)."""
    return [
        {**event, as_key: {la["layer"]: la[key][i] for la in summary["layers"] if la[key][i] is not None}}
        for i, event in enumerate(summary["events"])
    ]


def report_command(args: Any) -> int:
    """``fm-callback report LOGDIR [--json] [--plot PNG]``; returns the exit status."""
    try:
        runs = load_runs(args.logdir)
    except ReportError as err:
        print(f"fm-callback report: {err}", file=sys.stderr)
        return 1
    summaries = [summarize(run, args.settled_below, args.settled_events) for run in runs]
    if args.json:
        print(json.dumps({"logdir": str(args.logdir), "runs": summaries}, indent=2))
    else:
        console = Console(highlight=False)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = 160  # piped: wide enough that tables do not wrap
        for summary in summaries:
            print_summary(console, summary)
    if args.plot:
        save_plots(summaries, args.plot, sys.stderr if args.json else sys.stdout)
    return 0


def save_plots(summaries: list[dict[str, Any]], target: str, log: TextIO | None = None) -> None:
    """Per run, the dead-filter timeline at ``target`` (``<stem>.<run>.png`` beside it for several runs) and, where
    the run measured them, the layer change heatmap (``<stem>.change.png``) and the layer similarity matrix
    (``<stem>.similarity.png``) beside it; says each picture saved on ``log`` (default: stdout)."""
    from .plots import change_figure, similarity_figure, timeline_figure  # NumPy, matplotlib, PIL: only here

    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    for summary in summaries:
        run, path, similarity = summary["run"], out, summary["layer_similarity"]
        if len(summaries) > 1:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run).strip("._") or "run"
            path = out.with_name(f"{out.stem}.{safe}{out.suffix or '.png'}")
        title = f"dead filters of {run}: % of each layer's channels"
        figures = [("timeline", path, timeline_figure(history(summary), title))]
        if changes := [event for event in history(summary, "layer_change", "change") if event["change"]]:
            title = f"layer change of {run}: 1 - CKA with the previous probe event"
            figures.append(("layer change", path.with_name(f"{path.stem}.change.png"), change_figure(changes, title)))
        if similarity:
            title = f"layer similarity of {run}: CKA at step {similarity['step']}"
            figure = similarity_figure(similarity["layers"], similarity["cka"], title)
            figures.append(("layer similarity", path.with_name(f"{path.stem}.similarity.png"), figure))
        for what, where, figure in figures:
            figure.savefig(where, dpi=120)
            print(f"{what} saved to {where}", file=log)
