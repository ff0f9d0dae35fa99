"""The names every logger gets: TensorBoard tags, metric names, the JSON records' tags and files, and the scalars of
one probe event by those names.

The reading side (``fm-callback report``, ``view``) imports this module too, so it imports neither torch nor NumPy.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import ProbeResult

FEATURE_MAPS = "feature_maps"
OVERLAYS = "feature_maps_overlay"
FEATURE_EXAMPLES = "feature_examples"  # per picture layer: each shown channel's top-activating pool samples
DEAD_FILTERS = "dead_filters"
DYING_FILTERS = "dying_filters"
NEVER_POSITIVE = "never_positive"
CHANNEL_MEAN = "channel_mean"
PROBE_INPUT = "probe/input"
DEAD_TABLE = "dead_filters/table"
DEAD_TIMELINE = "dead_filters/timeline"
LAYER_CHANGE = "layer_change"  # 1 - CKA(previous event, now), per layer
LAYER_CHANGE_FROM_START = "layer_change_from_start"  # 1 - CKA(first event, now), per layer
LAYER_CHANGE_MAP = "layer_change_map"  # end of fit: layers x events heatmap of layer_change
LAYER_SIMILARITY = "layer_similarity"  # end of fit: layer x layer CKA at the last event (image)
ACTIVATIONS = "activations"  # per layer: histogram of the output's values
# Machine-readable dead-filter record of each event (JSON), read back by `fm-callback report`. Written under
# its own plugin name, so TensorBoard keeps it in the event file but shows no dashboard for it.
DEAD_STATE = "fm_callback/dead_state"
SIMILARITY_STATE = "fm_callback/layer_similarity"  # {"layers": [...], "cka": [[...]]} at the last event
EXAMPLES_STATE = "fm_callback/examples"  # per event, layer and channel: the top examples' dataset indices, values
STATE_PLUGIN = "fm_callback"
# The same records as files (one per tag and step) in this folder of a W&B run's files and an MLflow run's artifacts.
RECORDS = "fm_callback_records"
ALL_LAYERS = "all"
_UNSAFE_TAG_CHARS = re.compile(r"[^-/\w.]")


def layer_tag(kind: str, layer: str, prefix: str = "") -> str:
    """``kind/layer`` with the layer key made tag-safe (``relu#1`` -> ``relu_call1``), under ``prefix``."""
    safe = _UNSAFE_TAG_CHARS.sub("_", layer.replace("#", "_call"))
    return tag(prefix, f"{kind}/{safe}")


def tag(prefix: str, name: str) -> str:
    """``name`` under a callback's ``prefix`` (``"student"``: ``student/dead_filters/all``); ``name`` without one."""
    return f"{prefix}/{name}" if prefix else name


def check_prefix(prefix: Any) -> str:
    """A valid ``prefix=`` without surrounding slashes; ValueError naming the fix otherwise."""
    if not isinstance(prefix, str) or _UNSAFE_TAG_CHARS.search(prefix):
        raise ValueError(
            f"FeatureMapCallback: prefix must be a str of letters, digits, '_', '-', '.' and '/' (it starts every "
            f"tag and metric name), got {prefix!r}; e.g. prefix='student'"
        )
    return prefix.strip("/")


def scalar_metrics(
    result: ProbeResult, prefix: str = "", changes: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """The scalars of one probe event by name: per layer and over all channels, the dead and dying shares; per
    layer, the never-positive share (NaN for a layer without channels), and the representation changes given as
    ``{LAYER_CHANGE: {layer: value}, LAYER_CHANGE_FROM_START: {...}}``. Names are the TensorBoard tags.

    A rule that cannot fire is left out, not logged as a reassuring 0: ``dying_filters`` where no ReLU-family
    activation follows the layer (``dying_filters/all`` is over the layers one follows), ``never_positive`` before
    a gate or nothing (logits). ``dead_filters`` is always there: a constant channel is dead before any activation.
    """
    metrics: dict[str, float] = {}
    for name, report in result.items():
        metrics[layer_tag(DEAD_FILTERS, name, prefix)] = report.dead_fraction
        if report.silencing:
            metrics[layer_tag(DYING_FILTERS, name, prefix)] = report.dying_fraction
        if report.never_positive_applies:  # NaN for a layer without channels
            metrics[layer_tag(NEVER_POSITIVE, name, prefix)] = float(report.never_positive.float().mean())
    metrics[layer_tag(DEAD_FILTERS, ALL_LAYERS, prefix)] = result.dead_fraction
    if any(report.silencing for report in result.values()):
        metrics[layer_tag(DYING_FILTERS, ALL_LAYERS, prefix)] = result.dying_fraction
    for kind, values in (changes or {}).items():
        for name, value in values.items():
            metrics[layer_tag(kind, name, prefix)] = value
    return metrics


def record_file(tag: str, step: int) -> str:
    """The record of ``tag`` at ``step`` as a path relative to the run's files: ``fm_callback_records/<tag>/<step>``."""
    return f"{RECORDS}/{tag}/step-{step:09d}.json"


def record_text(tag: str, obj: Any, step: int) -> str:
    """A record file's content: the record with its tag and step, so the file needs no name to be read."""
    return json.dumps({"tag": tag, "step": step, "record": obj}, separators=(",", ":"))
