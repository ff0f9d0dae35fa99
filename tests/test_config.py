"""The LightningCLI demo config: FeatureMapCallback configured from YAML, parsed and run for one short epoch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from conftest import read_events
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from fm_callback import FeatureMapCallback, FeatureMapProbe

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
CONFIG_LAYERS = ["features.0", "features.4", "features.8", "features.12"]  # what the YAML's names/patterns select
# Small enough for a few seconds on one CPU core: 2 steps of 32 images of 16 px.
SMALL = [
    "--trainer.max_epochs=1",
    "--data.train_size=64",
    "--data.val_size=16",
    "--data.image_size=16",
    "--data.batch_size=32",
    "--model.width=4",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_checkpointing=false",
]


def build(tmp_path: Path, *extra: str):
    """The LightningCLI of examples/cli.py on the demo config, built but not run."""
    from cli import main  # examples/ is on pytest's pythonpath

    with patch.object(sys, "argv", ["cli.py"]):  # pytest's own arguments are not the CLI's
        return main(
            ["--config", str(CONFIG), *SMALL, f"--trainer.logger.init_args.save_dir={tmp_path}", *extra], run=False
        )


def the_callback(cli) -> FeatureMapCallback:
    found = [cb for cb in cli.trainer.callbacks if isinstance(cb, FeatureMapCallback)]
    assert len(found) == 1
    return found[0]


def test_demo_config_builds_the_callback_from_yaml(tmp_path):
    cli = build(tmp_path)
    callback = the_callback(cli)
    assert callback.layers == ["features.0", "features.[48]", "features.12"]
    assert callback.every_n_epochs == 1 and callback.epochs is None and callback.every_n_steps is None
    assert callback.probe_options["mean"] == [0.5, 0.5, 0.5] and callback.probe_options["std"] == [0.25] * 3
    assert isinstance(cli.trainer.logger, TensorBoardLogger)
    assert [name for name, _ in FeatureMapProbe(cli.model, callback.layers).layers] == CONFIG_LAYERS


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("[features.0, torch.nn.BatchNorm2d]", ["features.0", nn.BatchNorm2d]),
        ("torch.nn.Conv2d", nn.Conv2d),
        ("features.*", "features.*"),
    ],
)
def test_layers_from_the_command_line_names_patterns_and_types(tmp_path, override, expected):
    """A dotted class path becomes the nn.Module type; anything else stays a name or pattern."""
    cli = build(tmp_path, f"--trainer.callbacks.init_args.layers={override}")
    assert the_callback(cli).layers == expected


def test_bad_value_in_the_config_is_reported_with_the_callbacks_message(tmp_path):
    with pytest.raises(ValueError, match=r"FeatureMapCallback: every_n_epochs must be a positive int, got 0"):
        build(tmp_path, "--trainer.callbacks.init_args.every_n_epochs=0")


def test_demo_config_runs_and_writes_the_feature_maps(tmp_path):
    """``python examples/cli.py fit --config configs/demo.yaml`` as a user runs it, made small."""
    command = [sys.executable, str(ROOT / "examples" / "cli.py"), "fit", "--config", str(CONFIG), *SMALL]
    command.append(f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log_dirs = list((tmp_path / "runs" / "shapes").glob("version_*"))
    assert len(log_dirs) == 1
    events = read_events(log_dirs[0])
    assert len(events.files) == 1
    assert events.tags("images", "feature_maps/") == sorted(f"feature_maps/{n}" for n in CONFIG_LAYERS)
    for layer in CONFIG_LAYERS:
        assert events.steps("images", f"feature_maps/{layer}") == [0, 2]  # baseline and the one epoch's end
        assert events.steps("scalars", f"dead_filters/{layer}") == [0, 2]
        assert events.steps("histograms", f"channel_mean/{layer}") == [0, 2]
    assert events.steps("scalars", "dead_filters/all") == [0, 2]
    assert events.steps("images", "probe/input") == [0]  # the same picture at every event: written once
    assert "val_loss" in events.scalars  # the same file as the run's own metrics
    assert "fm_callback.FeatureMapCallback" in (log_dirs[0] / "config.yaml").read_text()
