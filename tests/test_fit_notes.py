"""What a user would otherwise not be told: each case that used to log less, or the wrong thing, without a word.

Too few probe samples for ``layer_change``, an iterable dataset's short first batch, scheduled epochs past
``max_epochs``, a probe batch on the meta device, where the probe came from, and a val transform that forgot the
train transform's ``Normalize``. And the GAN template (two optimizers, manual optimization): events on the x-axis
of the module's own ``self.log``.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, make_trainer, read_events, tiny_dataset
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from fm_callback import FeatureMapCallback


def _fit(tmp_path, train=None, val=None, model=None, trainer_options=None, **kwargs):
    fm = FeatureMapCallback(**kwargs)
    trainer = make_trainer(tmp_path, [fm], **(trainer_options or {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = train if train is not None else DataLoader(tiny_dataset(16), batch_size=8)
        trainer.fit(model if model is not None else TinyCNN(), train, val)
    return fm, [str(w.message) for w in caught if "fm_callback" in str(w.message)]


class Stream(IterableDataset):
    """An iterable dataset of 32 images (a stream: no length, no indexing)."""

    def __iter__(self):
        data = tiny_dataset(32)
        return iter(zip(data.tensors[0], data.tensors[1], strict=True))


# ---- silent degradations -------------------------------------------------------------------------------------


def test_too_few_probe_samples_for_layer_change_says_so_once(tmp_path):
    fm, messages = _fit(tmp_path, probe_size=2)
    said = [m for m in messages if "layer_change/* needs at least 4 probe samples" in m]
    assert len(said) == 1 and "probe_size=4" in said[0]
    assert not any(tag.startswith("layer_change") for tag in read_events(tmp_path).scalars)


def test_enough_probe_samples_say_nothing_about_layer_change(tmp_path):
    _, messages = _fit(tmp_path, probe_size=4)
    assert not [m for m in messages if "layer_change" in m]


def test_iterable_dataset_gives_probe_size_samples_across_batches(tmp_path):
    stream = DataLoader(Stream(), batch_size=8)
    fm, messages = _fit(tmp_path, train=stream, probe_size=20)
    assert fm.model_input.shape[0] == 20
    assert torch.equal(fm.model_input, tiny_dataset(32).tensors[0][:20])
    assert not [m for m in messages if "probe_size" in m]


def test_epochs_past_max_epochs_say_so(tmp_path):
    _, messages = _fit(tmp_path, epochs=[0, 5, 10], trainer_options=dict(max_epochs=2))
    said = [m for m in messages if "come after this fit's last epoch" in m]
    assert len(said) == 1 and "5, 10" in said[0] and "max_epochs=2" in said[0]


def test_probe_batch_on_the_meta_device_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="meta device"):
        _fit(tmp_path, probe_batch=torch.empty(4, 3, 16, 16, device="meta"))


@pytest.mark.parametrize("with_val", [True, False])
def test_where_the_probe_came_from_is_said_at_fit_start(tmp_path, caplog, with_val):
    val = DataLoader(tiny_dataset(8, seed=1), batch_size=8) if with_val else None
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, val=val, probe_size=4)
    said = [r.getMessage() for r in caplog.records if "fm_callback: probing" in r.getMessage()]
    expected = "samples 0-3 of the val dataloader" if with_val else "samples 0-3 of the train dataloader"
    assert len(said) == 1 and expected in said[0], said


# ---- preprocessing mismatch --------------------------------------------------------------------------------


def _images(seed: int, normalised: bool) -> TensorDataset:
    """Images with values in [0, 1] (a ToTensor), or normalised as Normalize(mean, std) would."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 3, 16, 16, generator=g) * 0.6 + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    if normalised:
        x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    return TensorDataset(x, torch.randint(0, 2, (16,), generator=g))


@pytest.mark.parametrize("val_normalised", [False, True])
def test_a_val_transform_without_normalize_is_named_with_its_figures(tmp_path, val_normalised):
    train = DataLoader(_images(0, normalised=True), batch_size=8)
    val = DataLoader(_images(1, normalised=val_normalised), batch_size=8)
    _, messages = _fit(tmp_path, train=train, val=val, probe_size=8)
    said = [m for m in messages if "does not look like the training data" in m]
    if val_normalised:
        assert not said
    else:
        assert len(said) == 1 and "Normalize" in said[0] and "val dataloader" in said[0]
        assert "std [0.17" in said[0] or "std [0.18" in said[0], said[0]  # the probe's own figures


# ---- the GAN template: two optimizers, manual optimization --------------------------------------------------


class TinyGAN(TinyCNN):
    """Lightning's GAN template in small: a generator and a discriminator, one optimizer each, stepped by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_d, opt_g = self.optimizers()
        d_loss = F.cross_entropy(self(x), y) + F.cross_entropy(self(self.generator(x).detach()), 1 - y)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.cross_entropy(self(self.generator(x)), y)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log("g_loss", g_loss)

    def configure_optimizers(self):
        discriminator = [p for name, p in self.named_parameters() if not name.startswith("generator")]
        return torch.optim.SGD(discriminator, lr=0.01), torch.optim.SGD(self.generator.parameters(), lr=0.01)


@pytest.mark.parametrize("schedule", [dict(every_n_steps=3), dict(every_n_epochs=1)])
def test_gan_template_logs_on_the_x_axis_of_self_log(tmp_path, schedule):
    train = DataLoader(tiny_dataset(32), batch_size=8)  # 4 batches per epoch, 2 optimizer steps each
    fm, _ = _fit(
        tmp_path,
        train=train,
        model=TinyGAN(),
        layers=["conv1", "conv2"],
        trainer_options=dict(max_epochs=2),
        **schedule,
    )
    events = read_events(tmp_path)
    assert events.steps("scalars", "g_loss") == list(range(8))  # self.log: one step per batch
    expected = [0, 3, 6] if "every_n_steps" in schedule else [0, 4, 8]
    assert events.steps("scalars", "dead_filters/all") == expected
    assert events.steps("images", "feature_maps/conv1") == expected
