"""`fm-callback report`: read a real training run's event files back and name the planted dead channels."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_dead import DEAD_CHANNEL, DEAD_LAYER, REVIVE_CHANNEL, REVIVE_EPOCH, REVIVE_LAYER, train_planted
from torch.utils.tensorboard import SummaryWriter

from fm_callback import tensorboard as tb
from fm_callback.cli import main
from fm_callback.report import timeline_figure, timeline_image


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """A log directory with one real planted run (4 epochs, 5 probe events) and one run without fm_callback data."""
    root = tmp_path_factory.mktemp("report")
    train_planted(root, epochs=4)
    with SummaryWriter(str(root / "other")) as writer:
        writer.add_scalar("loss", 1.0, 0)
    return root


def table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the rich table whose title line starts with ``title``, as lists of cell texts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def run_report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_names_the_planted_layer_and_channels(logdir: Path, capsys) -> None:
    code, out, err = run_report(capsys, logdir)
    assert code == 0, err
    assert "planted/version_0" in out and "other" not in out
    assert "5 probe event(s), steps 0-8 (epochs 0-3)" in out
    fractions = {row[0]: row[1:] for row in table_rows(out, "Dead fraction per layer over time")}
    assert fractions == {
        "conv1": ["8", "12.5%", "12.5%", "12.5%", "0%", "0%", "-"],
        "conv2": ["8", "12.5%", "12.5%", "12.5%", "12.5%", "12.5%", str(DEAD_CHANNEL)],
    }
    assert table_rows(out, "Persistently dead channels") == [[DEAD_LAYER, str(DEAD_CHANNEL), "epoch 0 (step 0)", "5"]]
    assert table_rows(out, "Revived channels") == [
        [REVIVE_LAYER, str(REVIVE_CHANNEL), "epoch 0 (step 0)", f"epoch {REVIVE_EPOCH} (step 6)"]
    ]


def test_report_json(logdir: Path, capsys) -> None:
    code, out, _ = run_report(capsys, logdir, "--json")
    assert code == 0
    data = json.loads(out)
    (run,) = data["runs"]
    assert run["run"] == "planted/version_0" and run["patience"] == 3
    assert [(e["step"], e["epoch"]) for e in run["events"]] == [(0, 0), (2, 0), (4, 1), (6, 2), (8, 3)]
    layers = {layer["layer"]: layer for layer in run["layers"]}
    assert layers[DEAD_LAYER]["dead_fraction"] == [1 / 8] * 5
    assert layers[DEAD_LAYER]["persistent"] == [
        {"channel": DEAD_CHANNEL, "since_step": 0, "since_epoch": 0, "events": 5}
    ]
    assert layers[REVIVE_LAYER]["dead_fraction"] == [1 / 8] * 3 + [0.0] * 2
    assert layers[REVIVE_LAYER]["persistent"] == [] and layers[REVIVE_LAYER]["dead"] == []
    assert run["revived"] == [
        {
            "layer": REVIVE_LAYER,
            "channel": REVIVE_CHANNEL,
            "since_step": 0,
            "since_epoch": 0,
            "events": 3,
            "step": 6,
            "epoch": REVIVE_EPOCH,
        }
    ]


def test_report_plot_one_png_per_run(logdir: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run_report(capsys, logdir, "--plot", tmp_path / "timeline.png")
    assert code == 0 and f"timeline saved to {tmp_path / 'timeline.png'}" in out
    image = matplotlib.image.imread(tmp_path / "timeline.png")
    assert image.shape[0] > 200 and image.shape[1] > 500 and image[..., :3].std() > 0.1

    two = tmp_path / "two"
    shutil.copytree(logdir / "planted", two / "a")
    shutil.copytree(logdir / "planted", two / "b")
    code, out, _ = run_report(capsys, two, "--json", "--plot", tmp_path / "t.png")
    assert code == 0 and [r["run"] for r in json.loads(out)["runs"]] == ["a/version_0", "b/version_0"]
    assert sorted(p.name for p in tmp_path.glob("t.*.png")) == ["t.a_version_0.png", "t.b_version_0.png"]


def test_report_errors_say_why(logdir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_report(capsys, tmp_path / "missing")
    assert code == 1 and "does not exist" in err
    code, _, err = run_report(capsys, tmp_path)
    assert code == 1 and "no TensorBoard event files" in err
    code, out, err = run_report(capsys, logdir / "other", "--json")
    assert code == 1 and out == "" and "none holds fm_callback data" in err and "FeatureMapCallback" in err


def test_installed_console_script(logdir: Path) -> None:
    script = Path(sys.executable).parent / "fm-callback"
    assert script.exists(), f"{script}: install the package (pip install -e .) so the console script exists"
    done = subprocess.run(
        [str(script), "report", str(logdir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stderr
    assert table_rows(done.stdout, "Persistently dead channels") == [
        [DEAD_LAYER, str(DEAD_CHANNEL), "epoch 0 (step 0)", "5"]
    ]


# ---- the timeline picture ---------------------------------------------------------------------------------


def hand_history() -> list[dict]:
    """11 layers x 3 events, dead shares 0 % .. 100 % in 32 steps; the last layer not probed at the first event."""
    history = []
    for event in range(3):
        fractions = {f"layer{i}.conv": (3 * i + event) / 32 for i in range(11) if 3 * i + event <= 32}
        if event == 0:
            del fractions["layer10.conv"]
        history.append({"step": 10 * event, "epoch": event, "dead_fraction": fractions})
    return history


def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG contrast ratio of two sRGB colours (1 to 21; 4.5 is the minimum for small text)."""

    def luminance(rgb: tuple[float, ...]) -> float:
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_timeline_labels_read_on_their_cells_and_all_in_percent() -> None:
    fig = timeline_figure(hand_history())
    fig.canvas.draw()
    ax, colorbar = fig.axes
    image = ax.images[0]
    assert len(ax.texts) == 32
    inks = {}
    for text in ax.texts:
        col, row = text.get_position()
        value = image.get_array()[row, col]
        assert text.get_text() == f"{value:.3g}%"
        ratio = contrast(to_rgb(text.get_color()), image.cmap(image.norm(value)))
        assert ratio >= 4.5, f"{text.get_text()} in {text.get_color()}: contrast {ratio:.2f}"
        inks[text.get_text()] = text.get_color()
    assert (inks["0%"], inks["100%"]) == ("black", "white")  # dark on the light cells, light on the dark ones
    assert "%" in ax.get_title() and "%" in colorbar.get_ylabel()
    assert [t.get_text() for t in colorbar.get_yticklabels()] == ["0%", "20%", "40%", "60%", "80%", "100%"]


def test_timeline_leaves_the_users_matplotlib_alone(logdir: Path, tmp_path: Path, capsys) -> None:
    previous = matplotlib.get_backend()
    plt.switch_backend("svg")
    mine = plt.figure()
    figures = plt.get_fignums()
    try:
        timeline_figure(hand_history()).savefig(tmp_path / "saved.png")
        array = timeline_image(hand_history())
        with SummaryWriter(str(tmp_path / "tb")) as writer:
            tb.write_timeline(writer, hand_history(), step=7)
        code, _, _ = run_report(capsys, logdir, "--plot", tmp_path / "plot.png")
        assert code == 0
        assert (matplotlib.get_backend(), plt.get_fignums(), plt.gcf()) == ("svg", figures, mine)
    finally:
        plt.close(mine)
        plt.switch_backend(previous)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    (logged,) = accumulator.Images(tb.DEAD_TIMELINE)
    assert logged.step == 7
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB")), array)
    assert matplotlib.image.imread(tmp_path / "saved.png").shape[:2] == array.shape[:2]
