"""``fm-callback view``: TensorBoard on 127.0.0.1 with every logged step of every image tag on the slider.

TensorBoard keeps only 10 steps per image tag unless told otherwise (``--samples_per_plugin``), which hides most of
a feature-map run. The command runs TensorBoard with that raised, through TensorBoard's own Python API
(``program.TensorBoard``, in this process), prints its address and the dashboards to open, and serves until Ctrl+C.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from .read_records import event_files

HOST = "127.0.0.1"
# Steps kept per image/text tag. Not TensorBoard's 0 ("keep all"): its Images plugin then asks the data provider
# to downsample every series to 0 points and serves no image at all (TensorBoard 2.21).
KEEP_ALL = 100_000


def tensorboard_flags(logdir: str | Path, port: int | None = None, samples: int | None = KEEP_ALL) -> list[str]:
    """TensorBoard's command-line flags for ``logdir`` on 127.0.0.1. ``port=None``: 6006, or the next free port
    (TensorBoard searches); ``samples=None``: TensorBoard's own default of 10 steps per image tag."""
    flags = ["--logdir", str(logdir), "--host", HOST]
    if port is not None:
        flags += ["--port", str(port)]
    if samples is not None:
        flags += ["--samples_per_plugin", f"images={samples},text={samples}"]
    return flags


def dashboard_url(base: str, dashboard: str = "images", tag_filter: str | None = None, **settings: Any) -> str:
    """The address of a TensorBoard dashboard with its tag filter (a regex) and other settings the page keeps
    in the address: ``regexInput`` (the runs filter), ``_smoothingWeight`` (Scalars), e.g.
    ``#images&tagFilter=feature_maps%2F``."""
    url = f"{base}#{dashboard}"
    if tag_filter:
        settings = {"tagFilter": tag_filter, **settings}
    for key, value in settings.items():
        url += f"&{key}=" + urllib.parse.quote(str(value), safe="")
    return url


def view_command(args: Any) -> int:
    """``fm-callback view LOGDIR``: serve TensorBoard until Ctrl+C. Returns the exit status (2: a usage error)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)

    def error(message: str) -> int:
        errors.print(f"[bold red]error:[/] {escape(message)}")
        return 2

    logdir = Path(args.logdir).expanduser()
    if not logdir.is_dir():
        return error(f"LOGDIR {str(logdir)!r} is not a folder")
    files = event_files(logdir)
    if not files:
        return error(
            f"no TensorBoard event files (events.out.tfevents.*) under {str(logdir)!r}. "
            "Train first (for example: python examples/demo.py, then fm-callback view runs/demo), or pass the "
            "folder your TensorBoardLogger writes to (lightning_logs by default)."
        )
    if args.samples < 1:
        return error(f"--samples must be a positive number of steps, got {args.samples}")

    from tensorboard import program

    board = program.TensorBoard()
    board.configure(["tensorboard", *tensorboard_flags(logdir, args.port, args.samples)])
    try:
        with console.status("starting TensorBoard"):
            url = board.launch()
    except program.TensorBoardPortInUseError:
        return error(f"--port {args.port} is in use on {HOST}; pick another or leave --port out")
    except program.TensorBoardServerException as err:
        return error(err.msg)
    runs = {f.parent for f in files}
    console.print(
        f"TensorBoard on [bold]{url}[/] ({len(runs)} run(s) under {escape(str(logdir))}; "
        f"up to {args.samples} steps per image tag)"
    )
    console.print(f"  feature maps:  {dashboard_url(url, 'images', 'feature_maps/')}")
    console.print(f"  dead filters:  {dashboard_url(url, 'scalars', '^dead_filters/', _smoothingWeight=0)}")
    console.print("Press Ctrl+C to stop.")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()  # TensorBoard serves from its own (daemon) threads; Ctrl+C ends the wait
    return 0
