"""A real TensorBoard over a real training run's logdir, asked through its HTTP data API as the web page asks it.

The run probes after every optimizer step for 3 epochs: 13 events, more than the 10 steps per image tag that
TensorBoard keeps by default, so the test also shows why ``fm-callback view`` raises that limit.
"""

from __future__ import annotations

import io
import time
import urllib.parse
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import BATCHES_PER_EPOCH, TinyCNN, make_trainer, read_events, tiny_loaders
from PIL import Image
from tensorboard_page import TensorBoardServer, get_json
from torch.utils.data import DataLoader, Dataset

from fm_callback import FeatureMapCallback

EPOCHS = 3
STEPS = list(range(EPOCHS * BATCHES_PER_EPOCH + 1))  # step 0 (before training) and after every optimizer step


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The logdir of a tiny real fit: TinyCNN, 3 epochs, FeatureMapCallback(every_n_steps=1), a TensorBoardLogger."""
    root = tmp_path_factory.mktemp("tb_run")
    pl.seed_everything(0)
    train, val = tiny_loaders()
    trainer = make_trainer(root, [FeatureMapCallback(every_n_steps=1)], max_epochs=EPOCHS)
    trainer.fit(TinyCNN(), train, val)
    return root


def served(url: str, plugin: str, tag_prefix: str) -> dict[str, list[int]]:
    """``{tag: [steps]}`` of one plugin's tags with ``tag_prefix``, straight from TensorBoard's data routes."""
    result: dict[str, list[int]] = {}
    for run, tags in get_json(f"{url}data/plugin/{plugin}/tags").items():
        for tag in tags:
            if not tag.startswith(tag_prefix):
                continue
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            if plugin == "images":
                result[tag] = [image["step"] for image in get_json(f"{url}data/plugin/images/images?{query}&sample=0")]
            else:
                result[tag] = [step for _, step, _ in get_json(f"{url}data/plugin/scalars/scalars?{query}")]
    return result


def wait_for(fetch, expected, timeout: float = 60.0):
    """Poll ``fetch()`` until it returns ``expected`` (TensorBoard loads event files in the background)."""
    deadline = time.monotonic() + timeout
    got = fetch()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        got = fetch()
    return got


def test_every_feature_map_tag_and_every_step_is_served(run_dir):
    events = read_events(run_dir)
    image_tags = events.tags("images", "feature_maps/")
    assert image_tags == ["feature_maps/conv1", "feature_maps/conv2"]
    expected_images = {tag: STEPS for tag in image_tags}
    expected_scalars = {tag: STEPS for tag in events.tags("scalars", "dead_filters/")}
    assert set(expected_scalars) == {"dead_filters/all", "dead_filters/conv1", "dead_filters/conv2"}

    with TensorBoardServer(run_dir) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert wait_for(lambda: served(server.url, "images", "feature_maps/"), expected_images) == expected_images
        assert wait_for(lambda: served(server.url, "scalars", "dead_filters/"), expected_scalars) == expected_scalars
        overlays = served(server.url, "images", "feature_maps_overlay/")
        assert overlays == {"feature_maps_overlay/conv1": STEPS, "feature_maps_overlay/conv2": STEPS}

        # The picture TensorBoard hands the browser is the very PNG the callback wrote at that step.
        (run,) = get_json(f"{server.url}data/plugin/images/tags")
        query = urllib.parse.urlencode({"run": run, "tag": "feature_maps/conv2", "sample": 0})
        listing = get_json(f"{server.url}data/plugin/images/images?{query}")
        with urllib.request.urlopen(f"{server.url}data/plugin/images/individualImage?{listing[5]['query']}") as r:
            assert r.headers["Content-Type"] == "image/png"
            body = r.read()
        (logged,) = [e for e in events.images["feature_maps/conv2"] if e.step == listing[5]["step"]]
        assert body == logged.encoded_image_string
        assert Image.open(io.BytesIO(body)).size == (logged.width, logged.height)


def test_tensorboard_left_at_its_defaults_drops_steps(run_dir):
    """Why ``fm-callback view`` exists: plain ``tensorboard --logdir`` keeps 10 of the 13 steps."""
    with TensorBoardServer(run_dir, samples=None) as server:
        assert "--samples_per_plugin" not in server.command()
        server.wait_until_loaded()
        steps = served(server.url, "images", "feature_maps/")["feature_maps/conv1"]
    assert len(steps) == 10 and set(steps) < set(STEPS)


class TransformedImages(Dataset):
    """Images in [0, 1] normalised by a torchvision ``Normalize`` inside ``transform``, as torchvision datasets do."""

    def __init__(self, transform) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = 0.25 + 0.5 * torch.rand(16, 3, 16, 16, generator=g)  # not spanning [0, 1]: min-max would show
        self.labels = torch.randint(0, 2, (16,), generator=g)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def test_probe_input_is_denormalised_with_the_datasets_normalize_transform(tmp_path):
    """No mean/std given: the callback finds them in the dataset's transform, so probe/input shows the raw image."""
    from torchvision import transforms as T

    mean, std = [0.2, 0.5, 0.7], [0.1, 0.3, 0.2]
    dataset = TransformedImages(T.Compose([T.Normalize(mean, std)]))
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [FeatureMapCallback(probe_size=4, epochs=[0])], limit_train_batches=1)
    trainer.fit(TinyCNN(), DataLoader(dataset, batch_size=8))
    (event,) = read_events(tmp_path).images["probe/input"][:1]
    shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).astype(float)
    first = (dataset.images[0].permute(1, 2, 0).numpy() * 255).round()
    tile = shown[:32:2, :32:2]  # 16 px images are shown as 32 px tiles (each pixel doubled)
    assert np.abs(tile - first).max() <= 1
