"""The one place that knows the TensorBoard tag names and calls the SummaryWriter.

Each function here writes one kind of record; ``background.py`` runs them off the training thread where that
pays. The scalars are not written here but handed to every logger of the Trainer (see :func:`scalar_metrics`),
except to a SummaryWriter of the callback's own.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .probe import ProbeResult

FEATURE_MAPS = "feature_maps"
OVERLAYS = "feature_maps_overlay"
FEATURE_EXAMPLES = "feature_examples"  # per picture layer: each shown channel's top-activating pool samples
DEAD_FILTERS = "dead_filters"
DYING_FILTERS = "dying_filters"
NEVER_POSITIVE = "never_positive"
CHANNEL_MEAN = "channel_mean"
PROBE_INPUT = "probe/input"
DEAD_TABLE = "dead_filters/table"
DEAD_TIMELINE = "dead_filters/timeline"
LAYER_CHANGE = "layer_change"  # 1 - CKA(previous event, now), per layer
LAYER_CHANGE_FROM_START = "layer_change_from_start"  # 1 - CKA(first event, now), per layer
LAYER_CHANGE_MAP = "layer_change_map"  # end of fit: layers x events heatmap of layer_change
LAYER_SIMILARITY = "layer_similarity"  # end of fit: layer x layer CKA at the last event (image)
ACTIVATIONS = "activations"  # per layer: histogram of the output's values
# Machine-readable dead-filter record of each event (JSON), read back by `fm-callback report`. Written under
# its own plugin name, so TensorBoard keeps it in the event file but shows no dashboard for it.
DEAD_STATE = "fm_callback/dead_state"
SIMILARITY_STATE = "fm_callback/layer_similarity"  # {"layers": [...], "cka": [[...]]} at the last event
EXAMPLES_STATE = "fm_callback/examples"  # per event, layer and channel: the top examples' dataset indices, values
STATE_PLUGIN = "fm_callback"
# The same records as files (one per tag and step) in this folder of a W&B run's files and an MLflow run's artifacts.
RECORDS = "fm_callback_records"
ALL_LAYERS = "all"
_UNSAFE_TAG_CHARS = re.compile(r"[^-/\w.]")


def layer_tag(kind: str, layer: str, prefix: str = "") -> str:
    """``kind/layer`` with the layer key made tag-safe (``relu#1`` -> ``relu_call1``), under ``prefix``."""
    safe = _UNSAFE_TAG_CHARS.sub("_", layer.replace("#", "_call"))
    return tag(prefix, f"{kind}/{safe}")


def tag(prefix: str, name: str) -> str:
    """``name`` under a callback's ``prefix`` (``"student"``: ``student/dead_filters/all``); ``name`` without one."""
    return f"{prefix}/{name}" if prefix else name


def check_prefix(prefix: Any) -> str:
    """A valid ``prefix=`` without surrounding slashes; ValueError naming the fix otherwise."""
    if not isinstance(prefix, str) or _UNSAFE_TAG_CHARS.search(prefix):
        raise ValueError(
            f"FeatureMapCallback: prefix must be a str of letters, digits, '_', '-', '.' and '/' (it starts every "
            f"tag and metric name), got {prefix!r}; e.g. prefix='student'"
        )
    return prefix.strip("/")


def scalar_metrics(
    result: ProbeResult, prefix: str = "", changes: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """The scalars of one probe event by name: per layer and over all channels, the dead and dying shares; per
    layer, the never-positive share (NaN for a layer without channels), and the representation changes given as
    ``{LAYER_CHANGE: {layer: value}, LAYER_CHANGE_FROM_START: {...}}``. Names are the TensorBoard tags.

    A rule that cannot fire is left out, not logged as a reassuring 0: ``dying_filters`` where no ReLU-family
    activation follows the layer (``dying_filters/all`` is over the layers one follows), ``never_positive`` before
    a gate or nothing (logits). ``dead_filters`` is always there: a constant channel is dead before any activation.
    """
    metrics: dict[str, float] = {}
    for name, report in result.items():
        metrics[layer_tag(DEAD_FILTERS, name, prefix)] = report.dead_fraction
        if report.silencing:
            metrics[layer_tag(DYING_FILTERS, name, prefix)] = report.dying_fraction
        if report.never_positive_applies:  # NaN for a layer without channels
            metrics[layer_tag(NEVER_POSITIVE, name, prefix)] = float(report.never_positive.float().mean())
    metrics[layer_tag(DEAD_FILTERS, ALL_LAYERS, prefix)] = result.dead_fraction
    if any(report.silencing for report in result.values()):
        metrics[layer_tag(DYING_FILTERS, ALL_LAYERS, prefix)] = result.dying_fraction
    for kind, values in (changes or {}).items():
        for name, value in values.items():
            metrics[layer_tag(kind, name, prefix)] = value
    return metrics


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
        if report.grid is not None:
            add_png(writer, layer_tag(FEATURE_MAPS, name, prefix), report.grid, step)
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
    """A ``uint8 [3, H, W]`` CPU image under ``tag``: the summary ``add_image`` writes, encoded by :func:`png`.

    ``add_image`` goes through float32 and back and compresses at zlib level 6 (about 0.6 s of a VGG16 event's
    dozen grids on a small machine, competing with training). ``quantize=True``: see :func:`png`. Falls back to
    ``add_image`` for other images and for a writer that is not torch's SummaryWriter or overrides it.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    plain = isinstance(writer, SummaryWriter) and type(writer).add_image is SummaryWriter.add_image
    if not plain or not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        writer.add_image(tag, image, step, dataformats="CHW")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    channels, height, width = image.shape
    # NumPy, not torch: a torch op on this thread starts a second OpenMP team, and the training thread's
    # parallel ops run measurably slower afterwards (VGG16 probe: 1.11x -> 1.39x a bare forward).
    encoded = png(image.numpy().transpose(1, 2, 0), quantize)
    picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encoded)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)


def png(pixels: Any, quantize: bool = False) -> bytes:
    """``uint8 [H, W, C]`` pixels as PNG bytes, encoded for speed and size.

    A picture of at most 256 colours (a feature-map grid, see render.py) becomes a palette PNG, losslessly: a
    byte a pixel, the palette in order of luminance (the colormap's order: neighbouring levels get neighbouring
    indices), every row PNG-filtered so zlib sees the small steps of a smooth map, zlib level 6 (2 % smaller
    than level 1 for 2 ms an event): a third of the RGB file. ``quantize=True`` first brings a picture of more
    colours down to 256 (Pillow's fast octree, under a millisecond; about 4/255 off on average): for the
    overlays, a photo under a heat map, a third of their lossless size. Any other picture: an RGB PNG at zlib
    level 1 with run-length matching, a quarter of the time of level 6 for a file of about the same size.
    """
    import io
    import zlib

    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
    colours = picture.getcolors(256) if picture.mode == "RGB" else None
    if colours is None and quantize and picture.mode == "RGB":
        picture = picture.quantize(256, method=Image.Quantize.FASTOCTREE).convert("RGB")
        colours = picture.getcolors(256)
    if colours is None:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
        return buffer.getvalue()
    palette = np.array([rgb for _, rgb in colours], dtype=np.uint8)
    palette = palette[np.argsort(palette @ np.array([299, 587, 114]), kind="stable")]
    # colour -> index through a table of every 24-bit colour: only the pages of the picture's colours are touched
    index = np.empty(1 << 24, dtype=np.uint8)
    index[packed(palette)] = np.arange(len(palette))
    return palette_png(index[packed(np.asarray(picture))], palette)


def packed(rgb: Any) -> Any:
    """``uint8 [..., 3]`` colours as one int per colour."""
    return (rgb[..., 0].astype(int) << 16) | (rgb[..., 1].astype(int) << 8) | rgb[..., 2]


def palette_png(indices: Any, palette: Any) -> bytes:
    """A palette PNG of ``uint8 [H, W]`` indices into ``uint8 [n, 3]`` colours, each row filtered by the PNG
    filter (None, Sub, Up or Paeth) with the smallest sum of absolute differences, as libpng chooses.
    Pillow writes palette PNGs unfiltered, which leaves a smooth map's steps to zlib as they are."""
    import struct
    import zlib

    height, width = indices.shape
    x = indices.astype(np.int16)
    left, up, corner = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    left[:, 1:], up[1:], corner[1:, 1:] = x[:, :-1], x[:-1], x[:-1, :-1]
    guess = left + up - corner
    near_left, near_up, near_corner = abs(guess - left), abs(guess - up), abs(guess - corner)
    paeth = np.where(
        (near_left <= near_up) & (near_left <= near_corner), left, np.where(near_up <= near_corner, up, corner)
    )
    filtered = np.stack([x, x - left, x - up, x - paeth]) % 256  # PNG filter types 0, 1, 2, 4
    cost = np.minimum(filtered, 256 - filtered).sum(axis=2)
    choice = cost.argmin(axis=0)
    rows = filtered[choice, np.arange(height)].astype(np.uint8)
    kind = np.array([0, 1, 2, 4], dtype=np.uint8)[choice]
    data = zlib.compress(np.concatenate([kind[:, None], rows], axis=1).tobytes(), 6)

    def chunk(name: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette.tobytes())
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def write_json(writer: Any, tag: str, obj: Any, step: int) -> None:
    """``obj`` as a JSON string tensor under ``tag`` with the fm_callback plugin name (no dashboard shows it).

    A writer with an ``add_json`` method (W&B's, MLflow's: loggers.py) stores the record its own way; any other
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
