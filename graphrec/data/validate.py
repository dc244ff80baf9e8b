"""Validation of a canonical dataset: every violation is collected and reported with its location.

Checks: required tables and columns, consistent column lengths, ids in range, no NaN/inf in
float columns, non-decreasing times (impressions globally; segments, statistics and products per
author), labels and splits in their value sets, token lengths within bounds, manifest counts.
Vectorised: a 20M-impression table validates in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..errors import DataError
from .dataset import LABELS, MODALITIES, Dataset

MAX_ROWS_SHOWN = 5


@dataclass
class Violation:
    table: str
    column: str
    kind: str      # missing, length, range, nonfinite, order, value, count
    message: str
    rows: Optional[np.ndarray] = None  # offending row indices (first few)
    count: int = 0

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        if self.rows is not None and len(self.rows):
            shown = ", ".join(str(int(r)) for r in self.rows[:MAX_ROWS_SHOWN])
            more = f" (+{self.count - MAX_ROWS_SHOWN} more)" if self.count > MAX_ROWS_SHOWN else ""
            return f"[{self.kind}] {where}: {self.message} at rows {shown}{more}"
        return f"[{self.kind}] {where}: {self.message}"


class _Checker:
    def __init__(self) -> None:
        self.violations: List[Violation] = []

    def flag(self, table: str, column: str, kind: str, message: str, bad: Optional[np.ndarray] = None) -> None:
        if bad is None:
            self.violations.append(Violation(table, column, kind, message))
            return
        rows = np.flatnonzero(bad)
        if len(rows):
            self.violations.append(Violation(table, column, kind, message, rows[:MAX_ROWS_SHOWN], len(rows)))

    def require(self, tables: Dict[str, Dict[str, np.ndarray]], table: str, columns) -> bool:
        ok = True
        for col in columns:
            if col not in tables[table]:
                self.flag(table, col, "missing", "required column is missing")
                ok = False
        return ok

    def ids(self, table: str, column: str, values: np.ndarray, upper: int, what: str) -> None:
        if not np.issubdtype(values.dtype, np.integer):
            self.flag(table, column, "value", f"must be an integer array, got dtype {values.dtype}")
            return
        self.flag(table, column, "range", f"{what} id outside [0, {upper})", (values < 0) | (values >= upper))

    def finite(self, table: str, column: str, values: np.ndarray) -> None:
        if np.issubdtype(values.dtype, np.floating):
            bad = ~np.isfinite(values)
            if bad.ndim > 1:
                bad = bad.reshape(len(bad), int(np.prod(bad.shape[1:]))).any(axis=1)   # also for 0 rows
            self.flag(table, column, "nonfinite", "NaN or inf value", bad)

    def binary(self, table: str, column: str, values: np.ndarray) -> None:
        self.flag(table, column, "value", "label must be 0 or 1", (values != 0) & (values != 1))

    def monotone(self, table: str, column: str, times: np.ndarray, group: Optional[np.ndarray] = None,
                 strict: bool = False) -> None:
        if len(times) < 2:
            return
        step = np.diff(times.astype(np.int64))
        bad = step <= 0 if strict else step < 0
        if group is not None:
            same = group[1:] == group[:-1]
            self.flag(table, "author", "order", "rows must be sorted by author", group[1:] < group[:-1])
            bad &= same
        what = "increasing" if strict else "non-decreasing"
        scope = " within each author" if group is not None else ""
        self.flag(table, column, "order", f"times must be {what}{scope}",
                  np.concatenate([[False], bad]))


def find_violations(ds: Dataset) -> List[Violation]:
    """Return every violation in ``ds`` (an empty list means valid)."""
    c = _Checker()
    t = ds.tables
    nu, na = ds.num_users, ds.num_authors
    for required in ("users", "authors", "impressions"):
        if required not in t:
            c.flag(required, "", "missing", "required table is missing")
    if c.violations:
        return c.violations

    for name, cols in t.items():
        lengths = {k: len(v) for k, v in cols.items() if np.ndim(v) >= 1}
        if len(set(lengths.values())) > 1:
            c.flag(name, "", "length", f"columns have different lengths: {lengths}")
        for col, values in cols.items():
            c.finite(name, col, values)
    for name, n in (("users", nu), ("authors", na)):
        cols = t[name]
        if cols and len(next(iter(cols.values()))) != n:
            c.flag(name, "", "count", f"has {len(next(iter(cols.values())))} rows, manifest says {n}")

    imp = t["impressions"]
    if c.require(t, "impressions", ("user", "author", "time")):
        c.ids("impressions", "user", imp["user"], nu, "user")
        c.ids("impressions", "author", imp["author"], na, "author")
        c.monotone("impressions", "time", imp["time"])
    labels = [l for l in LABELS if l in imp]
    if not labels:
        c.flag("impressions", "", "missing", f"no label column (expected any of {list(LABELS)})")
    for lab in labels:
        c.binary("impressions", lab, imp[lab])
        p = imp.get(f"p_{lab}")
        if p is not None:
            c.flag("impressions", f"p_{lab}", "range", "probability outside [0, 1]", (p < 0) | (p > 1))
    if "split" in imp:
        c.flag("impressions", "split", "value", "split must be 0 (train), 1 (val) or 2 (test)", imp["split"] > 2)
    if "segment" in imp:
        nseg = len(t["segments"]["author"]) if "segments" in t and "author" in t["segments"] else 0
        c.flag("impressions", "segment", "range", f"segment row outside [-1, {nseg})",
               (imp["segment"] < -1) | (imp["segment"] >= nseg))

    if "segments" in t:
        seg = t["segments"]
        if c.require(t, "segments", ("author", "start")):
            c.ids("segments", "author", seg["author"], na, "author")
            c.monotone("segments", "start", seg["start"], group=seg["author"], strict=True)
        if not any(m in seg for m in MODALITIES):
            c.flag("segments", "", "missing", f"no modality column (expected any of {list(MODALITIES)})")
        for m in MODALITIES:
            if m not in seg:
                continue
            if seg[m].ndim != 3:
                c.flag("segments", m, "value", f"tokens must be [rows, L, d], got shape {seg[m].shape}")
                continue
            if f"{m}_len" in seg:
                ln = seg[f"{m}_len"]
                c.flag("segments", f"{m}_len", "range", f"token count outside [0, {seg[m].shape[1]}]",
                       (ln < 0) | (ln > seg[m].shape[1]))

    if "stats" in t:
        st = t["stats"]
        if c.require(t, "stats", ("author", "start", "values")):
            c.ids("stats", "author", st["author"], na, "author")
            c.monotone("stats", "start", st["start"], group=st["author"], strict=True)
            if st["values"].ndim != 3:
                c.flag("stats", "values", "value", f"must be [rooms, steps, features], got {st['values'].shape}")

    if "products" in t:
        pr = t["products"]
        meta = ds.meta.get("products", {})
        if c.require(t, "products", ("author", "time", "product", "cat1", "cat2", "cat3")):
            c.ids("products", "author", pr["author"], na, "author")
            c.monotone("products", "time", pr["time"], group=pr["author"])
            for col, key in (("product", "num_products"), ("cat1", "num_cat1"), ("cat2", "num_cat2"),
                             ("cat3", "num_cat3")):
                if key in meta:
                    c.ids("products", col, pr[col], int(meta[key]), col)
                else:
                    c.flag("products", col, "missing", f"manifest meta.products.{key} is missing")
    return c.violations


def validate_dataset(ds: Dataset) -> None:
    """Raise :class:`DataError` listing every violation, or return quietly when ``ds`` is valid."""
    found = find_violations(ds)
    if found:
        where = f" ({ds.path})" if ds.path else ""
        lines = "\n".join(f"  - {v}" for v in found)
        raise DataError(f"dataset '{ds.name}'{where} failed validation with {len(found)} violation(s):\n{lines}")
