"""Pictures where users look: MLflow (a real tracking server) and W&B (offline runs) get every picture of every event
at the scalars' step; with any loggers, each run's own event files and records stay apart and `fm-callback report`
reads each run."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import BATCHES_PER_EPOCH, TinyCNN, event_files, make_trainer, read_events
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from mlflow_server import MlflowServer

from fm_callback import FeatureMapCallback
from fm_callback import names as tb
from fm_callback.mlflow_writer import mlflow_key
from fm_callback.report import load_runs

EPOCHS = 2
EVENT_STEPS = [BATCHES_PER_EPOCH * epoch for epoch in range(EPOCHS + 1)]  # log_at_start, then each epoch's end
PER_EVENT = ["feature_maps/conv1", "feature_maps/conv2", "feature_maps_overlay/conv1", "feature_maps_overlay/conv2"]
END_OF_FIT = [tb.DEAD_TIMELINE, tb.LAYER_CHANGE_MAP, tb.LAYER_SIMILARITY]  # at the last step
# An MLflow image's file: <key>+step+<step>+timestamp+... (MLflow 3), <key>%step%<step>%... (MLflow 2).
MLFLOW_IMAGE = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%].*(?<!compressed)\.png$")


def fit(tmp_path: Path, logger, loaders, seed: int) -> None:
    torch.manual_seed(seed)  # two fits, two different runs
    trainer = make_trainer(tmp_path, [FeatureMapCallback()], logger=logger, max_epochs=EPOCHS)
    trainer.fit(TinyCNN(), *loaders)


def expected_images() -> dict[str, list[int]]:
    last = EVENT_STEPS[-1]
    return {**{tag: EVENT_STEPS for tag in PER_EVENT}, tb.PROBE_INPUT: [0], **{tag: [last] for tag in END_OF_FIT}}


def assert_report_reads(folder: Path, steps: list[int] = EVENT_STEPS) -> None:
    """``fm-callback report`` finds exactly one run in ``folder``, with every event."""
    runs = load_runs(folder)
    assert [[r["step"] for r in run.records] for run in runs] == [steps], [run.name for run in runs]


# ---- MLflow -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow_store")) as server:
        yield server


def mlflow_image_steps(client, run_id: str) -> dict[str, list[int]]:
    """The steps of each image key of an MLflow run, read from its image files' names."""
    images: dict[str, list[int]] = {}
    for artifact in client.list_artifacts(run_id, "images"):
        if found := MLFLOW_IMAGE.match(Path(artifact.path).name):
            images.setdefault(found["key"], []).append(int(found["step"]))
    return {key: sorted(steps) for key, steps in images.items()}


def test_mlflow_runs_get_every_picture_at_the_scalars_step(mlflow_server, tmp_path, loaders):
    from mlflow import MlflowClient

    work = tmp_path / "work"
    loggers = [MLFlowLogger(experiment_name="fm", tracking_uri=mlflow_server.url) for _ in range(2)]
    for seed, logger in enumerate(loggers):
        fit(work, logger, loaders, seed)
    client = MlflowClient(mlflow_server.url)
    assert len({logger.run_id for logger in loggers}) == 2
    for logger in loggers:
        assert mlflow_image_steps(client, logger.run_id) == {
            mlflow_key(tag): steps for tag, steps in expected_images().items()
        }
        scalar_steps = [m.step for m in client.get_metric_history(logger.run_id, "dead_filters/all")]
        assert sorted(scalar_steps) == EVENT_STEPS  # the pictures' steps
        # the records as artifacts, which the report reads from the artifact folder on disk
        records = client.list_artifacts(logger.run_id, f"{tb.RECORDS}/{tb.DEAD_STATE}")
        assert len(records) == len(EVENT_STEPS)
        artifacts = mlflow_server.artifacts / logger.experiment_id / logger.run_id / "artifacts"
        assert_report_reads(artifacts)
        # our own event files: a folder of this run alone, named by experiment and run id
        own = work / "fm_callback" / logger.experiment_id / logger.run_id
        assert len(event_files(own)) == 1 and read_events(own).steps("images", "feature_maps/conv1") == EVENT_STEPS
        assert_report_reads(own)
        assert sorted(p.name for p in artifacts.iterdir()) == ["fm_callback_records", "images"]
    store = mlflow_server.folder
    assert sorted(p.name for p in store.iterdir()) == ["artifacts", "mlflow.db"]  # nothing of ours in MLflow's store
    assert not event_files(store)


