"""The benchmark scripts run from a checkout and report every column (speed targets live in BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_event import MEMORY_COLUMNS as EVENT_MEMORY_COLUMNS
from bench_event import TIME_COLUMNS as EVENT_TIME_COLUMNS
from bench_training import COLUMNS as TRAINING_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in ``text``: (header cells, body rows of cells)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            assert len(block) >= 3 and set("".join(block[1])) <= set("-:"), block
            tables.append((block[0], block[2:]))
            block = []
    return tables


def number(cell: str) -> float:
    return float(cell.replace("%", "").strip())


def test_bench_event_quick_reports_every_column(tmp_path):
    path = tmp_path / "event.json"
    stdout = run_script("bench_event.py", "--quick", "--json", str(path))
    (time_header, time_rows), (memory_header, memory_rows) = markdown_tables(stdout)
    assert time_header == EVENT_TIME_COLUMNS
    assert memory_header == EVENT_MEMORY_COLUMNS
    assert len(time_rows) == len(memory_rows) == 1
    row = dict(zip(time_header, time_rows[0], strict=True))
    assert row["model"] == "tiny" and row["input"] == "2x3x32x32" and row["layers"] == "3"
    for column in EVENT_TIME_COLUMNS[3:]:
        assert number(row[column]) > 0, column
    mem = dict(zip(memory_header, memory_rows[0], strict=True))
    for column in EVENT_MEMORY_COLUMNS[1:]:
        number(mem[column])  # measured, not "n/a"
    assert number(mem["largest activation (MB)"]) == pytest.approx(2 * 16 * 32 * 32 * 4 / 1e6, abs=0.05)
    assert int(mem["event file (bytes/event)"]) > 1000  # PNGs of the grids, scalars and histograms
    assert mem["hooks left after event"] == "0"

    report = json.loads(path.read_text())
    assert report["machine"]["torch"] and report["machine"]["cores"] >= 1
    (result,) = report["results"]
    assert set(result["seconds"]) == {
        "bare",
        "event",
        "event_own",
        "event_stats",
        "event_nosim",
        "event_tb",
        "tutorial",
    }
    assert all(len(runs) == result["repeats"] for runs in result["seconds"].values())
    assert set(result["extra_peak_bytes"]) == {"event", "event_tb", "tutorial"}
    assert result["largest_activation_bytes"] == 2 * 16 * 32 * 32 * 4
    assert result["hooks_left_after_event"] == 0


def test_bench_training_quick_reports_every_column(tmp_path):
    path = tmp_path / "training.json"
    stdout = run_script("bench_training.py", "--quick", "--json", str(path))
    ((header, rows),) = markdown_tables(stdout)
    assert header == TRAINING_COLUMNS
    row = dict(zip(header, rows[0], strict=True))
    assert row["events"] == "2"  # the step-0 baseline and the end of the one epoch
    assert row["hooks between events"] == "0"
    assert number(row["without callback (s)"]) > 0 and number(row["with callback (s)"]) > 0
    number(row["overhead (medians)"])
    report = json.loads(path.read_text())
    assert report["hooks_between_events"] == 0 and report["events_per_fit"] == 2
    assert len(report["seconds"]["with"]) == len(report["seconds"]["without"]) == report["repeats"]


def test_bench_examples_quick_reports_every_column(tmp_path):
    path = tmp_path / "examples.json"
    stdout = run_script("bench_examples.py", "--quick", "--json", str(path))
    ((header, rows),) = markdown_tables(stdout)
    assert header[0] == "model" and len(header) == 10
    row = dict(zip(header, rows[0], strict=True))
    assert row["model"] == "demo"
    (result,) = json.loads(path.read_text())["results"]
    assert result["pool"] == 32 and result["layers"] == 4 and result["hooks_left"] == 0
    assert set(result["seconds"]) == {"first scan", "scan", "pictures", "train step"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert result["radius"] == {"features.0": 1, "features.4": 4, "features.8": 10, "features.12": 24}


def test_bench_pictures_quick_reports_every_column(tmp_path):
    path = tmp_path / "pictures.json"
    stdout = run_script("bench_pictures.py", "--quick", "--json", str(path))
    ((header, rows),) = markdown_tables(stdout)
    assert header[:5] == ["package", "grid (ms)", "header + RGB (ms)", "encode (ms)", "render to bytes (ms)"]
    (row,) = rows
    assert row[0] == "this tree" and all(number(cell) > 0 for cell in row[1:])
    report = json.loads(path.read_text())
    assert report["model"] == "tiny" and len(report["layers"]) == 3 and report["grid_bytes_unfiltered"] > 0
    (tree,) = report["trees"].values()
    assert all(len(runs) == report["repeats"] for runs in tree["seconds"].values())
