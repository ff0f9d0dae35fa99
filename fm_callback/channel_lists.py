"""Channel lists as the user reads them, ``0, 2-5, 9``: in the callback's ``dead_filters/table`` and in
``fm-callback report``. Plain Python, so the reading side imports it without torch."""

from __future__ import annotations


def format_channels(channels: list[int]) -> str:
    """``0, 2-5, 9`` for [0, 2, 3, 4, 5, 9]: runs of three or more become ranges; ``-`` for none."""
    if not channels:
        return "-"
    parts: list[str] = []
    start = prev = channels[0]
    for c in [*channels[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev - start >= 2 else ", ".join(map(str, range(start, prev + 1))))
        if c is not None:
            start = prev = c
    return ", ".join(parts)
