"""Test and docs support: a real MLflow tracking server in a child process on 127.0.0.1.

:class:`MlflowServer` runs ``mlflow server`` of this Python's environment with a SQLite backend and served
artifacts (``--serve-artifacts``, stored under the given folder), on a free port, and waits until it answers.
Used by tests/test_loggers.py and docs/make_mlflow_screenshot.py.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from local_server import LocalServer, free_port

from fm_callback.view import HOST


class MlflowServer(LocalServer):
    """``mlflow server`` with its database (``mlflow.db``) and artifacts (``artifacts/``) in ``folder``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    name = "mlflow server"

    def __init__(self, folder: str | Path, port: int | None = None) -> None:
        super().__init__(port if port is not None else free_port(5000))
        self.folder = Path(folder)

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

    def answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
            return response.status == 200

    def start(self, timeout: float = 120.0) -> MlflowServer:
        """Start the server and wait until ``/health`` answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return super().start(timeout, cwd=self.folder)
