"""Where a benchmark script keeps its numbers: ``benchmarks/results/<name>.json`` unless ``--json`` says."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(result: Any, path: Path | None, name: str, quick: bool = False) -> Path:
    """``result`` as indented JSON at ``path``, else ``results/<name>[_quick].json``; says where on stderr."""
    path = path or RESULTS / f"{name}{'_quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {path}", file=sys.stderr)
    return path
