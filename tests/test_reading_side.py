"""The reading side needs nothing of the training side: ``fm-callback report`` and ``view`` start without torch
or Lightning (most of a report's time was their import), and ``report`` without PIL and matplotlib unless
``--plot`` asks for a picture."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_dead import train_planted

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("torch", "lightning", "PIL", "matplotlib")
# `fm-callback ARGS` in a fresh interpreter, then the watched packages it imported. `view` serves until Ctrl+C:
# here it is pressed as soon as TensorBoard answers.
SCRIPT = """
import json, sys, types
from fm_callback import view

class CtrlC:
    def wait(self):
        raise KeyboardInterrupt

view.threading = types.SimpleNamespace(Event=CtrlC)
from fm_callback.cli import main

code = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(WATCHED))
print("\\n" + json.dumps({"code": code, "loaded": loaded}))
""".replace("WATCHED", repr(WATCHED))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reading_side")
    train_planted(root, epochs=2)
    return root


def os_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def imported_by(*args: str) -> list[str]:
    """The watched packages that ``fm-callback args`` imports (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return result["loaded"]


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_report_imports_neither_torch_nor_pil(logdir: Path, options: list[str]) -> None:
    assert imported_by("report", str(logdir), *options) == []


def test_report_plot_imports_pictures_but_not_torch(logdir: Path, tmp_path: Path) -> None:
    assert imported_by("report", str(logdir), "--plot", str(tmp_path / "t.png")) == ["PIL", "matplotlib"]
    assert (tmp_path / "t.png").is_file()


def test_view_imports_no_torch(logdir: Path) -> None:
    loaded = imported_by("view", str(logdir), "--port", str(os_port()))
    assert "torch" not in loaded and "lightning" not in loaded  # PIL: TensorBoard's own images plugin imports it


def test_the_public_names_are_there_when_asked_for() -> None:
    """``fm_callback`` imports its public names lazily; users still find them, and they are the modules' own."""
    import fm_callback
    from fm_callback import FeatureMapCallback, FeatureMapProbe, LayerReport, ProbeResult
    from fm_callback.callback import FeatureMapCallback as callback_class
    from fm_callback.results import LayerReport as report_class

    assert FeatureMapCallback is callback_class and LayerReport is report_class
    assert FeatureMapProbe.__module__ == "fm_callback.probe" and ProbeResult.__module__ == "fm_callback.results"
    assert set(fm_callback.__all__) <= set(dir(fm_callback))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fm_callback.nothing  # noqa: B018
