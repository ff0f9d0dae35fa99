"""``fm-callback report``'s text: one run's summary (``report.summarize``) as rich tables that fit the console's
width, layer names never cut (:func:`print_summary`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .channel_lists import format_channels

MAX_EVENT_COLUMNS = 12


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
