"""Shared command-line plumbing for the converters: readable errors, count summaries."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from graphrec.data.dataset import Dataset
from graphrec.errors import UserError


def run_cli(job: Callable[[], None]) -> int:
    """Run ``job``; a :class:`UserError` becomes one line on stderr and exit status 2."""
    try:
        job()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def format_counts(ds: Dataset) -> str:
    c = ds.counts()
    parts = [f"users={c['users']:,}", f"authors={c['authors']:,}", f"impressions={c['impressions']:,}"]
    parts += [f"{k}={v:,}" for k, v in c.items() if k.startswith("positives_")]
    split = ds.impressions.get("split")
    if split is not None:
        parts.append("train/val/test=" + "/".join(f"{int((split == i).sum()):,}" for i in range(3)))
    for t in ("segments", "stats", "products"):
        if t in c:
            parts.append(f"{t}={c[t]:,}")
    return " ".join(parts)


def print_counts(ds: Dataset, out: Optional[Path] = None) -> None:
    where = f" -> {out}" if out else ""
    print(f"{ds.name}: {format_counts(ds)}{where}")
