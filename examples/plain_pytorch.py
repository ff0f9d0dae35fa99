"""FeatureMapProbe in a plain PyTorch training loop (no Lightning Trainer), writing to a SummaryWriter.

    python examples/plain_pytorch.py [--epochs 3] [--logdir runs/plain]
    fm-callback view runs/plain

The probe hooks the chosen layers for one forward of a fixed batch, restores every module's mode and
the RNG state, and returns small CPU results; ``fm_callback.tensorboard_writer.write_result`` writes them
under the same tags the Lightning callback uses, so TensorBoard shows the same dashboards. Each result also
holds every layer's Gram matrix of the probe batch; ``similarity.layer_change(before, after)`` says how much each
layer's representation changed between two probes (1 - debiased linear CKA), logged as ``layer_change/<layer>``.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import CLASSES, MEAN, STD, ShapesDataset  # noqa: E402

from fm_callback import FeatureMapProbe  # noqa: E402
from fm_callback.cli import command_line  # noqa: E402
from fm_callback.names import LAYER_CHANGE  # noqa: E402
from fm_callback.similarity import layer_change  # noqa: E402
from fm_callback.tensorboard_writer import write_result  # noqa: E402


def small_cnn(width: int = 16) -> nn.Sequential:
    """Three conv blocks and a linear head; ``features.0``, ``features.4``, ``features.8`` are the convs."""
    chans = [3, width, width * 2, width * 4]
    blocks: list[nn.Module] = []
    for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], len(CLASSES)))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*blocks), head=head))


def main(argv: list[str] | None = None) -> nn.Module:
    """Train, probing at the start and after every ``--probe-every`` epochs (0: never); returns the model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--logdir", default="runs/plain")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--probe-every", type=int, default=1, help="epochs between probes; 0 turns the probe off")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train_set = ShapesDataset(args.train_size, args.image_size, seed=0)
    train = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    probe_x = torch.stack([ShapesDataset(16, args.image_size, seed=1)[i][0] for i in range(16)])  # fixed probe batch
    model = small_cnn(args.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Every Conv2d is watched (the default); the grids show the most varied channels, denormalised input below.
    probe = FeatureMapProbe(model, mean=MEAN, std=STD)
    writer = SummaryWriter(args.logdir)
    step = 0
    previous = None
    try:
        if args.probe_every:
            previous = probe.run(probe_x)
            write_result(writer, previous, step)  # the untrained baseline at step 0
        for epoch in range(args.epochs):
            model.train()
            for x, y in train:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                writer.add_scalar("train_loss", loss.item(), step)
            if args.probe_every and (epoch + 1) % args.probe_every == 0:
                result = probe.run(probe_x)  # eval mode, no_grad, hooks only for this forward, RNG untouched
                change = layer_change(previous, result)  # per layer: 0 = sees the probe batch as before
                write_result(writer, result, step, changes={LAYER_CHANGE: change})
                previous = result
                moved = ", ".join(f"{name} {value:.3f}" for name, value in change.items())
                print(f"epoch {epoch}: loss {loss.item():.3f}, dead filters {result.dead_fraction:.1%}, change {moved}")
    finally:
        writer.close()
    view = command_line("fm-callback", "view", args.logdir)
    print(f"Feature maps written to {args.logdir}; look at them with: {view}")
    return model


if __name__ == "__main__":
    main()
