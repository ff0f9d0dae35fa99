"""Representation change (debiased linear CKA), layer similarity and activation histograms.

The CKA maths is checked against a float64 reference written here from the papers (Song et al. 2012's unbiased
HSIC, Nguyen et al. 2021's debiased CKA), then against what a user relies on: an unchanged layer shows 0, a
rotated or rescaled one shows 0, a re-initialised one shows a large change, and on a real Trainer run a frozen
layer shows 0 while trained ones do not, in TensorBoard, in the checkpoint state and in ``fm-callback report``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import TinyCNN, make_trainer, read_events, tiny_dataset, tiny_loaders
from torch import nn

from fm_callback import FeatureMapCallback, FeatureMapProbe
from fm_callback.cli import main
from fm_callback.similarity import HISTOGRAM_VALUES, cka, gram, layer_change, similarity_matrix, value_histogram


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA in float64, straight from the formulas, on the uncentred Gram matrices."""
    n = x.shape[0]
    x, y = x.double().reshape(n, -1), y.double().reshape(n, -1)

    def unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
        k, l = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))  # noqa: E741
        one = torch.ones(n, 1, dtype=torch.float64)
        value = torch.trace(k @ l)
        value += (one.T @ k @ one).item() * (one.T @ l @ one).item() / ((n - 1) * (n - 2))
        value -= 2 / (n - 2) * (one.T @ k @ l @ one).item()
        return float(value) / (n * (n - 3))

    k, l = x @ x.T, y @ y.T  # noqa: E741
    return unbiased_hsic(k, l) / math.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l, l))


def ours(x: torch.Tensor, y: torch.Tensor) -> float:
    return cka(gram(x), gram(y))


@pytest.mark.parametrize("n", [4, 8, 32])
def test_cka_matches_the_float64_reference(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, 5, 5, generator=g).relu() + 2.0  # a large common offset, as after a ReLU
    y = x.roll(1, dims=1) * 0.5 + torch.randn(n, 6, 5, 5, generator=g)
    assert ours(x, y) == pytest.approx(reference_cka(x, y), abs=1e-5)
    z = torch.randn(n, 40, generator=g)  # a 2-D output (a Linear layer)
    assert ours(z, z[:, :20]) == pytest.approx(reference_cka(z, z[:, :20]), abs=1e-5)


def test_gram_of_half_precision_channels_last_and_huge_activations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 6, 6, generator=g)
    y = x + 0.3 * torch.randn(8, 16, 6, 6, generator=g)
    expected = reference_cka(x, y)
    assert ours(x.contiguous(memory_format=torch.channels_last), y) == pytest.approx(expected, abs=1e-5)
    assert ours(x.half(), y.half()) == pytest.approx(expected, abs=2e-3)
    assert ours(x * 1e30, y) == pytest.approx(expected, abs=1e-5)  # squares would overflow float32 unscaled


