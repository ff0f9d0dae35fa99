"""What one examples pass costs (``FeatureMapCallback(examples=4, examples_pool=256)``), next to training.

    python benchmarks/bench_examples.py                     # the demo's ShapesCNN at 64 px, ResNet-18 at 224 px
    python benchmarks/bench_examples.py --model demo --repeats 5
    python benchmarks/bench_examples.py --quick             # tiny pool, one repeat: checks the script runs

Per model (random weights; the demo's on its own shapes data), pool 256, chunks of 16 (the default probe size),
the 16 channels the probe shows in each of its picture layers, ``k = 4``:

- scan: the pool through the model in chunks, top-k kept per channel (every rank runs this at each event);
- first scan: the same, plus the one-time receptive-field measurement of the fit's first event;
- pictures: the ``feature_examples/<layer>`` pictures and the record (rank 0 only);
- a training step: forward, backward and SGD step in train mode at the demo's batch (64) or 32 for ResNet-18;
  the pass is given as the training samples it costs as much as, and as a share of an epoch (the demo: 3000
  samples; ResNet-18: CIFAR-sized 50,000 and ImageNet's 1,281,167);
- extra peak memory of a scan over a bare ``no_grad`` forward of one chunk (RSS high-water mark reset before each,
  see ``bench_event.rss_rise``), and the largest layer output of one chunk for scale; the pool itself is held on
  the CPU for the run (its size is given).

Medians of ``--repeats``, interleaved. Prints a markdown table; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "examples")]
from bench_event import count_hooks, largest_activation, machine, rss_rise, timed  # noqa: E402

from fm_callback import FeatureMapProbe  # noqa: E402
from fm_callback.example_pictures import draw_examples  # noqa: E402
from fm_callback.top_examples import ExampleScanner, examples_record  # noqa: E402

CHUNK = 16
EPOCHS = {
    "demo": {"demo epoch (3000)": 3000},
    "resnet18": {"CIFAR-size epoch (50k)": 50_000, "ImageNet epoch": 1_281_167},
}


def build(name: str, pool_size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
    """(model in train mode, pool, a training batch, its labels' class count)."""
    torch.manual_seed(0)
    if name == "demo":
        from shapes import ShapesCNN, ShapesDataset

        data = ShapesDataset(max(pool_size, 64), seed=1)
        pool = torch.stack([data[i][0] for i in range(pool_size)])
        batch = torch.stack([data[i][0] for i in range(64)])
        return ShapesCNN().train(), pool, batch, 4
    import torchvision

    pool = torch.randn(pool_size, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return torchvision.models.resnet18().train(), pool, pool[:32].clone(), 1000


def bench(name: str, pool_size: int, repeats: int) -> dict[str, Any]:
    model, pool, batch, classes = build(name, pool_size)
    probe = FeatureMapProbe(model)
    result = probe.run(pool[:CHUNK])
    channels = {layer: report.channels for layer, report in result.items() if report.channels}
    modules = dict(probe.layers)
    layers = {layer: modules[layer] for layer in channels}
    labels = torch.randint(0, classes, (len(batch),), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def chunks():
        return ((start, pool[start : start + CHUNK]) for start in range(0, len(pool), CHUNK))

    scanner = ExampleScanner(model, layers, channels, 4)
    found = {}

    def first_scan() -> None:
        scanner.radius = None
        found.update(scanner.scan(chunks()))

    def scan() -> None:
        found.update(scanner.scan(chunks()))

    def pictures() -> None:
        _, marks = draw_examples(found, result, lambda i: pool[i : i + 1])
        examples_record(found, marks, len(pool), 4)

    def train_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(batch), labels).backward()
        optimizer.step()

    def bare_chunk() -> None:
        with torch.no_grad():
            model.eval()(pool[:CHUNK])
        model.train()

    fns = {"first scan": first_scan, "scan": scan, "pictures": pictures, "train step": train_step}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for key in list(fns)[r % len(fns) :] + list(fns)[: r % len(fns)]:
            times[key].append(timed(fns[key]))
    median = {k: statistics.median(v) for k, v in times.items()}
    extra = statistics.median([rss_rise(scan) - rss_rise(bare_chunk) for _ in range(3)])
    per_sample = median["train step"] / len(batch)
    pass_time = median["scan"] + median["pictures"]
    return {
        "model": name,
        "pool": len(pool),
        "chunk": CHUNK,
        "layers": len(layers),
        "seconds": median,
        "pass_seconds": pass_time,
        "train_batch": len(batch),
        "pass_as_training_samples": pass_time / per_sample,
        "share_of_epoch": {label: pass_time / (per_sample * n) for label, n in EPOCHS[name].items()},
        "extra_peak_rss_bytes": extra,
        "largest_layer_output_bytes": largest_activation(model.eval(), pool[:CHUNK]),
        "pool_bytes": pool.numel() * pool.element_size(),
        "radius": scanner.radius,
        "hooks_left": count_hooks(model),
    }


def table(results: list[dict[str, Any]]) -> str:
    mib = 2**20
    rows = [
        "| model | scan (every event) | first scan (+ receptive fields) | pictures (rank 0) | train step "
        "| pass = training samples | share of an epoch | extra peak RSS of a scan | largest layer output (chunk) "
        "| pool on the CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["seconds"]
        share = ", ".join(f"{label}: {100 * v:.2g} %" for label, v in r["share_of_epoch"].items())
        rows.append(
            f"| {r['model']} | {s['scan']:.2f} s | {s['first scan']:.2f} s | {s['pictures']:.2f} s | "
            f"{s['train step']:.2f} s (batch {r['train_batch']}) | {r['pass_as_training_samples']:.0f} | {share} | "
            f"{r['extra_peak_rss_bytes'] / mib:.1f} MiB | {r['largest_layer_output_bytes'] / mib:.1f} MiB | "
            f"{r['pool_bytes'] / mib:.0f} MiB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "resnet18", "all"], default="all")
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the demo, pool 32, one repeat")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    models = ["demo", "resnet18"] if args.model == "all" else [args.model]
    if args.quick:
        models, args.pool, args.repeats = ["demo"], 32, 1
    results = [bench(name, args.pool, args.repeats) for name in models]
    out = {"machine": machine(), "results": results}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
