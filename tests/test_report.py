"""`fm-callback report`: read a real training run's event files back and name the planted dead channels."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from architectures import Classifier
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.colors import to_rgb
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_dead import DEAD_CHANNEL, DEAD_LAYER, REVIVE_CHANNEL, REVIVE_EPOCH, REVIVE_LAYER, train_planted
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from fm_callback import FeatureMapCallback
from fm_callback import tensorboard_writer as tb
from fm_callback.cli import main
from fm_callback.plots import timeline_figure, timeline_image


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """A log directory with one real planted run (4 epochs, 5 probe events) and one run without fm_callback data."""
    root = tmp_path_factory.mktemp("report")
    train_planted(root, epochs=4)
    with SummaryWriter(str(root / "other")) as writer:
        writer.add_scalar("loss", 1.0, 0)
    return root


def table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the rich table whose title starts with ``title``, as lists of cell texts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if "│" in line:
            cells = line.split("│")[1:-1] if line.startswith("│") else line.split("│")  # with or without edges
            rows.append([cell.strip() for cell in cells])
        elif rows or line.startswith(("Dead", "No ", "Never", "Persistently", "Revived")):  # past the table
            break
    return rows


def event_steps(text: str) -> list[int]:
    """The steps of the event columns of the dead fraction table (its header's second line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Dead fraction per layer over time"))
    header = [line for line in lines[start:] if "┃" in line]
    return [int(step) for step in re.findall(r"\d+", header[1])]


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
        "conv1": ["8", "12.5%", "12.5%", "12.5%", "0%", "0%"],
        "conv2": ["8", "12.5%", "12.5%", "12.5%", "12.5%", "12.5%"],
    }
    assert f"Dead at the last event (step 8, epoch 3):\n  {DEAD_LAYER}  1 of 8: {DEAD_CHANNEL}" in out
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
    assert sorted(p.name for p in tmp_path.glob("t.*.png")) == sorted(
        f"t.{run}_version_0{kind}.png" for run in "ab" for kind in ("", ".change", ".similarity")
    )


def test_report_errors_say_why(logdir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_report(capsys, tmp_path / "missing")
    assert code == 1 and "does not exist" in err
    code, _, err = run_report(capsys, tmp_path)
    assert code == 1 and "no TensorBoard event files" in err
    code, out, err = run_report(capsys, logdir / "other", "--json")
    assert code == 1 and out == "" and "none holds fm_callback data" in err and "FeatureMapCallback" in err


# ---- long layer names at any terminal width ----------------------------------------------------------------


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise_separable_conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.pointwise_projection_conv = nn.Conv2d(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise_projection_conv(F.relu(self.depthwise_separable_conv(x))))


class LongNames(nn.Module):
    """Layer keys of 47-48 characters under ``net.``; filter 2 of the first conv zeroed: it stays dead, since the
    ReLU after it passes no gradient back."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({"stage_one": Stage(3, 8), "stage_two": Stage(8, 8)})
        with torch.no_grad():
            self.backbone.stage_one.depthwise_separable_conv.weight[2] = 0.0
            self.backbone.stage_one.depthwise_separable_conv.bias[2] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.stage_two(self.backbone.stage_one(x)).mean(dim=(2, 3))


def fit(root: Path, name: str, net: nn.Module, size: int, steps: int, **callback) -> list[str]:
    """A real run of ``steps`` steps of 2 random images of ``size`` px; returns its conv layers' keys."""
    pl.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(2 * steps, 3, size, size), torch.randint(0, 2, (2 * steps,)))
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(str(root), name=name, version=0),
        callbacks=[FeatureMapCallback(probe_size=2, image_layers=[], **callback)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = Classifier(net, lr=0.01, momentum=0.0)
    trainer.fit(model, DataLoader(data, batch_size=2))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def long_names(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """Two real runs: a torchvision ResNet-18 at 24 px (2 events) and a net with long names (9 events)."""
    root = tmp_path_factory.mktemp("long_names")
    layers = {
        "resnet18/version_0": fit(root, "resnet18", torchvision.models.resnet18(num_classes=2), 24, 1),
        "long/version_0": fit(root, "long", LongNames(), 8, 8, every_n_steps=1),
    }
    assert [len(name) for name in layers["long/version_0"]] == [47, 48, 47, 48]
    return root, layers


def run_sections(text: str) -> dict[str, str]:
    """The report's text per run, by the run name in its heading rule."""
    sections = re.split(r"^─+ (\S+) ─+$", text, flags=re.M)
    return dict(zip(sections[1::2], sections[2::2], strict=True))


def joined_rows(text: str, title: str) -> list[list[str]]:
    """``table_rows``, each row wrapped onto several lines joined again (its pieces separated by a space)."""
    rows: list[list[str]] = []
    for row in table_rows(text, title):
        if rows and not all(row):  # every cell of a row holds something: empty cells continue the row above
            rows[-1] = [f"{above} {below}".strip() for above, below in zip(rows[-1], row, strict=True)]
        else:
            rows.append(row)
    return rows


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("how", ["console script", "in-process"])
def test_layer_names_are_never_cut(long_names, columns: int, how: str, capsys, monkeypatch) -> None:
    root, layers = long_names
    if how == "console script":
        script = Path(sys.executable).parent / "fm-callback"
        assert script.exists(), f"{script}: install the package (pip install -e .) so the console script exists"
        done = subprocess.run(
            [str(script), "report", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": str(columns)},
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out, err = run_report(capsys, root)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= columns
    sections = run_sections(out)
    assert sorted(sections) == sorted(layers)
    for run, names in layers.items():
        rows = table_rows(sections[run], "Dead fraction per layer over time")
        assert [row[0] for row in rows] == names  # whole, each on its one line
    long = sections["long/version_0"]
    steps = event_steps(long)
    if columns == 80:  # as many events as fit beside the names, the first and the last among them
        assert steps == [0, 8] and "2 of 9 events shown; --json has them all" in long
    else:
        assert steps == list(range(9)) and "events shown" not in long
    dead = "net.backbone.stage_one.depthwise_separable_conv"
    # the planted filter; the plain conv -> F.relu stages silence a few more channels of random images
    assert re.search(rf"Dead at the last event \(step 8, epoch 0\):\n  {re.escape(dead)} +1 of 8: 2 *\n", long)
    assert [dead, "2", "epoch 0 (step 0)", "9"] in joined_rows(long, "Persistently dead channels")


def test_names_too_long_for_the_terminal_wrap_whole(long_names, capsys, monkeypatch) -> None:
    root, layers = long_names
    monkeypatch.setenv("COLUMNS", "40")
    code, out, _ = run_report(capsys, root / "long")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 40
    folded = [row[0].replace(" ", "") for row in joined_rows(out, "Dead fraction per layer over time")]
    assert folded == layers["long/version_0"]
    assert event_steps(out) == [8] and "1 of 9 events shown" in " ".join(out.split())  # the caption wraps too
    folded = [row[0].replace(" ", "") for row in joined_rows(out, "Persistently dead channels")]
    # the planted filter, and channels the plain conv -> F.relu stages silence: each name whole
    assert "net.backbone.stage_one.depthwise_separable_conv" in folded and set(folded) <= set(layers["long/version_0"])


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
