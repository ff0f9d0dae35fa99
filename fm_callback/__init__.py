"""fm_callback: watch what a CNN sees while it trains (feature-map grids and dead filters in TensorBoard)."""

from typing import TYPE_CHECKING

from .probe import FeatureMapProbe
from .results import LayerReport, ProbeResult

if TYPE_CHECKING:
    from .callback import FeatureMapCallback

__all__ = ["FeatureMapCallback", "FeatureMapProbe", "ProbeResult", "LayerReport"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lightning is imported only when the callback is asked for, so `fm-callback` and plain-PyTorch users
    # of FeatureMapProbe start in about torch's import time.
    if name == "FeatureMapCallback":
        from .callback import FeatureMapCallback

        return FeatureMapCallback
    raise AttributeError(f"module 'fm_callback' has no attribute {name!r}")
