"""Every record of an event as TensorBoard's SummaryWriter takes it: pictures, histograms, scalars, text and the
JSON records ``fm-callback report`` reads.

Each function here writes one kind of record; ``background.py`` runs them off the training thread where that
pays. The W&B and MLflow writers (``wandb_writer.py``, ``mlflow_writer.py``) take the same calls. The scalars are
not written here but handed to every logger of the Trainer (see :func:`~.names.scalar_metrics`), except to a
SummaryWriter of the callback's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .names import (
    ACTIVATIONS,
    CHANNEL_MEAN,
    DEAD_STATE,
    DEAD_TABLE,
    DEAD_TIMELINE,
    EXAMPLES_STATE,
    FEATURE_EXAMPLES,
    FEATURE_MAPS,
    LAYER_CHANGE_MAP,
    LAYER_SIMILARITY,
    OVERLAYS,
    PROBE_INPUT,
    SIMILARITY_STATE,
    STATE_PLUGIN,
    layer_tag,
    scalar_metrics,
    tag,
)
from .picture import Picture
from .png import picture_png, png
from .results import ProbeResult


def write_result(
    writer: Any,
    result: ProbeResult,
    step: int,
    dead_table: str | None = None,
    dead_record: dict | None = None,
    *,
    prefix: str = "",
    with_input: bool = True,
    changes: dict[str, dict[str, float]] | None = None,
    scalars: dict[str, float] | None = None,
) -> None:
    """Every tag of one probe event, at ``step``, under ``prefix``.

    ``scalars``: the scalars to write, by tag; None: :func:`scalar_metrics` of ``result`` and ``changes``. The
    callback passes what it computed on the training thread (torch ops on a writer thread slow training's
    parallel ops), or ``{}`` when Lightning's loggers write them. ``with_input=False`` leaves out ``probe/input``
    (already written, unchanged).
    """
    for name, report in result.items():
        if report.picture is not None:  # the grid as palette indices (``report.grid`` is its RGB copy)
            add_png(writer, layer_tag(FEATURE_MAPS, name, prefix), report.picture, step)
        if report.overlay is not None:
            add_png(writer, layer_tag(OVERLAYS, name, prefix), report.overlay, step, quantize=True)
        means = report.channel_mean.numpy()
        means = means[np.isfinite(means)]  # a NaN channel: its mean is left out (none left: no histogram)
        if means.size:  # 30 buckets, as tf.summary.histogram; torch's default costs ~10 kB a layer for a few values
            writer.add_histogram(layer_tag(CHANNEL_MEAN, name, prefix), means, step, bins=30)
        if report.histogram is not None:
            add_value_histogram(writer, layer_tag(ACTIVATIONS, name, prefix), report, step)
    for name, value in (scalar_metrics(result, prefix, changes) if scalars is None else scalars).items():
        writer.add_scalar(name, value, step)
    if with_input and result.input_image is not None:
        add_png(writer, tag(prefix, PROBE_INPUT), result.input_image, step)
    if dead_table:
        writer.add_text(tag(prefix, DEAD_TABLE), dead_table, step)
    if dead_record is not None:
        write_json(writer, tag(prefix, DEAD_STATE), dead_record, step)


def add_value_histogram(writer: Any, tag: str, report: Any, step: int) -> None:
    """A layer's value histogram (binned on the device by the probe) through ``add_histogram_raw``, so the
    Histograms and Distributions tabs show the layer's values over training. Skipped for a non-finite output."""
    stats = report.stats
    low, high = float(stats.min.min()), float(stats.max.max())
    if not (np.isfinite(low) and np.isfinite(high)) or int(stats.nonfinite.sum()):
        return
    counts = report.histogram.numpy().astype(np.float64)
    bins = len(counts)
    width = high - low if high > low else 1.0
    limits = low + width * np.arange(1, bins + 1) / bins  # the upper edge of each bin
    per_channel = counts.sum() / max(1, stats.mean.numel())  # every channel has the same number of values
    mean, std = stats.mean.numpy().astype(np.float64), stats.std.numpy().astype(np.float64)
    writer.add_histogram_raw(
        tag,
        min=low,
        max=high,
        num=int(counts.sum()),
        sum=float(per_channel * mean.sum()),
        sum_squares=float(per_channel * (std**2 + mean**2).sum()),
        bucket_limits=limits.tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


def add_png(writer: Any, tag: str, image: Any, step: int, quantize: bool = False) -> None:
    """A :class:`~.picture.Picture` or ``uint8 [3, H, W]`` CPU image under ``tag``: the summary ``add_image``
    writes, encoded by :func:`~.png.picture_png` or :func:`~.png.png` (``quantize=True``: see there).

    ``add_image`` goes through float32 and back and writes every picture as RGB at zlib level 6: slower, and
    larger files (BENCHMARKS.md, "The picture path"). Falls back to ``add_image`` (of the RGB pixels) for other images
    and for a writer that is not torch's SummaryWriter or overrides it (W&B's and MLflow's take pixels).
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    plain = isinstance(writer, SummaryWriter) and type(writer).add_image is SummaryWriter.add_image
    # NumPy, not torch, from here: a torch op on this thread starts a second OpenMP team, and the training
    # thread's parallel ops run measurably slower afterwards (BENCHMARKS.md, "The picture path").
    if isinstance(image, Picture) and plain:
        (height, width), channels = image.indices.shape, 3
        encoded = picture_png(image)
    elif plain and isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3:
        channels, height, width = image.shape
        encoded = png(image.numpy().transpose(1, 2, 0), quantize)
    else:
        if isinstance(image, Picture):
            writer.add_image(tag, image.pixels(), step, dataformats="HWC")
        else:
            writer.add_image(tag, image, step, dataformats="CHW")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encoded)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)


def write_json(writer: Any, tag: str, obj: Any, step: int) -> None:
    """``obj`` as a JSON string tensor under ``tag`` with the fm_callback plugin name (no dashboard shows it).

    A writer with an ``add_json`` method (W&B's, MLflow's) stores the record its own way; any other
    writer that is not torch's SummaryWriter gets it through ``add_text`` (tag ``<tag>/text_summary``).
    """
    import json

    from torch.utils.tensorboard import SummaryWriter

    if hasattr(writer, "add_json"):
        writer.add_json(tag, obj, step)
        return
    text = json.dumps(obj, separators=(",", ":"))
    if not isinstance(writer, SummaryWriter):
        writer.add_text(tag, text, step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=STATE_PLUGIN, content=b"1"))
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    summary = Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])
    writer._get_file_writer().add_summary(summary, step)


def write_timeline(writer: Any, history: list[dict[str, Any]], step: int, prefix: str = "") -> None:
    """The end-of-fit picture: layers x events, dead share in percent as colour (rendered without pyplot)."""
    from .plots import timeline_image

    writer.add_image(tag(prefix, DEAD_TIMELINE), timeline_image(history), step, dataformats="HWC")


def write_change_map(writer: Any, history: list[dict[str, Any]], step: int, prefix: str = "") -> None:
    """The end-of-fit picture of ``layer_change``: layers x events, the change since the previous event as colour."""
    from .plots import change_image

    writer.add_image(tag(prefix, LAYER_CHANGE_MAP), change_image(history), step, dataformats="HWC")


def write_similarity(writer: Any, names: list[str], cka: list[list[float]], step: int, prefix: str = "") -> None:
    """The layer x layer CKA matrix at the last event: a picture, and a JSON record for ``fm-callback report``."""
    from .plots import similarity_image

    writer.add_image(tag(prefix, LAYER_SIMILARITY), similarity_image(names, cka), step, dataformats="HWC")
    write_json(writer, tag(prefix, SIMILARITY_STATE), {"layers": names, "cka": cka}, step)


def write_examples(writer: Any, pictures: dict[str, Any], record: dict[str, Any], step: int, prefix: str = "") -> None:
    """The ``feature_examples/<layer>`` pictures of one event, and their JSON record for ``fm-callback report``."""
    for name, picture in pictures.items():
        add_png(writer, layer_tag(FEATURE_EXAMPLES, name, prefix), picture, step)
    write_json(writer, tag(prefix, EXAMPLES_STATE), record, step)
