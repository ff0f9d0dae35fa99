"""examples/plain_pytorch.py: FeatureMapProbe in a plain training loop, writing fm_callback's tags itself."""

from __future__ import annotations

import torch
from conftest import read_events
from plain_pytorch import main  # examples/ is on pytest's pythonpath

TINY = ["--epochs", "2", "--train-size", "32", "--image-size", "16", "--batch-size", "16", "--width", "4"]
CONVS = ["features.0", "features.4", "features.8"]  # the three Conv2d of small_cnn(), by their named_modules() names


def test_plain_loop_logs_every_tag_at_each_probe_and_trains_as_without_it(tmp_path):
    probed = main([*TINY, "--logdir", str(tmp_path / "probed")])
    events = read_events(tmp_path / "probed")
    steps = [0, 2, 4]  # the baseline, then the end of each epoch (2 optimizer steps per epoch)
    assert events.tags("images", "feature_maps/") == [f"feature_maps/{n}" for n in CONVS]
    for name in CONVS:
        assert events.steps("images", f"feature_maps/{name}") == steps
        assert events.steps("images", f"feature_maps_overlay/{name}") == steps
        assert events.steps("scalars", f"dead_filters/{name}") == steps
        assert events.steps("histograms", f"channel_mean/{name}") == steps
        assert events.steps("histograms", f"activations/{name}") == steps
        assert events.steps("scalars", f"layer_change/{name}") == steps[1:]  # from the second probe on
    assert events.steps("scalars", "dead_filters/all") == steps
    assert events.steps("images", "probe/input") == steps
    assert events.steps("scalars", "train_loss") == [1, 2, 3, 4]
    grid = events.images["feature_maps/features.0"][-1]
    assert (grid.width, grid.height) > (16, 16)

    # The probe changed nothing: the same loop without it ends with bit-identical weights.
    plain = main([*TINY, "--logdir", str(tmp_path / "plain"), "--probe-every", "0"])
    assert not read_events(tmp_path / "plain").images
    for (name, a), (_, b) in zip(probed.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