@pytest.mark.parametrize(
    ("layer", "key"),
    [("layer1.0.conv1", "feature_maps.layer1.0.conv1"), ("relu#1", "feature_maps.relu_call1"), ("bloc_ñ", None)],
)
def test_mlflow_keys_hold_only_what_mlflow_takes(layer, key):
    """Tags may hold any letter (``\\w``) and ``/``; MLflow's keys only ASCII letters, and ours no ``/`` (MLflow 2.12 to
    at least 3.10 make it a ``#`` in the image's file name, which its download refuses)."""
    made = mlflow_key(tb.layer_tag(tb.FEATURE_MAPS, layer))
    assert re.fullmatch(r"[a-zA-Z0-9_\-. ]+", made) and "/" not in made  # MLflow's own rule, less the slash
    assert key is None or made == key


def test_mlflow_file_store_holds_nothing_of_ours(tmp_path, loaders, monkeypatch, caplog):
    from mlflow import MlflowClient

    """Lightning's default MLflow store, ./mlruns, where MLflow reads every folder as an experiment."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.7+ refuses it by default
    logger = MLFlowLogger(experiment_name="fm", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit(tmp_path, logger, loaders, 0)
    store = tmp_path / "mlruns"
    assert not event_files(store) and [p for p in store.rglob("fm_callback") if tb.RECORDS not in p.parts] == []
    with caplog.at_level(logging.WARNING):
        MlflowClient(logger._tracking_uri).search_experiments()
    assert "Malformed" not in caplog.text  # what MLflow said of a folder of ours among its experiments
    assert_report_reads(tmp_path / "fm_callback")


# ---- W&B ------------------------------------------------------------------------------------------------------


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, its own folders under ``tmp_path``, no network."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def wandb_image_counts(run: Path) -> dict[str, int]:
    """How many pictures of each tag a W&B run folder's media holds."""
    media = run / "files" / "media" / "images"
    return {tag: len(list(media.glob(f"{tag}_*.png"))) for tag in expected_images()}


def test_wandb_offline_runs_get_every_picture(wandb_offline, tmp_path, loaders):
    import wandb

    save_dir = tmp_path / "wb"
    save_dir.mkdir()
    for seed in range(2):
        fit(tmp_path / "work", WandbLogger(project="fm", save_dir=str(save_dir), offline=True), loaders, seed)
        wandb.finish()  # a process's next fit gets a run of its own
    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        assert wandb_image_counts(run) == {tag: len(steps) for tag, steps in expected_images().items()}, run
        assert read_events(run / "fm_callback").steps("images", "feature_maps/conv1") == EVENT_STEPS
        assert len(list((run / "files" / tb.RECORDS).rglob("*.json"))) == len(EVENT_STEPS) + 1  # + similarity
        assert_report_reads(run)  # once, though the run folder holds both the event files and the records
        assert_report_reads(run / "files")  # the records W&B uploads
    assert sorted(p.name for p in save_dir.iterdir()) == ["wandb"]  # nothing of ours at the save_dir root
    assert not (tmp_path / "work" / "fm_callback").exists()


# ---- CSV, and TensorBoard + CSV --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_tensorboard", [False, True])
def test_two_fits_write_two_runs_apart(tmp_path, loaders, with_tensorboard):
    for seed in range(2):
        logger = [CSVLogger(tmp_path, name="csv")]
        if with_tensorboard:
            logger.append(TensorBoardLogger(tmp_path, name="tb"))
        fit(tmp_path, logger, loaders, seed)
    runs = load_runs(tmp_path)
    where = "tb" if with_tensorboard else "csv"
    expected = [f"{where}/version_{n}" + ("" if with_tensorboard else "/fm_callback") for n in range(2)]
    assert [run.name for run in runs] == expected
    assert all([r["step"] for r in run.records] == EVENT_STEPS for run in runs)
    for name in expected:
        assert_report_reads(tmp_path / name)
    assert with_tensorboard == (not list((tmp_path / "csv").rglob("fm_callback")))


def test_every_logger_of_the_trainer_gets_the_pictures(mlflow_server, wandb_offline, tmp_path, loaders):
    import wandb
    from mlflow import MlflowClient

    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    mlflow = MLFlowLogger(experiment_name="all", tracking_uri=mlflow_server.url)
    fit(tmp_path, [tensorboard, WandbLogger(project="fm", save_dir=str(tmp_path), offline=True), mlflow], loaders, 0)
    wandb.finish()
    events = read_events(tensorboard.log_dir)
    assert {tag: events.steps("images", tag) for tag in expected_images()} == expected_images()
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    assert wandb_image_counts(run) == {tag: len(steps) for tag, steps in expected_images().items()}
    expected = {mlflow_key(tag): steps for tag, steps in expected_images().items()}
    assert mlflow_image_steps(MlflowClient(mlflow_server.url), mlflow.run_id) == expected
    assert event_files(tmp_path) == event_files(tensorboard.log_dir)  # the TensorBoardLogger's: none of our own
