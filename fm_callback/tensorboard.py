"""The one place that knows the TensorBoard tag names and calls the SummaryWriter.

Writing (PNG encoding of the grids included) happens on a background thread behind a small bounded
queue, so the training thread only hands over small CPU tensors. Errors on that thread (a full disk,
say) are kept and surfaced as warnings on the training thread; training goes on.
"""

from __future__ import annotations

import queue
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

from .probe import ProbeResult

FEATURE_MAPS = "feature_maps"
OVERLAYS = "feature_maps_overlay"
DEAD_FILTERS = "dead_filters"
NEVER_POSITIVE = "never_positive"
CHANNEL_MEAN = "channel_mean"
PROBE_INPUT = "probe/input"
DEAD_TABLE = "dead_filters/table"
DEAD_TIMELINE = "dead_filters/timeline"
ALL_LAYERS = "all"
_UNSAFE_TAG_CHARS = re.compile(r"[^-/\w.]")


def layer_tag(prefix: str, layer: str) -> str:
    """``prefix/layer`` with the layer key made tag-safe: ``relu#1`` -> ``relu_call1``."""
    safe = _UNSAFE_TAG_CHARS.sub("_", layer.replace("#", "_call"))
    return f"{prefix}/{safe}"


def write_result(writer: Any, result: ProbeResult, step: int, dead_table: str | None = None) -> None:
    """Every tag of one probe event, at ``step``."""
    for name, report in result.items():
        if report.grid is not None:
            writer.add_image(layer_tag(FEATURE_MAPS, name), report.grid, step, dataformats="CHW")
        if report.overlay is not None:
            writer.add_image(layer_tag(OVERLAYS, name), report.overlay, step, dataformats="CHW")
        writer.add_scalar(layer_tag(DEAD_FILTERS, name), report.dead_fraction, step)
        writer.add_scalar(layer_tag(NEVER_POSITIVE, name), float(report.never_positive.float().mean()), step)
        writer.add_histogram(layer_tag(CHANNEL_MEAN, name), report.channel_mean, step)
    writer.add_scalar(f"{DEAD_FILTERS}/{ALL_LAYERS}", result.dead_fraction, step)
    if result.input_image is not None:
        writer.add_image(PROBE_INPUT, result.input_image, step, dataformats="CHW")
    if dead_table:
        writer.add_text(DEAD_TABLE, dead_table, step)


def write_timeline(writer: Any, history: list[dict[str, Any]], step: int) -> None:
    """The end-of-fit picture: layers x events, dead fraction as colour."""
    from .report import timeline_figure

    writer.add_figure(DEAD_TIMELINE, timeline_figure(history), step)


class BackgroundWriter:
    """Runs writes for a SummaryWriter on one daemon thread, at most ``max_pending`` waiting."""

    def __init__(self, writer: Any, max_pending: int = 2) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._work, name="fm_callback-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any, what: str = "write") -> None:
        """Queue ``fn(writer, *args)``; blocks while the queue is full, so memory stays bounded."""
        self.warn_errors()
        self._queue.put((fn, args, what))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args, what = item
                try:
                    fn(self.writer, *args)
                except Exception as err:  # surfaced on the training thread
                    self._errors.append(f"{what} failed ({type(err).__name__}: {err})")
            finally:
                self._queue.task_done()

    def warn_errors(self) -> None:
        while self._errors:
            warnings.warn(f"fm_callback: {self._errors.pop(0)}; training goes on", stacklevel=3)

    def flush(self) -> None:
        """Wait for every queued write, then flush the event file."""
        self._queue.join()
        try:
            self.writer.flush()
        except Exception as err:
            self._errors.append(f"flushing the event file failed ({type(err).__name__}: {err})")
        self.warn_errors()

    def close(self, close_writer: bool = False) -> None:
        """Flush, stop the thread, and close the SummaryWriter when this object owns it."""
        self.flush()
        self._queue.put(None)
        self._thread.join()
        if close_writer:
            self.writer.close()