@pytest.mark.parametrize("offset", [10.0, 30.0])
def test_layer_change_holds_its_digits_under_a_large_common_offset(offset: float) -> None:
    """A layer against itself plus 5 % noise, features sharing an offset of ``offset`` sigma (post-ReLU features
    often do), at the size of a ResNet stage (N = 16, D = 64 x 56 x 56): within 20 % of float64. The debiased CKA
    does not depend on a common offset, so the float64 value without it is the exact one (with it, even float64
    drifts by a few % at 30 sigma)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 56, 56, generator=g)
    y = x + 0.05 * torch.randn(16, 64, 56, 56, generator=g)
    expected = 1 - reference_cka(x, y)
    assert 1 - ours(x + offset, y + offset) == pytest.approx(expected, rel=0.2)


def test_orthogonal_rotation_and_scaling_of_channels_leave_cka_at_one() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, 7, 7, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    rotated = torch.einsum("dc,nchw->ndhw", rotation, x)
    assert ours(x, rotated) == pytest.approx(1.0, abs=1e-6)
    assert ours(x, 37.5 * x) == pytest.approx(1.0, abs=1e-6)
    assert ours(x, torch.randn(16, 8, 7, 7, generator=g)) < 0.2  # unrelated representations are far from 1


def test_cka_needs_four_samples_and_matching_sizes() -> None:
    x = torch.randn(3, 4, 5, 5)
    assert math.isnan(ours(x, x))
    assert math.isnan(cka(gram(torch.randn(5, 3)), gram(torch.randn(6, 3))))
    assert math.isnan(ours(torch.ones(6, 3), torch.randn(6, 3)))  # no variance over the samples


def test_value_histogram_counts_like_histc_on_the_device_range() -> None:
    x = torch.randn(4, 3, 9, 9)
    counts = value_histogram(x, x.min(), x.max(), bins=10)
    assert counts.dtype == torch.int64 and int(counts.sum()) == x.numel()
    assert torch.equal(counts, torch.histc(x, bins=10, min=float(x.min()), max=float(x.max())).long())
    large = torch.rand(4, 64, 64, 64)  # over a million values: an evenly spread sample is binned
    counts = value_histogram(large, torch.tensor(0.0), torch.tensor(1.0), bins=4)
    assert 50_000 < int(counts.sum()) <= HISTOGRAM_VALUES
    assert (counts.float() / counts.sum() - 0.25).abs().max() < 0.02  # still the distribution of all values
    constant = torch.full((2, 3, 4, 4), 1.5)
    assert value_histogram(constant, constant.min(), constant.max(), bins=5).tolist() == [96, 0, 0, 0, 0]


def probe_results(model: nn.Module, change: callable) -> tuple:
    """Two probe runs of ``model`` on the same batch, with ``change(model)`` between them."""
    x = tiny_dataset(16).tensors[0]
    probe = FeatureMapProbe(model, layers=["conv1", "conv2"], image_layers=[])
    before = probe.run(x)
    change(model)
    return before, probe.run(x)


def test_unchanged_layers_show_no_change_and_a_reinitialised_one_a_large_change() -> None:
    torch.manual_seed(0)
    before, after = probe_results(TinyCNN(), lambda m: None)
    assert before["conv1"].gram.shape == (16, 16) and before["conv1"].gram.dtype == torch.float64
    assert layer_change(before, after) == {"conv1": pytest.approx(0, abs=1e-12), "conv2": pytest.approx(0, abs=1e-12)}

    def reinitialise_conv2(model: nn.Module) -> None:
        torch.manual_seed(1)
        model.conv2.reset_parameters()

    before, after = probe_results(TinyCNN(), reinitialise_conv2)
    change = layer_change(before, after)
    assert change["conv1"] == pytest.approx(0, abs=1e-12)  # before conv2: untouched
    # A new random conv of the same input is not unrelated (both are linear maps of the same patches), so the
    # change stays below 1; measured 0.76-0.83 for three seeds of this 4 -> 8 channel conv.
    assert change["conv2"] > 0.5


def test_probe_without_similarity_keeps_no_gram() -> None:
    probe = FeatureMapProbe(TinyCNN(), image_layers=[], similarity=False)
    report = probe.run(tiny_dataset(4).tensors[0])["conv1"]
    assert report.gram is None and report.histogram is None


def test_similarity_matrix_is_symmetric_with_ones_on_the_diagonal() -> None:
    result = FeatureMapProbe(TinyCNN(), image_layers=[]).run(tiny_dataset(8).tensors[0])
    names, matrix = similarity_matrix(result)
    assert names == ["conv1", "conv2"]
    assert torch.allclose(matrix, matrix.T) and torch.allclose(matrix.diagonal(), torch.ones(2, dtype=torch.float64))


# ---- a real Trainer run -------------------------------------------------------------------------------------


class FrozenFirst(TinyCNN):
    """TinyCNN whose first conv never trains: its representation of the probe batch must not change."""

    def __init__(self) -> None:
        super().__init__(lr=0.2)
        self.conv1.requires_grad_(False)


def fit(root: Path, epochs: int, callback: FeatureMapCallback, ckpt_path: str | None = None) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    train, val = tiny_loaders()
    trainer = make_trainer(root, [callback], max_epochs=epochs)
    trainer.fit(FrozenFirst(), train, val, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory) -> tuple[Path, pl.Trainer, FeatureMapCallback]:
    root = tmp_path_factory.mktemp("cka")
    callback = FeatureMapCallback(image_layers=[])
    return root, fit(root, 4, callback), callback


def test_frozen_layer_shows_no_change_while_trained_layers_do(frozen_run) -> None:
    root, trainer, callback = frozen_run
    events = read_events(root)
    steps = [4, 8, 12, 16]  # one event per epoch after the baseline at step 0
    for kind in ("layer_change", "layer_change_from_start"):
        assert events.steps("scalars", f"{kind}/conv1") == steps
        assert all(e.value == pytest.approx(0, abs=1e-9) for e in events.scalars[f"{kind}/conv1"])
        assert all(e.value > 1e-4 for e in events.scalars[f"{kind}/conv2"])
    assert "layer_change/conv2" in trainer.callback_metrics  # EarlyStopping could watch it
    assert events.steps("images", "layer_change_map") == [16]
    assert events.steps("images", "layer_similarity") == [16]
    assert events.steps("histograms", "activations/conv2") == [0, *steps]
    histogram = events.histograms["activations/conv2"][-1].histogram_value
    assert histogram.num == 8 * 8 * 8 * 8  # every value of this small output, binned on the device
    assert histogram.min <= histogram.max and len(histogram.bucket) == 64
    assert [h["step"] for h in callback.changes.history] == steps


def test_report_names_the_settled_layer_and_plots_the_change(frozen_run, tmp_path, capsys) -> None:
    root, _, _ = frozen_run
    assert main(["report", str(root), "--plot", str(tmp_path / "t.png"), "--settled-below", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "candidates to freeze or to train at a lower learning rate: conv1 (1 of 2)." in out
    for name in ("t.png", "t.change.png", "t.similarity.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "layer change saved to" in out and "layer similarity saved to" in out


def test_resumed_run_compares_with_the_events_before_the_checkpoint(tmp_path: Path) -> None:
    callback = FeatureMapCallback(image_layers=[])
    trainer = fit(tmp_path, 1, callback)
    assert set(callback.state_dict()["first_grams"]) == {"conv1", "conv2"}
    trainer.save_checkpoint(tmp_path / "e0.ckpt")
    resumed = FeatureMapCallback(image_layers=[])
    fit(tmp_path, 2, resumed, ckpt_path=str(tmp_path / "e0.ckpt"))
    # the resumed run's first event already has a previous one (restored), so it logs a change at once
    assert [h["step"] for h in resumed.changes.history] == [4, 8]
    start = np.array(callback.changes.first_grams["conv2"])
    assert np.array_equal(np.array(resumed.changes.first_grams["conv2"]), start)


def test_a_further_fit_on_new_data_does_not_compare_different_samples(tmp_path: Path) -> None:
    callback = FeatureMapCallback(image_layers=[])
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    model = FrozenFirst()
    trainer.fit(model, *tiny_loaders())
    other = torch.utils.data.DataLoader(tiny_dataset(8, seed=7), batch_size=8)  # as many samples as before
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model, other, other)  # its probe batch is other samples: the CKA history starts again
    assert [h["step"] for h in callback.changes.history] == [4]  # none at step 5, the first event of the new batch
    assert read_events(tmp_path).steps("scalars", "layer_change/conv2") == [4]


def test_a_layer_whose_offset_comes_to_dominate_gets_the_relative_product_in_the_same_event() -> None:
    """On the CPU the probe takes a layer's Gram product from what its previous event showed (no check inside the
    hook, no host read); where that was a bare product and the offset now dominates, the event is redone carefully,
    so the Gram matrix is the one ``gram``'s own check gives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    probe = FeatureMapProbe(model, image_layers=[])
    probe.run(x)  # no common offset: the bare product, remembered for the next event
    with torch.no_grad():
        model[0].bias.fill_(30.0)  # now every feature shares a large offset
        output = model(x)
    exact = gram(output)
    assert not torch.equal(gram(output, relative=False), exact)  # the bare product would lose digits here
    assert torch.equal(probe.run(x)["0"].gram, exact)
