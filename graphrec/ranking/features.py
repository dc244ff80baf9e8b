"""What the ranker may know about a (user, author, time), and nothing it may not.

* :class:`TensorStore` — node data (Θ, expansions, segment tokens, product tables) as plain tensors,
  looked up by node id, on any device. The distributed trainers use a DGL ``DistGraph`` store with the
  same ``rows`` (``graphrec.dist.store``), where each call is one pull per node type.
* :class:`History` — a user's behaviour history under one rule, used for training, evaluation, full
  ranking and serving alike: with real timestamps, the positives strictly before the row's time;
  without (rows carry only their split, as in TikTok), the user's *training* positives, minus the
  training row's own target, so a training row sees what an evaluation row sees, never its label.
* :class:`Activity` — time-aware activity of an author (its popularity) or of a user (how often they
  act): impressions and positives in windows before the row's time (no future); without timestamps,
  the training counts with a training row's own interaction left out.
* :class:`RoomStatistics` — the room's latest real-time statistics and the frozen statistic
  forecaster's features of the window before the row's step, as one table per (author, step)
  computed offline (LiveForesighter: the forecaster's outputs are added to the raw statistics).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

PAD = -1


def per_snapshot(name: str) -> bool:
    """Whether node data ``name`` has a graph-snapshot axis (``[N, snapshots, ...]``): Θ and the expansions,
    which are rebuilt with the gifting graph (``graph.snapshots``)."""
    return name == "theta" or name.startswith("exp_")


def at_snapshot(rows: torch.Tensor, snapshot: torch.Tensor) -> torch.Tensor:
    """``rows [n, S, ...]`` read at each row's ``snapshot [n]`` (``-1``, no snapshot yet, reads the first:
    the batch builder blanks those rows)."""
    idx = torch.arange(len(rows), device=rows.device)
    return rows[idx, snapshot.to(rows.device).long().clamp(min=0)]


class TensorStore:
    """``{ntype: {name: tensor}}`` node data, read by node id (see the module docstring). Θ and the
    expansions are ``[N, snapshots, ...]`` (:func:`per_snapshot`); a read with ``snapshot`` takes each id's
    row of that snapshot."""

    def __init__(self, data: Mapping[str, Mapping[str, torch.Tensor]], device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = {nt: {k: v.to(self.device) for k, v in feats.items()} for nt, feats in data.items()}

    def rows(self, ntype: str, ids: torch.Tensor, names: Sequence[str],
             snapshot: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{name: tensor [len(ids), ...]}``: the features ``names`` of nodes ``ids``; with ``snapshot [len(ids)]``
        the per-snapshot features (:func:`per_snapshot`) of that snapshot only, else all of them."""
        feats = self.data.get(ntype, {})
        missing = [n for n in names if n not in feats]
        if missing:
            raise KeyError(f"feature store has no {ntype} feature(s) {missing} (it has {sorted(feats)})")
        idx = ids.to(self.device).long()
        out = {}
        for n in names:
            t = feats[n]
            if snapshot is not None and per_snapshot(n):      # one row of the [N * S, ...] view: no over-read
                S = t.shape[1]
                out[n] = t.reshape(-1, *t.shape[2:])[idx * S + snapshot.to(self.device).long().clamp(min=0)]
            else:
                out[n] = t[idx]
        return out

    def swap(self, tables: Mapping[str, torch.Tensor]):
        """Serve ``{name: tensor}`` instead of the node data of that name (whatever its node type) until
        the returned function is called."""
        old = {}
        for nt, feats in self.data.items():
            for name, t in tables.items():
                if name in feats:
                    old[(nt, name)] = feats[name]
                    feats[name] = t.to(self.device)

        def restore() -> None:
            for (nt, name), t in old.items():
                self.data[nt][name] = t
        return restore


def _left_compact(ids: np.ndarray, valid: np.ndarray, length: int) -> np.ndarray:
    """Per row, the valid entries moved to the front (order kept), PAD after, ``length`` columns."""
    order = np.argsort(~valid, axis=1, kind="stable")
    ids = np.take_along_axis(np.where(valid, ids, PAD), order, axis=1)
    out = np.full((len(ids), length), PAD, dtype=np.int64)
    w = min(length, ids.shape[1])
    out[:, :w] = ids[:, :w]
    return out


