"""Reading fm_callback's event files back (``fm-callback report``), and the end-of-fit pictures: the dead-filter
timeline, the layer change heatmap and the layer similarity matrix.

The callback writes, at every probe event, a JSON record of the dead filters (tag ``fm_callback/dead_state``,
see ``tensorboard.py``): per layer the channel count, the dead and never-positive channels, the persistently
dead ones with the epoch/step their streak began, and those that revived. This module finds every run under
a log directory, reads those records with TensorBoard's own loader and summarises them per run and layer.
The records also hold each layer's representation change (``layer_change``, 1 - CKA against the previous event);
a layer whose change stayed below ``SETTLED_BELOW`` for the last ``SETTLED_EVENTS`` events is reported as settled.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tensorboard as tb
from .plots import change_figure, similarity_figure, timeline_figure
from .tracking import format_channels

# Everything of the scalars and tensors (the records); of the bulky kinds, only the last item is kept.
SIZE_GUIDANCE = {"scalars": 0, "tensors": 0, "images": 1, "histograms": 1, "audio": 1, "compressedHistograms": 1}
MAX_EVENT_COLUMNS = 12
SETTLED_BELOW = 0.01  # layer_change below this ...
SETTLED_EVENTS = 3  # ... at each of the last this many events: the layer has settled


class ReportError(Exception):
    """A log directory that cannot be reported on; the message says why and what to do."""


@dataclass
class Run:
    """One run: a directory of event files, and its dead-filter records sorted by step."""

    name: str  # relative to the log directory given
    path: str
    records: list[dict[str, Any]]
    similarity: dict[str, Any] | None = None  # {"layers": [...], "cka": [[...]], "step": int} at the last event


def find_event_dirs(logdir: str | os.PathLike) -> list[Path]:
    """Every directory under ``logdir`` (itself included) holding TensorBoard event files, sorted."""
    root = Path(logdir)
    if root.is_file():
        return [root]
    found = {Path(d) for d, _, files in os.walk(root) if any("tfevents" in f for f in files)}
    return sorted(found)


def load_records(path: str | os.PathLike, prefix: str = "") -> list[dict[str, Any]]:
    """The dead-filter records of one run (a directory of event files, or one file), one per step, by step;
    those of the callback with ``prefix=`` when one was given."""
    return _records_by_prefix(path, tb.DEAD_STATE).get(prefix, [])


def _records_by_prefix(path: str | os.PathLike, *kinds: str) -> dict[str, list[dict[str, Any]]]:
    """Every callback's JSON records of the ``kinds`` tags in ``path`` (by step, each with its ``kind`` and
    ``step``), keyed by the callback's tag prefix (``""`` without one): two callbacks in one Trainer write under
    their own prefixes, and their records must not merge by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
    accumulator.Reload()
    found: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for tag in accumulator.Tags().get("tensors", []):
        base = tag.removesuffix("/text_summary")  # written by a writer that is not torch's SummaryWriter
        kind = next((k for k in kinds if base == k or base.endswith(f"/{k}")), None)
        if kind is None:
            continue
        by_step = found.setdefault(base[: -len(kind)].rstrip("/"), {})
        for event in accumulator.Tensors(tag):
            try:
                record = json.loads(event.tensor_proto.string_val[0].decode("utf-8"))
            except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("layers"), dict | list):
                record.update(kind=kind, step=event.step)
                by_step[kind, event.step] = record  # a later write of the same step (a resumed run) wins
    return {prefix: [by_step[key] for key in sorted(by_step)] for prefix, by_step in sorted(found.items())}


