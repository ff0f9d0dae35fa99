"""Test and docs support: a server in a child process on 127.0.0.1 (TensorBoard, MLflow), started and stopped.

:class:`LocalServer` starts ``command()`` in a session of its own (so :meth:`stop` ends its worker processes too),
keeps what it prints, and waits until :meth:`answers`; subclasses say the command and the question.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fm_callback.view import HOST


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(start: int = 6006, tries: int = 50) -> int:
    """The first free port from ``start`` on, else one the OS picks."""
    for port in range(start, start + tries):
        if port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LocalServer:
    """A server process on ``port``. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    name = "server"

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the server answers now (a short HTTP request); an unreachable server raises or says False."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0, cwd: Path | None = None) -> Any:
        """Start the server and wait until it answers; a RuntimeError with what it printed if it does not."""
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.output()}")
            try:
                if self.answers():
                    return self
            except (OSError, ValueError):  # not listening yet, or half an answer (URLError is an OSError)
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> Any:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._log.close()
