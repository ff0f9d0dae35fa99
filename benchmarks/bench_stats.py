"""Plain per-channel statistics against the cache-blocked ones they replaced, next to a whole event.

    python benchmarks/bench_stats.py                      # resnet18 and vgg16, 224 px, batch 8, CPU
    python benchmarks/bench_stats.py --blocked 4006d26    # the git revision whose stats.py was blocked

The activations of every conv layer (what the probe watches by default) are captured once; then, in
interleaved repeats (the order rotates), ``channel_stats`` of each version runs over all of them, and
so does one whole event (``FeatureMapProbe(model, mean, std).run(x)`` with this tree's statistics).
Prints medians in ms and the blocked version's saving as a share of the event.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_event import IMAGENET_MEAN, IMAGENET_STD, build  # noqa: E402

from fm_callback import FeatureMapProbe  # noqa: E402
from fm_callback.select import select_layers  # noqa: E402
from fm_callback.stats import channel_stats  # noqa: E402


def blocked_stats(revision: str):
    """``channel_stats`` of ``fm_callback/stats.py`` at a git revision, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:fm_callback/stats.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("blocked_stats")
    exec(compile(source, "blocked_stats.py", "exec"), module.__dict__)
    return module.channel_stats


def conv_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.clone())) for _, m in select_layers(model, None)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return outputs


def measure(name: str, args: argparse.Namespace, blocked) -> dict[str, float]:
    """Median ms of the blocked and plain statistics over every conv output, and of one event."""
    model, x = build(name, args.batch, args.size, torch.device("cpu"))
    outputs = conv_outputs(model, x)
    probe = FeatureMapProbe(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    runs = {
        "blocked": lambda: [blocked(o) for o in outputs],
        "plain": lambda: [channel_stats(o) for o in outputs],
        "event": lambda: probe.run(x),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        keys = list(runs)
        for key in keys[repeat % 3 :] + keys[: repeat % 3]:
            start = time.perf_counter()
            runs[key]()
            if repeat:
                times[key].append(1e3 * (time.perf_counter() - start))
    return {"layers": len(outputs)} | {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--blocked", default="4006d26", help="git revision with the blocked stats.py")
    args = parser.parse_args()
    blocked = blocked_stats(args.blocked)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats, medians")
    print("| model | layers | blocked stats (ms) | plain stats (ms) | event (ms) | (plain - blocked) / event |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        ms = measure(name, args, blocked)
        share = (ms["plain"] - ms["blocked"]) / ms["event"]
        row = f"{ms['blocked']:.0f} | {ms['plain']:.0f} | {ms['event']:.0f} | {share:+.1%}"
        print(f"| {name} | {ms['layers']} | {row} |", flush=True)


if __name__ == "__main__":
    main()
