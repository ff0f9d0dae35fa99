"""Resume: the callback's state (probe batch, pinned channels, schedule position, dead-filter streaks) goes into
the checkpoint, so a run resumed with ``ckpt_path=`` shows the same probe images and logs no step twice.
"""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyCNN, make_trainer, read_events, tiny_dataset
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from fm_callback import FeatureMapCallback


def _loaders(seed: int) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders; a different ``seed`` gives different val images (so a re-read probe would differ)."""
    train = DataLoader(tiny_dataset(32, seed=0), batch_size=8, shuffle=True)
    val = DataLoader(tiny_dataset(8, seed=seed), batch_size=8)
    return train, val


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    # One logger directory for both halves of the run, as a user resuming into the same version would have.
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    return make_trainer(tmp_path, callbacks, logger=logger, enable_checkpointing=True, **kwargs)


@pytest.mark.parametrize(
    "schedule, checkpoint, first_steps, second_steps",
    [
        pytest.param({}, {"save_last": True}, [0, 4, 8], [12, 16], id="epochs"),
        pytest.param(
            {"every_n_steps": 2},
            {"every_n_train_steps": 6, "save_top_k": -1},
            [0, 2, 4, 6],
            [8, 10, 12, 14, 16],
            id="steps-resumed-mid-epoch",
        ),
    ],
)
def test_resumed_run_logs_the_same_probe_images_and_no_step_twice(
    tmp_path, schedule, checkpoint, first_steps, second_steps
):
    ckpt_dir = tmp_path / "ckpt"
    first = FeatureMapCallback(probe_size=4, **schedule)
    stop = {"max_epochs": 2} if not schedule else {"max_epochs": 2, "max_steps": 7}  # stops past the checkpoint
    trainer = _trainer(tmp_path, [first, ModelCheckpoint(dirpath=ckpt_dir, **checkpoint)], **stop)
    trainer.fit(TinyCNN(), *_loaders(seed=1))
    ckpt = ckpt_dir / "last.ckpt" if not schedule else next(ckpt_dir.glob("*step=6.ckpt"))
    state = torch.load(ckpt, weights_only=False)["callbacks"][first.state_key]
    assert torch.equal(state["model_input"], first.model_input)
    assert state["last_event_step"] == first_steps[-1]

    # Resume with different val images: the probe batch must come from the checkpoint, not the loader.
    second = FeatureMapCallback(probe_size=4, **schedule)
    trainer = _trainer(tmp_path, [second, ModelCheckpoint(dirpath=ckpt_dir / "2", **checkpoint)], max_epochs=4)
    trainer.fit(TinyCNN(), *_loaders(seed=2), ckpt_path=ckpt)
    assert torch.equal(second.model_input, first.model_input)
    assert second.pinned_channels == first.pinned_channels

    events = read_events(tmp_path / "tb")
    assert len(events.files) == 2  # one event file per half
    assert events.steps("images", "feature_maps/conv1") == first_steps + second_steps
    assert events.steps("scalars", "dead_filters/all") == first_steps + second_steps
    # The restored probe batch is the same picture, in the same log dir: written once, at the first event.
    assert events.steps("images", "probe/input") == [0]
    assert [h["step"] for h in second.tracker.history] == first_steps + second_steps


def test_a_fresh_run_with_other_data_shows_other_probe_images(tmp_path):
    """The control for the test above: without the checkpoint, other val images give another probe/input."""
    pictures = []
    for seed in (1, 2):
        fm = FeatureMapCallback(probe_size=4)
        trainer = make_trainer(tmp_path / str(seed), [fm])
        trainer.fit(TinyCNN(), *_loaders(seed))
        pictures += read_events(tmp_path / str(seed)).images["probe/input"]
    assert pictures[0].encoded_image_string != pictures[-1].encoded_image_string


def test_state_dict_round_trip_keeps_probe_batch_pins_schedule_and_streaks(tmp_path):
    fm = FeatureMapCallback(every_n_steps=3, probe_size=4, dead_patience=2)
    trainer = make_trainer(tmp_path, [fm], max_epochs=2)
    trainer.fit(TinyCNN(), *_loaders(seed=1))
    state = fm.state_dict()
    pickle.dumps(state)  # goes into a checkpoint as it is

    other = FeatureMapCallback(every_n_steps=3, probe_size=4, dead_patience=2)
    other.load_state_dict(state)
    assert torch.equal(other.model_input, fm.model_input)
    assert other.pinned_channels == fm.pinned_channels and set(fm.pinned_channels) == {"conv1", "conv2"}
    assert other.last_event_step == fm.last_event_step == 6
    assert other.tracker.streak == fm.tracker.streak
    assert [h["step"] for h in other.tracker.history] == [0, 3, 6]
    # The restored state is a copy: changing the new callback does not change the old one's.
    other.pinned_channels["conv1"] = [0]
    assert fm.pinned_channels["conv1"] != [0]


def test_pinned_channels_from_the_state_are_the_ones_shown(tmp_path):
    """Channels pinned in a checkpoint win over the choice the probe would make on its own."""
    fm = FeatureMapCallback(probe_batch=torch.randn(2, 3, 16, 16))
    fm.load_state_dict({"model_input": None, "pinned_channels": {"conv1": [3, 0]}, "last_event_step": None})
    trainer = make_trainer(tmp_path, [fm], max_epochs=1)
    trainer.fit(TinyCNN(), *_loaders(seed=1))
    assert fm.pinned_channels["conv1"] == [3, 0]
    assert len(fm.pinned_channels["conv2"]) == 8  # chosen on its own: every channel of conv2


def test_two_callbacks_have_distinct_state_keys_and_both_restore(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    a1 = FeatureMapCallback(layers=["conv1"], probe_size=2)
    b1 = FeatureMapCallback(layers=["conv2"], every_n_steps=3, probe_size=4)
    assert a1.state_key != b1.state_key
    trainer = make_trainer(
        tmp_path, [a1, b1, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], enable_checkpointing=True, max_epochs=1
    )
    trainer.fit(TinyCNN(), *_loaders(seed=1))
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["callbacks"]
    assert {a1.state_key, b1.state_key} <= set(saved)

    a2 = FeatureMapCallback(layers=["conv1"], probe_size=2)
    b2 = FeatureMapCallback(layers=["conv2"], every_n_steps=3, probe_size=4)
    trainer = make_trainer(tmp_path / "2", [a2, b2], max_epochs=2)
    trainer.fit(TinyCNN(), *_loaders(seed=2), ckpt_path=ckpt_dir / "last.ckpt")
    assert torch.equal(a2.model_input, a1.model_input) and len(a2.model_input) == 2
    assert torch.equal(b2.model_input, b1.model_input) and len(b2.model_input) == 4
    assert [h["step"] for h in a2.tracker.history] == [0, 4, 8]
    assert [h["step"] for h in b2.tracker.history] == [0, 3, 6]
    assert list(a2.tracker.history[-1]["dead_fraction"]) == ["conv1"]
    assert list(b2.tracker.history[-1]["dead_fraction"]) == ["conv2"]


# ---- the checkpoint state itself: versioned, copied, bounded ---------------------------------------------------


def _fitted(tmp_path) -> FeatureMapCallback:
    fm = FeatureMapCallback(probe_size=4)
    make_trainer(tmp_path, [fm], max_epochs=2).fit(TinyCNN(), DataLoader(tiny_dataset(8), batch_size=4))
    return fm


def test_state_is_versioned_copied_and_a_version_1_state_still_loads(tmp_path):
    fm = _fitted(tmp_path)
    state = fm.state_dict()
    assert state["version"] == 2
    state["tracker"]["history"].append("changed after the checkpoint")  # a copy: the callback is untouched
    state["change_history"].clear()
    state["model_input"].zero_()
    assert len(fm.tracker.history) == 3 and len(fm.changes.history) == 2 and fm.model_input.abs().sum() > 0
    fm.tracker.history.append("changed after the checkpoint")  # and the other way round
    assert len(fm.state_dict()["tracker"]["history"]) == 4 and len(state["tracker"]["history"]) == 4
    old = _fitted(tmp_path / "old").state_dict()
    del old["version"]  # as fm_callback wrote it before the key existed
    fresh = FeatureMapCallback(probe_size=4)
    fresh.load_state_dict(old)
    assert fresh.last_event_step == 4 and len(fresh.tracker.history) == 3 and len(fresh.changes.history) == 2


def test_state_stays_bounded_over_a_long_run(tmp_path):
    from fm_callback import FeatureMapProbe
    from fm_callback.tracking import MAX_HISTORY, ChangeTracker, DeadFilterTracker

    model = TinyCNN()
    result = FeatureMapProbe(model).run(tiny_dataset(4).tensors[0])
    dead, changes = DeadFilterTracker(), ChangeTracker()
    for event in range(3 * MAX_HISTORY):
        dead.update(result, step=10 * event, epoch=event)
        changes.update(result, step=10 * event, epoch=event)
    for history in (dead.history, changes.history):
        assert MAX_HISTORY // 2 <= len(history) <= MAX_HISTORY
        assert history[-1]["step"] == 10 * (3 * MAX_HISTORY - 1)  # the last event is kept, and the early span
        assert history[0]["step"] <= 10
    assert len(pickle.dumps(dead.state_dict())) < 200_000
