"""Writes off the training thread: a SummaryWriter's writes behind one daemon thread, when that pays.

When training runs on an accelerator, writing (PNG encoding of the grids included) happens on a background
thread behind a small bounded queue, so the training thread only hands over small CPU tensors; when training
runs on the CPU, the writes run on the training thread instead (cheaper there, see :func:`write_in_background`).
Errors (a full disk, say) are kept and surfaced as warnings on the training thread; training goes on.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable
from typing import Any


def write_in_background(device: Any) -> bool:
    """Whether writes should leave the training thread, for training on ``device``.

    On an accelerator the CPU mostly waits, and a writer thread hides PNG encoding and event writing.
    When training runs on the CPU it already keeps every core busy; a writer thread then costs training
    several times its own CPU time (the training thread's many short torch ops wait for the GIL, and
    OpenMP regions wait for a preempted thread): measured on the demo, see BENCHMARKS.md ("Targets").
    """
    return getattr(device, "type", str(device)) != "cpu"


def use_fast_crc32c() -> bool:
    """Let TensorBoard's event writer checksum its records with a C CRC-32C, when one is installed.

    Without TensorFlow, ``tensorboard`` computes every record's CRC-32C in pure Python, byte by byte, all of it
    holding the GIL, so the training thread stalls too while a probe event's PNGs are checksummed.
    ``google-crc32c`` (or ``crc32c``) gives the same checksum in C (figures: BENCHMARKS.md). The
    swap is process-wide (Lightning's own TensorBoard logging gains too), checked against the original
    first, and done once. Returns whether the fast checksum is in use.
    """
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    original = getattr(record_writer, "masked_crc32c", None)
    if original is None:
        return False
    if getattr(original, "fast", False):
        return True
    try:
        import google_crc32c

        if google_crc32c.implementation != "c":  # its pure-Python fallback is no faster
            return False
        crc = google_crc32c.value
    except ImportError:
        try:
            import crc32c

            crc = crc32c.crc32c
        except ImportError:
            return False

    def masked_crc32c(data: bytes) -> int:
        x = crc(data) & 0xFFFFFFFF
        return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF

    masked_crc32c.fast = True
    sample = bytes(range(256)) * 3
    if masked_crc32c(sample) != original(sample) or masked_crc32c(b"") != original(b""):
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


class BackgroundWriter:
    """Runs writes for a SummaryWriter (or a W&B or MLflow writer) on one daemon thread, at most
    ``max_pending`` waiting.

    ``threaded=False`` runs each write at once on the caller's thread instead (same errors-as-warnings):
    the better choice when training already keeps every CPU core busy, see :func:`write_in_background`.
    """

    def __init__(self, writer: Any, max_pending: int = 2, threaded: bool = True) -> None:
        use_fast_crc32c()
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._errors: list[str] = []
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="fm_callback-writer", daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any, what: str = "write", **kwargs: Any) -> None:
        """Queue ``fn(writer, *args, **kwargs)``; blocks while the queue is full, so memory stays bounded."""
        self.warn_errors()
        if self._thread is None:
            self._run(fn, args, kwargs, what)
            self.warn_errors()
        else:
            self._queue.put((fn, args, kwargs, what))

    def _run(self, fn: Callable[..., None], args: tuple, kwargs: dict[str, Any], what: str) -> None:
        try:
            fn(self.writer, *args, **kwargs)
        except Exception as err:  # surfaced on the training thread
            self._errors.append(f"{what} failed ({type(err).__name__}: {err})")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._run(*item)
            finally:
                self._queue.task_done()

    def warn_errors(self) -> None:
        while self._errors:
            warnings.warn(f"fm_callback: {self._errors.pop(0)}; training goes on", stacklevel=3)

    def flush(self) -> None:
        """Wait for every queued write, then flush the event file."""
        if self._thread is not None:
            self._queue.join()
        try:
            self.writer.flush()
        except Exception as err:
            self._errors.append(f"flushing the event file failed ({type(err).__name__}: {err})")
        self.warn_errors()

    def close(self, close_writer: bool = False) -> None:
        """Flush, stop the thread, and close the SummaryWriter when this object owns it."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if close_writer:
            self.writer.close()
