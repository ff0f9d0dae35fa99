"""``fm-callback view LOGDIR``: the command a user types, run as a process, asked over HTTP, stopped with Ctrl+C."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN
from local_server import free_port, port_is_free
from tensorboard_page import TensorBoardServer
from torch.utils.tensorboard import SummaryWriter

from fm_callback import FeatureMapProbe
from fm_callback.cli import main
from fm_callback.tensorboard_writer import write_result

EVENTS = 13  # more than the 10 steps per image tag TensorBoard keeps by default


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """13 probe events of a tiny CNN written the way the callback writes them (steps 0, 10, ..., 120)."""
    root = tmp_path_factory.mktemp("view_logs")
    torch.manual_seed(0)
    model = TinyCNN()
    probe = FeatureMapProbe(model)
    x = torch.randn(4, 3, 16, 16)
    with SummaryWriter(root / "run") as writer:
        for event in range(EVENTS):
            with torch.no_grad():
                model.conv1.weight.mul_(0.9)  # something changes from event to event
            write_result(writer, probe.run(x), event * 10)
    return root


def start_view(*args: str) -> tuple[subprocess.Popen, queue.Queue]:
    """``fm-callback view ...`` as a child process; its stdout lines arrive on the queue."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "fm_callback.cli", "view", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return process, lines


def wait_for_line(lines: queue.Queue, pattern: str, timeout: float = 60.0) -> re.Match:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n{''.join(seen)}")


@pytest.mark.parametrize(("options", "kept"), [([], EVENTS), (["--samples", "5"], 5)])
def test_view_serves_every_logged_step_and_stops_on_ctrl_c(logdir, options, kept):
    port = free_port(start=16006)
    process, lines = start_view(str(logdir), "--port", str(port), *options)
    try:
        address = wait_for_line(lines, r"TensorBoard on (http://\S+/) ").group(1)
        assert address == f"http://127.0.0.1:{port}/"
        wait_for_line(lines, re.escape(f"http://127.0.0.1:{port}/#images&tagFilter=feature_maps%2F"))
        server = TensorBoardServer(logdir, port=port)  # not started: only its HTTP helpers, on view's port
        served = server.wait_until_loaded()
        assert list(served) == ["run"]
        assert sorted(served["run"]) == ["feature_maps/conv1", "feature_maps/conv2", *overlay_tags(), "probe/input"]
        steps = [step * 10 for step in range(EVENTS)]
        for tag, served_steps in served["run"].items():
            assert len(served_steps) == kept and set(served_steps) <= set(steps), tag
            assert steps[-1] in served_steps  # the newest step is always on the slider
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert wait_until(lambda: port_is_free(port)), "TensorBoard still holds the port after Ctrl+C"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_view_without_port_takes_6006_or_the_next_free_one(logdir):
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 6006))
            taken.listen()
        except OSError:
            pass  # something else holds 6006 already: just as good
        process, lines = start_view(str(logdir))
        try:
            port = int(wait_for_line(lines, r"TensorBoard on http://127\.0\.0\.1:(\d+)/ ").group(1))
            assert 6006 < port <= 6106
        finally:
            process.kill()
            process.wait()


def overlay_tags() -> list[str]:
    return ["feature_maps_overlay/conv1", "feature_maps_overlay/conv2"]


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_folder_without_event_files_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    assert main(["view", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"no TensorBoard event files (events.out.tfevents.*) under '{tmp_path}'" in err
    assert "python examples/demo.py" in err


def test_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_port_in_use_and_a_bad_samples_value_are_clear_errors(logdir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["view", str(logdir), "--port", str(port)]) == 2
    assert f"--port {port} is in use on 127.0.0.1" in capsys.readouterr().err
    assert main(["view", str(logdir), "--samples", "0"]) == 2
    assert "--samples must be a positive number of steps, got 0" in capsys.readouterr().err
