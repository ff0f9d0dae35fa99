"""Lightning's large-model path on 2 CPU processes (gloo): a model made in ``configure_model`` under DDP and under
``ModelParallelStrategy`` + ``fully_shard`` (FSDP2), with per-rank BatchNorm statistics (no SyncBatchNorm).

The probe is built after ``configure_model`` and the strategy's wrapping; every event is logged once; and every
rank holds rank 0's scalars in ``callback_metrics`` although what each rank measured differs, so ``EarlyStopping``
and ``ModelCheckpoint`` decide alike on every rank. A probe that fails on rank 1 only is said on rank 1, and the ranks
still agree. Each fit runs as a script (:mod:`strategy_fit`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_events

SCRIPT = Path(__file__).with_name("strategy_fit.py")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_model_made_in_configure_model_logs_every_event_and_ranks_agree(tmp_path, strategy):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), strategy, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # 16 samples per rank, batch 4: 4 steps per epoch, 8 in all; every 2 steps and at the start.
    assert ranks[0]["event_steps"] == [0, 2, 4, 6, 8]
    if strategy == "ddp":  # rank 1's probe failed at step 2: said there, skipped there, training went on
        assert "[rank: 1] fm_callback: the probe at step 2 failed and was skipped" in done.stderr
        assert ranks[1]["event_steps"] == [0, 4, 6, 8]
    else:
        assert ranks[1]["event_steps"] == [0, 2, 4, 6, 8]
    events = read_events(tmp_path / "tb")
    assert len(events.files) == 1  # rank 0 writes
    for tag in ("feature_maps/net.0", "feature_maps/net.3"):
        assert events.steps("images", tag) == [0, 2, 4, 6, 8], tag
    assert events.steps("scalars", "dead_filters/all") == [0, 2, 4, 6, 8]
    # The ranks' models differ (BatchNorm running statistics of their own data) ...
    own = [r["own_mean"]["net.3"] for r in ranks]
    assert not torch.allclose(own[0], own[1])
    # ... yet every rank holds rank 0's scalars.
    metrics = [r["metrics"] for r in ranks]
    assert "dead_filters/all" in metrics[0] and "layer_change/net.3" in metrics[0]
    assert metrics[0] == metrics[1]
