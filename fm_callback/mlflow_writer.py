"""Pictures and records for MLflow, through the run's ``MlflowClient``.

:class:`MlflowImages` takes what ``tensorboard_writer.py``'s functions give a SummaryWriter (``add_image``,
``add_json``), so every picture tag, present and future, reaches MLflow with no list to keep. ``mlflow`` is imported
by Lightning's logger only: it is not a dependency of this package.
"""

from __future__ import annotations

import re
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

from .logger_images import LoggerImages, hwc_pixels
from .names import record_file, record_text

_NOT_IN_MLFLOW_KEYS = re.compile(r"[^A-Za-z0-9_\-. ]")


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
