"""The canonical dataset: the one on-disk format every source is converted to.

A dataset is a folder with ``manifest.json`` and one uncompressed ``.npz`` per table
(columnar: one array per column, row ``i`` of every column is record ``i``):

``users``        one row per user (row index = user id); optional side features, ``raw_id``.
``authors``      one row per author / streamer / item (row index = author id); side features.
``impressions``  ``user``, ``author``, ``time`` (int64 seconds, non-decreasing), label columns
                 (any subset of ``click``, ``long_view``, ``gift``, ``purchase``; uint8 0/1),
                 optional ``value`` (gift value / rating), ``segment`` (row of ``segments`` live at
                 impression time, -1 = none), ``split`` (0 train, 1 val, 2 test) and, for simulated
                 data, ``p_<label>`` (the true label probability: the oracle).
``segments``     per author time window: ``author``, ``start`` (s), and per present modality
                 ``frame`` / ``asr`` / ``comment`` token arrays ``[rows, L, d]`` with ``<m>_len``.
``stats``        room statistic sequences: ``author``, ``start`` (s), ``values [rows, T, F]``.
``products``     product sequences (long format, sorted by author then time): ``author``, ``time``,
                 ``product``, ``cat1``, ``cat2``, ``cat3``.

The manifest records the schema version, counts, which tables and labels exist, and per-table
metadata (feature names, step length, category counts). Writes are atomic: the whole folder is
written under a temporary name and renamed into place, so a reader never sees half a dataset.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional

import numpy as np

from ..errors import DataError

SCHEMA_VERSION = 1
TABLES = ("users", "authors", "impressions", "segments", "stats", "products")
LABELS = ("click", "long_view", "gift", "purchase")
MODALITIES = ("frame", "asr", "comment")
SPLITS = {"train": 0, "val": 1, "test": 2}
MANIFEST = "manifest.json"


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what a plain ``open``/``mkdir`` would have given."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file handle that becomes ``path`` only when the block succeeds (temp file, then
    rename in the same folder); on any error the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_table(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """Save columns as an uncompressed npz, atomically (streamed to disk, not buffered)."""
    with atomic_file(path) as fh:
        np.savez(fh, **{k: np.ascontiguousarray(v) for k, v in columns.items()})


def load_table(path: Path) -> Dict[str, np.ndarray]:
    """Load every column of an npz table (never unpickles: ``allow_pickle=False``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: table file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable or truncated table ({type(exc).__name__}: {exc})") from None


@dataclass
class Dataset:
    """A canonical dataset in memory: manifest plus the tables it lists."""

    name: str
    source: str
    num_users: int
    num_authors: int
    tables: Dict[str, Dict[str, np.ndarray]]
    meta: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    # ---- convenience views
    @property
    def impressions(self) -> Dict[str, np.ndarray]:
        return self.tables["impressions"]

    @property
    def labels(self) -> List[str]:
        return [l for l in LABELS if l in self.tables.get("impressions", {})]

    @property
    def main_label(self) -> str:
        """The label the dataset is about (``meta.main_label``; else its first label)."""
        return self.meta.get("main_label", self.labels[0])

    @property
    def implicit(self) -> bool:
        """Positives only (every impression is an interaction; negatives must be sampled)."""
        return self.meta.get("feedback") == "implicit"

    @property
    def timed(self) -> bool:
        """Whether ``time`` is a real clock. ``False`` for data whose rows carry only their split as time
        (TikTok): then "before" means "in the training split", not "earlier"."""
        return bool(self.meta.get("timestamps", True))

    def has(self, table: str) -> bool:
        return table in self.tables

    def modalities(self) -> List[str]:
        seg = self.tables.get("segments", {})
        return [m for m in MODALITIES if m in seg]

    def counts(self) -> Dict[str, int]:
        imp = self.tables["impressions"]
        out = {"users": self.num_users, "authors": self.num_authors,
               "impressions": int(len(imp["user"]))}
        for lab in self.labels:
            out[f"positives_{lab}"] = int(imp[lab].sum())
        for t in ("segments", "stats", "products"):
            if t in self.tables:
                out[t] = int(len(self.tables[t]["author"]))
        return out

    def manifest(self) -> Dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "source": self.source,
            "counts": self.counts(),
            "tables": {t: sorted(cols) for t, cols in self.tables.items()},
            "labels": self.labels,
            "modalities": self.modalities(),
            "meta": self.meta,
        }


def save_dataset(ds: Dataset, out_dir: Path) -> Path:
    """Write ``ds`` to ``out_dir`` atomically (temp folder, then rename; replaces an old one)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        for table, cols in ds.tables.items():
            if table not in TABLES:
                raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
            save_table(tmp / f"{table}.npz", cols)
        atomic_write_text(tmp / MANIFEST, json.dumps(ds.manifest(), indent=2, sort_keys=False))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ds.path = out_dir
    return out_dir


def read_manifest(path: Path) -> Dict[str, Any]:
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        raise DataError(f"{mpath}: not a canonical dataset (manifest.json missing)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{mpath}: malformed manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{mpath}: manifest must be a JSON object")
    for key in ("schema_version", "name", "source", "counts", "tables"):
        if key not in manifest:
            raise DataError(f"{mpath}: manifest field '{key}' is missing")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise DataError(f"{mpath}: schema_version {manifest['schema_version']!r} is not supported "
                        f"(this graphrec reads version {SCHEMA_VERSION}); convert the data again")
    return manifest


def load_dataset(path: Path, tables: Optional[Iterable[str]] = None) -> Dataset:
    """Load a canonical dataset folder (all tables, or only ``tables``)."""
    path = Path(path)
    manifest = read_manifest(path)
    wanted = list(manifest["tables"]) if tables is None else [t for t in tables if t in manifest["tables"]]
    loaded = {t: load_table(path / f"{t}.npz") for t in wanted}
    counts = manifest["counts"]
    return Dataset(name=manifest["name"], source=manifest["source"], num_users=int(counts["users"]),
                   num_authors=int(counts["authors"]), tables=loaded, meta=manifest.get("meta", {}),
                   path=path)
