"""TensorBoard's Images dashboard in headless Chromium, over a real training run: the grids really reach the page,
and their channel numbers are legible at the size the page shows them.

Debian's ``chromium`` is needed (``.ci/run`` installs it). Without it the tests are skipped, except under
``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from conftest import BATCH_SIZE, TinyCNN, make_trainer, read_events, tiny_dataset
from PIL import Image
from tensorboard_page import TensorBoardServer, find_chromium, screenshot
from torch.utils.data import DataLoader

from fm_callback import FeatureMapCallback
from fm_callback import channel_header as H
from fm_callback import render as R
from fm_callback.view import dashboard_url

WIDTH, HEIGHT = 1600, 1000  # the window the issue measures: TensorBoard at 1600 px, "Show actual image size" off
TAGS = {"feature_maps/conv1", "feature_maps/conv2"}
IMAGE_SIZE = 96  # conv1 maps are MAX_TILE wide: 16 of them made the widest default grid, 1566 px in one band

# Every <img> of the Images dashboard's cards (tf-image-loader, inside shadow roots), with its tag and sizes.
CARD_IMAGES = """(() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'IMG' && el.getRootNode().host?.localName === 'tf-image-loader' && el.complete) {
        const box = el.getBoundingClientRect();
        found.push({tag: el.getRootNode().host.tag, naturalWidth: el.naturalWidth, naturalHeight: el.naturalHeight,
                    clientWidth: el.clientWidth, x: box.x, y: box.y, width: box.width, height: box.height});
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
})()"""


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
    train = DataLoader(tiny_dataset(image_size=IMAGE_SIZE, seed=0), batch_size=BATCH_SIZE, shuffle=True)
    val = DataLoader(tiny_dataset(BATCH_SIZE, image_size=IMAGE_SIZE, seed=1), batch_size=BATCH_SIZE)
    trainer = make_trainer(root, [FeatureMapCallback()], max_epochs=3)
    trainer.fit(TinyCNN(width=16), train, val)
    return root


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``, no package
    needed): open a page, evaluate JavaScript in it, take a screenshot."""

    def __init__(self, chromium: str, width: int, height: int, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="fm_callback_chromium_")
        to_browser, self._in = os.pipe()  # Chromium reads commands on its fd 3 and answers on its fd 4
        self._out, from_browser = os.pipe()
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile.name}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command,
            preexec_fn=lambda: (os.dup2(to_browser, 3), os.dup2(from_browser, 4)),
            close_fds=False,  # only fds 3 and 4 are inheritable: os.pipe() makes non-inheritable ones
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._id, self._buffer = 0, b""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
                chunk = os.read(self._out, 1 << 20)
                if not chunk:
                    raise ConnectionError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, session=self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self) -> Image.Image:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, TimeoutError, ConnectionError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)
        self.profile.cleanup()

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def viridis_share(path: Path) -> float:
    """Share of the screenshot's pixels that are viridis colours (the grids); TensorBoard's own UI has none."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))[::2, ::2].reshape(-1, 1, 3).astype(np.int16)
    lut = R.colormap_lut("viridis").numpy().astype(np.int16)[::4].reshape(1, -1, 3)
    nearest = np.abs(pixels - lut).max(axis=2).min(axis=1)
    return float((nearest <= 6).mean())


def header_digit_height(pixels: np.ndarray) -> int:
    """Height of the channel numbers at the top of a grid, ``uint8 [h, w, 3]``: ink rows in the grey header."""
    rgb = pixels.astype(np.int16)
    # header rows: mostly grey (a dead or dying column's cell is red or amber), a tile row has no grey but its padding
    grey = (rgb.max(axis=2) - rgb.min(axis=2) <= 12).mean(axis=1) > 0.5
    header = rgb[: int(np.argmin(grey))] if not grey.all() else rgb
    ink = np.flatnonzero((header.mean(axis=2) > (R.BACKGROUND + R.HEADER_INK) / 2).any(axis=1))
    assert len(ink), "no channel numbers above the grid"
    return int(ink[-1] - ink[0] + 1)


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
        assert image.size[0] == WIDTH
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "the screenshot is (nearly) blank"
    orange = (np.abs(pixels[:60].astype(int) - [245, 124, 0]).max(axis=2) < 20).mean()
    assert orange > 0.5, "TensorBoard's orange header bar is missing: the page did not render"
    assert viridis_share(shot) > 0.05, "no feature-map grid is visible on the Images dashboard"
    assert viridis_share(empty) < 0.001


def test_channel_numbers_are_legible_in_the_images_card(chromium, run_dir, tmp_path):
    """In a 1600 px window each card shows its grid channel_header.CARD_WIDTH px wide, and the numbers >= 7 px tall."""
    last = {tag: max(events, key=lambda e: e.step) for tag, events in read_events(run_dir).images.items()}
    with TensorBoardServer(run_dir) as server, DevTools(chromium, WIDTH, HEIGHT) as browser:
        server.wait_until_loaded()
        browser.page("Page.navigate", url=dashboard_url(server.url, "images", "feature_maps/"))
        deadline, cards = time.monotonic() + 60, []
        while time.monotonic() < deadline and not TAGS <= {c["tag"] for c in cards if c["naturalWidth"]}:
            time.sleep(0.5)
            cards = browser.evaluate(CARD_IMAGES)
        time.sleep(1)  # let the page settle before the picture
        cards = browser.evaluate(CARD_IMAGES)
        shot = browser.screenshot()
        shot.save(tmp_path / "images_tab.png")
    assert shot.size[0] == WIDTH
    # The cards that match the filter come first; TensorBoard lists every tag by its prefix below them.
    first = {}
    for card in cards:
        first.setdefault(card["tag"], card)
    assert TAGS <= set(first), cards
    for card in (first[tag] for tag in sorted(TAGS)):
        event = last[card["tag"]]
        assert (card["naturalWidth"], card["naturalHeight"]) == (event.width, event.height)  # the newest step
        # TensorBoard's Images card: every image is shown at the same width (channel_header.CARD_WIDTH), however wide.
        assert card["clientWidth"] == H.CARD_WIDTH, card
        scale = card["clientWidth"] / card["naturalWidth"]
        in_png = header_digit_height(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
        assert in_png * scale >= 7, f"{card['tag']}: digits {in_png} px in the PNG, {in_png * scale:.1f} on screen"
        # and on the screen itself: the header rows of the card's picture in the screenshot
        x, y, width, height = (round(card[k]) for k in ("x", "y", "width", "height"))
        assert y + height <= shot.size[1], f"{card['tag']} is below the window"
        on_screen = header_digit_height(np.asarray(shot)[y : y + height, x : x + width])
        assert on_screen >= 7, f"{card['tag']}: the channel numbers are {on_screen} px tall on screen"


FILTER_INPUT = 'input[placeholder*="Filter tags"]'  # the Time Series tag filter
# Every image of the Time Series dashboard's image cards (plain DOM), with its sizes.
TIME_SERIES_IMAGES = """(() => [...document.querySelectorAll('img')].filter(el => el.complete && el.naturalWidth)
  .map(el => {
  const box = el.getBoundingClientRect();
  return {naturalWidth: el.naturalWidth, naturalHeight: el.naturalHeight, x: box.x, y: box.y, width: box.width,
          height: box.height};
}))()"""


def test_channel_numbers_are_legible_in_the_time_series_card(chromium, run_dir, tmp_path):
    """The Time Series tab shows every image channel_header.TIME_SERIES_HEIGHT px tall: the numbers are >= 7 px there
    too."""
    with TensorBoardServer(run_dir) as server, DevTools(chromium, WIDTH, HEIGHT) as browser:
        server.wait_until_loaded()
        browser.page("Page.navigate", url=f"{server.url}#timeseries")
        deadline, images = time.monotonic() + 90, []
        while time.monotonic() < deadline and not browser.evaluate(f"!!document.querySelector('{FILTER_INPUT}')"):
            time.sleep(1)
        time.sleep(3)  # the tag filter reads typed text once the page has its tags
        browser.evaluate(f"document.querySelector('{FILTER_INPUT}').focus()")
        browser.page("Input.insertText", text="^feature_maps/")
        while time.monotonic() < deadline and len(images) < 2:
            time.sleep(1)
            images = browser.evaluate(TIME_SERIES_IMAGES)
        time.sleep(1)
        images = browser.evaluate(TIME_SERIES_IMAGES)
        shot = browser.screenshot()
        shot.save(tmp_path / "time_series.png")
    assert len(images) >= 2, images
    for image in images[:2]:
        assert round(image["height"]) == H.TIME_SERIES_HEIGHT, image  # however large the picture
        x, y, width, height = (round(image[k]) for k in ("x", "y", "width", "height"))
        on_screen = header_digit_height(np.asarray(shot)[y : y + height, x : x + width])
        assert on_screen >= 7, f"the channel numbers are {on_screen} px tall in the Time Series card"
