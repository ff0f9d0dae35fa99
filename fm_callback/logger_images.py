"""What the W&B and MLflow writers share: the SummaryWriter calls they take and the ones they leave out."""

from __future__ import annotations

from typing import Any

import numpy as np


def hwc_pixels(image: Any, dataformats: str) -> np.ndarray:
    """A ``uint8`` picture as NumPy ``[H, W, C]`` (for W&B and MLflow) from a tensor or array in ``dataformats``."""
    pixels = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0) if dataformats == "CHW" else pixels)


class LoggerImages:
    """What ``tensorboard_writer.py`` writes, for a logger that takes pictures and files but no TensorBoard summaries:
    histograms, text and scalars are left out (the scalars reach every logger through Lightning's API)."""

    def add_histogram(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_histogram_raw = add_scalar = add_text = add_histogram

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # the run is the logger's: Lightning finishes it
