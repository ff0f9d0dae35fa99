"""Non-interference: with FeatureMapCallback attached, a deterministic CPU run ends bit-identical to one without.

The training here is chosen to be sensitive: a shuffled train loader (its sampler draws a seed from the global
generator when an iterator is made), a dataset that draws random noise in ``__getitem__``, dropout, BatchNorm
(running stats and ``num_batches_tracked``), an in-place ReLU, and a BatchNorm kept frozen in eval mode inside a
training model. ``test_a_single_rng_draw_is_detected`` shows the comparison would catch one stray random number.
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn.modules import module as module_globals
from torch.utils.data import DataLoader, Dataset

from fm_callback import FeatureMapCallback, FeatureMapProbe


class NoisyDataset(Dataset):
    """Fixed images plus fresh noise from the global generator at every access (a random augmentation)."""

    def __init__(self, size: int = 24, image_size: int = 16) -> None:
        g = torch.Generator().manual_seed(123)
        self.images = torch.randn(size, 3, image_size, image_size, generator=g)
        self.labels = torch.randint(0, 3, (size,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index] + 0.1 * torch.randn(self.images.shape[1:]), self.labels[index]


class SensitiveNet(pl.LightningModule):
    """Conv/BN/in-place ReLU/Dropout, plus a BatchNorm frozen in eval mode while the rest trains."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_bn = nn.BatchNorm2d(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.3),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3))

    def train(self, mode: bool = True) -> SensitiveNet:
        super().train(mode)
        self.frozen_bn.eval()  # a frozen layer, as in fine-tuning: it must stay in eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.frozen_bn(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class DrawOneRandomNumber(pl.Callback):
    """A deliberately bad callback: one draw from the global generator at the end of epoch 0."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            torch.rand(1)


def _fit(tmp_path, callbacks, with_val=True, epochs=2):
    pl.seed_everything(7, workers=True)
    model = SensitiveNet()
    with torch.no_grad():  # a frozen BN with non-trivial statistics, so that running it in train mode would show
        model.frozen_bn.running_mean.fill_(0.3)
        model.frozen_bn.running_var.fill_(2.0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        logger=TensorBoardLogger(tmp_path),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    val = DataLoader(NoisyDataset(size=8), batch_size=8) if with_val else None
    trainer.fit(model, DataLoader(NoisyDataset(), batch_size=8, shuffle=True), val)
    return model, trainer


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BN running stats and num_batches_tracked included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differs: {different}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run without the callback, per (with_val,)."""
    runs = {}

    def get(with_val: bool):
        if with_val not in runs:
            model, _ = _fit(tmp_path_factory.mktemp("ref"), [], with_val=with_val)
            runs[with_val] = (_state(model), torch.get_rng_state())
        return runs[with_val]

    return get


@pytest.mark.parametrize(
    "kwargs, with_val, events",
    [
        pytest.param({}, True, 3, id="default-schedule"),
        pytest.param({"every_n_steps": 2}, True, 4, id="every-2-steps"),
        pytest.param({"every_n_steps": 2}, False, 4, id="every-2-steps-probe-from-shuffled-train-loader"),
        # the examples pass: a pool of 12 from the noisy dataset, scanned in 3 chunks at every event
        pytest.param({"examples": 2, "examples_pool": 12}, True, 3, id="examples"),
        pytest.param({"examples": 2, "examples_pool": 12, "every_n_steps": 2}, False, 4, id="examples-train-pool"),
    ],
)
def test_training_is_bit_identical_with_the_callback(tmp_path, reference, kwargs, with_val, events):
    ref_state, ref_rng = reference(with_val)
    callback = FeatureMapCallback(probe_size=4, **kwargs)
    model, trainer = _fit(tmp_path, [callback], with_val=with_val)
    assert trainer.global_step == 6
    # The callback really ran: step-0 baseline plus the scheduled events (and the examples pass scanned the pool).
    assert len(callback.tracker.history) == events
    assert "examples" not in kwargs or callback.examples_pass.scanner.radius == {"features.0": 1, "features.4": 2}
    _assert_same_state(_state(model), ref_state)
    assert torch.equal(torch.get_rng_state(), ref_rng), "the global RNG ended elsewhere"


def test_a_single_rng_draw_is_detected(tmp_path, reference):
    """The comparison above is sensitive: one stray random number changes the final weights."""
    ref_state, _ = reference(True)
    model, _ = _fit(tmp_path, [DrawOneRandomNumber()])
    with pytest.raises(AssertionError, match="differs"):
        _assert_same_state(_state(model), ref_state)


# ---- what one event leaves behind --------------------------------------------------------------------------


def _hook_counts(model: nn.Module) -> list[int]:
    counts = []
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks_with_kwargs",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            counts.append(len(getattr(m, attr, {})))
    return counts


def _global_hook_counts() -> list[int]:
    names = [n for n in dir(module_globals) if n.startswith("_global_") and n.endswith("hooks")]
    assert names  # the attribute names exist in this torch version
    return [len(getattr(module_globals, n)) for n in names]


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return keys.copy(), pos, has_gauss, cached


