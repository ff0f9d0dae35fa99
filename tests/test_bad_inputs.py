"""Every bad input tried, and what it gets: a table of cases, one test each.

Each error names the argument at fault and says how to fix it; errors of a fit come before the first training
step. Two rows are not errors, on purpose: ``probe_size`` larger than the dataset warns and probes with what is
there, and an empty val loader falls back to the train loader.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, make_trainer, tiny_dataset
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from fm_callback import FeatureMapCallback, FeatureMapProbe


class MLP(TinyCNN):
    """A LightningModule with no conv layer at all."""

    def __init__(self) -> None:
        super().__init__()
        del self.conv1, self.bn1, self.relu1, self.conv2, self.relu2, self.head
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))

    def forward(self, x):
        return self.fc(x)


class NoBatches(IterableDataset):
    def __iter__(self):
        return iter([])


def _train_loader(size: int = 8) -> DataLoader:
    return DataLoader(tiny_dataset(size), batch_size=4)


def fit(tmp_path: Path, model: Any = None, train: Any = None, val: Any = None, **callback_kwargs: Any):
    """Fit with one FeatureMapCallback; on an error, check that no training step ran before it, then re-raise."""
    model = model if model is not None else TinyCNN()
    fm = FeatureMapCallback(**callback_kwargs)
    trainer = make_trainer(tmp_path, [fm])
    try:
        trainer.fit(model, train if train is not None else _train_loader(), val)
    except Exception:
        assert model.train_steps == 0, "the error came after training had started"
        raise
    return fm, model


def probe(model: nn.Module | None = None, x: Any = None, **kwargs: Any):
    model = model if model is not None else TinyCNN()
    result = FeatureMapProbe(model, **kwargs)
    if x is not None:
        result.run(x)
    return result


def raising_input_fn(batch):
    raise KeyError("pixels")


@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]
    error: type[Exception]  # what is raised
    fragments: tuple[str, ...]  # what the message must contain: the argument, and the fix


IMAGES = torch.randn(2, 3, 16, 16)

CASES = [
    # ---- FeatureMapProbe -----------------------------------------------------------------------------------
    Case("probe-model-not-a-module", lambda p: FeatureMapProbe("resnet18"), TypeError, ("model", "nn.Module")),
    Case(
        "probe-empty-model",
        lambda p: probe(nn.Sequential()),
        ValueError,
        ("layers", "no Conv1d, Conv2d, Conv3d layer", "pass layers=[", "the model has no submodules"),
    ),
    Case(
        "probe-no-conv-default-layers",
        lambda p: probe(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))),
        ValueError,
        ("layers", "no Conv1d, Conv2d, Conv3d layer", "layers=[nn.Linear]", "Module names: 0, 1"),
    ),
    Case(
        "probe-layer-name-typo",
        lambda p: probe(layers=["conv_1"]),
        ValueError,
        ("layers", "no module named 'conv_1'", "Closest names: conv1"),
    ),
    Case(
        "probe-pattern-matches-nothing",
        lambda p: probe(layers=["block*"]),
        ValueError,
        ("layers", "'block*' matches no module", "Module names: conv1"),
    ),
    Case(
        "probe-type-not-in-model",
        lambda p: probe(layers=[nn.LSTM]),
        ValueError,
        ("layers", "no module of type LSTM", "Conv2d", "pass a type it has"),
    ),
    Case(
        "probe-layers-an-int",
        lambda p: probe(layers=5),
        TypeError,
        ("layers", "module name, a glob pattern or an nn.Module type", "got 5"),
    ),
    Case(
        "probe-layers-entry-wrong-type",
        lambda p: probe(layers=["conv1", 3.0]),
        TypeError,
        ("layers", "each entry must be", "got 3.0 of type float"),
    ),
    Case(
        "probe-layers-a-module-instance",
        lambda p: probe(layers=[nn.Conv2d(3, 4, 3)]),
        TypeError,
        ("layers", "module instance (Conv2d)", "pass its name", "or its type"),
    ),
    Case("probe-layers-empty-list", lambda p: probe(layers=[]), ValueError, ("layers", "empty", "pass None")),
    Case(
        "probe-image-layer-not-watched",
        lambda p: probe(layers=["conv1"], image_layers=["conv2"]),
        ValueError,
        ("image_layers", "conv2 not among the watched layers", "add them to layers"),
    ),
    Case(
        "probe-image-layer-typo",
        lambda p: probe(image_layers=["conv9"]),
        ValueError,
        ("image_layers", "no module named 'conv9'", "Closest names"),
    ),
    Case("probe-max-channels-zero", lambda p: probe(max_channels=0), ValueError, ("max_channels", "positive int")),
    Case("probe-max-samples-bool", lambda p: probe(max_samples=True), ValueError, ("max_samples", "positive int")),
    Case(
        "probe-channel-order-unknown",
        lambda p: probe(channel_order="random"),
        ValueError,
        ("channel_order", "'std' or 'index'", "'random'"),
    ),
    Case("probe-cmap-unknown", lambda p: probe(cmap="viridiss"), ValueError, ("cmap", "unknown", "try 'viridis'")),
    Case("probe-atol-negative", lambda p: probe(atol=-1.0), ValueError, ("atol", ">= 0")),
    Case("probe-mean-without-std", lambda p: probe(mean=[0.5]), ValueError, ("mean and std", "pass both")),
    Case(
        "probe-mean-wrong-length",
        lambda p: probe(x=IMAGES, mean=[0.5, 0.5], std=[0.2, 0.2]),
        ValueError,
        ("mean: 2 values", "3 channels", "one value per input channel"),
    ),
    Case(
        "probe-empty-batch",
        lambda p: probe(x=torch.randn(0, 3, 16, 16)),
        ValueError,
        ("x:", "no sample", "(0, 3, 16, 16)", "at least one"),
    ),
    Case(
        "probe-wrong-channel-count",  # the probe passes the model's own error through, unchanged
        lambda p: probe(x=torch.randn(2, 1, 16, 16)),
        RuntimeError,
        ("expected input", "to have 3 channels, but got 1 channels"),
    ),
    # ---- FeatureMapCallback(...) ----------------------------------------------------------------------------
    Case(
        "callback-two-schedules",
        lambda p: FeatureMapCallback(every_n_epochs=2, every_n_steps=10),
        ValueError,
        ("choose one schedule", "every_n_epochs and every_n_steps"),
    ),
    Case(
        "callback-every-n-epochs-zero",
        lambda p: FeatureMapCallback(every_n_epochs=0),
        ValueError,
        ("every_n_epochs", "positive int", "got 0"),
    ),
    Case(
        "callback-every-n-steps-float",
        lambda p: FeatureMapCallback(every_n_steps=2.5),
        ValueError,
        ("every_n_steps", "positive int", "2.5"),
    ),
    Case(
        "callback-epochs-an-int",
        lambda p: FeatureMapCallback(epochs=3),
        ValueError,
        ("epochs", "list of epoch indices", "epochs=[0, 4, 9]", "every_n_epochs=n"),
    ),
    Case("callback-epochs-empty", lambda p: FeatureMapCallback(epochs=[]), ValueError, ("epochs", "non-empty list")),
    Case(
        "callback-epochs-negative",
        lambda p: FeatureMapCallback(epochs=[2, -1]),
        ValueError,
        ("epochs", "ints >= 0", "-1"),
    ),
    Case("callback-probe-size-zero", lambda p: FeatureMapCallback(probe_size=0), ValueError, ("probe_size",)),
    Case("callback-dead-patience-zero", lambda p: FeatureMapCallback(dead_patience=0), ValueError, ("dead_patience",)),
    Case(
        "callback-input-fn-not-callable",
        lambda p: FeatureMapCallback(input_fn="image"),
        TypeError,
        ("input_fn", "must be callable", "str"),
    ),
    Case(
        "callback-std-without-mean",
        lambda p: FeatureMapCallback(std=[0.2]),
        ValueError,
        ("mean and std", "both or neither"),
    ),
    Case("callback-cmap-unknown", lambda p: FeatureMapCallback(cmap="nope"), ValueError, ("cmap", "unknown")),
    Case(
        "callback-channel-order-unknown",
        lambda p: FeatureMapCallback(channel_order="max"),
        ValueError,
        ("channel_order", "'std' or 'index'"),
    ),
    Case(
        "callback-two-identical-in-one-trainer",  # Lightning's own check; give them different layers or schedules
        lambda p: make_trainer(p, [FeatureMapCallback(), FeatureMapCallback()]),
        RuntimeError,
        ("more than one stateful callback", "FeatureMapCallback", "state_key"),
    ),
    # ---- errors of a fit, raised before the first training step -------------------------------------------
    Case(
        "fit-layer-name-typo",
        lambda p: fit(p, layers=["conv_1"]),
        ValueError,
        ("layers", "'conv_1'", "Closest names: conv1"),
    ),
    Case(
        "fit-model-without-conv-default-layers",
        lambda p: fit(p, model=MLP()),
        ValueError,
        ("layers", "no Conv1d, Conv2d, Conv3d layer", "layers=[nn.Linear]", "fc.1"),
    ),
    Case(
        "fit-probe-wrong-channel-count",
        lambda p: fit(p, probe_batch=torch.randn(2, 1, 16, 16)),
        ValueError,
        ("probe batch", "(2, 1, 16, 16)", "could not go through the model", "3 channels", "Pass probe_batch="),
    ),
    Case(
        "fit-probe-wrong-dtype",
        lambda p: fit(p, probe_batch=torch.zeros(2, 3, 16, 16, dtype=torch.uint8)),
        ValueError,
        ("probe batch", "dtype uint8", "could not go through the model", "Pass probe_batch="),
    ),
    Case(
        "fit-probe-batch-empty",
        lambda p: fit(p, probe_batch=torch.randn(0, 3, 16, 16)),
        ValueError,
        ("probe_batch:", "no sample", "at least one"),
    ),
    Case(
        "fit-probe-batch-a-string",
        lambda p: fit(p, probe_batch="cat.png"),
        ValueError,
        ("batch of type str", "probe_batch= a torch.Tensor", "input_fn="),
    ),
    Case(
        "fit-probe-batch-numpy",
        lambda p: fit(p, probe_batch=np.zeros((2, 3, 16, 16), dtype=np.float32)),
        ValueError,
        ("ndarray", "torch.as_tensor", "probe_batch="),
    ),
    Case(
        "fit-probe-batch-dict-unknown-keys",
        lambda p: fit(p, probe_batch={"pixels": IMAGES}),
        ValueError,
        ("dict batch with keys ['pixels']", "expected one of image", "input_fn="),
    ),
    Case(
        "fit-input-fn-raises",
        lambda p: fit(p, input_fn=raising_input_fn),
        ValueError,
        ("input_fn failed on the probe batch", "KeyError", "pixels", "must return what the model takes"),
    ),
    Case(
        "fit-input-fn-returns-wrong-shape",
        lambda p: fit(p, input_fn=lambda batch: batch[0][:, :1]),
        ValueError,
        ("probe batch", "could not go through the model", "input_fn="),
    ),
    Case(
        "fit-mean-wrong-length",
        lambda p: fit(p, mean=[0.5, 0.5], std=[0.2, 0.2]),
        ValueError,
        ("mean: 2 values", "3 channels", "one value per input channel"),
    ),
    Case(
        "fit-no-dataloader-to-take-the-probe-from",  # Lightning takes any iterable of batches
        lambda p: fit(p, train=[(IMAGES, torch.tensor([0, 1]))]),
        ValueError,
        ("no DataLoader to take the probe batch from", "probe_batch="),
    ),
    Case(
        "fit-only-empty-loaders-to-take-the-probe-from",
        lambda p: fit(p, train=[(IMAGES, torch.tensor([0, 1]))], val=DataLoader(NoBatches(), batch_size=4)),
        ValueError,
        ("yielded no batch", "probe_batch="),
    ),
    Case(
        "fit-watched-layers-never-run",
        lambda p: fit(p, model=_with_unused_conv(), layers=["unused"]),
        ValueError,
        ("none of the watched layers ran", "not called in forward()", "layers="),
    ),
]


def _with_unused_conv() -> TinyCNN:
    model = TinyCNN()
    model.unused = nn.Conv2d(3, 3, 1)
    return model


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error(case: Case, tmp_path):
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    message = str(info.value)
    missing = [fragment for fragment in case.fragments if fragment not in message]
    assert not missing, f"{case.id}: {missing} not in: {message}"


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


# ---- accepted on purpose ------------------------------------------------------------------------------------


def test_probe_size_larger_than_the_dataset_warns_and_probes_with_what_is_there(tmp_path):
    with pytest.warns(UserWarning, match=r"probe_size=8 but only 4 samples were there to take .*; probing with 4"):
        fm, model = fit(tmp_path, val=DataLoader(tiny_dataset(4, seed=1), batch_size=4), probe_size=8)
    assert fm.model_input.shape == (4, 3, 16, 16)
    assert model.train_steps == 2


@pytest.mark.parametrize("empty", ["map-style", "iterable"])
def test_empty_val_loader_falls_back_to_the_train_loader(tmp_path, empty):
    val = DataLoader(tiny_dataset(0) if empty == "map-style" else NoBatches(), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own "length of DataLoader is zero"
        fm, _ = fit(tmp_path, val=val, probe_size=3)
    assert torch.equal(fm.model_input, tiny_dataset(8).tensors[0][:3])


def test_the_table_is_checked_against_a_working_fit(tmp_path):
    """The control: the same helper with good inputs trains and probes."""
    fm, model = fit(tmp_path, probe_batch=IMAGES, input_fn=lambda batch: F.pad(batch, (0, 0)))
    assert model.train_steps == 2 and len(fm.tracker.history) == 2
