"""TensorBoard's Images dashboard in headless Chromium, over a real training run: the grids really reach the page.

Debian's ``chromium`` is needed (``.ci/run`` installs it). Without it the test is skipped, except under
``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from conftest import TinyCNN, make_trainer, tiny_loaders
from PIL import Image

from fm_callback import FeatureMapCallback
from fm_callback.render import colormap_lut
from fm_callback.view import TensorBoardServer, dashboard_url, find_chromium, screenshot

WIDTH, HEIGHT = 1400, 1000


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing, and CI=true: install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return found


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny real fit with the callback: 3 epochs, an event at the start and at the end of each epoch."""
    root = tmp_path_factory.mktemp("browser_run")
    pl.seed_everything(0)
    train, val = tiny_loaders()
    trainer = make_trainer(root, [FeatureMapCallback()], max_epochs=3)
    trainer.fit(TinyCNN(width=8), train, val)
    return root


def viridis_share(path: Path) -> float:
    """Share of the screenshot's pixels that are viridis colours (the grids); TensorBoard's own UI has none."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))[::2, ::2].reshape(-1, 1, 3).astype(np.int16)
    lut = colormap_lut("viridis").numpy().astype(np.int16)[::4].reshape(1, -1, 3)
    nearest = np.abs(pixels - lut).max(axis=2).min(axis=1)
    return float((nearest <= 6).mean())


def test_images_dashboard_shows_the_feature_map_grids(chromium, run_dir, tmp_path):
    with TensorBoardServer(run_dir) as server:
        served = server.wait_until_loaded()
        (run,) = served
        assert served[run]["feature_maps/conv1"] == [0, 4, 8, 12]
        page = dashboard_url(server.url, "images", "feature_maps/")
        shot = screenshot(page, tmp_path / "images.png", WIDTH, HEIGHT, chromium=chromium)
        # The control, to show the measure tells a page with grids from one without: the Text dashboard.
        empty = screenshot(dashboard_url(server.url, "text"), tmp_path / "text.png", WIDTH, HEIGHT, chromium=chromium)

    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "the screenshot is (nearly) blank"
    orange = (np.abs(pixels[:60].astype(int) - [245, 124, 0]).max(axis=2) < 20).mean()
    assert orange > 0.5, "TensorBoard's orange header bar is missing: the page did not render"
    assert viridis_share(shot) > 0.05, "no feature-map grid is visible on the Images dashboard"
    assert viridis_share(empty) < 0.001