class ValueCodes:
    """An impression's value (the rating on MovieLens, the gift value on the simulator) as a small code for
    an embedding (``ranker.history_values``): each distinct training value is its own code when there are
    at most ``max_codes`` of them; else zero (no gift) is one code and the other values fall in quantile
    bins of the non-zero training values. Code 0 is padding."""

    def __init__(self, train_values: np.ndarray, max_codes: int = 16) -> None:
        v = np.asarray(train_values, dtype=np.float64)
        distinct = np.unique(v)
        if len(distinct) <= max_codes:
            self.edges = (distinct[1:] + distinct[:-1]) / 2              # midpoints: one code per value
        else:
            nonzero = v[v != 0]
            bins = max_codes - (len(nonzero) < len(v))
            self.edges = np.unique(np.quantile(nonzero, np.linspace(0, 1, bins + 1)[1:-1]))
            if len(nonzero) < len(v):                                    # zero below every bin of its own
                self.edges = np.unique(np.concatenate([[np.min(np.abs(nonzero)) / 2], self.edges]))
        self.num_codes = len(self.edges) + 2                             # the bins, and padding

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="right").astype(np.int64) + 1


class History:
    """Each user's positives of the main label, for "what may this row see" look-ups (module docstring).

    ``timed``: every positive is kept, sorted by time; a row at time ``t`` sees the latest ``length``
    strictly before ``t``. Untimed: only training positives are kept (distinct pairs); a row sees up to
    ``length`` of them, without ``exclude`` (a training row's own target). ``codes`` (timed only): each
    entry's value code (:class:`ValueCodes`), returned beside the ids by :meth:`lookup_codes`."""

    def __init__(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray, num_users: int,
                 timed: bool = True, codes: Optional[np.ndarray] = None) -> None:
        self.timed = timed
        if codes is not None and not timed:
            raise ValueError("History: value codes need timed data (an untimed history keeps distinct pairs)")
        if not timed:                          # one entry per distinct (user, author) pair
            width = int(np.max(authors, initial=0)) + 1
            key = np.unique(np.asarray(users, dtype=np.int64) * width + authors)
            users, authors, times = key // width, key % width, np.zeros(len(key), np.int64)
        order = np.lexsort((times, users))
        self.users = users[order].astype(np.int64)
        self.authors = authors[order].astype(np.int64)
        self.times = np.asarray(times)[order]
        self.codes = None if codes is None else np.asarray(codes, dtype=np.int64)[order]
        self.start = np.searchsorted(self.users, np.arange(num_users + 1))

    def lookup(self, users: np.ndarray, times: np.ndarray, length: int,
               exclude: Optional[np.ndarray] = None) -> np.ndarray:
        """``[B, length]`` author ids each row may see (PAD-filled on the right)."""
        return self._lookup(users, times, length, exclude)[0]

    def lookup_codes(self, users: np.ndarray, times: np.ndarray, length: int):
        """``([B, length] author ids, [B, length] their value codes)``; code 0 where the id is PAD."""
        if self.codes is None:
            raise ValueError("History.lookup_codes: this history was built without value codes")
        return self._lookup(users, times, length, None, True)

    def _lookup(self, users, times, length, exclude=None, with_codes=False):
        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), length), PAD, dtype=np.int64)
        if length == 0 or len(self.users) == 0:
            return out, np.zeros_like(out) if with_codes else None
        lo, hi = self.start[users], self.start[users + 1]
        if self.timed:
            end = self._first_not_before(lo, hi, np.asarray(times))
            begin = np.maximum(lo, end - length)
            cols = np.arange(length)
            idx = begin[:, None] + cols[None, :]
            valid = idx < end[:, None]
            safe = np.where(valid, idx, 0)
            ids = np.where(valid, self.authors[safe], PAD)
            return ids, (np.where(valid, self.codes[safe], 0) if with_codes else None)
        width = length + (exclude is not None)
        idx = lo[:, None] + np.arange(width)[None, :]
        valid = idx < hi[:, None]
        ids = self.authors[np.where(valid, idx, 0)]
        if exclude is not None:
            valid &= ids != np.asarray(exclude, dtype=np.int64)[:, None]
        return _left_compact(ids, valid, length), None

    def _first_not_before(self, lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Per row, the first index in ``[lo, hi)`` whose time is ``>= t`` (vectorised binary search)."""
        left, right = lo.copy(), hi.copy()
        last = len(self.times) - 1
        while True:
            active = left < right
            if not active.any():
                return left
            mid = (left + right) // 2
            go_right = active & (self.times[np.minimum(mid, last)] < t)
            left = np.where(go_right, mid + 1, left)
            right = np.where(active & ~go_right, mid, right)


class Activity:
    """Time-aware activity of authors or users (module docstring): ``features(ids, times, own)`` ``[N, F]``.

    Timed: for each window ``w`` (seconds) and for all time, the id's impressions and positives in
    ``[t - w, t)``, as ``log1p`` counts plus the smoothed positive rate (no rate for implicit data, where
    every impression is a positive). Untimed: the training counts, less ``own`` (1 where the row is a
    training interaction of that id, so it does not count itself)."""

    def __init__(self, ids: np.ndarray, times: np.ndarray, positives: np.ndarray, num_ids: int,
                 timed: bool, windows: Sequence[float] = (), implicit: bool = False, prior_weight: float = 10.0) -> None:
        self.timed, self.implicit, self.num_ids = timed, implicit, num_ids
        self.windows = [float(w) for w in windows] if timed else []
        self.prior_weight = prior_weight
        ids = np.asarray(ids, dtype=np.int64)
        positives = np.asarray(positives, dtype=np.float64)
        self.prior = float(positives.mean()) if len(positives) else 0.0
        if timed:
            order = np.lexsort((times, ids))
            self.t0 = int(np.min(times)) if len(times) else 0
            span = (int(np.max(times)) - self.t0 + 2) if len(times) else 2
            self.span = span
            self.keys = ids[order] * span + (np.asarray(times, dtype=np.int64)[order] - self.t0)
            self.cum_pos = np.concatenate([[0.0], np.cumsum(positives[order])])
        else:
            self.count = np.bincount(ids, minlength=num_ids).astype(np.float64)
            self.pos = np.bincount(ids, weights=positives, minlength=num_ids)

    @property
    def dim(self) -> int:
        per = 2 if self.implicit else 3
        return per * (len(self.windows) + 1)

    def _counts(self, ids: np.ndarray, lo_t: np.ndarray, hi_t: np.ndarray):
        """Impressions and positives of ``ids`` with time in ``[lo_t, hi_t)``."""
        base = ids * self.span
        lo = np.searchsorted(self.keys, base + np.clip(lo_t - self.t0, 0, self.span - 1), side="left")
        hi = np.searchsorted(self.keys, base + np.clip(hi_t - self.t0, 0, self.span - 1), side="left")
        return (hi - lo).astype(np.float64), self.cum_pos[hi] - self.cum_pos[lo]

    def features(self, ids: np.ndarray, times: np.ndarray, own: Optional[np.ndarray] = None) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        cols = []
        if self.timed:
            t = np.asarray(times, dtype=np.int64)
            for w in self.windows + [float("inf")]:
                lo_t = np.full_like(t, self.t0) if w == float("inf") else t - int(w)
                cols.append(self._counts(ids, lo_t, t))
        else:
            n, p = self.count[ids].copy(), self.pos[ids].copy()
            if own is not None:
                n -= own
                p -= own
            cols.append((n, p))
        out = []
        for n, p in cols:
            out += [np.log1p(n), np.log1p(p)]
            if not self.implicit:
                out.append((p + self.prior_weight * self.prior) / (n + self.prior_weight))
        return np.stack(out, axis=1).astype(np.float32)


class RoomStatistics:
    """A room's statistics as the ranker sees them at a (author, step): see the module docstring.

    ``values [A, T, F]`` per author (zeros for authors without statistics), ``start [A]`` seconds.
    ``realtime(authors, steps)``: the latest ``realtime_steps`` steps strictly before ``step``, ``log1p``,
    flattened. ``forecast(authors, steps)``: the forecaster's ``ranker_features`` of the
    ``input_steps``-step window strictly before ``step``, read from a table computed once for every
    (author, step) — or, when that table would exceed ``max_table_bytes``, computed per batch for the
    batch's distinct (author, step) pairs."""

    def __init__(self, values: np.ndarray, start: np.ndarray, step_seconds: float, input_steps: int,
                 log1p: bool = True, forecaster: Optional[torch.nn.Module] = None, realtime_steps: int = 0,
                 max_table_bytes: int = 2 << 30, device: str = "cpu", batch_size: int = 8192) -> None:
        self.values = torch.from_numpy(np.asarray(values, dtype=np.float32))
        if log1p:
            self.values = torch.log1p(self.values.clamp(min=0))
        self.start = np.asarray(start, dtype=np.int64)
        self.step_seconds, self.input_steps, self.realtime_steps = float(step_seconds), input_steps, realtime_steps
        self.forecaster = forecaster
        self.device = torch.device(device)
        self.batch_size = batch_size
        A, T, F = self.values.shape
        self.table: Optional[torch.Tensor] = None
        if forecaster is not None:
            dim = self._forecast_dim()
            if A * (T + 1) * dim * 2 <= max_table_bytes:      # float16
                self.table = self._compute(torch.arange(A).repeat_interleave(T + 1),
                                           torch.arange(T + 1).repeat(A)).to(torch.float16).view(A, T + 1, dim)

    @property
    def num_steps(self) -> int:
        return self.values.shape[1]

    @property
    def realtime_dim(self) -> int:
        return self.realtime_steps * self.values.shape[2]

    def _forecast_dim(self) -> int:
        f = self.forecaster
        return f.num_variates * (f.horizon + f.dim)

    @property
    def forecast_dim(self) -> int:
        return self._forecast_dim() if self.forecaster is not None else 0

    def steps(self, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The statistic step of each (author, time), clamped to ``[0, T]``."""
        s = np.floor((np.asarray(times) - self.start[authors]) / self.step_seconds).astype(np.int64)
        return np.clip(s, 0, self.num_steps)

    def _window(self, authors: torch.Tensor, steps: torch.Tensor, length: int) -> torch.Tensor:
        """``[N, length, F]``: the ``length`` steps strictly before ``steps`` (zeros before the start)."""
        cols = steps[:, None] - length + torch.arange(length)[None, :]
        valid = (cols >= 0) & (cols < self.num_steps)
        win = self.values[authors[:, None], cols.clamp(0, self.num_steps - 1)]
        return win * valid[..., None]

    def realtime(self, authors: np.ndarray, steps: np.ndarray) -> torch.Tensor:
        a, s = torch.from_numpy(np.asarray(authors, dtype=np.int64)), torch.from_numpy(steps)
        return self._window(a, s, self.realtime_steps).flatten(1)

    @torch.no_grad()
    def _compute(self, authors: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        self.forecaster.to(self.device).eval()
        out = []
        for i in range(0, len(authors), self.batch_size):
            win = self._window(authors[i:i + self.batch_size], steps[i:i + self.batch_size], self.input_steps)
            out.append(self.forecaster.ranker_features(win.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self._forecast_dim())

    def forecast(self, authors: np.ndarray, steps: np.ndarray) -> torch.Tensor:
        a = torch.from_numpy(np.asarray(authors, dtype=np.int64))
        s = torch.from_numpy(np.asarray(steps, dtype=np.int64))
        if self.table is not None:
            return self.table[a, s].float()
        key, inverse = torch.unique(a * (self.num_steps + 1) + s, return_inverse=True)
        return self._compute(key // (self.num_steps + 1), key % (self.num_steps + 1))[inverse]


def author_stat_arrays(stats: Mapping[str, np.ndarray], num_authors: int):
    """``(values [A, T, F], start [A])`` from a dataset's ``stats`` table (zeros for authors without one)."""
    values = np.zeros((num_authors,) + stats["values"].shape[1:], np.float32)
    values[stats["author"]] = stats["values"]
    start = np.zeros(num_authors, np.int64)
    start[stats["author"]] = stats["start"]
    return values, start


def segment_key(authors: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sortable key of (author, segment start) pairs."""
    return np.asarray(authors, dtype=np.int64) * (2**40) + np.asarray(starts, dtype=np.int64)


class SegmentIndex:
    """Which segment row each (author, time) shows: the author's latest segment started by then (-1: none)."""

    def __init__(self, seg_author: np.ndarray, seg_start: np.ndarray) -> None:
        self.author = np.asarray(seg_author, dtype=np.int64)
        self.key = segment_key(seg_author, seg_start)          # the segments table is sorted by (author, start)

    def rows(self, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        a = np.asarray(authors, dtype=np.int64)
        pos = np.searchsorted(self.key, segment_key(a, times), side="right") - 1
        ok = (pos >= 0) & (self.author[np.maximum(pos, 0)] == a)
        return np.where(ok, pos, -1)

