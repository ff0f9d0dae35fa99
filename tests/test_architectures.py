"""Any architecture: a sweep over torchvision classification models (random init, 64 px, 2 samples) and the odd
cases: Conv1d and Conv3d, layers that return tuples/lists/dicts/namedtuples, a module called twice in one
forward, NaN/Inf activations, and ``torch.compile``d models (top level, a compiled submodule, and in a fit).

``torch.compile`` runs with ``backend="eager"`` here: Dynamo (which decides whether hooks fire and what gets
recompiled) is the same as with Inductor, but Inductor's C++ build takes ~15 s on this 2-core CI machine.
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import pytest
import torch
import torchvision.models as tvm
from conftest import TinyCNN, make_trainer, read_events, tiny_loaders
from torch import nn
from torch._dynamo.utils import counters

from fm_callback import FeatureMapCallback, FeatureMapProbe, channel_header, render
from fm_callback.select import is_attention_block

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MAGENTA = torch.tensor(render.NONFINITE_RGB, dtype=torch.uint8).view(3, 1, 1)

# A representative, fast subset: residual, depthwise/SE, dense, fire, channel shuffle, RegNet, ConvNeXt (LayerNorm,
# 7x7 depthwise), Inception branches, NAS, a plain conv stack (AlexNet), a patch-embedding conv in Swin.
TORCHVISION = {
    "resnet18": {},
    "mobilenet_v3_small": {},
    "efficientnet_b0": {},
    "densenet121": {},
    "squeezenet1_0": {},
    "shufflenet_v2_x0_5": {},
    "regnet_x_400mf": {},
    "convnext_tiny": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "mnasnet0_5": {},
    "alexnet": {},
    "swin_t": {},
}


def _assert_report_is_sound(name: str, report, grid_expected: bool) -> None:
    channels = report.shape[1]
    assert report.channel_mean.dtype == torch.float32 and report.channel_mean.shape == (channels,), name
    assert report.channel_std.shape == (channels,) and report.zero_fraction.shape == (channels,), name
    assert report.dead.dtype == torch.bool and report.dead.shape == (channels,), name
    assert 0.0 <= report.dead_fraction <= 1.0
    if grid_expected:
        grid = report.grid
        assert grid is not None and grid.dtype == torch.uint8 and grid.dim() == 3 and grid.shape[0] == 3, name
        assert grid.shape[1] >= 8 and grid.shape[2] >= 8, name
        assert grid.device.type == "cpu"


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_torchvision_model_every_conv_layer_reported(arch):
    torch.manual_seed(0)
    model = tvm.get_model(arch, weights=None, **TORCHVISION[arch])
    model.train()
    x = torch.randn(2, 3, 75 if arch == "inception_v3" else 64, 64 if arch != "inception_v3" else 75)
    probe = FeatureMapProbe(model)
    result = probe.run(x)
    convs = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES) or is_attention_block(m)]
    assert convs, arch
    assert [n.split("#")[0] for n in result.names] == convs  # every conv (and block), each once, in forward order here
    drawable = [n for n in result.names if len(result[n].shape) > 2 and math.prod(result[n].shape[2:]) > 1]
    assert set(probe.image_names) <= set(drawable) and len(probe.image_names) == min(6, len(drawable))
    for name, report in result.items():
        _assert_report_is_sound(f"{arch}:{name}", report, name in probe.image_names)
    assert result.input_image is not None and result.input_image.dtype == torch.uint8
    assert all(m.training for m in model.modules())  # modes restored


def test_reused_module_gets_one_key_per_call():
    """torchvision's BasicBlock calls its one ReLU twice: keys ``relu`` and ``relu#1``, in call order."""
    model = tvm.resnet18(weights=None)
    result = FeatureMapProbe(model, layers=["layer1.0.relu", "layer1.0.conv2"]).run(torch.randn(1, 3, 64, 64))
    assert result.names == ["layer1.0.relu", "layer1.0.conv2", "layer1.0.relu#1"]
    assert result["layer1.0.relu"].shape == result["layer1.0.relu#1"].shape == (1, 64, 16, 16)
    # The first call's output (after bn1) differs from the second's (after the residual add).
    assert not torch.equal(result["layer1.0.relu"].channel_mean, result["layer1.0.relu#1"].channel_mean)


# ---- 1-D and 3-D ------------------------------------------------------------------------------------------


