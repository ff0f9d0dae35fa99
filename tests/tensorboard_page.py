"""Test and docs support: a real TensorBoard in a child process, asked over HTTP, and its page in headless Chromium.

:class:`TensorBoardServer` runs ``tensorboard`` with the flags ``fm-callback view`` gives it
(``fm_callback.view.tensorboard_flags``) on a free port and waits until it answers; :func:`screenshot` takes a
picture of a page. Used by tests/test_view.py, test_browser.py, test_tensorboard_server.py and
docs/make_screenshots.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from local_server import LocalServer, free_port

from fm_callback.view import HOST, KEEP_ALL, tensorboard_flags

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


class TensorBoardServer(LocalServer):
    """A real TensorBoard in a child process on 127.0.0.1, keeping ``samples`` steps per image/text tag
    (``None``: TensorBoard's default of 10). Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    name = "TensorBoard"

    def __init__(self, logdir: str | Path, port: int | None = None, samples: int | None = KEEP_ALL) -> None:
        super().__init__(port if port is not None else free_port())
        self.logdir = Path(logdir)
        self.samples = samples

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def command(self) -> list[str]:
        """The ``tensorboard`` command line: ``fm-callback view``'s flags, reloading every 2 s (not 5) for speed."""
        flags = tensorboard_flags(self.logdir, self.port, self.samples)
        return [sys.executable, "-m", "tensorboard.main", *flags, "--reload_interval", "2"]

    def answers(self) -> bool:
        get_json(self.url + "data/logdir", timeout=2)
        return True

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
        raise RuntimeError(f"TensorBoard was still loading {self.logdir} after {timeout:.0f} s")


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable, or None."""
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


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
        raise RuntimeError("no Chromium found (on Debian/Ubuntu: apt-get install chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
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
        raise RuntimeError(f"Chromium wrote no screenshot (status {done.returncode}):\n{done.stderr[-2000:]}")
    return out
