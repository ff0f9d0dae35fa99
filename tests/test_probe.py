"""FeatureMapProbe: statistics equal a direct computation, pre-ReLU values, hooks and modes restored."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import all_forward_hooks, module_modes
from torch import nn

import fm_callback
from fm_callback import FeatureMapProbe, LayerReport, ProbeResult
from fm_callback.stats import DEFAULT_ATOL, DEFAULT_RTOL

DEAD = 1  # conv1 channel whose weights collapsed: the same value everywhere
SILENT = 2  # conv1 channel that is always negative: its ReLU never fires


class Net(nn.Module):
    """conv1 -> ReLU(inplace) -> conv2 -> BatchNorm -> ReLU -> Dropout, with one dead and one silent channel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(5)
        self.act2 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        with torch.no_grad():
            self.conv1.weight[DEAD] = 0.0
            self.conv1.bias[DEAD] = 0.3
            self.conv1.weight[SILENT] = 0.0
            self.conv1.weight[SILENT, 0, 1, 1] = 0.1  # varies with the input, but stays below zero
            self.conv1.bias[SILENT] = -5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act2(self.bn(self.conv2(self.act1(self.conv1(x))))))


def want_silenced(seen: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Channels of layer ``name`` that the ReLU after it (act1 after conv1, act2 after conv2 -> bn) puts to zero."""
    after = {"conv1": "act1", "conv2": "act2", "bn": "act2"}.get(name)
    if after is None:
        return torch.zeros(seen[name].shape[1], dtype=torch.bool)
    return seen[after].amax(dim=(0, 2, 3)) == 0


def probe_input(n: int = 5, size: int = 12) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def capture(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named module's output, cloned by a plain forward hook of our own (eval, no_grad)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach().clone()))
        for name in names
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


def direct_stats(a: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel statistics written out plainly, one channel at a time."""
    out: dict[str, list] = {k: [] for k in ("mean", "std", "min", "max", "zero_fraction", "dead")}
    for c in range(a.shape[1]):
        v = a[:, c].flatten().double()
        out["mean"].append(v.mean())
        out["std"].append(v.std(unbiased=False))
        out["min"].append(v.min())
        out["max"].append(v.max())
        out["zero_fraction"].append((v == 0).double().mean())
        out["dead"].append(bool(v.max() - v.min() <= DEFAULT_ATOL + DEFAULT_RTOL * v.abs().max()))
    return {k: torch.tensor(v) for k, v in out.items()}


LAYERS = ["conv1", "act1", "conv2", "bn", "act2"]


def test_stats_equal_a_direct_computation_on_the_captured_activation():
    model, x = Net(), probe_input()
    model.bn.running_mean.uniform_(-0.5, 0.5)  # a non-trivial eval BatchNorm
    seen = capture(model, LAYERS, x)
    result = FeatureMapProbe(model, layers=LAYERS).run(x)
    assert isinstance(result, ProbeResult) and result.names == LAYERS
    for name in LAYERS:
        rep, want = result[name], direct_stats(seen[name])
        assert isinstance(rep, LayerReport)
        assert rep.shape == tuple(seen[name].shape)
        for field in ("mean", "std", "min", "max", "zero_fraction"):
            got = getattr(rep.stats, field)
            assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (seen[name].shape[1],)
            torch.testing.assert_close(got.double(), want[field], rtol=1e-5, atol=1e-6, msg=f"{name}.{field}")
        assert rep.stats.dead.dtype == torch.bool and rep.stats.dead.tolist() == want["dead"].tolist(), name
        # dead = constant here, or silenced by the ReLU it reaches (measured on that ReLU's output)
        silenced = want_silenced(seen, name)
        assert rep.dead.tolist() == (want["dead"] | silenced).tolist(), name
        assert rep.dead_fraction == pytest.approx(float((want["dead"] | silenced).double().mean()))
        # the contract's short names are the same numbers
        assert rep.channel_mean is rep.stats.mean and rep.channel_std is rep.stats.std
        assert rep.zero_fraction is rep.stats.zero_fraction
    # the test model does have the cases the rule is about
    assert result["conv1"].stats.dead.nonzero().flatten().tolist() == [DEAD]
    assert result["conv1"].dead.nonzero().flatten().tolist() == [DEAD, SILENT]  # act1 silences SILENT
    assert sorted(result["act1"].dead.nonzero().flatten().tolist()) == [DEAD, SILENT]  # never fires -> all zeros
    assert float(result["act1"].zero_fraction[SILENT]) == 1.0
    assert float(result["act1"].zero_fraction.min()) < 1.0
    total = sum(r.dead.numel() for r in result.values())
    assert result.dead_fraction == pytest.approx(sum(int(r.dead.sum()) for r in result.values()) / total)


def test_a_weak_but_varying_channel_is_not_dead():
    model, x = Net(), probe_input()
    with torch.no_grad():
        model.conv1.weight[0] *= 1e-6  # tiny, but still varies with the input
        model.conv1.bias[0] = 0.0
    rep = FeatureMapProbe(model, layers="conv1").run(x)["conv1"]
    assert float(rep.stats.max[0] - rep.stats.min[0]) > 0
    assert not bool(rep.dead[0]) and bool(rep.dead[DEAD])


def test_layer_followed_by_inplace_relu_reports_pre_relu_values():
    model, x = Net(), probe_input()
    seen = capture(model, ["conv1"], x)
    assert float(seen["conv1"].min()) < 0  # our clone was taken before act1 overwrote it
    rep = FeatureMapProbe(model, layers=["conv1", "act1"]).run(x)["conv1"]
    assert float(rep.stats.min.min()) < 0
    torch.testing.assert_close(rep.stats.min, seen["conv1"].amin(dim=(0, 2, 3)))
    torch.testing.assert_close(rep.stats.mean, seen["conv1"].mean(dim=(0, 2, 3)))
    assert float(rep.zero_fraction.max()) < 0.5  # not the ReLU's zeros
    # ... and the same when conv1 is the only watched layer (nothing else is hooked)
    alone = FeatureMapProbe(model, layers="conv1").run(x)["conv1"]
    torch.testing.assert_close(alone.stats.min, seen["conv1"].amin(dim=(0, 2, 3)))
    assert alone.grid is not None


def test_runs_in_eval_without_grad_and_leaves_batchnorm_alone():
    model, x = Net(), probe_input()
    model.train()
    bn_state = {k: v.clone() for k, v in model.bn.state_dict().items()}
    probe = FeatureMapProbe(model, layers=LAYERS)
    first, second = probe.run(x), probe.run(x)
    for name in LAYERS:  # Dropout and batch statistics off: the same numbers twice
        torch.testing.assert_close(first[name].stats.mean, second[name].stats.mean, rtol=0, atol=0)
    for k, v in model.bn.state_dict().items():
        assert torch.equal(v, bn_state[k]), k
    assert all(p.grad is None for p in model.parameters())
    # BatchNorm used its running statistics (eval), not the batch's (train would centre every channel at 0)
    torch.testing.assert_close(first["bn"].stats.mean, capture(model, ["bn"], x)["bn"].mean(dim=(0, 2, 3)))
    assert float(first["bn"].stats.mean.abs().max()) > 1e-3


# ---- hooks and modes --------------------------------------------------------------------------------------


def test_no_hook_left_after_run_and_user_hooks_kept():
    model = Net()
    user = model.conv2.register_forward_hook(lambda m, i, o: None)
    assert all_forward_hooks(model) == {"conv2": 1}
    FeatureMapProbe(model, layers=LAYERS).run(probe_input())
    assert all_forward_hooks(model) == {"conv2": 1}
    user.remove()
    assert all_forward_hooks(model) == {}


class Exploding(Net):
    """Fails half-way through the forward, after conv1 and act1 have run their hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.act1(self.conv1(x))
        raise RuntimeError("boom in forward")


def test_no_hook_left_and_modes_restored_after_a_forward_that_raised():
    model = Exploding()
    model.train()
    model.bn.eval()
    model.drop.eval()
    before = module_modes(model)
    probe = FeatureMapProbe(model, layers=LAYERS)
    with pytest.raises(RuntimeError, match="boom in forward"):
        probe.run(probe_input())
    assert all_forward_hooks(model) == {}
    assert module_modes(model) == before


@pytest.mark.parametrize("setting", ["train", "eval", "mixed"])
def test_every_module_mode_restored(setting):
    model = Net()
    model.train(setting == "train")
    if setting == "mixed":
        model.train()
        model.bn.eval()  # a frozen BatchNorm
        model.act1.eval()
        model.conv2.train(False)
    before = module_modes(model)
    assert setting != "mixed" or len(set(before.values())) == 2
    seen_modes: list[bool] = []
    spy = model.conv2.register_forward_pre_hook(lambda m, i: seen_modes.append(model.drop.training or m.training))
    FeatureMapProbe(model, layers=LAYERS).run(probe_input())
    spy.remove()
    assert seen_modes == [False]  # the forward itself ran in eval
    assert module_modes(model) == before


def test_probe_stats_and_render_do_not_import_lightning():
    """The core works in a plain PyTorch loop: none of these modules imports Lightning."""
    package = Path(fm_callback.__file__).parent
    core = ("probe.py", "handover.py", "results.py", "stats.py", "render.py", "channel_header.py", "picture.py")
    for module in (*core, "select.py"):
        tree = ast.parse((package / module).read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.split(".")[0] in ("lightning", "pytorch_lightning")], module
