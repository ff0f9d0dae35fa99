"""What one probe event produced: a report per watched layer, and the whole result keyed by layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .dead import NONE, RELU, SMOOTH, can_silence, is_dead, is_dying, rule_in_words
from .picture import Picture
from .stats import ChannelStats


def share(masks: list[torch.Tensor]) -> float:
    """The share of True over every element of the boolean ``masks`` (0.0 when they hold none)."""
    total = sum(mask.numel() for mask in masks)
    return sum(int(mask.sum()) for mask in masks) / total if total else 0.0


@dataclass
class LayerReport:
    """What one call of one watched layer produced on the probe batch. Tensors are on the CPU."""

    name: str
    shape: tuple[int, ...]
    stats: ChannelStats
    channels: list[int] = field(default_factory=list)  # channel index of each grid column
    overlay: torch.Tensor | None = None  # uint8 [3, H, W]: energy map over the probe input
    # Measured after the ReLU-like activation(s) this layer's channels reach through channel-keeping ops
    # (BatchNorm, dropout, pooling); None when no such activation followed in the forward.
    silenced: torch.Tensor | None = None  # bool [C]: zero at every position of every sample after the activation
    firing: torch.Tensor | None = None  # float32 [C]: share of positions where the activation's output is non-zero
    # The representation of the probe batch, for CKA (see ``similarity.py``); None with ``similarity=False``.
    gram: torch.Tensor | None = None  # float64 [N, N]: Gram matrix X Xᵀ of the output flattened per sample
    histogram: torch.Tensor | None = None  # int64 [bins]: counts of (a sample of) the output's values over [min, max]
    layout: str = "channels_first"  # how the output was read as (N, C, *spatial): see ``layout.py``
    # The activation the channels reach first (a ReLU-family one wins), its function name, and its kind (see
    # ``dead.py``): it decides which dead rules can fire. A ReLU-family layer watched itself reaches itself.
    activation: str | None = None
    activation_kind: str = NONE
    picture: Picture | None = None  # the grid as palette indices: what the event file stores (see ``picture.py``)

    @cached_property
    def grid(self) -> torch.Tensor | None:
        """The picture as ``uint8 [3, H, W]`` RGB with its channel-index header; made when first read (the writers
        encode :attr:`picture`)."""
        return self.picture.rgb() if self.picture is not None else None

    @property
    def silencing(self) -> bool:
        """Whether a ReLU-family activation follows (or this is one): only then can the dying rule fire."""
        return can_silence(self.activation_kind)

    @property
    def rule(self) -> str:
        """Which dead rule applied, in words: ``silenced after hardtanh``, ``constant only (gelu cannot silence)``."""
        return rule_in_words(self.activation_kind, self.activation, self.silenced, self.firing)

    @property
    def dead(self) -> torch.Tensor:
        """Channels that carry no information: constant here, or silenced by the activation that follows
        (``dead.is_dead``)."""
        return is_dead(self.stats.dead, self.silenced)

    @property
    def dead_fraction(self) -> float:
        return share([self.dead])

    @property
    def dying(self) -> torch.Tensor:
        """Channels that fire on at most ``dead.DYING_FIRING`` of the positions (dead ones included): the early
        warning (``dead.is_dying``)."""
        return is_dying(self.dead, self.activation_kind, self.firing, self.stats.zero_fraction)

    @property
    def dying_fraction(self) -> float:
        return share([self.dying])

    @property
    def never_positive(self) -> torch.Tensor:
        return self.stats.never_positive

    @property
    def never_positive_applies(self) -> bool:
        """ "Never positive" means something before a ReLU-like activation, not before a gate or as logits."""
        return self.activation_kind in (RELU, SMOOTH)

    @property
    def channel_mean(self) -> torch.Tensor:
        return self.stats.mean

    @property
    def channel_std(self) -> torch.Tensor:
        return self.stats.std

    @property
    def zero_fraction(self) -> torch.Tensor:
        return self.stats.zero_fraction

    @property
    def nonfinite(self) -> torch.Tensor:
        return self.stats.nonfinite


@dataclass
class ProbeResult(Mapping[str, LayerReport]):
    """Per-layer reports keyed ``name`` (``name#k`` for the k-th extra call), in forward order."""

    reports: dict[str, LayerReport]
    input_image: torch.Tensor | None = None  # uint8 [3, H, W]: the probe batch as the model sees it

    @property
    def names(self) -> list[str]:
        return list(self.reports)

    def __getitem__(self, name: str) -> LayerReport:
        return self.reports[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.reports)

    def __len__(self) -> int:
        return len(self.reports)

    @property
    def dead_fraction(self) -> float:
        """Dead share over every monitored channel of every layer."""
        return share([r.dead for r in self.reports.values()])

    @property
    def dying_fraction(self) -> float:
        """Dying share (dead included) over the channels of the layers a ReLU-family activation follows (NaN if
        none does: the rule cannot fire)."""
        masks = [r.dying for r in self.reports.values() if r.silencing]
        return share(masks) if masks else float("nan")
