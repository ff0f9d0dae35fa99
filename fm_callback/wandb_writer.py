"""Pictures and records for Weights & Biases, through ``WandbLogger``'s own API.

:class:`WandbImages` takes what ``tensorboard_writer.py``'s functions give a SummaryWriter (``add_image``,
``add_json``), so every picture tag, present and future, reaches W&B with no list to keep. ``wandb`` is imported by
Lightning's logger only: it is not a dependency of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from .logger_images import LoggerImages, hwc_pixels
from .names import record_file, record_text


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