def load_runs(logdir: str | os.PathLike) -> list[Run]:
    """Every run under ``logdir`` that holds fm_callback dead-filter records; ReportError if there is none."""
    root = Path(logdir)
    if not root.exists():
        raise ReportError(f"LOGDIR {str(root)!r} does not exist; pass the directory your TensorBoardLogger writes to")
    dirs = find_event_dirs(root)
    if not dirs:
        raise ReportError(f"no TensorBoard event files under {str(root)!r}; is this the right log directory?")
    runs = []
    for path in dirs:
        name = "." if path == root else str(path.relative_to(root)) if root in path.parents else str(path)
        for prefix, found in _records_by_prefix(path, tb.DEAD_STATE, tb.SIMILARITY_STATE).items():
            records = [r for r in found if r["kind"] == tb.DEAD_STATE and isinstance(r["layers"], dict)]
            similarity = [r for r in found if r["kind"] == tb.SIMILARITY_STATE and isinstance(r.get("cka"), list)]
            if records:
                runs.append(
                    Run(
                        name=f"{name} [{prefix}]" if prefix else name,
                        path=str(path.resolve()),
                        records=records,
                        similarity=similarity[-1] if similarity else None,
                    )
                )
    if not runs:
        raise ReportError(
            f"{len(dirs)} run(s) with event files under {str(root)!r}, but none holds fm_callback data "
            f"(tag {tb.DEAD_STATE!r}). Was FeatureMapCallback attached to the Trainer, with a TensorBoardLogger, "
            "and did at least one probe event run?"
        )
    return runs


