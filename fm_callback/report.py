"""Reading fm_callback's event files back, and the dead-filter timeline picture."""

from __future__ import annotations

from typing import Any


def timeline_figure(history: list[dict[str, Any]]):
    """A matplotlib figure: one row per layer, one column per probe event, dead fraction as colour."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    layers: list[str] = []
    for event in history:
        for name in event["dead_fraction"]:
            if name not in layers:
                layers.append(name)
    values = np.full((len(layers), len(history)), np.nan)
    for col, event in enumerate(history):
        for row, name in enumerate(layers):
            values[row, col] = event["dead_fraction"].get(name, np.nan)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(history) + 3), max(2.5, 0.3 * len(layers) + 1.5)))
    image = ax.imshow(values, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    steps = [event["step"] for event in history]
    ticks = range(0, len(steps), max(1, len(steps) // 12))
    ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks], fontsize=8)
    ax.set_xlabel("global step of the probe event")
    ax.set_title("dead filters: share of each layer's channels")
    fig.colorbar(image, ax=ax, label="dead fraction")
    fig.tight_layout()
    return fig


def report_command(args) -> int:
    """``fm-callback report LOGDIR``: not written yet."""
    raise NotImplementedError
