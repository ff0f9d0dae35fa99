"""Reading fm_callback's event files back (``fm-callback report``), and the dead-filter timeline picture.

The callback writes, at every probe event, a JSON record of the dead filters (tag ``fm_callback/dead_state``,
see ``tensorboard.py``): per layer the channel count, the dead and never-positive channels, the persistently
dead ones with the epoch/step their streak began, and those that revived. This module finds every run under
a log directory, reads those records with TensorBoard's own loader and summarises them per run and layer.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tensorboard as tb
from .tracking import format_channels

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

# Everything of the scalars and tensors (the records); of the bulky kinds, only the last item is kept.
SIZE_GUIDANCE = {"scalars": 0, "tensors": 0, "images": 1, "histograms": 1, "audio": 1, "compressedHistograms": 1}
MAX_EVENT_COLUMNS = 12


class ReportError(Exception):
    """A log directory that cannot be reported on; the message says why and what to do."""


@dataclass
class Run:
    """One run: a directory of event files, and its dead-filter records sorted by step."""

    name: str  # relative to the log directory given
    path: str
    records: list[dict[str, Any]]


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
    return _records_by_prefix(path).get(prefix, [])


def _records_by_prefix(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Every callback's records in ``path``, keyed by its tag prefix (``""`` without one): two callbacks in one
    Trainer write ``dead_state`` under their own prefixes, and their records must not merge by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
    accumulator.Reload()
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for tag in accumulator.Tags().get("tensors", []):
        base = tag.removesuffix("/text_summary")  # written by a writer that is not torch's SummaryWriter
        if base != tb.DEAD_STATE and not base.endswith(f"/{tb.DEAD_STATE}"):
            continue
        by_step = found.setdefault(base[: -len(tb.DEAD_STATE)].rstrip("/"), {})
        for event in accumulator.Tensors(tag):
            try:
                record = json.loads(event.tensor_proto.string_val[0].decode("utf-8"))
            except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("layers"), dict):
                record["step"] = event.step
                by_step[event.step] = record  # a later write of the same step (a resumed run) wins
    return {prefix: [by_step[step] for step in sorted(by_step)] for prefix, by_step in sorted(found.items())}


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
        for prefix, records in _records_by_prefix(path).items():
            if records:
                runs.append(
                    Run(name=f"{name} [{prefix}]" if prefix else name, path=str(path.resolve()), records=records)
                )
    if not runs:
        raise ReportError(
            f"{len(dirs)} run(s) with event files under {str(root)!r}, but none holds fm_callback data "
            f"(tag {tb.DEAD_STATE!r}). Was FeatureMapCallback attached to the Trainer, with a TensorBoardLogger, "
            "and did at least one probe event run?"
        )
    return runs


def summarize(run: Run) -> dict[str, Any]:
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
    }


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


def timeline_figure(history: list[dict[str, Any]], title: str | None = None) -> Figure:
    """A matplotlib figure: one row per layer, one column per probe event, the % of dead channels as colour.

    ``history`` is a list of ``{"step", "epoch", "dead_fraction": {layer: fraction}}``, one per event. Cells show
    the percentage when the grid is small enough to read it. The figure is built without pyplot, on its own Agg
    canvas: the user's matplotlib backend and pyplot's figures are left alone, and nothing needs closing.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers: list[str] = []
    for event in history:
        layers += [name for name in event["dead_fraction"] if name not in layers]
    percent = np.full((len(layers), len(history)), np.nan)
    for col, event in enumerate(history):
        for row, name in enumerate(layers):
            percent[row, col] = 100 * event["dead_fraction"].get(name, np.nan)
    names_width = 0.065 * max((len(name) for name in layers), default=0)  # inches of 8 pt tick labels
    width = min(16.0, names_width + max(3.5, 0.55 * len(history)) + 1.8)
    fig = Figure(figsize=(width, max(2.5, 0.3 * len(layers) + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["YlOrRd"].with_extremes(bad="0.85")  # grey: the layer was not probed at that event
    image = ax.imshow(percent, aspect="auto", cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    if len(layers) <= 40 and len(history) <= 24:
        for (row, col), value in np.ndenumerate(percent):
            if not np.isnan(value):
                ink = _ink(cmap(image.norm(value)))
                ax.text(col, row, f"{value:.3g}%", ha="center", va="center", fontsize=7, color=ink)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ticks = list(range(0, len(history), max(1, len(history) // 12)))
    ax.set_xticks(ticks, [f"{history[i]['step']}\nep {history[i]['epoch']}" for i in ticks], fontsize=7)
    ax.set_xlabel("probe event (global step, epoch)")
    ax.set_title(title or "dead filters: % of each layer's channels", fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, aspect=30, label="dead (%)")
    colorbar.ax.yaxis.set_major_formatter("{x:.0f}%")
    return fig


def timeline_image(history: list[dict[str, Any]], title: str | None = None) -> np.ndarray:
    """``timeline_figure`` rendered at its own 100 dpi: uint8 RGB, [H, W, 3] (``add_image(..., dataformats="HWC")``)."""
    import numpy as np

    fig = timeline_figure(history, title)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _ink(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (WCAG relative luminance)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.179 else "white"


# ---- the command ---------------------------------------------------------------------------------------------


def report_command(args: Any) -> int:
    """``fm-callback report LOGDIR [--json] [--plot PNG]``; returns the exit status."""
    try:
        runs = load_runs(args.logdir)
    except ReportError as err:
        print(f"fm-callback report: {err}", file=sys.stderr)
        return 1
    summaries = [summarize(run) for run in runs]
    if args.json:
        print(json.dumps({"logdir": str(args.logdir), "runs": summaries}, indent=2))
    else:
        console = _console()
        for summary in summaries:
            print_summary(console, summary)
    if args.plot:
        for path in save_plots(summaries, args.plot):
            print(f"timeline saved to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def save_plots(summaries: list[dict[str, Any]], target: str) -> list[str]:
    """One timeline PNG per run: ``target`` itself for one run, ``<stem>.<run>.png`` beside it for several."""
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for summary in summaries:
        path = out
        if len(summaries) > 1:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in summary["run"]).strip("._") or "run"
            path = out.with_name(f"{out.stem}.{safe}{out.suffix or '.png'}")
        fig = timeline_figure(history(summary), title=f"dead filters of {summary['run']}: % of each layer's channels")
        fig.savefig(path, dpi=120)
        paths.append(str(path))
    return paths


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