def summarize(run: Run, settled_below: float = SETTLED_BELOW, settled_events: int = SETTLED_EVENTS) -> dict[str, Any]:
    """A JSON-ready summary of one run: per layer the dead fraction at each event, the channels dead now,
    the persistently dead ones (with the epoch/step they died), never-positive ones, and every revival."""
    records = run.records
    last = records[-1]
    names: list[str] = []
    for record in records:
        names += [n for n in record["layers"] if n not in names]
    layers = []
    for name in names:
        fractions = []
        for record in records:
            layer = record["layers"].get(name)
            fractions.append(len(layer["dead"]) / layer["channels"] if layer and layer["channels"] else None)
        change = [record.get(tb.LAYER_CHANGE, {}).get(name) for record in records]
        from_start = [record.get(tb.LAYER_CHANGE_FROM_START, {}).get(name) for record in records]
        now = last["layers"].get(name)
        layers.append(
            {
                "layer": name,
                "channels": now["channels"] if now else None,
                "dead_fraction": fractions,
                "dead": now["dead"] if now else [],
                "persistent": now["persistent"] if now else [],
                # still varying and not silenced: no ReLU right after (logits), or a BatchNorm shifts it first
                "never_positive_alive": sorted(set(now["never_positive"]) - set(now["dead"])) if now else [],
                "layer_change": change,  # 1 - CKA against the previous event; None where not measured
                "layer_change_from_start": from_start,
                "settled": _settled(change, settled_below, settled_events),
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
        "patience": last.get("patience"),
        "events": [{"step": r["step"], "epoch": r["epoch"]} for r in records],
        "layers": layers,
        "revived": revived,
        "settled_rule": {"below": settled_below, "events": settled_events},
        "layer_similarity": run.similarity,
    }


def _settled(change: list[float | None], below: float, events: int) -> bool:
    """Whether the layer's change stayed below ``below`` at each of the last ``events`` events."""
    last = change[-events:]
    return len(last) == events and all(value is not None and value < below for value in last)


def change_history(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's events that measured a change, in the form ``change_figure`` takes (the callback's history)."""
    found = []
    for i, event in enumerate(summary["events"]):
        change = {layer["layer"]: layer["layer_change"][i] for layer in summary["layers"]}
        change = {name: value for name, value in change.items() if value is not None}
        if change:
            found.append({"step": event["step"], "epoch": event["epoch"], "change": change})
    return found


def history(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's events in the form ``timeline_figure`` takes (the tracker's history)."""
    return [
        {
            "step": event["step"],
            "epoch": event["epoch"],
            "dead_fraction": {
                layer["layer"]: layer["dead_fraction"][i]
                for layer in summary["layers"]
                if layer["dead_fraction"][i] is not None
            },
        }
        for i, event in enumerate(summary["events"])
    ]


# ---- the command ---------------------------------------------------------------------------------------------


def report_command(args: Any) -> int:
    """``fm-callback report LOGDIR [--json] [--plot PNG]``; returns the exit status."""
    try:
        runs = load_runs(args.logdir)
    except ReportError as err:
        print(f"fm-callback report: {err}", file=sys.stderr)
        return 1
    below = getattr(args, "settled_below", SETTLED_BELOW)
    events = getattr(args, "settled_events", SETTLED_EVENTS)
    summaries = [summarize(run, below, events) for run in runs]
    if args.json:
        print(json.dumps({"logdir": str(args.logdir), "runs": summaries}, indent=2))
    else:
        console = _console()
        for summary in summaries:
            print_summary(console, summary)
    if args.plot:
        for what, path in save_plots(summaries, args.plot):
            print(f"{what} saved to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def save_plots(summaries: list[dict[str, Any]], target: str) -> list[tuple[str, str]]:
    """Per run, the dead-filter timeline at ``target`` (``<stem>.<run>.png`` beside it for several runs) and, where
    the run measured them, the layer change heatmap (``<stem>.change.png``) and the layer similarity matrix
    (``<stem>.similarity.png``) beside it; returns ``(what, path)`` for each picture saved."""
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = []
    for summary in summaries:
        path = out
        if len(summaries) > 1:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in summary["run"]).strip("._") or "run"
            path = out.with_name(f"{out.stem}.{safe}{out.suffix or '.png'}")
        run = summary["run"]
        figures = [
            ("timeline", path, timeline_figure(history(summary), f"dead filters of {run}: % of each layer's channels"))
        ]
        changes = change_history(summary)
        if changes:
            title = f"layer change of {run}: 1 - CKA with the previous probe event"
            figures.append(("layer change", path.with_name(f"{path.stem}.change.png"), change_figure(changes, title)))
        similarity = summary.get("layer_similarity")
        if similarity:
            title = f"layer similarity of {run}: CKA at step {similarity['step']}"
            figure = similarity_figure(similarity["layers"], similarity["cka"], title)
            figures.append(("layer similarity", path.with_name(f"{path.stem}.similarity.png"), figure))
        for what, where, fig in figures:
            fig.savefig(where, dpi=120)
            saved.append((what, str(where)))
    return saved


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)  # piped: wide enough that tables do not wrap
    return console


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    """The human-readable report of one run: dead fraction over time, dead now, persistent, revived, never positive.

    Layer names are never cut: the over-time table shows as many events as fit beside them at the console's width,
    and a name too long for even one event column wraps onto more lines.
    """
    from rich.markup import escape
    from rich.table import Table

    events = summary["events"]
    first, last = events[0], events[-1]
    console.rule(f"[bold]{escape(summary['run'])}[/bold]")
    console.print(
        f"{len(events)} probe event(s), steps {first['step']}-{last['step']} (epochs {first['epoch']}-"
        f"{last['epoch']}); persistently dead = dead for {summary['patience']} consecutive events or more."
    )
    console.print(_fraction_table(console, summary))

    dead = [layer for layer in summary["layers"] if layer["dead"]]
    if dead:
        title = f"Dead at the last event (step {last['step']}, epoch {last['epoch']}):"
        _print_channels(console, title, dead, "dead")
    else:
        console.print("[green]No dead channel at the last event.[/green]")

    persistent = [(layer["layer"], entry) for layer in summary["layers"] for entry in layer["persistent"]]
    if persistent:
        table = Table(title="Persistently dead channels (at the last event)", title_justify="left", show_edge=False)
        _name_column(table)
        for header in ("channels", "dead since", "events dead"):
            _text_column(table, header)
        for (name, since_epoch, since_step, count), channels in _group(persistent).items():
            table.add_row(
                escape(name), format_channels(channels), f"epoch {since_epoch} (step {since_step})", str(count)
            )
        console.print(_keep_names(console, table))
    else:
        console.print("[green]No persistently dead channels at the last event.[/green]")

    if summary["revived"]:
        title = "Revived channels (persistently dead, then alive again)"
        table = Table(title=title, title_justify="left", show_edge=False)
        _name_column(table)
        for header in ("channel", "dead since", "revived at"):
            _text_column(table, header)
        for r in summary["revived"]:
            table.add_row(
                escape(r["layer"]),
                str(r["channel"]),
                f"epoch {r['since_epoch']} (step {r['since_step']})",
                f"epoch {r['epoch']} (step {r['step']})",
            )
        console.print(_keep_names(console, table))
    else:
        console.print("No channel revived.")

    measured = [layer for layer in summary["layers"] if any(v is not None for v in layer["layer_change"])]
    if measured:
        rule = summary["settled_rule"]
        settled = [layer["layer"] for layer in measured if layer["settled"]]
        console.print(
            f"Settled layers (layer_change below {rule['below']:g} at each of the last {rule['events']} events), "
            "candidates to freeze or to train at a lower learning rate: "
            + (escape(", ".join(settled)) if settled else "none")
            + f" ({len(settled)} of {len(measured)})."
        )

    never = [layer for layer in summary["layers"] if layer["never_positive_alive"]]
    if never:
        title = "Never positive at the last event, not dead (no ReLU silences them: logits, or a BatchNorm first):"
        _print_channels(console, title, never, "never_positive_alive")
    console.print()


