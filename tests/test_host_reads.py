"""An event reads device memory on the host a fixed few times, however deep the model (issue 21).

On a GPU each read (``.item()``, ``bool()``, ``.cpu()``, ``.tolist()``, ``nonzero``) waits for everything queued
on the device, so reads inside the hooks would stop the probe's forward layer after layer. Counted on the CPU with
``benchmarks/host_reads.py`` (the same counter the benchmark table uses).
"""

from __future__ import annotations

import pytest
import torch
from host_reads import count_host_reads, event_reads
from torch import nn

from fm_callback import FeatureMapProbe, similarity
from fm_callback.handover import to_host

MAX_READS = 10  # per event, whatever the model


def test_the_counter_sees_every_kind_of_host_read():
    """A counter that missed a kind would pass anything: each one, planted, is counted once."""
    t = torch.arange(6.0)
    reads = {
        "item": lambda: t.max().item(),
        "bool": lambda: bool(t.any()),
        "float": lambda: float(t.sum()),
        "tolist": lambda: t.tolist(),
        "cpu": lambda: t.cpu(),
        "numpy": lambda: t.numpy(),
        "nonzero": lambda: t.nonzero(),
        "boolean indexing": lambda: t[t > 2],
        "copy into a host tensor": lambda: torch.empty(6).copy_(t),
    }
    for what, read in reads.items():
        assert sum(count_host_reads(read)[1].values()) == 1, what
    assert sum(count_host_reads(lambda: (t * 2 + 1).amax(dim=0))[1].values()) == 0  # device work reads nothing


def test_host_reads_of_an_event_do_not_grow_with_depth():
    """8 x 128 px, defaults, the second event: resnet18 (20 watched convs) and resnet50 (53). Before issue 21:
    159 and 390 reads (about 7 per layer)."""
    shallow, deep = event_reads("resnet18"), event_reads("resnet50")
    assert shallow[0] == 20 and deep[0] == 53  # the depth really differs
    shallow_reads, deep_reads = sum(shallow[1].values()), sum(deep[1].values())
    assert shallow_reads <= MAX_READS and deep_reads <= MAX_READS, (shallow[1], deep[1])
    assert deep_reads <= shallow_reads + 2, (shallow[1], deep[1])


class Plain(nn.Module):
    """``depth`` convs with BatchNorm (fresh: uncalibrated) and ReLU, and one without."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("calibrated", [False, True])
def test_pictures_and_batchnorm_guards_read_nothing_per_layer(calibrated):
    """Every layer drawn (pinned channels from the first event, as the callback does), every BatchNorm asked
    whether it is calibrated: the count stays that of a one-layer model."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    counts = []
    for depth in (1, 12):
        torch.manual_seed(0)
        model = Plain(depth)
        if calibrated:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
        probe = FeatureMapProbe(model, image_layers=nn.Conv2d)
        first = probe.run(x)
        probe.pinned_channels = {name: report.channels for name, report in first.items()}
        result, reads = count_host_reads(lambda probe=probe: probe.run(x))
        assert all(report.grid is not None for report in result.values())
        followed_by_batchnorm = list(result.values())[1:-1]
        assert all((report.silenced is not None) == calibrated for report in followed_by_batchnorm)
        counts.append(sum(reads.values()))
    assert counts[1] == counts[0] <= MAX_READS


def test_to_host_keeps_every_dtype_shape_and_value_in_one_copy():
    """The CUDA hand-over's code path (one buffer, one copy into a host buffer, views back), run on the CPU."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bool": torch.rand(5, generator=g) > 0.5,
        "uint8 picture": torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8, generator=g),
        "float32": torch.randn(13, generator=g),
        ("layer", "gram"): torch.randn(3, 3, dtype=torch.float64, generator=g),
        "int64 scalar": torch.tensor(7),
        "empty": torch.zeros(0, 4),
        "int32": torch.arange(3, dtype=torch.int32),
        "strided": torch.randn(4, 6, generator=g).t(),
    }
    host, reads = count_host_reads(lambda: to_host(tensors))
    assert sum(reads.values()) == 1  # one copy, whatever is handed over
    assert list(host) == list(tensors)
    for key, tensor in tensors.items():
        got = host[key]
        assert got.device.type == "cpu" and got.dtype == tensor.dtype and got.shape == tensor.shape, key
        assert torch.equal(got, tensor), key
    assert to_host({}) == {}


def test_an_event_whose_values_overflow_float32_is_redone_carefully():
    """Values near 1e19: their float32 squares overflow, so the device-side statistics and Gram matrix come out
    infinite; the hand-over sees it and the event is redone with the exact path (float64, scaled)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    conv = model[0]
    with torch.no_grad():
        conv.weight.mul_(1e19)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = conv(x)
    assert not torch.isfinite(similarity.gram(output, check_overflow=False)).all()  # the planted overflow
    report = FeatureMapProbe(model).run(x)["0"]
    want = output.double().transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(report.channel_std.double(), want.std(dim=1, correction=0), rtol=1e-4, atol=0)
    torch.testing.assert_close(report.gram, similarity.gram(output), rtol=0, atol=0)
    assert torch.isfinite(report.gram).all() and report.nonfinite.sum() == 0


class FunctionalNorm(nn.Module):
    """conv -> F.batch_norm with statistics under names no BatchNorm module holds -> ReLU; channel 0 never fires."""

    def __init__(self, calibrated: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("mean", torch.full((4,), 0.01) if calibrated else torch.zeros(4))
        self.register_buffer("var", torch.ones(4))
        with torch.no_grad():
            self.conv.bias[0] = -1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(nn.functional.batch_norm(self.conv(x), self.mean, self.var))


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_functional_batchnorm_gates_the_verdict_on_the_device(calibrated):
    """Statistics the probe cannot ask about before the forward: the gate stays a device tensor, read with the
    rest at the hand-over; an uncalibrated one leaves the ReLU's verdict out, a calibrated one lets it in."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    probe = FeatureMapProbe(FunctionalNorm(calibrated))
    probe.run(x)
    report, reads = count_host_reads(lambda: probe.run(x)["conv"])
    assert sum(reads.values()) <= 2  # no BatchNorm module to ask beforehand: the copy and the one list
    if calibrated:
        assert report.silenced.tolist() == [True, False, False, False] and report.firing[0] == 0
    else:
        assert report.silenced is None and report.firing is None
