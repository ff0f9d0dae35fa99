"""How noisy the layer change signal (1 - debiased linear CKA between probe events) is, by probe size.

    python benchmarks/probe_size.py [--epochs 4] [--sizes 8 16 32 64]

Trains the demo's ShapesCNN (64 px shapes, Adam at the demo's learning rate) with its first conv frozen, in a
plain loop, and every ``--every`` steps probes 256 validation images once. Each probe size n is then read as
``--subsets`` disjoint subsets of n samples (their Gram matrices are sub-blocks of the 256-sample one: debiased
HSIC does not depend on where the features are centred). Per layer and probe size it prints, over the pairs of
consecutive events, the median of the change (mean over subsets) and of its spread across subsets (standard
deviation): the noise a user sees when only the probe batch differs. The frozen layer shows 0 at every size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from shapes import ShapesCNN, ShapesDataset  # noqa: E402

from fm_callback import FeatureMapProbe  # noqa: E402
from fm_callback.similarity import cka  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--every", type=int, default=8, help="optimizer steps between probe events")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--subsets", type=int, default=4)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = ShapesCNN()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=model.hparams.lr)
    loader = DataLoader(ShapesDataset(args.train_size, seed=0), batch_size=64, shuffle=True)
    probe_set = ShapesDataset(max(args.sizes) * args.subsets, seed=1)
    probe_x = torch.stack([probe_set[i][0] for i in range(len(probe_set))])
    probe = FeatureMapProbe(model, image_layers=[])

    events = [probe.run(probe_x)]
    step = 0
    for _ in range(args.epochs):
        for x, y in loader:
            model.train()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.every == 0:
                events.append(probe.run(probe_x))
    print(f"{len(events)} events, {step} steps; change = median over {len(events) - 1} consecutive event pairs")
    print("| layer | probe size | change (median of subset means) | spread across subsets (median std) | ratio |")
    print("|---|---|---|---|---|")
    for name in events[0].names:
        for n in args.sizes:
            means, spreads = [], []
            for before, after in zip(events, events[1:], strict=False):
                values = []
                for s in range(args.subsets):
                    block = slice(s * n, (s + 1) * n)
                    values.append(1 - cka(before[name].gram[block, block], after[name].gram[block, block]))
                means.append(statistics.fmean(values))
                spreads.append(statistics.pstdev(values))
            mean, spread = statistics.median(means), statistics.median(spreads)
            ratio = f"{spread / mean:.2f}" if mean > 0 else "-"
            print(f"| {name} | {n} | {mean:.2e} | {spread:.2e} | {ratio} |")


if __name__ == "__main__":
    main()
