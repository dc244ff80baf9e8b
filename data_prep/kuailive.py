"""KuaiLive (Kuaishou's live-streaming log with gifts) -> canonical dataset.

KuaiLive (2025; 23,772 users, 452,621 streamers, 11.6M live rooms, 5.36M interactions of which
72,646 gifts; CC BY-NC-SA 4.0, published on Zenodo) is a folder of CSVs plus the title embeddings:

``user.csv``      ``user_id`` and side features (strings, range strings such as ``10-100`` / ``5000+``,
                  dates, 0/1 flags)
``streamer.csv``  ``streamer_id`` and side features of the same kinds
``room.csv``      ``live_id``, ``streamer_id``, ``start_timestamp`` (ms), ``live_name_id`` (row of the
                  title embeddings); optional ``end_timestamp``, ``live_type``, ``live_content_category``
``click.csv``     ``user_id, live_id, streamer_id, timestamp`` (ms), ``watch_live_time`` (ms)
``negative.csv``  ``user_id, live_id, streamer_id, timestamp``: the room was shown, not clicked
``gift.csv``      ``user_id, live_id, streamer_id, timestamp, gift_price``
``comment.csv``, ``like.csv``  ``user_id, live_id, streamer_id, timestamp``
``title_embeddings_pca128.npy``  ``[titles, 128]`` float, indexed by ``live_name_id``

Mapping onto the canonical schema: users are users, streamers are authors (ids remapped to 0..n-1 in
the order of the raw ids, which are kept as ``raw_id``). Every row of ``click.csv`` and of
``negative.csv`` is one impression (``time`` in seconds). Labels: ``click`` (1 for click rows, 0 for
negative rows), ``long_view`` (``watch_live_time`` >= ``long_view_seconds``, default 60 s) and ``gift``
(the canonical labels), plus ``comment`` and ``like`` columns (kept, not trained on: the canonical
label set is click / long_view / gift / purchase). A gift, comment or like is attached to the user's
latest click into the same room at or before it (the first click when it precedes them all); ``value``
is the summed ``gift_price`` of the visit's gifts. A (user, room) pair with gifts, comments or likes but
no click row becomes one impression of its own (``click`` = 1, at its first event): an *orphan*; how
many is reported. ``live_id`` is kept on every impression.

Side features: range strings become ordinal codes sorted by their lower bound (then upper; ``a+``
after ``a-b``), other strings category codes in sorted order (code 0 = missing in both), dates float
days since 1970-01-01, integer columns stay integers; the code tables are in ``meta.side_features``.

Content: one segment per room (referenced by an impression and listed in ``room.csv``) starting at the
room's start, whose single ``comment`` token is the room's title embedding (no title: no token);
impressions carry their room's segment row. Statistics: per room with at least one click, comment,
like or gift, ``steps`` steps of ``step_seconds`` from the room's start (default 48 x 5 min) of
viewers (clicks whose watch interval overlaps the step), comments, likes, gifts and gift value; events
after the last step are left out. Two rooms of one streamer that start in the same second are set 1 s
apart (the format wants increasing starts per author). Impressions also keep ``watch_seconds`` (click
rows; 0 otherwise). Bad input stops with the file, line and column.

Gifts are the main label, so ``gift.csv`` must have rows: one with a header only is an error (the
gift task would train on nothing). A gift whose ``live_id`` is not in ``room.csv`` is most likely
log truncation (a room that started before the export's window), but its streamer cannot be checked
against the room and it would have no title and no statistics: such rows are dropped with a warning
giving their count (``log("warning: ...")``, or a :class:`DataWarning` without ``log``; counted in
``meta.conversion.gifts_without_room``). When they are more than ``max_unknown_room_gifts`` of the
gift rows (default 5%), truncation is no longer a likely cause (rather a room.csv from another export)
and the conversion stops; ``--max-unknown-room-gifts 1`` accepts them all.

Checked against the documented schema only (the tests write fixtures from it): the real log was not
reachable from the development machines.
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from graphrec.data.dataset import Dataset
from graphrec.errors import DataError, DataWarning, command

TITLE_EMBEDDINGS = "title_embeddings_pca128.npy"
EVENT_KEYS = ("user_id", "live_id", "streamer_id", "timestamp")
EVENT_FILES = {"click": "click.csv", "negative": "negative.csv", "gift": "gift.csv", "comment": "comment.csv",
               "like": "like.csv"}
FILES = ("user.csv", "streamer.csv", "room.csv", *EVENT_FILES.values(), TITLE_EMBEDDINGS)
STAT_FEATURES = ("viewers", "comments", "likes", "gifts", "gift_value")
DEFAULT_LONG_VIEW_SECONDS = 60.0
DEFAULT_STEP_SECONDS = 300
DEFAULT_STEPS = 48
DEFAULT_MAX_UNKNOWN_ROOM_GIFTS = 0.05        # share of gift rows whose room is not in room.csv, dropped
MISSING = frozenset({"", "nan", "null", "none", "na", "n/a", "\\n"})
MISSING_CODE = "(missing)"

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM = r"-?\d+(?:\.\d+)?"
_RANGE_RE = re.compile(rf"^({_NUM})(?:\s*-\s*({_NUM})|\s*(\+))?$")
_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")


# ----------------------------------------------------------------------------- reading
def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: required KuaiLive file is missing (the folder needs {', '.join(FILES)})")
    return path


def _header(path: Path) -> List[str]:
    import pandas as pd

    try:
        cols = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (expected a header line naming the columns)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: malformed CSV header ({' '.join(str(exc).split())})") from None
    return [str(c).strip() for c in cols]


def _read(path: Path, required: Sequence[str], optional: Sequence[str] = (), dtype: Any = None,
          keep_na: bool = True):
    """The ``required`` (and present ``optional``) columns of a CSV as a DataFrame (row ``i`` is line
    ``i + 2``); a missing file or column, or a malformed line, is a :class:`DataError` naming the file
    (and line / column). ``keep_na=False`` keeps empty cells as empty strings."""
    import pandas as pd

    _require_file(path)
    header = _header(path)
    for col in required:
        if col not in header:
            raise DataError(f"{path}: required column '{col}' is missing (the header has: {', '.join(header)})")
    wanted = set(required) | {c for c in optional if c in header}
    try:
        df = pd.read_csv(path, usecols=lambda c: str(c).strip() in wanted, skip_blank_lines=False, dtype=dtype,
                         keep_default_na=keep_na, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: malformed CSV ({' '.join(str(exc).split())})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _shown(raw: Any) -> str:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == "":
        return "an empty value"
    return repr(str(raw))


def _ints(path: Path, df, col: str) -> np.ndarray:
    """Column ``col`` as int64; an empty or non-integer cell is an error naming file, line and column
    (the line comes from the frame's index, so a filtered frame still reports the right line)."""
    import pandas as pd

    s = df[col]
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(np.int64)
    text = s.astype(str).str.strip() if s.dtype == object or hasattr(s, "cat") else s
    vals = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(vals) | (np.floor(vals) != vals) | (np.abs(vals) >= 2.0 ** 63)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{int(s.index[i]) + 2}: column '{col}' must be an integer, got {_shown(s.iloc[i])}")
    if np.abs(vals).max(initial=0) >= 2.0 ** 53:                 # beyond float64's exact integers: parse exactly
        return np.array([int(str(v).strip()) for v in s], dtype=np.int64)
    return vals.astype(np.int64)


def _floats(path: Path, df, col: str) -> np.ndarray:
    import pandas as pd

    s = df[col]
    vals = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{int(s.index[i]) + 2}: column '{col}' must be a number, got {_shown(s.iloc[i])}")
    return vals


def _nonnegative(path: Path, values: np.ndarray, col: str) -> None:
    bad = np.flatnonzero(values < 0)
    if len(bad):
        raise DataError(f"{path}:{int(bad[0]) + 2}: column '{col}' must be >= 0, got {values[bad[0]]}")


def _unique_ids(path: Path, ids: np.ndarray, col: str) -> None:
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise DataError(f"{path}:{b + 2}: {col} {ids[b]} repeats line {a + 2}")


# ----------------------------------------------------------------------------- side features
def _range_key(text: str) -> Tuple[float, float]:
    m = _RANGE_RE.match(text)
    lo = float(m.group(1))
    hi = float("inf") if m.group(3) else float(m.group(2)) if m.group(2) is not None else lo
    return lo, hi


def encode_column(cats: Sequence[str], codes: np.ndarray) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Encode one side-feature column given as its distinct strings ``cats`` and each row's index into
    them (``codes``). Returns the column and its description (kind, code table)."""
    cats = [str(c).strip() for c in cats]
    missing = np.array([c.lower() in MISSING for c in cats], dtype=bool)
    present = [c for c, m in zip(cats, missing) if not m]
    row_missing = missing[codes] if len(cats) else np.zeros(len(codes), bool)
    if present and not row_missing.any() and all(_INT_RE.match(c) for c in present):
        table = np.array([int(c) for c in cats], dtype=np.int64)
        return table[codes], {"kind": "int"}
    if present and all(_RANGE_RE.match(c) for c in present):
        order = sorted(set(present), key=lambda c: (_range_key(c), c))
        index = {c: i + 1 for i, c in enumerate(order)}
        table = np.array([0 if m else index[c] for c, m in zip(cats, missing)], dtype=np.int32)
        return table[codes], {"kind": "range", "codes": [MISSING_CODE] + order}
    if present and all(_DATE_RE.match(c) for c in present):
        import pandas as pd

        days = np.full(len(cats), np.nan)
        for i, c in enumerate(cats):
            if not missing[i]:
                t = pd.to_datetime(c, errors="coerce")
                days[i] = np.nan if pd.isna(t) else (t - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
        bad = [c for c, d, m in zip(cats, days, missing) if not m and np.isnan(d)]
        if bad:
            return None, {"kind": "date", "bad": bad[0]}
        col = days[codes]
        fill = float(np.median(col[~row_missing])) if (~row_missing).any() else 0.0
        col[row_missing] = fill
        return col.astype(np.float32), {"kind": "date", "unit": "days since 1970-01-01",
                                        "missing_filled_with": fill if row_missing.any() else None}
    if present and not row_missing.any():
        try:
            table = np.array([float(c) for c in cats], dtype=np.float64)
        except ValueError:
            table = None
        if table is not None and np.isfinite(table).all():
            return table[codes].astype(np.float32), {"kind": "float"}
    order = sorted(set(present))
    index = {c: i + 1 for i, c in enumerate(order)}
    table = np.array([0 if m else index[c] for c, m in zip(cats, missing)], dtype=np.int32)
    return (table[codes] if len(cats) else np.zeros(len(codes), np.int32)), {"kind": "category",
                                                                            "codes": [MISSING_CODE] + order}


def read_side_table(path: Path, id_col: str) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, Any]]:
    """``(raw ids, encoded side-feature columns, their descriptions)`` of ``user.csv`` / ``streamer.csv``."""
    df = _read(path, [id_col], optional=[c for c in _header(_require_file(path)) if c != id_col], dtype="category",
               keep_na=False)
    ids = _ints(path, df, id_col)
    _unique_ids(path, ids, id_col)
    cols: Dict[str, np.ndarray] = {}
    info: Dict[str, Any] = {}
    for name in df.columns:
        if name in (id_col, "raw_id"):
            continue
        s = df[name]
        if not hasattr(s, "cat"):
            s = s.astype("category")
        col, desc = encode_column(list(s.cat.categories), s.cat.codes.to_numpy())
        if col is None:
            k = list(s.cat.categories).index(desc["bad"])
            row = int(np.flatnonzero(s.cat.codes.to_numpy() == k)[0])
            raise DataError(f"{path}:{row + 2}: column '{name}' must be a date (YYYY-MM-DD), got {desc['bad']!r}")
        cols[name], info[name] = col, desc
    return ids, cols, info


def _align(ids: np.ndarray, cols: Dict[str, np.ndarray], info: Dict[str, Any],
           universe: np.ndarray) -> Dict[str, np.ndarray]:
    """Side features of the sorted id ``universe``: rows of ``ids`` where listed; otherwise 0 (codes:
    missing; integers) or the fill value of dates / the median of floats."""
    pos = np.searchsorted(universe, ids)
    listed = np.zeros(len(universe), bool)
    listed[pos] = True
    out = {}
    for name, col in cols.items():
        if np.issubdtype(col.dtype, np.floating):
            fill = info[name].get("missing_filled_with")
            fill = float(np.median(col)) if fill is None and len(col) else (fill or 0.0)
            full = np.full(len(universe), fill, dtype=col.dtype)
        else:
            full = np.zeros(len(universe), dtype=col.dtype)
        full[pos] = col
        out[name] = full
    return out


# ----------------------------------------------------------------------------- events
def _read_events(src: Path, kind: str) -> Dict[str, np.ndarray]:
    path = src / EVENT_FILES[kind]
    extra = {"click": ["watch_live_time"], "gift": ["gift_price"]}.get(kind, [])
    df = _read(path, [*EVENT_KEYS, *extra])
    ev = {c: _ints(path, df, c) for c in EVENT_KEYS}
    if kind == "click":
        ev["watch_live_time"] = _ints(path, df, "watch_live_time")
        _nonnegative(path, ev["watch_live_time"], "watch_live_time")
    if kind == "gift":
        ev["gift_price"] = _floats(path, df, "gift_price")
        _nonnegative(path, ev["gift_price"], "gift_price")
    ev["path"] = path
    return ev


def _read_rooms(src: Path) -> Dict[str, Any]:
    path = src / "room.csv"
    req = ["live_id", "streamer_id", "start_timestamp", "live_name_id"]
    df = _read(path, req, optional=["end_timestamp", "live_type", "live_content_category"],
               dtype={"live_content_category": "category"})
    rooms: Dict[str, Any] = {c: _ints(path, df, c) for c in ("live_id", "streamer_id", "start_timestamp")}
    empty = df["live_name_id"].isna().to_numpy()                 # a room without a title
    rooms["live_name_id"] = np.full(len(df), -1, np.int64)
    if (~empty).any():
        rooms["live_name_id"][~empty] = _ints(path, df[~empty], "live_name_id")
    rooms["line"] = np.arange(len(df)) + 2
    if "live_type" in df.columns:
        rooms["live_type"] = _ints(path, df, "live_type")
    if "live_content_category" in df.columns:
        s = df["live_content_category"]
        if not hasattr(s, "cat"):
            s = s.astype(str).astype("category")
        cats = [str(c).strip() for c in s.cat.categories]
        order = sorted({c for c in cats if c.lower() not in MISSING})
        index = {c: i + 1 for i, c in enumerate(order)}
        table = np.array([index.get(c, 0) for c in cats], dtype=np.int32)
        codes = s.cat.codes.to_numpy()
        rooms["category"] = np.where(codes >= 0, table[np.maximum(codes, 0)] if len(table) else 0, 0).astype(np.int32)
        rooms["category_codes"] = [MISSING_CODE] + order
    # a room listed more than once (e.g. once per day it ran): keep its earliest start
    order = np.lexsort((rooms["start_timestamp"], rooms["live_id"]))
    lid, sid = rooms["live_id"][order], rooms["streamer_id"][order]
    same = lid[1:] == lid[:-1]
    clash = np.flatnonzero(same & (sid[1:] != sid[:-1]))
    if len(clash):
        a, b = rooms["line"][order[clash[0]]], rooms["line"][order[clash[0] + 1]]
        raise DataError(f"{path}:{max(a, b)}: live_id {lid[clash[0]]} has streamer_id {sid[clash[0] + 1]} here but "
                        f"{sid[clash[0]]} on line {min(a, b)}")
    keep = order[np.concatenate([[True], ~same])]
    out = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in rooms.items()}
    out["duplicates"] = int(same.sum())
    out["path"] = path
    return out


def _check_streamers(ev: Dict[str, Any], rooms: Dict[str, Any]) -> np.ndarray:
    """Row of ``rooms`` of each event (-1: the room is not in room.csv); an event whose streamer_id
    differs from its room's (in room.csv) is an error naming the file and line."""
    pos = np.searchsorted(rooms["live_id"], ev["live_id"])
    pos_c = np.minimum(pos, max(len(rooms["live_id"]) - 1, 0))
    known = (pos < len(rooms["live_id"])) & (rooms["live_id"][pos_c] == ev["live_id"]) if len(rooms["live_id"]) \
        else np.zeros(len(ev["live_id"]), bool)
    bad = np.flatnonzero(known & (rooms["streamer_id"][pos_c] != ev["streamer_id"]))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{ev['path']}:{i + 2}: streamer_id {ev['streamer_id'][i]} differs from room.csv's streamer_id "
                        f"{rooms['streamer_id'][pos_c[i]]} for live_id {ev['live_id'][i]} "
                        f"(room.csv:{rooms['line'][pos_c[i]]})")
    return np.where(known, pos_c, -1)


