"""The pictures and records for Weights & Biases and MLflow, through each logger's own API; and the run's own folder.

:class:`WandbImages` and :class:`MlflowImages` take what ``tensorboard.py``'s write functions give a SummaryWriter
(``add_image``, ``add_json``; histograms, text and scalars are TensorBoard's or already the loggers'), so every
picture tag, present and future, reaches them with no list to keep. ``wandb`` and ``mlflow`` are imported by
Lightning's loggers only: neither is a dependency of this package.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger

from .tensorboard import RECORDS

_NOT_IN_MLFLOW_KEYS = re.compile(r"[^A-Za-z0-9_\-. ]")


def record_file(tag: str, step: int) -> str:
    """The record of ``tag`` at ``step`` as a path relative to the run's files: ``fm_callback_records/<tag>/<step>``."""
    return f"{RECORDS}/{tag}/step-{step:09d}.json"


def record_text(tag: str, obj: Any, step: int) -> str:
    """A record file's content: the record with its tag and step, so the file needs no name to be read."""
    return json.dumps({"tag": tag, "step": step, "record": obj}, separators=(",", ":"))


def hwc_pixels(image: Any, dataformats: str) -> np.ndarray:
    """A ``uint8`` picture as NumPy ``[H, W, C]`` (for W&B and MLflow) from a tensor or array in ``dataformats``."""
    pixels = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0) if dataformats == "CHW" else pixels)


class LoggerImages:
    """What ``tensorboard.py`` writes, for a logger that takes pictures and files but no TensorBoard summaries:
    histograms, text and scalars are left out (the scalars reach every logger through Lightning's API)."""

    def add_histogram(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_histogram_raw = add_scalar = add_text = add_histogram

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # the run is the logger's: Lightning finishes it


class WandbImages(LoggerImages):
    """Every picture through ``WandbLogger.log_image`` at the scalars' step (W&B's media panel, with a step
    slider), and every JSON record as a file in the run's files folder, which W&B uploads with the run."""

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger
        self.files = Path(logger.experiment.dir)

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = "CHW") -> None:
        self.logger.log_image(tag, [hwc_pixels(image, dataformats)], step=step)

    def add_json(self, tag: str, obj: Any, step: int) -> None:
        path = self.files / record_file(tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record_text(tag, obj, step))


class MlflowImages(LoggerImages):
    """Every picture through the run's ``MlflowClient.log_image(run_id, image, key=, step=)`` (MLflow's image panel,
    with a step slider), and every JSON record as an artifact of the run.

    Keys hold only the characters MLflow allows in them, and no ``/``: ``feature_maps/conv1`` is logged as
    ``feature_maps.conv1``, since MLflow 2.12 (the first with keyed images) to at least 3.10 store a key's ``/`` as
    a ``#`` in the file name, which its own artifact download then refuses (mlflow/mlflow#22165).
    """

    def __init__(self, logger: MLFlowLogger) -> None:
        self.client, self.run_id = logger.experiment, logger.run_id

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = "CHW") -> None:
        self.client.log_image(self.run_id, hwc_pixels(image, dataformats), key=mlflow_key(tag), step=step)

    def add_json(self, tag: str, obj: Any, step: int) -> None:
        self.client.log_text(self.run_id, record_text(tag, obj, step), record_file(tag, step))


def mlflow_key(tag: str) -> str:
    """``tag`` as an MLflow image key: ``/`` becomes ``.``, any other character MLflow refuses ``_``."""
    return _NOT_IN_MLFLOW_KEYS.sub("_", tag.replace("/", "."))


def picture_loggers(trainer: pl.Trainer) -> list[LoggerImages]:
    """A writer for each of the Trainer's W&B and MLflow loggers (TensorBoard's is the SummaryWriter itself)."""
    writers: list[LoggerImages] = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            writers.append(WandbImages(logger))
        elif isinstance(logger, MLFlowLogger):
            writers.append(MlflowImages(logger))
    return writers


def own_log_dir(trainer: pl.Trainer) -> str:
    """The folder of this run alone for the event files the callback writes itself (no TensorBoardLogger).

    A ``CSVLogger``'s run folder (``<save_dir>/<name>/version_N``), else a W&B run's folder (beside its ``files``,
    so they are not uploaded), else ``<default_root_dir>/fm_callback/<name>/<version>`` by the first logger's name
    and version (MLflow: experiment and run id), outside every logger's store; always ``.../fm_callback``.
    """
    loggers = trainer.loggers
    csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    wandb = next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
    if csv is not None:
        return os.path.join(csv.log_dir, "fm_callback")
    if wandb is not None:
        return os.path.join(os.path.dirname(wandb.experiment.dir), "fm_callback")
    first: Logger | None = loggers[0] if loggers else None
    name, version = (str(first.name or ""), first.version) if first is not None else ("", None)
    folder = os.path.join(trainer.default_root_dir, "fm_callback", name)
    if version is None:  # a logger without versions: the next free version_N
        version = f"version_{len(os.listdir(folder)) if os.path.isdir(folder) else 0}"
    return os.path.join(folder, str(version))
