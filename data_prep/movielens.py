"""MovieLens-100K -> canonical dataset.

Reads GroupLens' ``u.data`` (user, item, rating, unix time; tab separated), ``u.item`` (pipe
separated, Latin-1: id, title, release date, video date, URL, 19 genre flags) and ``u.user`` (id,
age, gender, occupation, zip) from a folder or from the official ``ml-100k.zip``.

Mapping onto the live-streaming schema: users are users, movies are authors, every rating is an
impression and a rating >= ``data.positive_rating`` is a positive (``gift``) edge; ``value`` keeps
the rating. The text modality (the ``comment`` slot, one token per movie) encodes "title. genres";
the statistic sequences are each movie's weekly rating counts (ratings, positives, rating sum).
The split is by time (the latest ratings are validation and test). Bad input stops with the file
and line at fault.

Without a local copy, :func:`fetch` downloads the official archive (:data:`ML100K_URL`) once into
``<cache_dir>/downloads/`` and checks it against :data:`ML100K_SHA256`.
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from graphrec.data.dataset import Dataset
from graphrec.data.split import time_split
from graphrec.errors import ConfigError, DataError, command

from .text import encode_texts

REQUIRED = ("u.data", "u.item", "u.user")
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# SHA-256 of the official ml-100k.zip (4,924,029 bytes), as listed by TensorFlow Datasets
# (tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt); GroupLens publishes its MD5,
# 0e33842e24a9c977be4e0107933c0723. Not checked against the live file from this project's offline
# development machines: data.sha256 overrides it.
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
LOCAL_COPY_HINT = ("download it elsewhere and pass the local copy: --set data.path=/path/to/ml-100k.zip "
                   "(or the unpacked ml-100k folder)")
NUM_GENRES = 19
WEEK_SECONDS = 7 * 24 * 3600
GENRE_NAMES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
               "Thriller", "War", "Western")


class _Source:
    """The GroupLens files, from a folder or the official zip (whose members sit under ml-100k/)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.zip: Optional[zipfile.ZipFile] = None
        if not self.path.exists():
            raise DataError(f"{self.path}: MovieLens path not found (give the folder with u.data, u.item, "
                            f"u.user or the official ml-100k.zip)")
        if self.path.is_file():
            try:
                self.zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise DataError(f"{self.path}: not a readable zip archive ({exc}); truncated download?") from None
            self.members = {Path(n).name: n for n in self.zip.namelist() if not n.endswith("/")}
        for name in REQUIRED:
            if not self.exists(name):
                raise DataError(f"{self.where(name)}: required MovieLens file is missing")

    def where(self, name: str) -> str:
        return f"{self.path}!{name}" if self.zip else str(self.path / name)

    def exists(self, name: str) -> bool:
        return name in self.members if self.zip else (self.path / name).is_file()

    def text(self, name: str, encoding: str) -> str:
        try:
            raw = self.zip.read(self.members[name]) if self.zip else (self.path / name).read_bytes()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{self.where(name)}: cannot read ({exc}); truncated file?") from None
        return raw.decode(encoding)


def _lines(src: _Source, name: str, sep: str, min_fields: int, encoding: str = "latin-1"):
    """Yield ``(line_number, fields)`` of non-empty lines; a short line is an error."""
    text = src.text(name, encoding)
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < min_fields:
            raise DataError(f"{src.where(name)}:{no}: malformed line (expected {min_fields} "
                            f"'{sep if sep != chr(9) else 'TAB'}'-separated fields, got {len(fields)}): {line[:80]!r}")
        yield no, fields