def _fraction_table(console: Any, summary: dict[str, Any]) -> Any:
    """Dead fraction per layer over time, with as many events (first and last among them) as fit the console."""
    from rich.markup import escape
    from rich.table import Table

    events = summary["events"]
    for most in range(min(MAX_EVENT_COLUMNS, len(events)), 0, -1):
        shown = _spread(len(events), most)
        caption = f"{len(shown)} of {len(events)} events shown; --json has them all" if most < len(events) else None
        table = Table(title="Dead fraction per layer over time", caption=caption, title_justify="left", show_edge=False)
        _name_column(table)
        table.add_column("channels", justify="right", no_wrap=True)
        for i in shown:  # three short header lines keep the column as narrow as its percentages
            table.add_column(f"step\n{events[i]['step']}\nep {events[i]['epoch']}", justify="right", overflow="fold")
        for layer in summary["layers"]:
            cells = [_percent(layer["dead_fraction"][i]) for i in shown]
            table.add_row(escape(layer["layer"]), str(layer["channels"] or "-"), *cells)
        if _widths(console, table).maximum <= console.width:
            return table
    return _keep_names(console, table)


def _print_channels(console: Any, title: str, layers: list[dict[str, Any]], key: str) -> None:
    """``title``, then per layer an indented line: its name, how many of its channels, and which (``layer[key]``)."""
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 0, 0, 2), pad_edge=True)
    _name_column(grid)
    grid.add_column(overflow="fold")
    for layer in layers:
        grid.add_row(escape(layer["layer"]), f"{len(layer[key])} of {layer['channels']}: {format_channels(layer[key])}")
    console.print(title)
    console.print(_keep_names(console, grid))


def _name_column(table: Any) -> None:
    """The layer name column: kept on one line while the table fits (see ``_keep_names``)."""
    table.add_column("layer" if table.show_header else None, style="bold", no_wrap=True)


def _text_column(table: Any, header: str) -> None:
    """A column whose cells wrap (long channel lists fold), never splitting a word of its header."""
    table.add_column(header, overflow="fold", min_width=max(len(word) for word in header.split()))


def _keep_names(console: Any, table: Any) -> Any:
    """``table``, its layer names folded onto more lines if they cannot all fit whole: wrapped, never cut short.

    Rich narrows the columns that may wrap first, and cuts a ``no_wrap`` column only when that is not enough: the
    names fit when the table's narrowest layout does (every other column either wraps or holds single words).
    """
    if _widths(console, table).minimum > console.width:
        table.columns[0].no_wrap = False
        table.columns[0].overflow = "fold"
    return table


def _widths(console: Any, table: Any) -> Any:
    """The table's width range with unlimited room: ``maximum`` with nothing wrapped, ``minimum`` with every
    wrapping column at its longest word."""
    return console.measure(table, options=console.options.update_width(1_000_000))


def _group(persistent: list[tuple[str, dict[str, Any]]]) -> dict[tuple, list[int]]:
    """Persistent channels grouped by layer and the event their streak began (one table row each)."""
    groups: dict[tuple, list[int]] = {}
    for name, entry in persistent:
        key = (name, entry["since_epoch"], entry["since_step"], entry["events"])
        groups.setdefault(key, []).append(entry["channel"])
    return groups


def _spread(total: int, most: int) -> list[int]:
    """At most ``most`` indices of ``range(total)``, evenly spread, first and last included."""
    if total <= most:
        return list(range(total))
    if most == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (most - 1)) for i in range(most)})


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "[dim]0%[/dim]"
    text = "100%" if value == 1 else f"{100 * value:.1f}%"
    return f"[red]{text}[/red]" if value >= 0.5 else f"[yellow]{text}[/yellow]"
