"""Make the README's MLflow picture the way a user gets it: train with MLFlowLogger only, open the run in MLflow's UI.

    .venv/bin/python docs/make_mlflow_screenshot.py [--epochs 4] [--keep runs/mlflow_docs]

Starts a real MLflow tracking server on 127.0.0.1 (``MlflowServer`` of ``tests/mlflow_server.py``: SQLite, served
artifacts), trains the demo's ShapesCNN with the default FeatureMapCallback and ``MLFlowLogger`` as the only logger,
and saves the run's "Model metrics" page, where MLflow shows the feature-map images with a step slider, with
headless Chromium (Debian's ``chromium``): the whole page in a tall window (MLflow draws a chart only once it is in
view), given minutes of page time (the server answers slowly on a busy machine), then ``--crop`` of it, the cards of
the images (below the scalar charts, in MLflow 3.17's layout), as ``docs/mlflow_images.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "examples")]
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402
from PIL import Image  # noqa: E402
from shapes import MEAN, STD, ShapesCNN, ShapesDataModule  # noqa: E402
from tensorboard_page import screenshot  # noqa: E402

from fm_callback import FeatureMapCallback  # noqa: E402

OUT = ROOT / "docs" / "mlflow_images.png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--keep", help="the server's store and the run's files here (default: a temporary folder)")
    parser.add_argument("--budget-ms", type=int, default=200_000, help="page time Chromium gives the UI to load")
    parser.add_argument("--height", type=int, default=6000, help="window height: every chart in view")
    parser.add_argument("--crop", type=int, nargs=4, default=[200, 4960, 1040, 5700], metavar=("X0", "Y0", "X1", "Y1"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fm_callback_mlflow_") as tmp:
        folder = Path(args.keep or tmp).resolve()
        with MlflowServer(folder / "store") as server:
            pl.seed_everything(0, workers=True)
            logger = MLFlowLogger(experiment_name="shapes", tracking_uri=server.url)
            trainer = pl.Trainer(
                max_epochs=args.epochs,
                accelerator="cpu",
                logger=logger,
                callbacks=[FeatureMapCallback(mean=MEAN, std=STD)],
                default_root_dir=folder / "work",
                log_every_n_steps=10,
                enable_checkpointing=False,
            )
            trainer.fit(ShapesCNN(), datamodule=ShapesDataModule(train_size=args.train_size))
            url = f"{server.url}/#/experiments/{logger.experiment_id}/runs/{logger.run_id}/model-metrics"
            page = screenshot(url, folder / "mlflow_page.png", 1400, args.height, budget_ms=args.budget_ms, timeout=600)
        Image.open(page).crop(tuple(args.crop)).save(OUT, optimize=True)
        print(f"wrote {OUT.relative_to(ROOT)}, cropped from {page} ({url})")


if __name__ == "__main__":
    main()
