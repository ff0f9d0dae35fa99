"""Test and docs support: a real MLflow tracking server in a child process on 127.0.0.1.

:class:`MlflowServer` runs ``mlflow server`` of this Python's environment with a SQLite backend and served
artifacts (``--serve-artifacts``, stored under the given folder), on a free port, and waits until it answers.
Used by tests/test_loggers.py and docs/make_mlflow_screenshot.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tensorboard_page import free_port

from fm_callback.view import HOST


class MlflowServer:
    """``mlflow server`` with its database (``mlflow.db``) and artifacts (``artifacts/``) in ``folder``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, folder: str | Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.port = port if port is not None else free_port(5000)
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def artifacts(self) -> Path:
        """Where the server stores the runs' artifacts: ``<experiment id>/<run id>/artifacts/...``."""
        return self.folder / "artifacts"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
        ]

    def start(self, timeout: float = 120.0) -> MlflowServer:
        """Start the server and wait until ``/health`` answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # a session of its own: stop() ends its worker processes too
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> MlflowServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._log.close()
