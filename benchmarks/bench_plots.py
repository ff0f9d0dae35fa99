"""What the end-of-fit pictures cost: the three images drawn straight to pixels (what the callback logs), against the
same three charts drawn as matplotlib figures (what ``fm-callback report --plot`` saves, and how the callback drew
them before).

    python benchmarks/bench_plots.py [--layers 4] [--events 13] [--repeats 7]

The defaults are the demo's: 4 convs, an event at the start and after each of 12 epochs. Prints the median CPU
seconds of each way for all three pictures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from fm_callback import plots


def charts(layers: int, events: int) -> list[plots.Chart]:
    rng = random.Random(0)
    names = [f"features.{4 * i}" for i in range(layers)]
    dead = [{"step": 50 * i, "epoch": i, "dead_fraction": {n: rng.random() for n in names}} for i in range(events)]
    change = [{"step": 50 * i, "epoch": i, "change": {n: rng.random() ** 4 for n in names}} for i in range(1, events)]
    cka = [[rng.random() for _ in names] for _ in names]
    return [plots.timeline_chart(dead), plots.change_chart(change), plots.similarity_chart(names, cka)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--events", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    found = charts(args.layers, args.events)
    ways = {
        "pixels (numpy + PIL)": lambda: [plots.pixels(c) for c in found],
        "matplotlib figures": lambda: [plots.figure(c).canvas.draw() for c in found],
    }
    for way in ways.values():  # warm-up: imports, fonts
        way()
    for name, way in ways.items():
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            way()
            times.append(time.process_time() - start)
        print(f"{name}: {statistics.median(times):.3f} s CPU for the three pictures")


if __name__ == "__main__":
    main()
