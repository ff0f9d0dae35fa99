"""fm_callback: watch what a CNN sees while it trains (feature-map grids and dead filters in TensorBoard)."""

from .callback import FeatureMapCallback
from .probe import FeatureMapProbe, LayerReport, ProbeResult

__all__ = ["FeatureMapCallback", "FeatureMapProbe", "ProbeResult", "LayerReport"]
__version__ = "0.1.0"
