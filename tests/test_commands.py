"""The commands the examples print run as printed, in a shell whose PATH does not hold this environment's scripts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fm_callback.cli import command_line

ROOT = Path(__file__).resolve().parents[1]


def run_bare(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """``line`` as a shell runs it with a PATH of the system's folders only (the environment not activated)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["fm-callback", "tensorboard"])
def test_printed_commands_run_without_the_environment_on_path(script):
    """Run where they were printed, as a user does (the line may name ``.venv/bin/...`` relative to that folder)."""
    line = command_line(script, "--help")
    done = run_bare(line, Path.cwd())
    assert done.returncode == 0, (line, done.stderr[-2000:])
    assert "usage" in done.stdout.lower()


def test_python_dash_m_fm_callback(tmp_path):
    line = shlex.join([sys.executable, "-m", "fm_callback", "report", str(tmp_path)])
    done = run_bare(line, tmp_path)
    assert done.returncode == 1 and "no TensorBoard event files" in done.stderr