def test_conv1d_renders_as_strips():
    model = nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 6, 3, padding=1))
    result = FeatureMapProbe(model).run(torch.randn(3, 2, 100))
    assert result.names == ["0", "2"]
    report = result["2"]
    assert report.shape == (3, 6, 98)
    _assert_report_is_sound("conv1d", report, True)
    # One strip per (sample, channel): 3 rows of 8-px strips, 6 columns of 98 px, 2-px gaps, plus the header;
    # the columns wrap into 3 bands of 2, each under its header: the squarest grid.
    body = render.render_feature_grid(torch.randn(3, 6, 98), torch.arange(6), 4, probe_lut())
    assert body.shape == (3 * render.STRIP_HEIGHT + 2 * render.PAD, 6 * 98 + 5 * render.PAD)
    assert report.grid.shape[2] == 2 * 98 + render.PAD and report.grid.shape[1] > 3 * body.shape[0]
    assert result.input_image is None  # a signal, not an image: no probe/input picture


def test_conv3d_shows_the_middle_depth_slice():
    conv = nn.Conv3d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(2, 1, 5, 12, 12)
    x[:, :, 2, 3:9, 3:9] = 1.0  # a square, on the middle slice only: any other slice renders flat
    result = FeatureMapProbe(nn.Sequential(conv), channel_order="index").run(x)
    report = result["0"]
    assert report.shape == (2, 2, 5, 12, 12)
    lut = probe_lut()
    middle = render.render_feature_grid(x[:, :, 2].expand(-1, 2, -1, -1), torch.arange(2), 4, lut)
    assert torch.equal(channel_header.with_header(middle, [0, 1], lut).rgb(), report.grid)
    assert len(middle.unique()) > 2  # the square shows: more than background + one flat colour


def probe_lut() -> torch.Tensor:
    return render.colormap_lut("viridis")


# ---- outputs that are not a tensor ------------------------------------------------------------------------

Pair = namedtuple("Pair", "features aux")


