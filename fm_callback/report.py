"""``fm-callback report``: the callback's JSON record of each probe event (tag ``fm_callback/dead_state``, see
``tensorboard_writer.py``) read back per run and layer: dead, never-positive, persistently dead (since when) and revived
channels, and the representation change (``layer_change``, 1 - CKA against the previous event). A layer whose change
stayed below ``SETTLED_BELOW`` at the last ``SETTLED_EVENTS`` events has settled.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import names
from .plots import change_figure, similarity_figure, timeline_figure
from .tracking import format_channels
from .view import event_files

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
    examples: list[dict[str, Any]] = field(default_factory=list)  # the top-examples records, by step


def load_records(path: str | os.PathLike, prefix: str = "") -> list[dict[str, Any]]:
    """The dead-filter records of one run (a directory of event files, or one file), one per step, by step;
    those of the callback with ``prefix=`` when one was given."""
    return _records_by_prefix(path, names.DEAD_STATE).get(prefix, [])


def _records_by_prefix(path: str | os.PathLike, *kinds: str) -> dict[str, list[dict[str, Any]]]:
    """Every callback's JSON records of the ``kinds`` tags in the event files at ``path`` (by step, each with its
    ``kind`` and ``step``), keyed by the callback's tag prefix (``""`` without one): two callbacks in one Trainer
    write under their own prefixes, and their records must not merge by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
    accumulator.Reload()
    found = []
    for tag in accumulator.Tags().get("tensors", []):
        base = tag.removesuffix("/text_summary")  # written by a writer that is not torch's SummaryWriter
        for event in accumulator.Tensors(tag):
            try:
                found.append((base, event.step, json.loads(event.tensor_proto.string_val[0].decode("utf-8"))))
            except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
                continue
    return _by_prefix(found, kinds)


