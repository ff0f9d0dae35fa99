"""Reading a run's fm_callback records back: the JSON record of each probe event (``fm_callback/dead_state``), the
layer similarity and the top examples records (see ``names.py``), from TensorBoard event files and from record folders
(``fm_callback_records``: a W&B run's files, an MLflow run's artifacts), per run and per callback prefix.

The reading side of ``fm-callback report`` and ``view``: no torch, and TensorBoard's reader imported only to read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import names

# Everything of the scalars and tensors (the records); of the bulky kinds, only the last item is kept.
SIZE_GUIDANCE = {"scalars": 0, "tensors": 0, "images": 1, "histograms": 1, "audio": 1, "compressedHistograms": 1}


def event_files(logdir: str | Path) -> list[Path]:
    """Every TensorBoard event file under ``logdir``, searched recursively."""
    return sorted(p for p in Path(logdir).rglob("events.out.tfevents.*") if p.is_file())


class ReportError(Exception):
    """A log directory that cannot be reported on; the message says why and what to do."""


@dataclass
class Run:
    """One run: a directory of event files, and its dead-filter records sorted by step."""

    name: str  # relative to the log directory given
    path: str
    records: list[dict[str, Any]]
    similarity: dict[str, Any] | None = None  # {"layers": [...], "cka": [[...]], "step": int} at the last event
    examples: list[dict[str, Any]] = field(default_factory=list)  # the top-examples records, by step


def load_records(path: str | os.PathLike, prefix: str = "") -> list[dict[str, Any]]:
    """The dead-filter records of one run (a directory of event files, or one file), one per step, by step;
    those of the callback with ``prefix=`` when one was given."""
    return _records_by_prefix(path, names.DEAD_STATE).get(prefix, [])


def _records_by_prefix(path: str | os.PathLike, *kinds: str) -> dict[str, list[dict[str, Any]]]:
    """Every callback's JSON records of the ``kinds`` tags in the event files at ``path`` (by step, each with its
    ``kind`` and ``step``), keyed by the callback's tag prefix (``""`` without one): two callbacks in one Trainer
    write under their own prefixes, and their records must not merge by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance=SIZE_GUIDANCE)
    accumulator.Reload()
    found = []
    for tag in accumulator.Tags().get("tensors", []):
        base = tag.removesuffix("/text_summary")  # written by a writer that is not torch's SummaryWriter
        for event in accumulator.Tensors(tag):
            try:
                found.append((base, event.step, json.loads(event.tensor_proto.string_val[0].decode("utf-8"))))
            except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
                continue
    return _by_prefix(found, kinds)


def _file_records_by_prefix(folder: Path, *kinds: str) -> dict[str, list[dict[str, Any]]]:
    """As :func:`_records_by_prefix`, from the record files in ``folder`` (``fm_callback_records``, see
    ``names.record_file``): a W&B run's files, an MLflow run's artifacts."""
    found = []
    for file in sorted(folder.rglob("*.json")):
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
            found.append((str(content["tag"]), int(content["step"]), content["record"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return _by_prefix(found, kinds)


def _by_prefix(found: list[tuple[str, int, Any]], kinds: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """``(tag, step, record)`` triples as the records of the ``kinds`` tags by step, keyed by the tag prefix."""
    grouped: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for tag, step, record in found:
        kind = next((k for k in kinds if tag == k or tag.endswith(f"/{k}")), None)
        if kind is not None and isinstance(record, dict) and isinstance(record.get("layers"), dict | list):
            record.update(kind=kind, step=step)
            grouped.setdefault(tag[: -len(kind)].rstrip("/"), {})[kind, step] = record  # a later write of a step wins
    return {prefix: [by_step[key] for key in sorted(by_step)] for prefix, by_step in sorted(grouped.items())}


def load_runs(logdir: str | os.PathLike) -> list[Run]:
    """Every run under ``logdir`` that holds fm_callback dead-filter records, in TensorBoard event files or as record
    files (a W&B run folder, an MLflow artifact folder); ReportError if there is none.

    A W&B run folder holds a run's records twice (event files and record files): that run is reported once.
    """
    root = Path(logdir)
    if not root.exists():
        raise ReportError(f"LOGDIR {str(root)!r} does not exist; pass the directory your TensorBoardLogger writes to")
    dirs = [root] if root.is_file() else sorted({file.parent for file in event_files(root)})
    record_dirs = [] if root.is_file() else sorted(p for p in root.rglob(names.RECORDS) if p.is_dir())
    if root.is_dir() and root.name == names.RECORDS:
        record_dirs = [root]
    if not dirs and not record_dirs:
        raise ReportError(
            f"no TensorBoard event files and no {names.RECORDS} folder (W&B, MLflow) under {str(root)!r}; is this the "
            "right log directory?"
        )
    sources = [(path, path, _records_by_prefix) for path in dirs]
    sources += [(folder.parent, folder, _file_records_by_prefix) for folder in record_dirs]
    runs, seen = [], {}  # the event-file folders by their records
    for path, where, read in sources:
        for prefix, found in read(where, names.DEAD_STATE, names.SIMILARITY_STATE, names.EXAMPLES_STATE).items():
            records = [r for r in found if r["kind"] == names.DEAD_STATE and isinstance(r["layers"], dict)]
            similarity = [r for r in found if r["kind"] == names.SIMILARITY_STATE and isinstance(r.get("cka"), list)]
            examples = [r for r in found if r["kind"] == names.EXAMPLES_STATE and isinstance(r["layers"], dict)]
            same = json.dumps([prefix, records])
            if where is path:
                seen.setdefault(same, []).append(path)
            elif any(events.is_relative_to(path.parent) for events in seen.get(same, [])):
                continue  # the record files of a W&B run (<run>/files) whose event files are in <run>/fm_callback
            if records:
                name = str(path.relative_to(root) if path.is_relative_to(root) else path.name)
                name += f" [{prefix}]" if prefix else ""
                runs.append(Run(name, str(path.resolve()), records, similarity[-1] if similarity else None, examples))
    if not runs:
        raise ReportError(
            f"{len(dirs) + len(record_dirs)} run(s) with event or record files under {str(root)!r}, but none holds "
            f"fm_callback data (tag {names.DEAD_STATE!r}). Was FeatureMapCallback attached to the Trainer, with a "
            "logger, and did at least one probe event run?"
        )
    return runs
