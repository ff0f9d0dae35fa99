"""``fm-callback view``: TensorBoard on 127.0.0.1 with every logged step of every image tag on the slider.

TensorBoard keeps only 10 steps per image tag unless told otherwise (``--samples_per_plugin``), which
hides most of a feature-map run. :class:`TensorBoardServer` starts the real ``tensorboard`` in a child
process with that fixed and waits until it answers; the tests and ``docs/make_screenshots.py`` use the
same class, and :func:`screenshot` takes a picture of a page with headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DEFAULT_PORT = 6006
# Steps kept per image/text tag. Not TensorBoard's 0 ("keep all"): its Images plugin then asks the data provider
# to downsample every series to 0 points and serves no image at all (TensorBoard 2.21).
KEEP_ALL = 100_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ViewError(Exception):
    """A problem the user can fix; the command prints the message (no traceback) and exits with 2."""


def event_files(logdir: str | Path) -> list[Path]:
    """Every TensorBoard event file under ``logdir``, searched recursively."""
    return sorted(p for p in Path(logdir).rglob("events.out.tfevents.*") if p.is_file())


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(start: int = DEFAULT_PORT, host: str = HOST, tries: int = 50) -> int:
    """The first free port from ``start`` on (TensorBoard's own 6006 first), else one the OS picks."""
    for port in range(start, start + tries):
        if port_is_free(port, host):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


class TensorBoardServer:
    """A real TensorBoard in a child process, on ``host:port``, keeping ``samples`` steps per image/text tag.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self, logdir: str | Path, port: int | None = None, samples: int | None = KEEP_ALL, host: str = HOST
    ) -> None:
        self.logdir = Path(logdir)
        self.host = host
        self.port = port if port is not None else free_port(host=host)
        self.samples = samples
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        """The ``tensorboard`` command line; ``samples=None`` leaves TensorBoard's own defaults (10 images)."""
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir)]
        command += ["--host", self.host, "--port", str(self.port), "--reload_interval", "2"]
        if self.samples is not None:
            command += ["--samples_per_plugin", f"images={self.samples},text={self.samples}"]
        return command

    def start(self, timeout: float = 60.0) -> TensorBoardServer:
        """Start TensorBoard and wait until it answers HTTP (raises :class:`ViewError` when it does not)."""
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ViewError(f"TensorBoard exited with status {self.process.returncode}:\n{self.output()}")
            try:
                get_json(self.url + "data/logdir", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(0.25)
        self.stop()
        raise ViewError(f"TensorBoard did not answer on {self.url} within {timeout:.0f} s:\n{self.output()}")

    def image_steps(self) -> dict[str, dict[str, list[int]]]:
        """``{run: {tag: [steps]}}`` of every image tag, as TensorBoard serves them now."""
        served: dict[str, dict[str, list[int]]] = {}
        for run, tags in get_json(f"{self.url}data/plugin/images/tags").items():
            for tag in tags:
                query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
                images = get_json(f"{self.url}data/plugin/images/images?{query}")
                served.setdefault(run, {})[tag] = [image["step"] for image in images]
        return served

    def wait_until_loaded(self, timeout: float = 60.0, settle: float = 1.0) -> dict[str, dict[str, list[int]]]:
        """Wait until the served image steps stop changing (TensorBoard reads event files in the background)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            now = self.image_steps()
            if now and now == last and all(steps for run in now.values() for steps in run.values()):
                return now
            last = now
            time.sleep(settle)
        raise ViewError(f"TensorBoard was still loading {self.logdir} after {timeout:.0f} s")

    def output(self) -> str:
        """What TensorBoard printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> TensorBoardServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._log.close()


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    url: str,
    out: str | Path,
    width: int = 1400,
    height: int = 1000,
    budget_ms: int = 15000,
    chromium: str | None = None,
    timeout: float = 120.0,
    extra_flags: Sequence[str] = (),
) -> Path:
    """Save a PNG of ``url`` as headless Chromium renders it, after ``budget_ms`` of (virtual) page time.

    ``extra_flags`` go to Chromium as well (e.g. ``--force-device-scale-factor=2`` for a sharper picture).
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ViewError("no Chromium found (on Debian/Ubuntu: apt-get install chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="fm_callback_chromium_") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            *extra_flags,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not out.is_file():
        raise ViewError(f"Chromium wrote no screenshot (status {done.returncode}):\n{done.stderr[-2000:]}")
    return out


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


def _error(console: Any, message: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def view_command(args: Any) -> int:
    """``fm-callback view LOGDIR``: run TensorBoard until Ctrl+C. Returns the exit status."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    logdir = Path(args.logdir).expanduser()
    if not logdir.is_dir():
        _error(errors, f"LOGDIR {str(logdir)!r} is not a folder")
        return 2
    files = event_files(logdir)
    if not files:
        _error(
            errors,
            f"no TensorBoard event files (events.out.tfevents.*) under {str(logdir)!r}. "
            "Train first (for example: python examples/demo.py, then fm-callback view runs/demo), or pass the "
            "folder your TensorBoardLogger writes to (lightning_logs by default).",
        )
        return 2
    if args.samples < 1:
        _error(errors, f"--samples must be a positive number of steps, got {args.samples}")
        return 2
    if args.port is not None and not port_is_free(args.port):
        _error(errors, f"--port {args.port} is in use on {HOST}; pick another or leave --port out")
        return 2
    server = TensorBoardServer(logdir, port=args.port, samples=args.samples)
    runs = sorted({str(f.parent.relative_to(logdir)) for f in files})
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain kill stops TensorBoard too (finally below)
    try:
        with console.status("starting TensorBoard"):
            server.start()
        console.print(
            f"TensorBoard on [bold]{server.url}[/] ({len(runs)} run(s) under {escape(str(logdir))}; "
            f"up to {args.samples} steps per image tag)"
        )
        console.print(f"  feature maps:  {dashboard_url(server.url, 'images', 'feature_maps/')}")
        dead_filters = dashboard_url(server.url, "scalars", "^dead_filters/", _smoothingWeight=0)
        console.print(f"  dead filters:  {dead_filters}")
        console.print("Press Ctrl+C to stop.")
        sys.stdout.flush()
        while server.process.poll() is None:
            time.sleep(0.5)
        _error(errors, f"TensorBoard stopped (status {server.process.returncode}):\n{server.output()}")
        return 1
    except ViewError as err:
        _error(errors, str(err))
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