def _file_records_by_prefix(folder: Path, *kinds: str) -> dict[str, list[dict[str, Any]]]:
    """As :func:`_records_by_prefix`, from the record files in ``folder`` (``fm_callback_records``, see
    ``names.record_file``): a W&B run's files, an MLflow run's artifacts."""
    found = []
    for file in sorted(folder.rglob("*.json")):
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
            found.append((str(content["tag"]), int(content["step"]), content["record"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return _by_prefix(found, kinds)


def _by_prefix(found: list[tuple[str, int, Any]], kinds: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """``(tag, step, record)`` triples as the records of the ``kinds`` tags by step, keyed by the tag prefix."""
    grouped: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for tag, step, record in found:
        kind = next((k for k in kinds if tag == k or tag.endswith(f"/{k}")), None)
        if kind is not None and isinstance(record, dict) and isinstance(record.get("layers"), dict | list):
            record.update(kind=kind, step=step)
            grouped.setdefault(tag[: -len(kind)].rstrip("/"), {})[kind, step] = record  # a later write of a step wins
    return {prefix: [by_step[key] for key in sorted(by_step)] for prefix, by_step in sorted(grouped.items())}


def load_runs(logdir: str | os.PathLike) -> list[Run]:
    """Every run under ``logdir`` that holds fm_callback dead-filter records, in TensorBoard event files or as record
    files (a W&B run folder, an MLflow artifact folder); ReportError if there is none.

    A W&B run folder holds a run's records twice (event files and record files): that run is reported once.
    """
    root = Path(logdir)
    if not root.exists():
        raise ReportError(f"LOGDIR {str(root)!r} does not exist; pass the directory your TensorBoardLogger writes to")
    dirs = [root] if root.is_file() else sorted({file.parent for file in event_files(root)})
    record_dirs = [] if root.is_file() else sorted(p for p in root.rglob(names.RECORDS) if p.is_dir())
    if root.is_dir() and root.name == names.RECORDS:
        record_dirs = [root]
    if not dirs and not record_dirs:
        raise ReportError(
            f"no TensorBoard event files and no {names.RECORDS} folder (W&B, MLflow) under {str(root)!r}; is this the "
            "right log directory?"
        )
    sources = [(path, path, _records_by_prefix) for path in dirs]
    sources += [(folder.parent, folder, _file_records_by_prefix) for folder in record_dirs]
    runs, seen = [], {}  # the event-file folders by their records
    for path, where, read in sources:
        for prefix, found in read(where, names.DEAD_STATE, names.SIMILARITY_STATE, names.EXAMPLES_STATE).items():
            records = [r for r in found if r["kind"] == names.DEAD_STATE and isinstance(r["layers"], dict)]
            similarity = [r for r in found if r["kind"] == names.SIMILARITY_STATE and isinstance(r.get("cka"), list)]
            examples = [r for r in found if r["kind"] == names.EXAMPLES_STATE and isinstance(r["layers"], dict)]
            same = json.dumps([prefix, records])
            if where is path:
                seen.setdefault(same, []).append(path)
            elif any(events.is_relative_to(path.parent) for events in seen.get(same, [])):
                continue  # the record files of a W&B run (<run>/files) whose event files are in <run>/fm_callback
            if records:
                name = str(path.relative_to(root) if path.is_relative_to(root) else path.name)
                name += f" [{prefix}]" if prefix else ""
                runs.append(Run(name, str(path.resolve()), records, similarity[-1] if similarity else None, examples))
    if not runs:
        raise ReportError(
            f"{len(dirs) + len(record_dirs)} run(s) with event or record files under {str(root)!r}, but none holds "
            f"fm_callback data (tag {names.DEAD_STATE!r}). Was FeatureMapCallback attached to the Trainer, with a "
            "logger, and did at least one probe event run?"
        )
    return runs


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


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The human-readable report of one run: dead fraction over time, dead now, persistent, revived, never positive.

    Layer names are never cut: the over-time table shows as many events as fit beside them at the console's width,
    and a name too long for even one event column wraps onto more lines.
    """
    events, layers = summary["events"], summary["layers"]
    first, last = events[0], events[-1]
    console.rule(f"[bold]{escape(summary['run'])}[/bold]")
    console.print(
        f"{len(events)} probe event(s), steps {first['step']}-{last['step']} (epochs {first['epoch']}-"
        f"{last['epoch']}); persistently dead = dead for {summary['patience']} consecutive events or more."
    )
    _show(console, _fraction_table(console, summary))
    console.print(_rules(layers))
    rules: dict[str, list[str]] = {}
    for layer in layers:
        rules.setdefault(layer["rule"] or "not recorded", []).append(layer["layer"])
    rows = [(rule, f"{len(layers)}: {', '.join(layers)}") for rule, layers in rules.items()]
    _print_table(console, "Dead rule per layer (which rule could fire), and how many layers:", (), rows)
    title = f"Dead at the last event (step {last['step']}, epoch {last['epoch']}):"
    constant_only = sum(layer["silencing"] is False for layer in layers)
    caveat = f" ({constant_only} of {len(layers)} layers by the constant rule only)" if constant_only else ""
    _print_table(
        console, title, (), _channels(layers, "dead"), f"[green]No dead channel at the last event.[/green]{caveat}"
    )

    persistent: dict[tuple, list[int]] = {}  # channels by layer and the event their streak began: a row each
    for layer in layers:
        for e in layer["persistent"]:
            key = (layer["layer"], _when(e["since_epoch"], e["since_step"]), str(e["events"]))
            persistent.setdefault(key, []).append(e["channel"])
    rows = [(name, format_channels(channels), since, n) for (name, since, n), channels in persistent.items()]
    title, empty = "Persistently dead channels (at the last event)", "No persistently dead channels at the last event."
    _print_table(console, title, ("channels", "dead since", "events dead"), rows, f"[green]{empty}[/green]")
    rows = [
        (r["layer"], str(r["channel"]), _when(r["since_epoch"], r["since_step"]), _when(r["epoch"], r["step"]))
        for r in summary["revived"]
    ]
    title = "Revived channels (persistently dead, then alive again)"
    _print_table(console, title, ("channel", "dead since", "revived at"), rows, "No channel revived.")

    measured = [layer for layer in layers if any(v is not None for v in layer["layer_change"])]
    if measured:
        rule = summary["settled_rule"]
        settled = [layer["layer"] for layer in measured if layer["settled"]]
        console.print(
            f"Settled layers (layer_change below {rule['below']:g} at each of the last {rule['events']} events), "
            "candidates to freeze or to train at a lower learning rate: "
            + (escape(", ".join(settled)) if settled else "none")
            + f" ({len(settled)} of {len(measured)})."
        )
    if summary["examples"]:
        last = summary["examples"][-1]
        rows = [
            (name, f"{counts[-1]} of {len(last['layers'][name]['channels'])}" if counts[-1] is not None else "-")
            for name, counts in summary["examples_changed"].items()
            if name in last["layers"]
        ]
        title = f"Channels whose top examples changed since the previous examples event (step {last['step']}):"
        _print_table(console, title, (), rows)
    title = "Never positive at the last event, not dead (a BatchNorm shifts them before the ReLU, or GELU/SiLU):"
    _print_table(console, title, (), _channels(layers, "never_positive_alive"))
    console.print()


def _fraction_table(console: Console, summary: dict[str, Any]) -> Table:
    """Dead fraction per layer over time, with as many events (first and last among them) as fit the console."""
    events = summary["events"]
    for most in range(min(MAX_EVENT_COLUMNS, len(events)), 0, -1):
        shown = _spread(len(events), most)
        caption = f"{len(shown)} of {len(events)} events shown; --json has them all" if most < len(events) else None
        table = Table(title="Dead fraction per layer over time", caption=caption, title_justify="left", show_edge=False)
        table.add_column("layer", style="bold", no_wrap=True)  # kept on one line while the table fits (_show)
        table.add_column("channels", justify="right", no_wrap=True)
        for i in shown:  # three short header lines keep the column as narrow as its percentages
            table.add_column(f"step\n{events[i]['step']}\nep {events[i]['epoch']}", justify="right", overflow="fold")
        for layer in summary["layers"]:
            cells = [_percent(layer["dead_fraction"][i]) for i in shown]
            table.add_row(escape(layer["layer"]), str(layer["channels"] or "-"), *cells)
        if _widths(console, table).maximum <= console.width:
            break
    return table


def _rules(layers: list[dict[str, Any]]) -> str:
    """Over which channels ``dead_filters/all`` is taken, and how many of them a silencing rule could judge."""
    judged = [layer for layer in layers if layer["silencing"]]
    total, silenced = (sum(la["channels"] or 0 for la in group) for group in (layers, judged))
    return (
        f"dead_filters/all is over all {total} channels of {len(layers)} layers; {silenced} channels of {len(judged)} "
        "layers reach a ReLU-family activation (dead: constant or silenced by it; dying: it fires on at most 1 % of "
        "positions), the rest are dead only when constant (GELU, SiLU, a gate or nothing follows)."
    )


def _print_table(console: Console, title: str, headers: tuple[str, ...], rows: list[tuple], empty: str = "") -> None:
    """A titled table of layer names and ``headers``, whose cells wrap without splitting a header's word (no
    ``headers``: ``title``, then an indented line per row); ``empty`` instead when there are no ``rows``."""
    if not rows:
        if empty:
            console.print(empty)
        return
    if headers:
        table = Table(title=title, title_justify="left", show_edge=False)
    else:
        console.print(title)
        table = Table.grid(padding=(0, 0, 0, 2), pad_edge=True)
    table.add_column("layer" if headers else None, style="bold", no_wrap=True)  # one line while the table fits
    for header in headers or [""]:
        table.add_column(header or None, overflow="fold", min_width=max(map(len, header.split()), default=None))
    for name, *cells in rows:
        table.add_row(escape(name), *cells)
    _show(console, table)


def _channels(layers: list[dict[str, Any]], key: str) -> list[tuple[str, str]]:
    """Per layer with channels ``layer[key]``: its name, and how many of its channels and which."""
    return [
        (la["layer"], f"{len(la[key])} of {la['channels']}: {format_channels(la[key])}") for la in layers if la[key]
    ]


def _show(console: Console, table: Table) -> None:
    """Print ``table``, its layer names folded onto more lines if they cannot all fit whole: wrapped, never cut short.

    Rich narrows the columns that may wrap first, and cuts a ``no_wrap`` column only when that is not enough: the
    names fit when the table's narrowest layout does (every other column either wraps or holds single words).
    """
    if _widths(console, table).minimum > console.width:
        table.columns[0].no_wrap = False
        table.columns[0].overflow = "fold"
    console.print(table)


def _widths(console: Console, table: Table) -> Any:
    """The table's width range with unlimited room: ``maximum`` with nothing wrapped, ``minimum`` with every
    wrapping column at its longest word."""
    return console.measure(table, options=console.options.update_width(1_000_000))


def _spread(total: int, most: int) -> list[int]:
    """``most <= total`` indices of ``range(total)``, evenly spread: the last among them, and from 2 on the first."""
    return sorted({total - 1 - round(i * (total - 1) / max(1, most - 1)) for i in range(most)})


def _when(epoch: int, step: int) -> str:
    return f"epoch {epoch} (step {step})"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "[dim]0%[/dim]"
    text = "100%" if value == 1 else f"{100 * value:.1f}%"
    return f"[red]{text}[/red]" if value >= 0.5 else f"[yellow]{text}[/yellow]"
