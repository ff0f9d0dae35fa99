"""Which watched layers get a picture: the ones asked for with ``image_layers``, or by default at most
:data:`DEFAULT_IMAGE_LAYERS` spread over the depth of those with maps worth showing, chosen at the first event from
what the layers put out."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

from torch import nn

from .dead import GATE
from .select import LayerSpec, select_layers

DEFAULT_IMAGE_LAYERS = 6
DRAWN = ("grid", "channels", "energy")  # what a hook keeps of a picture layer (see ``FeatureMapProbe._reduce``)


def asked_for(
    model: nn.Module, watched: list[str], image_layers: LayerSpec | Sequence[LayerSpec] | None
) -> list[str] | None:
    """The picture layers ``image_layers`` names among the ``watched`` layers of ``model`` (``[]``: none); ``None``
    for the default choice (:func:`default_choice`, at the first event)."""
    if image_layers is None:
        return None  # chosen at the first run, from what the layers put out
    if isinstance(image_layers, Sequence) and not isinstance(image_layers, str) and len(image_layers) == 0:
        return []
    chosen = [name for name, _ in select_layers(model, image_layers, argument="image_layers")]
    missing = [name for name in chosen if name not in watched]
    if missing:
        raise ValueError(f"image_layers: {', '.join(missing)} not among the watched layers; add them to layers as well")
    return chosen


def default_choice(raw: dict[str, dict[str, Any]], reached: dict[str, tuple[str, str]]) -> list[str]:
    """At most ``DEFAULT_IMAGE_LAYERS`` spread over the depth of the layers with maps worth showing: more than
    one position, and not a conv feeding a sigmoid gate (squeeze-excitation). ``raw``: per layer key what its hook
    kept (its ``shape``); ``reached``: the activation each layer reached (``ActivationLineage.reached``)."""
    names = [
        key
        for key, layer in raw.items()
        if "#" not in key
        and len(layer["shape"]) >= 3
        and prod(layer["shape"][2:]) > 1
        and reached.get(key, ("",))[0] != GATE
    ]
    count = min(DEFAULT_IMAGE_LAYERS, len(names))
    if count <= 1:
        return names[:count]
    return [names[i] for i in sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})]


def keep_chosen(raw: dict[str, dict[str, Any]], chosen: list[str]) -> None:
    """Drop the pictures drawn (while choosing, every layer with maps draws one) of the layers not ``chosen``."""
    for key, layer in raw.items():
        if key.split("#")[0] not in chosen:
            for drawn in DRAWN:
                layer.pop(drawn, None)
