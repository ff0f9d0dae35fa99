"""``fm-callback snapshot``: a torchvision ResNet-18 with local weights on a photo-like image, as a user runs it,
and the user's own model by import path (``--model examples.shapes:ShapesCNN``) with the demo's Lightning checkpoint.

No download anywhere: the weights file is ``torch.save(resnet18().state_dict(), path)``; the DEFAULT path is
exercised offline by putting that file where torchvision's cache looks, and the failure path with a proxy that
refuses every connection.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fm_callback.cli import main
from fm_callback.render import MAX_TILE, PAD
from fm_callback.snapshot import SnapshotError, load_model

ROOT = Path(__file__).resolve().parents[1]
RESNET18_CONVS = [name for name, m in torchvision.models.resnet18().named_modules() if isinstance(m, torch.nn.Conv2d)]
DEAD_CONV1_CHANNELS = [0, 1, 2, 3, 4, 5, 6, 7]


def photo_like(height: int = 240, width: int = 320) -> np.ndarray:
    """A landscape: sky gradient, sun, wavy hill with grass texture. ``uint8 [H, W, 3]``."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    image = np.zeros((height, width, 3))
    image[..., 0], image[..., 1], image[..., 2] = 0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.95 - 0.3 * y
    image[(x - 0.75) ** 2 + ((y - 0.25) * height / width) ** 2 < 0.006] = [1.0, 0.9, 0.5]
    rng = np.random.default_rng(0)
    grass = np.stack([0.2 + 0.1 * rng.random(y.shape), 0.5 + 0.2 * rng.random(y.shape), np.full(y.shape, 0.15)], -1)
    hill = y > 0.6 + 0.1 * np.sin(6 * x)
    image[hill] = grass[hill]
    return (image.clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A ResNet-18 state_dict (conv1's first 8 filters zeroed, so those channels are dead) and two images."""
    root = tmp_path_factory.mktemp("snapshot_inputs")
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"][DEAD_CONV1_CHANNELS] = 0
    torch.save(state, root / "resnet18.pth")
    photo = photo_like()
    Image.fromarray(photo).save(root / "photo.jpg", quality=92)
    Image.fromarray(photo[::-1].copy()).convert("L").save(root / "flipped_gray.png")  # grey: converted to RGB
    return {"weights": root / "resnet18.pth", "jpg": root / "photo.jpg", "png": root / "flipped_gray.png"}


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_snapshot_writes_grids_overlays_input_and_stats(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["snapshot", "--model", "resnet18", "--weights", str(files["weights"])]
    assert main([*argv, str(files["jpg"]), str(files["png"]), "--out", str(out)]) == 0

    stats = json.loads((out / "stats.json").read_text())
    assert stats["model"] == "resnet18" and stats["input_shape"] == [2, 3, 224, 224]
    assert stats["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet's: no transforms known for a file
    assert stats["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert list(stats["layers"]) == RESNET18_CONVS  # every conv by default, in forward order
    conv1 = stats["layers"]["conv1"]
    assert conv1["shape"] == [2, 64, 112, 112]
    assert conv1["dead_channels"] == DEAD_CONV1_CHANNELS  # the file's weights were used
    assert conv1["dead_fraction"] == pytest.approx(8 / 64)
    assert all(len(conv1[k]) == 64 for k in ("channel_mean", "channel_std", "zero_fraction"))
    assert stats["layers"]["layer4.1.conv2"]["shape"] == [2, 512, 7, 7]
    assert len(stats["predictions"]) == 2 and len(stats["predictions"][0]) == 3
    assert isinstance(stats["predictions"][0][0]["name"], str)  # ImageNet class names: 1000 classes in the file

    for name, record in stats["layers"].items():
        grid = png(out / record["grid"])
        assert record["grid"] == f"feature_maps/{name}.png"
        assert grid.std() > 10, f"{name}: the grid is flat"
        overlay = png(out / record["overlay"])
        assert record["overlay"] == f"feature_maps_overlay/{name}.png"
        assert overlay.shape[0] < overlay.shape[1]  # one row of the 2 images
        assert len(record["shown_channels"]) == 16
    # conv1 grid: 2 rows (images) x 16 columns of tiles (112 px maps shrunk to MAX_TILE), wrapped into 3 bands
    # of 6, 6 and 4 columns (the squarest grid), each under its header
    grid = png(out / "feature_maps" / "conv1.png")
    assert grid.shape[1] == 6 * MAX_TILE + 5 * PAD and grid.shape[0] > 3 * 2 * MAX_TILE

    # input.png shows the photo as a person sees it (denormalised), not min-max stretched
    shown = png(out / "input.png")[:, :MAX_TILE].astype(float)  # first tile: the JPEG, 224 px shrunk
    original = np.asarray(Image.fromarray(photo_like()).resize((299, 224)).crop((37, 0, 261, 224)))
    assert np.abs(shown.mean(axis=(0, 1)) - original.astype(float).mean(axis=(0, 1))).max() < 6

    printed = capsys.readouterr().out
    assert "layer4.1.conv2" in printed and "8/64" in printed and str(out) in printed


def test_snapshot_layers_and_channels_options(files, tmp_path):
    out = tmp_path / "out"
    argv = ["snapshot", "--model", "resnet18", "--weights", str(files["weights"]), str(files["jpg"])]
    assert main([*argv, "--out", str(out), "--layers", "layer1.*.conv1", "conv1", "--max-channels", "4"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["layers"]) == ["conv1", "layer1.0.conv1", "layer1.1.conv1"]
    assert sorted(p.name for p in (out / "feature_maps").iterdir()) == [f"{n}.png" for n in stats["layers"]]
    assert all(len(r["shown_channels"]) == 4 for r in stats["layers"].values())
    assert png(out / "feature_maps" / "conv1.png").shape[1] == 2 * MAX_TILE + PAD  # one image: 2 bands of 2 columns


def test_default_weights_come_from_torchvisions_cache_with_their_own_transforms(files, tmp_path):
    """--weights DEFAULT offline: the file is already where torchvision looks, so nothing is fetched."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / weights.url.rsplit("/", 1)[-1]).symlink_to(files["weights"])
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    command = [sys.executable, "-m", "fm_callback.cli", "snapshot", "--model", "resnet18", "--weights", "DEFAULT"]
    done = subprocess.run(
        [*command, str(files["jpg"]), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["weights"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert stats["layers"]["conv1"]["dead_channels"] == DEAD_CONV1_CHANNELS
    assert stats["predictions"][0][0]["name"] in weights.meta["categories"]


def test_default_weights_that_cannot_be_fetched_give_a_clear_message(tmp_path, files):
    proxy = "http://127.0.0.1:9"  # nothing listens there: every download is refused at once
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_cache"), "https_proxy": proxy, "HTTPS_PROXY": proxy}
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    command = [sys.executable, "-m", "fm_callback.cli", "snapshot", "--model", "resnet18", "--weights", "DEFAULT"]
    done = subprocess.run(
        [*command, str(files["jpg"]), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "could not fetch https://download.pytorch.org/models/resnet18-f37072fd.pth" in done.stderr
    assert "--weights resnet18-f37072fd.pth" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "resnet34"}, "do not fit torchvision's resnet34"),
        ({"--model": "resnet81"}, "did you mean resnet18"),
        ({"--weights": "IMAGENET9"}, "neither a file nor a weights name of resnet18 (DEFAULT, IMAGENET1K_V1)"),
        ({"--weights": "missing.pth"}, "--weights: no such file 'missing.pth'"),
        ({"--layers": "layer9"}, "--layers: the model has no module named 'layer9'"),
        ({"image": "nothing.png"}, "IMAGE: no such file 'nothing.png'"),
        ({"image": "not_an_image"}, "cannot read"),
        ({"--weights": "not_weights"}, "not a PyTorch weights file"),
        ({"--weights": "whole_model"}, "holds more than tensors"),
        ({"--size": "0"}, "--size must be a positive number, got 0"),
        ({"--device": "foo"}, "--device foo:"),
    ],
)
def test_user_mistakes_end_in_a_message_not_a_traceback(files, tmp_path, capsys, change, message):
    (tmp_path / "not_an_image").write_text("hello")
    (tmp_path / "not_weights").write_text("hello")
    torch.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "whole_model")
    options = {"--model": "resnet18", "--weights": str(files["weights"]), "image": str(files["jpg"])}
    options.update({k: str(tmp_path / v) if "/" not in v and (tmp_path / v).exists() else v for k, v in change.items()})
    argv = ["snapshot", options.pop("image"), "--out", str(tmp_path / "out")]
    for key, value in options.items():
        argv += [key, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err


def test_a_lightning_checkpoint_of_the_resnet18_config(tmp_path, files):
    """configs/resnet18.yaml runs one short epoch; its checkpoint loads into torchvision's resnet18 (4 classes)."""
    from cli import main as cli_main  # examples/ is on pytest's pythonpath

    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "resnet18.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--data.train_size=32",
            "--data.val_size=8",
            "--data.image_size=32",
            "--data.batch_size=16",
        ]
    )
    assert type(cli.model.net).__name__ == "ResNet"
    from conftest import read_events

    events = read_events(tmp_path / "runs")
    layers = [
        "net.conv1",
        *(f"net.layer{i}.0.conv1" for i in range(1, 4)),
    ]  # layer4's maps are 1x1 at 32 px: no picture
    assert events.tags("images", "feature_maps/") == sorted(f"feature_maps/{n}" for n in layers)
    assert events.steps("images", "probe/input") == [0]  # the same picture at every event: written once
    # The config gives no mean/std: probe/input is denormalised with the datamodule's (ShapesDataModule.mean/.std)
    from shapes import MEAN, STD, ShapesDataset

    shown = decode_png(events.images["probe/input"][0].encoded_image_string)
    first = ShapesDataset(8, 32, seed=1)[0][0]  # the val set's first sample, the probe row's first tile
    expected = ((first * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)).clamp(0, 1) * 255).round()
    assert np.abs(shown[:32, :32].astype(float) - expected.permute(1, 2, 0).numpy()).max() <= 1

    (checkpoint,) = (tmp_path / "runs").rglob("*.ckpt")
    model, entry, note = load_model("resnet18", str(checkpoint))
    assert entry is None and "4 classes, read from the file" in note
    trained = cli.model.net.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())

    out = tmp_path / "snap"
    argv = ["snapshot", "--model", "resnet18", "--weights", str(checkpoint), str(files["jpg"]), "--out", str(out)]
    assert main([*argv, "--size", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input_shape"] == [1, 3, 32, 32] and len(stats["predictions"][0]) == 3
    assert stats["predictions"][0][0]["name"] in {"0", "1", "2", "3"}  # no class names for a 4-class file


def test_load_model_rejects_a_head_that_does_not_fit_the_given_classes(files):
    with pytest.raises(SnapshotError, match=r"fc.weight: \(1000, 512\) in the file, \(10, 512\) in the model"):
        load_model("resnet18", str(files["weights"]), num_classes=10)


# ---- the user's own model: --model package.module:Class -------------------------------------------------

DEMO_LAYERS = ["features.0", "features.4", "features.8", "features.12"]
DEMO_INPUT = ["--size", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
USER_NETS = '''
import lightning.pytorch as pl
from torch import nn


class Backbone(nn.Sequential):
    """The conv blocks of the demo's ShapesCNN(width=4), as a plain module."""

    def __init__(self):
        chans = [3, 4, 8, 16, 16]
        super().__init__(
            *(
                layer
                for c_in, c_out in zip(chans[:-1], chans[1:])
                for layer in (nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))
            )
        )


class NeedsWidth(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)


class LitNoHparams(pl.LightningModule):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
'''


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """The demo as a user runs it, made tiny: ShapesCNN(width=4) fit for 2 steps, the checkpoint saved by Lightning's
    own ModelCheckpoint; a procedural shape image; and a package of the user's own classes (``usernets_d``)."""
    import lightning.pytorch as pl
    from shapes import MEAN, STD, ShapesCNN, ShapesDataModule, ShapesDataset

    root = tmp_path_factory.mktemp("demo")
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    model = ShapesCNN(width=4)
    trainer.fit(model, datamodule=ShapesDataModule(train_size=32, val_size=8, image_size=32, batch_size=16))
    (checkpoint,) = (root / "checkpoints").glob("*.ckpt")
    image = ShapesDataset(1, 32, seed=1)[0][0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(root / "image.png")
    package = root / "user" / "usernets_d"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_NETS)
    (package / "broken.py").write_text("import not_installed_package_d\n")
    return {"checkpoint": checkpoint, "image": root / "image.png", "model": model.eval(), "user": root / "user"}


@pytest.fixture
def restore_sys_path(monkeypatch):
    """The command puts the current folder on sys.path; each test gets the path back as it was."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_snapshot_of_the_demos_own_checkpoint(demo_run, tmp_path, monkeypatch, restore_sys_path, capsys):
    """``--model examples.shapes:ShapesCNN --weights <checkpoint>``: load_from_checkpoint with the saved width=4."""
    from fm_callback.snapshot import image_transform, load_images

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    argv = ["snapshot", "--model", "examples.shapes:ShapesCNN", "--weights", str(demo_run["checkpoint"])]
    assert main([*argv, str(demo_run["image"]), "--out", str(out), *DEMO_INPUT]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["model"] == "examples.shapes:ShapesCNN"
    assert "ShapesCNN.load_from_checkpoint" in stats["weights"]
    assert list(stats["layers"]) == DEMO_LAYERS
    assert stats["layers"]["features.0"]["shape"] == [1, 4, 32, 32]  # width 4 from the checkpoint's hparams
    assert [p["name"] for p in stats["predictions"][0]][0] in {"0", "1", "2", "3"}
    assert all((out / r["grid"]).is_file() and (out / r["overlay"]).is_file() for r in stats["layers"].values())

    # the trained weights were used: the first conv's channel means are the trained model's on the same input
    batch = load_images([demo_run["image"]], image_transform(None, 32, [0.5] * 3, [0.25] * 3)[0])
    with torch.no_grad():
        expected = demo_run["model"].features[0](batch).mean(dim=(0, 2, 3))
    assert stats["layers"]["features.0"]["channel_mean"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "features.12" in capsys.readouterr().out


def test_the_demo_command_through_the_console_script(demo_run, tmp_path):
    """The installed ``fm-callback`` script, run in the repository as the README says."""
    script = Path(sys.executable).parent / "fm-callback"
    if not script.is_file():
        pytest.skip("the fm-callback console script is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's fm_callback, whatever is installed
    command = [
        str(script),
        "snapshot",
        "--model",
        "examples.shapes:ShapesCNN",
        "--weights",
        str(demo_run["checkpoint"]),
    ]
    done = subprocess.run(
        [*command, str(demo_run["image"]), "--out", str(tmp_path / "out"), *DEMO_INPUT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert list(json.loads((tmp_path / "out" / "stats.json").read_text())["layers"]) == DEMO_LAYERS


def test_a_plain_module_from_the_current_folder_takes_a_checkpoints_state_dict(
    demo_run, tmp_path, monkeypatch, restore_sys_path
):
    """usernets_d is importable only because the command puts the current folder on sys.path. The plain Backbone
    takes the ``features.`` part of the Lightning checkpoint's state_dict; a state_dict file works the same."""
    for name in [name for name in sys.modules if name.startswith("usernets_d")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, from the current folder
    monkeypatch.chdir(demo_run["user"])
    model, entry, note = load_model("usernets_d.nets:Backbone", str(demo_run["checkpoint"]))
    assert entry is None and "state_dict" in note and not model.training
    trained = demo_run["model"].features.state_dict()
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())

    state = {key: value.clone() for key, value in trained.items()}
    state["0.weight"][:2] = 0  # two dead filters in the first conv
    state["0.bias"][:2] = -1
    torch.save(state, tmp_path / "backbone.pth")
    out = tmp_path / "out"
    argv = ["snapshot", "--model", "usernets_d.nets.Backbone", "--weights", str(tmp_path / "backbone.pth")]
    assert main([*argv, str(demo_run["image"]), "--out", str(out), *DEMO_INPUT]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["layers"]) == ["0", "4", "8", "12"]
    assert stats["layers"]["0"]["dead_channels"] == [0, 1]
    assert stats["predictions"] is None  # a backbone: its output is a feature map, not class scores


def test_a_lightning_module_takes_a_state_dict_file(demo_run, tmp_path, monkeypatch, restore_sys_path):
    """A LightningModule with a plain state_dict file: built with no arguments (ShapesCNN's defaults)."""
    from shapes import ShapesCNN

    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    state = ShapesCNN().state_dict()
    torch.save(state, tmp_path / "shapes.pth")
    model, _, note = load_model("examples.shapes:ShapesCNN", str(tmp_path / "shapes.pth"))
    assert note == f"{tmp_path / 'shapes.pth'} (state_dict)"
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(
    ("model", "weights", "message"),
    [
        ("nothere_d.nets:Net", None, "no module named 'nothere_d' in the current folder"),
        ("examples.shape:ShapesCNN", "checkpoint", "examples has no module 'shape'; did you mean shapes?"),
        ("examples.shapes:ShapesCnn", "checkpoint", "examples.shapes has no 'ShapesCnn'; did you mean ShapesCNN?"),
        ("examples.shapes:ShapesDataset", None, "ShapesDataset is a class but not an nn.Module subclass"),
        ("usernets_d.broken:Net", None, "No module named 'not_installed_package_d'; install not_installed_package_d"),
        ("usernets_d.nets:NeedsWidth", "checkpoint", "NeedsWidth() needs the arguments width, and no checkpoint"),
        ("usernets_d.nets:LitNoHparams", "no_hparams", "LitNoHparams() needs the arguments width"),
        (
            "usernets_d.nets:Backbone",
            "wide.pth",
            "wrong shape: 0.weight: (8, 3, 3, 3) in the file, (4, 3, 3, 3)",
        ),
        ("examples.shapes:ShapesCNN", "no_hparams", "features.0.weight: (4, 3, 3, 3) in the file, (16, 3, 3, 3) in"),
        ("examples.shapes:ShapesCNN", "missing.ckpt", "--weights: no such file"),
    ],
)
def test_user_model_mistakes_name_the_fix(
    demo_run, tmp_path, monkeypatch, restore_sys_path, capsys, model, weights, message
):
    """Each message names what is wrong and how to fix it; the command exits with 2 and no traceback."""
    checkpoint = torch.load(demo_run["checkpoint"], weights_only=True)
    torch.save({**checkpoint, "hyper_parameters": {}}, tmp_path / "no_hparams")  # as without save_hyperparameters()
    wide = {k: v.repeat(2, 1, 1, 1) for k, v in checkpoint["state_dict"].items() if k == "features.0.weight"}
    torch.save(wide, tmp_path / "wide.pth")  # twice the filters of the first conv
    files = {
        "checkpoint": demo_run["checkpoint"],
        "no_hparams": tmp_path / "no_hparams",
        "wide.pth": tmp_path / "wide.pth",
    }
    monkeypatch.syspath_prepend(str(demo_run["user"]))
    monkeypatch.chdir(ROOT)
    argv = ["snapshot", "--model", model, str(demo_run["image"]), "--out", str(tmp_path / "out")]
    if weights is not None:
        argv += ["--weights", str(files.get(weights, weights))]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_stats_json_dead_channels_follow_the_rule_of_dead_fraction(capsys):
    """A channel silenced by its ReLU (a bias of -100) but not constant at the conv's own output is dead by the rule
    of ``dead_fraction``; ``dead_channels`` and the printed table say so too."""
    from fm_callback import FeatureMapProbe
    from fm_callback.snapshot import layer_stats, print_summary

    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.bias[1] = -100.0
    model = torch.nn.Sequential(conv, torch.nn.ReLU())
    report = FeatureMapProbe(model).run(torch.randn(2, 3, 8, 8))["0"]
    record = layer_stats("0", report)
    assert record["dead_fraction"] == pytest.approx(0.25)
    assert record["dead_channels"] == [1] and record["constant_channels"] == []
    summary = {"model": "m", "weights": "w", "images": ["a.png"], "predictions": None, "layers": {"0": record}}
    print_summary(summary, Path("out"))
    assert "1/4" in capsys.readouterr().out


def test_snapshot_examples_over_a_folder(files, tmp_path, capsys):
    """--examples DIR: per shown channel, the folder's images ranked by their peak activation, as a direct forward of
    each image ranks them; a picture per layer and examples.json naming the files."""
    folder = tmp_path / "pool"
    folder.mkdir()
    photo = photo_like()
    for i, image in enumerate([photo, photo[::-1], photo[:, ::-1], 255 - photo, photo // 2]):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["snapshot", "--model", "resnet18", "--weights", str(files["weights"]), str(files["jpg"])]
    assert main([*argv, "--out", str(out), "--layers", "conv1", "--max-channels", "4", "--examples", str(folder)]) == 0
    record = json.loads((out / "examples.json").read_text())
    assert [Path(p).name for p in record["images"]] == [f"img{i}.png" for i in range(5)]
    assert record["k"] == 4 and record["pool"] == 5
    conv1 = record["layers"]["conv1"]
    assert conv1["radius"] == 3  # ResNet-18's 7x7 stride-2 stem, measured
    shown = json.loads((out / "stats.json").read_text())["layers"]["conv1"]["shown_channels"]
    assert list(conv1["channels"]) == [str(c) for c in shown]

    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(files["weights"]))
    model.eval()
    from fm_callback.snapshot import image_transform, load_images

    transform = image_transform()[0]
    with torch.no_grad():
        peaks = model.conv1(load_images(sorted(folder.glob("*.png")), transform)).amax(dim=(2, 3))  # [5, 64]
    for channel, entry in conv1["channels"].items():
        expected = torch.argsort(peaks[:, int(channel)], descending=True, stable=True)[:4].tolist()
        assert entry["indices"] == expected, channel
        assert entry["values"] == pytest.approx(peaks[expected, int(channel)].tolist(), rel=1e-4)
    picture = png(out / "feature_examples" / "conv1.png")
    assert picture.shape[0] > 4 * 64 and picture.std() > 10
    assert "feature_examples/" in capsys.readouterr().out


def test_snapshot_examples_folder_without_images_says_so(files, tmp_path, capsys):
    argv = ["snapshot", "--model", "resnet18", str(files["jpg"]), "--out", str(tmp_path / "out")]
    assert main([*argv, "--examples", str(tmp_path)]) == 2
    assert "--examples: no image file" in " ".join(capsys.readouterr().err.split())
