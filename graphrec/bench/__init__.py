"""Benchmarks that print tables and write JSON: ``python -m graphrec.bench <what>`` (never timed tests)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict


def write_results(res: Dict[str, Any], path: str) -> None:
    """The benchmark's results as JSON at ``path`` (atomically)."""
    from ..data.dataset import atomic_write_text

    atomic_write_text(Path(path), json.dumps(res, indent=2, default=str))
    print(f"written {path}")