def _int(src: _Source, name: str, no: int, field: str, what: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise DataError(f"{src.where(name)}:{no}: {what} must be an integer, got {field!r}") from None


def read_users(src: _Source) -> Dict[str, np.ndarray]:
    rows = []
    for no, f in _lines(src, "u.user", "|", 5):
        rows.append((_int(src, "u.user", no, f[0], "user id"), _int(src, "u.user", no, f[1], "age"),
                     f[2].strip(), f[3].strip(), no))
    ids = [r[0] for r in rows]
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise DataError(f"{src.where('u.user')}: user ids must be 1..{len(ids)} without gaps or repeats")
    rows.sort()
    occupations = sorted({r[3] for r in rows})
    if src.exists("u.occupation"):
        listed = [l.strip() for l in src.text("u.occupation", "latin-1").splitlines() if l.strip()]
        occupations = listed + sorted(set(occupations) - set(listed))
    occ_index = {o: i for i, o in enumerate(occupations)}
    for _, _, g, _, no in rows:
        if g not in ("M", "F"):
            raise DataError(f"{src.where('u.user')}:{no}: gender must be M or F, got {g!r}")
    return {
        "raw_id": np.array([r[0] for r in rows], dtype=np.int32),
        "age": np.array([r[1] for r in rows], dtype=np.int16),
        "gender": np.array([1 if r[2] == "F" else 0 for r in rows], dtype=np.uint8),
        "occupation": np.array([occ_index[r[3]] for r in rows], dtype=np.int16),
    }


def read_items(src: _Source) -> Tuple[Dict[str, np.ndarray], List[str]]:
    rows = []
    for no, f in _lines(src, "u.item", "|", 5 + NUM_GENRES):
        item = _int(src, "u.item", no, f[0], "movie id")
        flags = [_int(src, "u.item", no, x, "genre flag") for x in f[5:5 + NUM_GENRES]]
        if any(x not in (0, 1) for x in flags):
            raise DataError(f"{src.where('u.item')}:{no}: genre flags must be 0 or 1")
        year = re.search(r"(\d{4})\s*$", f[2].strip())
        rows.append((item, f[1].strip(), int(year.group(1)) if year else 0, flags))
    ids = [r[0] for r in rows]
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise DataError(f"{src.where('u.item')}: movie ids must be 1..{len(ids)} without gaps or repeats")
    rows.sort()
    genres = np.array([r[3] for r in rows], dtype=np.uint8)
    texts = [f"{r[1]}. " + ", ".join(g for g, on in zip(GENRE_NAMES, r[3]) if on) for r in rows]
    return {"raw_id": np.array([r[0] for r in rows], dtype=np.int32), "year": np.array([r[2] for r in rows], np.int16),
            "genres": genres}, texts


def read_ratings(src: _Source, num_users: int, num_items: int) -> np.ndarray:
    """``[n, 4]`` int64 array: user, item (1-based, checked), rating (1-5), time."""
    text = src.text("u.data", "latin-1")
    out = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 4:
            raise DataError(f"{src.where('u.data')}:{no}: malformed line (expected 4 TAB-separated fields: "
                            f"user, item, rating, time; got {len(f)}): {line[:80]!r}")
        try:
            u, i, r, t = (int(x) for x in f)
        except ValueError:
            raise DataError(f"{src.where('u.data')}:{no}: fields must be integers: {line[:80]!r}") from None
        if not 1 <= u <= num_users:
            raise DataError(f"{src.where('u.data')}:{no}: user id {u} out of range 1..{num_users} (u.user)")
        if not 1 <= i <= num_items:
            raise DataError(f"{src.where('u.data')}:{no}: movie id {i} out of range 1..{num_items} (u.item)")
        if not 1 <= r <= 5:
            raise DataError(f"{src.where('u.data')}:{no}: rating {r} out of range 1..5")
        out.append((u, i, r, t))
    if not text.endswith("\n") and out:
        raise DataError(f"{src.where('u.data')}: the last line has no newline: the file looks truncated")
    ratings = np.array(out, dtype=np.int64).reshape(-1, 4)
    if src.exists("u.info"):
        m = re.search(r"(\d+)\s+ratings", src.text("u.info", "latin-1"))
        if m and int(m.group(1)) != len(ratings):
            raise DataError(f"{src.where('u.data')}: has {len(ratings):,} ratings but u.info says "
                            f"{int(m.group(1)):,}: the file looks truncated")
    return ratings


def fetch(cache_dir: Path, url: Optional[str] = None, sha256: Optional[str] = None, progress: bool = False,
          log=print) -> Path:
    """The official ``ml-100k.zip`` in ``<cache_dir>/downloads/``: reused when its SHA-256 matches,
    downloaded (atomically, checked) otherwise. ``url`` / ``sha256`` default to :data:`ML100K_URL` /
    :data:`ML100K_SHA256` (config keys ``data.url`` / ``data.sha256``)."""
    from graphrec.data.download import fetch_file

    url = url or ML100K_URL
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise ConfigError(f"data.sha256 must be 64 hexadecimal digits (a SHA-256), got {sha256!r}")
    name = Path(url.split("?", 1)[0].rstrip("/")).name or "ml-100k.zip"
    if not name.endswith(".zip"):
        name += ".zip"
    return fetch_file(url, Path(cache_dir).expanduser() / "downloads" / name, sha256 or ML100K_SHA256,
                      hint=LOCAL_COPY_HINT, progress=progress, log=log)


def convert(path: Path, positive_rating: int = 4, val_fraction: float = 0.1, test_fraction: float = 0.1,
            text_encoder: str = "auto", text_dim: int = 64, seed: int = 0) -> Dataset:
    """Read MovieLens-100K from ``path`` (folder or zip) into a canonical dataset."""
    src = _Source(path)
    users = read_users(src)
    items, texts = read_items(src)
    nu, na = len(users["raw_id"]), len(items["raw_id"])
    r = read_ratings(src, nu, na)
    order = np.argsort(r[:, 3], kind="stable")
    r = r[order]
    time = r[:, 3]
    impressions = {
        "user": (r[:, 0] - 1).astype(np.int32),
        "author": (r[:, 1] - 1).astype(np.int32),
        "time": time,
        "gift": (r[:, 2] >= positive_rating).astype(np.uint8),
        "value": r[:, 2].astype(np.float32),
        "split": time_split(time, val_fraction, test_fraction),
    }
    text, used = encode_texts(texts, text_encoder, text_dim, seed)
    segments = {"author": np.arange(na, dtype=np.int32), "start": np.zeros(na, dtype=np.int64),
                "comment": text[:, None, :], "comment_len": np.ones(na, dtype=np.int16)}
    week0 = int(time.min()) // WEEK_SECONDS * WEEK_SECONDS
    week = (time - week0) // WEEK_SECONDS
    T = int(week.max()) + 1
    values = np.zeros((na, T, 3), dtype=np.float32)
    a = impressions["author"]
    np.add.at(values, (a, week, 0), 1.0)
    np.add.at(values, (a, week, 1), impressions["gift"].astype(np.float32))
    np.add.at(values, (a, week, 2), impressions["value"])
    stats = {"author": np.arange(na, dtype=np.int32), "start": np.full(na, week0, dtype=np.int64), "values": values}
    meta = {
        "feedback": "explicit",
        "main_label": "gift",
        "label_meaning": {"gift": f"rating >= {positive_rating}"},
        "value_meaning": "the rating (1-5)",
        "modality_meaning": {"comment": f"title + genres text ({used})"},
        "text_encoder": used,
        "stats": {"step_seconds": WEEK_SECONDS, "features": ["ratings", "positives", "rating_sum"]},
        "split": {"kind": "time", "val_fraction": val_fraction, "test_fraction": test_fraction},
        "genre_names": list(GENRE_NAMES),
        "source_path": str(Path(path).resolve()),
    }
    return Dataset(name="movielens-100k", source="movielens", num_users=nu, num_authors=na,
                   tables={"users": users, "authors": items, "impressions": impressions,
                           "segments": segments, "stats": stats}, meta=meta)


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    from graphrec.data.dataset import save_dataset
    from graphrec.data.validate import validate_dataset

    from ._cli import print_counts

    ap = argparse.ArgumentParser(prog="python -m data_prep.movielens", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", help="folder with u.data/u.item/u.user, or the official ml-100k.zip; without it the "
                                   "official zip is downloaded into --cache-dir/downloads (SHA-256 checked)")
    ap.add_argument("--cache-dir", default="cache", help="where the download is kept (default: cache)")
    ap.add_argument("--url", default=None, help=f"download URL (default {ML100K_URL})")
    ap.add_argument("--sha256", default=None, help="expected SHA-256 of the download (default: the official zip's)")
    ap.add_argument("--out", required=True, help="output folder for the canonical dataset")
    ap.add_argument("--positive-rating", type=int, default=4, help="ratings >= this are positives (default 4)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--text-encoder", choices=["auto", "minilm", "tfidf"], default="auto")
    ap.add_argument("--text-dim", type=int, default=64, help="TF-IDF+SVD dimension (default 64)")
    args = ap.parse_args(argv)

    src = Path(args.src) if args.src else fetch(Path(args.cache_dir), args.url, args.sha256,
                                                  progress=sys.stderr.isatty())
    ds = convert(src, args.positive_rating, args.val_fraction, args.test_fraction,
                 args.text_encoder, args.text_dim)
    validate_dataset(ds)
    print_counts(ds, save_dataset(ds, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
