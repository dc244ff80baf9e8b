"""Shared command-line plumbing for the converters: count summaries (errors: ``graphrec.errors.command``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from graphrec.data.dataset import Dataset


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
