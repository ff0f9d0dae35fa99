"""fm_callback: watch what a CNN sees while it trains (feature-map grids and dead filters in TensorBoard)."""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .callback import FeatureMapCallback
    from .probe import FeatureMapProbe
    from .results import LayerReport, ProbeResult

__all__ = ["FeatureMapCallback", "FeatureMapProbe", "ProbeResult", "LayerReport"]
__version__ = "0.1.0"

# Each public name is imported from its module when first asked for: the reading side (`fm-callback report`,
# `view`) then starts without torch, plain-PyTorch users of FeatureMapProbe without Lightning.
_HOMES = {
    "FeatureMapCallback": ".callback",
    "FeatureMapProbe": ".probe",
    "ProbeResult": ".results",
    "LayerReport": ".results",
}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name], __name__), name)
        globals()[name] = value  # asked once: later lookups find it without this function
        return value
    raise AttributeError(f"module 'fm_callback' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
