"""The callback's examples pass: the pool read once per run, scanned on every rank at each event, drawn on rank 0.

The pool is the first ``pool_size`` samples of the val (else train) dataset, read by indexing on rank 0 and broadcast
like the probe batch (no DataLoader iterator, no RNG draw), kept on the CPU for the run. A checkpoint keeps its size
and a digest: a resumed run reads the same samples again, and is warned if the data changed under it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection

from .example_pictures import draw_examples
from .passes import first_tensor
from .probe import FeatureMapProbe
from .probe_batch import take_model_input
from .results import ProbeResult
from .top_examples import ExampleScanner, examples_record


class ExamplesPass:
    """``k`` top examples per shown channel of each picture layer, over a pool of ``pool_size`` samples."""

    def __init__(self, k: int, pool_size: int) -> None:
        self.k, self.pool_size = k, pool_size
        self.digest: str | None = None  # of the pool this run scans (kept in checkpoints)
        self.pool: Any = None  # the model inputs of the pool, on the CPU; set up per fit
        self.scanner: ExampleScanner | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pool": None, "scanner": None}

    def setup(self, trainer: pl.Trainer, probe: FeatureMapProbe, pinned: dict[str, list[int]], input_fn: Any) -> None:
        """Read the pool (once per fit, on rank 0, broadcast) and aim the scanner at the probe's shown channels."""
        if self.pool is None:
            self.pool, _ = take_model_input(trainer, None, self.pool_size, input_fn, "examples_pool")
            digest = hashlib.sha1(first_tensor(self.pool).numpy().tobytes()).hexdigest()
            if self.digest is not None and digest != self.digest:
                rank_zero_warn(
                    "fm_callback: the examples pool (the first samples of the dataset) differs from the one this run "
                    "scanned before it was resumed; top examples before and after the resume are not comparable"
                )
            self.digest = digest
        modules = dict(probe.layers)
        layers = {name: modules[name] for name in pinned if name in modules}
        self.scanner = ExampleScanner(probe.model, layers, pinned, self.k, probe.forward_fn)

    def run(self, trainer: pl.Trainer, probe_size: int) -> dict:
        """Scan the pool in chunks of ``probe_size`` under the trainer's precision; every rank takes part."""
        precision = trainer.precision_plugin
        size = len(first_tensor(self.pool))
        chunks = (
            (start, precision.convert_input(_rows(self.pool, start, start + probe_size)))
            for start in range(0, size, probe_size)
        )
        with precision.forward_context():
            return self.scanner.scan(chunks)

    def picture_and_record(
        self, found: dict, result: ProbeResult, mean: list[float] | None, std: list[float] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Rank 0: the ``feature_examples/<layer>`` pictures and the JSON record, marked dead/dying as the grid."""
        found = {name: examples.to("cpu") for name, examples in found.items()}
        pool = first_tensor(self.pool)
        pictures, marks = draw_examples(found, result, lambda i: pool[i : i + 1], mean, std)
        return pictures, examples_record(found, marks, len(pool), self.k)

    def state_dict(self) -> dict[str, Any]:
        return {"examples_pool_size": self.pool_size, "examples_pool_digest": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run's digest (``{}``: none, a pool of new data); the pool is read again at the next set-up."""
        self.digest = state.get("examples_pool_digest")
        self.pool, self.scanner = None, None


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor of a (nested) model input."""
    return apply_to_collection(batch, torch.Tensor, lambda tensor: tensor[start:stop])