def _load_titles(src: Path, rooms: Dict[str, Any]) -> np.ndarray:
    path = _require_file(src / TITLE_EMBEDDINGS)
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable or truncated .npy ({exc})") from None
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise DataError(f"{path}: expected a [titles, d] numeric array, got shape {emb.shape} dtype {emb.dtype}")
    emb = emb.astype(np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: non-finite values in rows {np.flatnonzero(bad)[:5].tolist()}")
    over = np.flatnonzero(rooms["live_name_id"] >= len(emb))
    if len(over):
        i = int(over[0])
        raise DataError(f"{rooms['path']}:{rooms['line'][i]}: live_name_id {rooms['live_name_id'][i]} is outside the "
                        f"{len(emb):,} rows of {TITLE_EMBEDDINGS}")
    return emb


def _strict_starts(author: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Starts made strictly increasing within each author (rows sorted by author, then start): a start
    equal to or before the previous one of its author becomes that one + 1."""
    import pandas as pd

    idx = np.arange(len(start), dtype=np.int64)
    return pd.Series(start - idx).groupby(author).cummax().to_numpy(np.int64) + idx


def _gifts_in_rooms(gifts: Dict[str, Any], known: np.ndarray, max_share: float,
                    warn: Callable[[str], None]) -> int:
    """Keep the gift rows whose room is in room.csv (``known``); returns how many were dropped. No gift
    rows at all, or more unknown rooms than ``max_share`` of them, is an error (see the module docstring)."""
    path, n = gifts["path"], len(known)
    if n == 0:
        raise DataError(f"{path}: no gift rows (expected at least one row of {', '.join(EVENT_KEYS)}, gift_price "
                        f"under the header: gift is KuaiLive's main label, the gift task would train on nothing)")
    drop = np.flatnonzero(~known)
    if not len(drop):
        return 0
    first = f"first on line {int(drop[0]) + 2}: live_id {gifts['live_id'][drop[0]]}"
    if len(drop) > max_share * n or len(drop) == n:
        raise DataError(f"{path}: {len(drop):,} of {n:,} gift rows ({len(drop) / n:.1%}) have a live_id that is not "
                        f"in room.csv ({first}); expected at most {max_share:.0%} (rooms cut off at the log's "
                        f"edges). Check that room.csv comes from the same KuaiLive export, or accept them with "
                        f"--max-unknown-room-gifts (python -m data_prep.kuailive)")
    warn(f"{path}: dropped {len(drop):,} of {n:,} gift rows ({len(drop) / n:.2%}) whose live_id is not in "
         f"room.csv ({first}); likely rooms cut off at the log's edges")
    for k, v in gifts.items():
        if isinstance(v, np.ndarray):
            gifts[k] = v[known]
    return len(drop)


# ----------------------------------------------------------------------------- conversion
def convert(path: Path, long_view_seconds: float = DEFAULT_LONG_VIEW_SECONDS, step_seconds: int = DEFAULT_STEP_SECONDS,
            steps: int = DEFAULT_STEPS, log: Optional[Callable[[str], None]] = None,
            max_unknown_room_gifts: float = DEFAULT_MAX_UNKNOWN_ROOM_GIFTS) -> Dataset:
    """Read the KuaiLive folder ``path`` into a canonical dataset (see the module docstring). Progress
    goes to ``log``; warnings too, or as :class:`DataWarning` without it."""
    src = Path(path)
    if log is None:
        log, warn = (lambda s: None), (lambda s: warnings.warn(s, DataWarning, stacklevel=4))
    else:
        warn = (lambda s: log(f"warning: {s}"))
    if not src.is_dir():
        raise DataError(f"{src}: KuaiLive folder not found (expected {', '.join(FILES)})")
    if step_seconds < 1 or steps < 2:
        raise DataError(f"KuaiLive statistics need step_seconds >= 1 and steps >= 2, got {step_seconds}, {steps}")
    for name in FILES:
        _require_file(src / name)
    rooms = _read_rooms(src)
    titles = _load_titles(src, rooms)
    ev = {k: _read_events(src, k) for k in EVENT_FILES}
    known = {k: _check_streamers(e, rooms) >= 0 for k, e in ev.items()}
    gifts_without_room = _gifts_in_rooms(ev["gift"], known["gift"], max_unknown_room_gifts, warn)
    u_ids, u_cols, u_info = read_side_table(src / "user.csv", "user_id")
    s_ids, s_cols, s_info = read_side_table(src / "streamer.csv", "streamer_id")

    # id universes: everyone listed or seen, in raw-id order
    users = np.unique(np.concatenate([u_ids] + [e["user_id"] for e in ev.values()]))
    authors = np.unique(np.concatenate([s_ids, rooms["streamer_id"]] + [e["streamer_id"] for e in ev.values()]))
    live = np.unique(np.concatenate([rooms["live_id"]] + [e["live_id"] for e in ev.values()]))
    R = len(live)
    for e in ev.values():
        e["u"] = np.searchsorted(users, e["user_id"])
        e["a"] = np.searchsorted(authors, e["streamer_id"])
        e["r"] = np.searchsorted(live, e["live_id"])
        e["pair"] = e["u"].astype(np.int64) * R + e["r"]

    # attach gifts / comments / likes to a click of the same (user, room), or make orphan impressions
    click = ev["click"]
    nc = len(click["u"])
    all_ts = np.unique(np.concatenate([e["timestamp"] for e in ev.values() if e is not ev["negative"]]))
    pairs = np.unique(np.concatenate([e["pair"] for k, e in ev.items() if k != "negative"]))
    T1 = len(all_ts) + 1

    def key(e: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        p = np.searchsorted(pairs, e["pair"])
        return p, p * T1 + np.searchsorted(all_ts, e["timestamp"]) + 1

    cp, ck = key(click)
    corder = np.argsort(ck, kind="stable")
    ck_sorted, cp_sorted = ck[corder], cp[corder]
    labels = {k: np.zeros(nc, np.uint8) for k in ("gift", "comment", "like")}
    value = np.zeros(nc, np.float64)
    orphan_rows: Dict[str, np.ndarray] = {}
    attached: Dict[str, int] = {}
    for kind in ("gift", "comment", "like"):
        e = ev[kind]
        p, k = key(e)
        pos = np.searchsorted(ck_sorted, k, side="right") - 1             # latest click at or before
        ok = (pos >= 0) & (cp_sorted[np.maximum(pos, 0)] == p) if nc else np.zeros(len(p), bool)
        first = np.searchsorted(ck_sorted, p * T1, side="left")           # else the pair's first click
        first_c = np.minimum(first, max(nc - 1, 0))
        ok_first = ~ok & (first < nc) & (cp_sorted[first_c] == p) if nc else np.zeros(len(p), bool)
        row = np.where(ok, corder[np.maximum(pos, 0)] if nc else 0, corder[first_c] if nc else 0)
        hit = ok | ok_first
        labels[kind][row[hit]] = 1
        if kind == "gift":
            np.add.at(value, row[hit], e["gift_price"][hit])
        attached[kind] = int(hit.sum())
        orphan_rows[kind] = np.flatnonzero(~hit)

    # orphans: one impression per (user, room) pair without a click row
    o_pair = np.concatenate([ev[k]["pair"][orphan_rows[k]] for k in ("gift", "comment", "like")])
    o_ts = np.concatenate([ev[k]["timestamp"][orphan_rows[k]] for k in ("gift", "comment", "like")])
    o_a = np.concatenate([ev[k]["a"][orphan_rows[k]] for k in ("gift", "comment", "like")])
    o_kind = np.concatenate([np.full(len(orphan_rows[k]), i) for i, k in enumerate(("gift", "comment", "like"))])
    o_price = np.concatenate([ev["gift"]["gift_price"][orphan_rows["gift"]],
                              np.zeros(len(o_pair) - len(orphan_rows["gift"]))])
    uniq_pair, inv = np.unique(o_pair, return_inverse=True)
    no = len(uniq_pair)
    orphan = {"time_ms": np.full(no, np.iinfo(np.int64).max, np.int64), "a": np.zeros(no, np.int64),
              "value": np.zeros(no, np.float64)}
    np.minimum.at(orphan["time_ms"], inv, o_ts)
    orphan["a"][inv] = o_a
    np.add.at(orphan["value"], inv, o_price)
    for i, k in enumerate(("gift", "comment", "like")):
        orphan[k] = np.zeros(no, np.uint8)
        orphan[k][inv[o_kind == i]] = 1
    orphan["u"], orphan["r"] = uniq_pair // R, uniq_pair % R

    # impressions: clicks, orphans, negatives; sorted by time (stable)
    neg = ev["negative"]
    nn = len(neg["u"])
    if nc + nn + no == 0:
        raise DataError(f"{src}: no impressions: click.csv and negative.csv have no rows and there is no gift, "
                        f"comment or like")
    watch = click["watch_live_time"].astype(np.float64) / 1000.0
    imp = {
        "user": np.concatenate([click["u"], orphan["u"], neg["u"]]).astype(np.int32),
        "author": np.concatenate([click["a"], orphan["a"], neg["a"]]).astype(np.int32),
        "time": np.concatenate([click["timestamp"], orphan["time_ms"], neg["timestamp"]]) // 1000,
        "click": np.concatenate([np.ones(nc + no, np.uint8), np.zeros(nn, np.uint8)]),
        "long_view": np.concatenate([(watch >= long_view_seconds).astype(np.uint8), np.zeros(no + nn, np.uint8)]),
        "gift": np.concatenate([labels["gift"], orphan["gift"], np.zeros(nn, np.uint8)]),
        "value": np.concatenate([value, orphan["value"], np.zeros(nn)]).astype(np.float32),
        "comment": np.concatenate([labels["comment"], orphan["comment"], np.zeros(nn, np.uint8)]),
        "like": np.concatenate([labels["like"], orphan["like"], np.zeros(nn, np.uint8)]),
        "watch_seconds": np.concatenate([watch, np.zeros(no + nn)]).astype(np.float32),
        "live_id": live[np.concatenate([click["r"], orphan["r"], neg["r"]])],
    }
    room_of_imp = np.concatenate([click["r"], orphan["r"], neg["r"]])
    order = np.argsort(imp["time"], kind="stable")
    imp = {k: v[order] for k, v in imp.items()}
    room_of_imp = room_of_imp[order]

    # rooms as segments (one title token each) and statistic sequences
    room_row_of_live = np.full(R, -1, np.int64)                 # live index -> row of room.csv
    room_row_of_live[np.searchsorted(live, rooms["live_id"])] = np.arange(len(rooms["live_id"]))
    seg_live = np.unique(room_of_imp)
    seg_live = seg_live[room_row_of_live[seg_live] >= 0]
    rr = room_row_of_live[seg_live]
    seg_author = np.searchsorted(authors, rooms["streamer_id"][rr])
    seg_start_raw = rooms["start_timestamp"][rr] // 1000
    so = np.lexsort((seg_live, seg_start_raw, seg_author))
    seg_live, rr, seg_author, seg_start_raw = seg_live[so], rr[so], seg_author[so], seg_start_raw[so]
    seg_start = _strict_starts(seg_author, seg_start_raw)
    name_id = rooms["live_name_id"][rr]
    has_title = name_id >= 0
    tokens = np.zeros((len(rr), 1, titles.shape[1]), np.float32)
    tokens[has_title, 0] = titles[name_id[has_title]]
    segments: Dict[str, np.ndarray] = {"author": seg_author.astype(np.int32), "start": seg_start,
                                       "comment": tokens, "comment_len": has_title.astype(np.int16),
                                       "live_id": live[seg_live]}
    if "live_type" in rooms:
        segments["live_type"] = rooms["live_type"][rr]
    if "category" in rooms:
        segments["category"] = rooms["category"][rr]
    seg_of_live = np.full(R, -1, np.int64)
    seg_of_live[seg_live] = np.arange(len(seg_live))
    imp["segment"] = seg_of_live[room_of_imp].astype(np.int32)

    # statistics: rooms with at least one click / comment / like / gift
    active = np.zeros(R, bool)
    for k in ("click", "gift", "comment", "like"):
        active[ev[k]["r"]] = True
    stat_rows = np.flatnonzero(active[seg_live])                # rows of the segments table, same order
    stat_of_live = np.full(R, -1, np.int64)
    stat_of_live[seg_live[stat_rows]] = np.arange(len(stat_rows))
    st_start = seg_start[stat_rows]
    values = np.zeros((len(stat_rows), steps, len(STAT_FEATURES)), np.float32)   # counts exact below 2**24

    def event_steps(e: Dict[str, np.ndarray], ts_ms: np.ndarray):
        row = stat_of_live[e["r"]]
        ok = row >= 0
        step = (ts_ms // 1000 - st_start[np.maximum(row, 0)]) // step_seconds
        step = np.maximum(step, 0)                               # an event logged before the room's start
        ok &= step < steps
        return row[ok], step[ok], ok

    row, first, ok = event_steps(click, click["timestamp"])
    last_s = (click["timestamp"] + click["watch_live_time"]) // 1000
    r_all = stat_of_live[click["r"]]
    last = (last_s - st_start[np.maximum(r_all, 0)]) // step_seconds
    last = np.minimum(np.maximum(last[ok], first), steps - 1)
    diff = np.zeros((len(stat_rows), steps + 1), np.float32)
    np.add.at(diff, (row, first), 1.0)
    np.add.at(diff, (row, last + 1), -1.0)
    values[..., 0] = np.cumsum(diff, axis=1)[:, :steps]
    counted = (("comment", None), ("like", None), ("gift", None), ("gift", "gift_price"))   # features 1..4
    for f, (k, weight) in enumerate(counted, start=1):
        e = ev[k]
        row, step, ok = event_steps(e, e["timestamp"])
        np.add.at(values, (row, step, f), 1.0 if weight is None else e[weight][ok])
    stats = {"author": seg_author[stat_rows].astype(np.int32), "start": st_start.astype(np.int64),
             "values": values, "live_id": live[seg_live[stat_rows]]}

    users_table = {"raw_id": users.astype(np.int64), **_align(u_ids, u_cols, u_info, users)}
    authors_table = {"raw_id": authors.astype(np.int64), **_align(s_ids, s_cols, s_info, authors)}
    rooms_unknown = int(((room_row_of_live < 0) & np.isin(np.arange(R), room_of_imp)).sum())
    orphan_events = {k: int(len(orphan_rows[k])) for k in ("gift", "comment", "like")}
    conversion = {
        "click_rows": int(nc), "negative_rows": int(nn), "orphan_impressions": int(no),
        "orphan_events": orphan_events, "attached_events": attached, "gifts_without_room": gifts_without_room,
        "rooms_without_room_row": rooms_unknown, "duplicate_room_rows": rooms["duplicates"],
        "users_without_profile": int(len(users) - len(u_ids)),
        "streamers_without_profile": int(len(authors) - len(s_ids)),
        "segment_starts_shifted": int((seg_start != seg_start_raw).sum()),
    }
    log(f"kuailive: {nc:,} click rows, {nn:,} negative rows, {no:,} orphan impressions (a gift, comment or like "
        f"without a click row: {orphan_events['gift']:,} gift, {orphan_events['comment']:,} comment, "
        f"{orphan_events['like']:,} like events)")
    if rooms_unknown:
        log(f"kuailive: {rooms_unknown:,} rooms of impressions are not in room.csv (no title, no statistics)")
    meta = {
        "feedback": "explicit",
        "main_label": "gift",
        "label_meaning": {"click": "entered the room (a click.csv row, or a gift/comment/like without one)",
                          "long_view": f"watch_live_time >= {long_view_seconds:g} s",
                          "gift": "sent gifts in the room during this visit (gift.csv)"},
        "extra_labels": {"comment": "commented during this visit (comment.csv)",
                         "like": "liked during this visit (like.csv)"},
        "value_meaning": "summed gift_price of the visit's gifts",
        "modality_meaning": {"comment": f"the room's title embedding ({TITLE_EMBEDDINGS}, "
                                        f"{titles.shape[1]}-d), one token per room"},
        "segments": {"per": "room", "start": "the room's start_timestamp (s)"},
        "stats": {"step_seconds": int(step_seconds), "steps": int(steps), "features": list(STAT_FEATURES),
                  "per": "room with a click, comment, like or gift"},
        "side_features": {"users": u_info, "authors": s_info},
        "room_categories": rooms.get("category_codes"),
        "long_view_seconds": float(long_view_seconds),
        "conversion": conversion,
        "split": {"kind": "time"},
        "source_path": str(src.resolve()),
    }
    return Dataset(name="kuailive", source="kuailive", num_users=len(users), num_authors=len(authors),
                   tables={"users": users_table, "authors": authors_table, "impressions": imp,
                           "segments": segments, "stats": stats}, meta=meta)


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    from graphrec.data.dataset import save_dataset
    from graphrec.data.validate import validate_dataset

    from ._cli import print_counts

    ap = argparse.ArgumentParser(prog="python -m data_prep.kuailive", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="folder with KuaiLive's CSVs and title_embeddings_pca128.npy")
    ap.add_argument("--out", required=True, help="output folder for the canonical dataset")
    ap.add_argument("--long-view-seconds", type=float, default=DEFAULT_LONG_VIEW_SECONDS,
                    help=f"watch time at or above this is a long_view (default {DEFAULT_LONG_VIEW_SECONDS:g})")
    ap.add_argument("--step-seconds", type=int, default=DEFAULT_STEP_SECONDS,
                    help=f"step of the per-room statistics (default {DEFAULT_STEP_SECONDS})")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help=f"steps per room sequence (default {DEFAULT_STEPS})")
    ap.add_argument("--max-unknown-room-gifts", type=float, default=DEFAULT_MAX_UNKNOWN_ROOM_GIFTS,
                    help="largest share of gift rows whose live_id is not in room.csv that are dropped with a "
                         f"warning rather than stopping the conversion (default {DEFAULT_MAX_UNKNOWN_ROOM_GIFTS:g})")
    args = ap.parse_args(argv)

    ds = convert(Path(args.src), args.long_view_seconds, args.step_seconds, args.steps,
                 log=lambda m: print(m, file=sys.stderr), max_unknown_room_gifts=args.max_unknown_room_gifts)
    validate_dataset(ds)
    print_counts(ds, save_dataset(ds, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