def _same_numpy_state(a: tuple, b: tuple) -> bool:
    return np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def _snapshot(model: nn.Module) -> dict:
    return {
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": _numpy_state(),
        "state": _state(model),
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "hooks": _hook_counts(model),
        "global_hooks": _global_hook_counts(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same_snapshot(before: dict, after: dict) -> None:
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch RNG state changed"
    assert before["python_rng"] == after["python_rng"], "python RNG state changed"
    assert _same_numpy_state(before["numpy_rng"], after["numpy_rng"]), "numpy RNG state changed"
    _assert_same_state(before["state"], after["state"])
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None), f"gradient of {name} appeared or vanished"
        assert grad is None or torch.equal(grad, other), f"gradient of {name} changed"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["modes"] == after["modes"], "a module's train/eval mode changed"
    assert before["hooks"] == after["hooks"], "a hook was left on a module"
    assert before["global_hooks"] == after["global_hooks"], "a global module hook was left behind"
    assert before["grad_enabled"] == after["grad_enabled"]


class Spy(pl.Callback):
    """Placed before and after FeatureMapCallback in the callback list, it snapshots around each of its hooks."""

    def __init__(self, role: str, shared: dict) -> None:
        self.role, self.shared = role, shared

    def _take(self, trainer, pl_module, hook):
        if self.role == "before":
            self.shared["before"] = _snapshot(pl_module)
            self.shared["events_before"] = len(self.shared["fm"].tracker.history)
        else:
            ran = len(self.shared["fm"].tracker.history) > self.shared["events_before"]
            if ran:
                _assert_same_snapshot(self.shared["before"], _snapshot(pl_module))
                self.shared["checked"].append((hook, trainer.global_step))

    def on_train_start(self, trainer, pl_module):
        self._take(trainer, pl_module, "on_train_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._take(trainer, pl_module, "on_train_batch_end")

    def on_train_epoch_end(self, trainer, pl_module):
        self._take(trainer, pl_module, "on_train_epoch_end")


@pytest.mark.parametrize(
    "kwargs", [{}, {"every_n_steps": 2}, {"examples": 3, "examples_pool": 10}], ids=["epochs", "steps", "examples"]
)
def test_each_event_leaves_rng_buffers_grads_modes_and_hooks_as_they_were(tmp_path, kwargs):
    fm = FeatureMapCallback(probe_size=4, **kwargs)
    shared = {"fm": fm, "checked": []}
    _fit(tmp_path, [Spy("before", shared), fm, Spy("after", shared)])
    hooks = {hook for hook, _ in shared["checked"]}
    assert "on_train_start" in hooks  # the set-up probe and the step-0 event
    assert "on_train_batch_end" in hooks  # every_n_steps, and an epoch's event: after the epoch's last batch
    assert len(shared["checked"]) == len(fm.tracker.history)


def test_probe_alone_restores_modes_rng_and_hooks():
    """The framework-free probe: in a training-mode model with a frozen BN, one run() changes nothing."""
    torch.manual_seed(0)
    model = SensitiveNet()
    model.train()
    x = torch.randn(2, 3, 16, 16)
    loss = model(x).sum()
    loss.backward()  # gradients present, as between optimizer steps
    before = _snapshot(model)
    result = FeatureMapProbe(model).run(x)
    assert result.names == ["features.0", "features.4"]
    _assert_same_snapshot(before, _snapshot(model))
    assert model.training and not model.frozen_bn.training and model.features[1].training


def test_probe_restores_everything_when_the_forward_raises():
    model = SensitiveNet()
    model.train()
    x = torch.randn(2, 3, 16, 16)
    before = _snapshot(model)

    def boom(module, inputs, output):
        raise RuntimeError("boom in the middle of the forward")

    handle = model.features[2].register_forward_hook(boom)
    counts_with_user_hook = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        FeatureMapProbe(model).run(x)
    assert _hook_counts(model) == counts_with_user_hook  # only the user's own hook is left
    handle.remove()
    _assert_same_snapshot(before, _snapshot(model))


class DrawsInForward(nn.Module):
    """A forward that draws from torch's, Python's and NumPy's generators even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        jitter = torch.rand(()) + random.random() + float(np.random.rand())
        return self.conv(x) * jitter


def test_probe_keeps_torch_python_and_numpy_rng():
    model = DrawsInForward()
    x = torch.randn(2, 3, 8, 8)
    before = _snapshot(model)
    FeatureMapProbe(model).run(x)
    _assert_same_snapshot(before, _snapshot(model))
    model(x)  # the control: the same forward outside the probe moves all three generators
    after = _snapshot(model)
    assert not torch.equal(before["torch_rng"], after["torch_rng"])
    assert before["python_rng"] != after["python_rng"]
    assert not _same_numpy_state(before["numpy_rng"], after["numpy_rng"])