class Returns(nn.Module):
    """A conv whose output is wrapped in a tuple, list, dict, namedtuple, nested tuple, or holds no tensor."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return {
            "tuple": lambda: (y, 1),
            "list": lambda: [None, y, y * 2],
            "dict": lambda: {"meta": "x", "out": y, "aux": y * 2},
            "namedtuple": lambda: Pair(y, y * 2),
            "nested": lambda: ((y,), y * 2),
            "no-tensor": lambda: {"meta": "x"},
        }[self.kind]()


class Wrapper(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.block = Returns(kind)
        self.other = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        self.block(x)
        self.block(x)  # called twice: still one warning for a layer with no tensor
        return self.other(x)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "namedtuple", "nested"])
def test_container_outputs_use_the_first_tensor(kind):
    model = Wrapper(kind)
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="fm_callback")  # a "skipped" warning would fail the test
        result = FeatureMapProbe(model, layers=["block", "other"]).run(x)
    assert result.names == ["block", "block#1", "other"]
    expected = model.block.conv(x)
    assert result["block"].shape == (2, 4, 8, 8)
    assert torch.allclose(result["block"].channel_mean, expected.mean(dim=(0, 2, 3)))
    _assert_report_is_sound(kind, result["block"], True)


def test_output_without_a_tensor_is_skipped_with_exactly_one_warning(tmp_path):
    """Skipped on every call and every event, warned once for the life of the callback."""

    class Net(TinyCNN):
        def __init__(self):
            super().__init__()
            self.block = Returns("no-tensor")

        def forward(self, x):
            self.block(x)
            self.block(x)
            return super().forward(x)

    fm = FeatureMapCallback(layers=["block", "conv1"])
    trainer = make_trainer(tmp_path, [fm], max_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(Net(), *tiny_loaders())
    skipped = [str(w.message) for w in record if "'block'" in str(w.message)]
    assert len(skipped) == 1 and "returned dict with no (N, C, ...) tensor; it is skipped" in skipped[0]
    assert len(fm.tracker.history) == 3
    assert read_events(tmp_path).tags("images", "feature_maps/") == ["feature_maps/conv1"]


# ---- NaN and Inf ------------------------------------------------------------------------------------------


def test_nan_and_inf_activations_are_counted_and_rendered_magenta():
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 2, 1))
    x = torch.randn(2, 1, 12, 12)
    x[0, 0, 2, 2] = float("nan")  # each poisons a 3x3 patch of every channel of the first conv
    x[1, 0, 8, 8] = float("inf")
    result = FeatureMapProbe(model, channel_order="index").run(x)
    first = result["0"]
    assert first.nonfinite.tolist() == [18, 18, 18]  # two 3x3 patches per channel
    assert torch.isfinite(first.channel_mean).all() and torch.isfinite(first.channel_std).all()
    assert not first.dead.any()  # a channel with NaN is never called dead
    for report in result.values():
        assert report.grid.dtype == torch.uint8
        magenta = (report.grid == MAGENTA).all(dim=0)
        assert magenta.any(), "non-finite values must show in the marked colour"
    # The finite part keeps its meaning: the mean of the first channel over its finite values.
    y = conv(torch.nan_to_num(x, nan=0.0, posinf=0.0))[:, 0]
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 1:4, 1:4] = False
    mask[1, 7:10, 7:10] = False
    assert torch.allclose(first.channel_mean[0], y[mask].mean(), atol=1e-5)


def test_all_nan_layer_does_not_crash():
    model = nn.Sequential(nn.Conv2d(3, 2, 3))
    result = FeatureMapProbe(model).run(torch.full((1, 3, 8, 8), float("nan")))
    report = result["0"]
    assert report.nonfinite.tolist() == [36, 36] and not report.dead.any()
    assert (report.grid[:, -6:, :6] == MAGENTA).all()


# ---- torch.compile ----------------------------------------------------------------------------------------


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_model_hooks_fire_and_nothing_recompiles():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 16, 16)
    compiled(x)
    graphs = _graphs()
    result = FeatureMapProbe(compiled).run(x)
    assert result.names == ["0", "2"]
    assert _graphs() == graphs, "the probe made Dynamo compile another graph (eval/no_grad/hooks)"
    expected = net(x).mean(dim=(0, 2, 3))
    assert torch.allclose(result["2"].channel_mean, expected, atol=1e-6)


def test_compiled_submodule_is_named_as_written_and_hooked():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.compile(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), backend="eager")
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.body(x))

    model = Net()
    x = torch.randn(2, 3, 16, 16)
    model(x)
    graphs = _graphs()
    result = FeatureMapProbe(model).run(x)
    assert result.names == ["body.0", "body.2", "head"]
    # Names copied from a state_dict (with _orig_mod) work too, and so does hooking the compiled module itself.
    assert FeatureMapProbe(model, layers=["body._orig_mod.2", "body"]).run(x).names == ["body.2", "body"]
    assert _graphs() == graphs


class CompiledBody(TinyCNN):
    """TinyCNN whose first block lives in a compiled submodule."""

    def __init__(self):
        super().__init__()
        block = nn.Sequential(self.conv1, self.bn1, self.relu1)
        del self.conv1, self.bn1, self.relu1
        self.body = torch.compile(block, backend="eager")

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.body(x))))


def _compiled(how: str) -> TinyCNN:
    return torch.compile(TinyCNN(), backend="eager") if how == "compiled-lightning-module" else CompiledBody()


@pytest.mark.parametrize("how", ["compiled-lightning-module", "compiled-submodule"])
def test_compiled_model_in_a_fit(tmp_path, how):
    train, _ = tiny_loaders()  # no validation: every graph Dynamo builds here is the training step's
    torch._dynamo.reset()  # both fits compile from a cold cache
    before = _graphs()
    make_trainer(tmp_path / "without", [], max_epochs=1).fit(_compiled(how), train)
    graphs_without = _graphs() - before

    fm = FeatureMapCallback(every_n_steps=2)
    torch._dynamo.reset()
    before = _graphs()
    make_trainer(tmp_path, [fm], max_epochs=1).fit(_compiled(how), train)
    assert _graphs() - before == graphs_without, "the probe's eval-mode forward was compiled"
    expected = ["conv1", "conv2"] if how == "compiled-lightning-module" else ["body.0", "conv2"]
    assert list(fm.tracker.history[-1]["dead_fraction"]) == expected
    events = read_events(tmp_path / "tb")
    assert events.tags("images", "feature_maps/") == [f"feature_maps/{n}" for n in sorted(expected)]
    assert events.steps("images", f"feature_maps/{expected[0]}") == [0, 2, 4]
