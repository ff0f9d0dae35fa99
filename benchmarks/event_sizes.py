"""Bytes per probe event in a log folder's event files, by tag family and kind.

    python benchmarks/event_sizes.py runs/demo            # after `python examples/demo.py`
    python benchmarks/event_sizes.py runs/demo --tags     # also the 40 largest tags

An event is a step with a ``feature_maps/*`` image; whole-file bytes (records and their framing) are divided by
their number, so the end-of-fit figures and the one ``probe/input`` are spread over the events.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--tags", action="store_true", help="also list the 40 largest tags")
    args = parser.parse_args()
    by_kind, by_tag, steps, total = collections.Counter(), collections.Counter(), set(), 0
    for path in sorted(args.logdir.rglob("events.out.tfevents*")):
        for record in RawEventFileLoader(str(path)).Load():
            total += len(record) + 16  # length, its CRC, the data's CRC
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "image" and "feature_maps/" in value.tag:  # also under a prefix
                    steps.add(event.step)
                by_kind[(value.tag.split("/")[0], kind)] += value.ByteSize()
                by_tag[value.tag] += value.ByteSize()
    if not steps:
        raise SystemExit(f"{args.logdir}: no feature_maps images in any event file")
    print(f"{total} bytes, {len(steps)} events: {total / len(steps) / 1e6:.3f} MB per event")
    for (family, kind), size in by_kind.most_common():
        print(f"{size / len(steps) / 1e3:9.1f} kB/event  {family} ({kind})")
    if args.tags:
        for tag, size in by_tag.most_common(40):
            print(f"{size / len(steps) / 1e3:9.1f} kB/event  {tag}")


if __name__ == "__main__":
    main()
