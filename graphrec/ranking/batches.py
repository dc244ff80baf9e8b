"""Turning impressions and candidate lists into ranker batches (:mod:`graphrec.ranking.batch`).

For a row (user, time) and each of its candidate authors the builder assembles what the model may
know then (see :mod:`graphrec.ranking.features` for the rules): the user's ids, side features and
history; the expansions and Θ from the feature store — of the latest graph snapshot cut at or before the
row's time (``graph.snapshots``; none before the first cut; untimed data with ``graph.folds``: a training
row's out-of-fold graph, any other row the graph of every training positive), the target author padded out of user-side
author sequences by the model; the segment on air, the room's latest statistics and the frozen
forecasters' features; the author's recent activity.

Training batches for the sampled-softmax objective (implicit feedback, and the exposure head of
impression logs) give every row its logged author plus ``negatives`` sampled authors: a share
``uniform_share`` uniformly, the rest from the batch's own positives ("in-batch", i.e. by
popularity), with the log sampling probability kept for the logQ correction and negatives that are
known positives of the row's user masked out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from ..data.dataset import SPLITS, Dataset
from ..schema import METAPATHS
from .batch import Batch, RoomPart, UserPart
from .features import PAD, Activity, History, RoomStatistics, SegmentIndex


def side_features(table: Mapping[str, np.ndarray], skip: List[str], max_card: int = 100_000):
    """Observable side features of a users/authors table: ``(categorical {name: (codes, cardinality)},
    dense [N, k] float32 or None)``. 1-D integer columns are categorical; 2-D columns dense;
    ``raw_id`` and planted-truth columns are skipped."""
    cats, dense = {}, []
    for name, col in table.items():
        if name == "raw_id" or name in skip:
            continue
        if col.ndim == 1 and np.issubdtype(col.dtype, np.integer) and col.min() >= 0 and col.max() < max_card:
            cats[name] = (col.astype(np.int64), int(col.max()) + 1)
        elif col.ndim == 2:
            dense.append(col.astype(np.float32))
        elif col.ndim == 1:
            dense.append(((col - col.mean()) / (col.std() + 1e-6)).astype(np.float32)[:, None])
    return cats, (np.concatenate(dense, axis=1) if dense else None)


def trim(ids: np.ndarray) -> np.ndarray:
    """Drop the trailing columns that are padding in every row (sequences are left-aligned): attention
    over a batch costs its longest sequence, not ``hist_len``."""
    valid = (ids != PAD).any(axis=0)
    n = int(np.flatnonzero(valid)[-1]) + 1 if valid.any() else 1
    return ids[:, :n]


class PairSet:
    """Membership of (user, author) pairs, for masking sampled negatives that are known positives."""

    def __init__(self, users: np.ndarray, authors: np.ndarray, num_authors: int) -> None:
        self.num_authors = num_authors
        self.keys = np.unique(np.asarray(users, dtype=np.int64) * num_authors + np.asarray(authors, dtype=np.int64))

    def contains(self, users: np.ndarray, authors: np.ndarray) -> np.ndarray:
        q = np.asarray(users, dtype=np.int64) * self.num_authors + np.asarray(authors, dtype=np.int64)
        if len(self.keys) == 0:
            return np.zeros(q.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[pos] == q


@dataclass
class BatchConfig:
    tasks: List[str]                                  # the dataset's labels, in order
    heads: List[str]                                  # the model's heads: tasks (+ "exposure")
    hist_len: int = 20
    metapaths: List[str] = field(default_factory=list)
    theta_pretrained: bool = False
    modalities: List[str] = field(default_factory=list)
    stat_forecast: bool = False
    realtime: bool = False
    activity: bool = False
    user_activity: bool = False
    product_cats: int = 0                             # num_cat3 of the product forecaster (0: off)
    negatives: int = 0                                # sampled negatives per training row (0: none)
    uniform_share: float = 0.5
    logq: bool = True
    implicit: bool = False


class BatchBuilder:
    def __init__(self, ds: Dataset, store, cfg: BatchConfig, histories: Dict[str, History],
                 user_side, author_side, activity: Optional[Activity] = None,
                 room_stats: Optional[RoomStatistics] = None, known: Optional[PairSet] = None,
                 user_activity: Optional[Activity] = None, snapshots=None) -> None:
        self.ds, self.store, self.cfg, self.histories = ds, store, cfg, histories
        self.user_cats, self.user_dense = user_side
        self.author_cats, self.author_dense = author_side
        self.activity, self.room_stats, self.known = activity, room_stats, known
        self.user_activity = user_activity
        # which graph snapshot a row reads (graphrec.data.split.GraphSnapshots); None: no graph features
        self.snapshots = snapshots
        imp = ds.impressions
        self.users, self.authors, self.times = imp["user"].astype(np.int64), imp["author"].astype(np.int64), imp["time"]
        self.is_train = imp["split"] == SPLITS["train"]
        self.labels = np.stack([imp[t] for t in cfg.tasks], axis=1).astype(np.float32)
        self.main = cfg.tasks.index(ds.main_label)
        self.timed = ds.timed
        self.segments = None
        if cfg.modalities:
            seg = ds.tables["segments"]
            self.segments = SegmentIndex(seg["author"], seg["start"])
            self.seg_author = seg["author"].astype(np.int64)
            self.imp_segment = imp["segment"].astype(np.int64) if "segment" in imp else None
        # in-batch negatives follow the authors of the training rows (the softmax positives)
        counts = np.bincount(self.authors[self.is_train], minlength=ds.num_authors).astype(np.float64)
        self.positive_share = counts / max(counts.sum(), 1.0)
        self.built_batches = 0      # batches (or full-ranking sides) built: the denominator of pulls per batch

    # ------------------------------------------------------------------ pieces
    # Feature store reads, per batch: hop 1, one read per node type for the batch's users, authors
    # (with their product tables) and segments on air; hop 2, one read per node type for the Θ of the
    # expansions' endpoints (distinct ids over every metapath of the user and the room side). In a
    # distributed run each read is one pull (graphrec.dist.store), so a batch makes at most five.
    def user_part(self, users: np.ndarray, times: np.ndarray, exclude: Optional[np.ndarray] = None) -> UserPart:
        """The user side of rows ``(users, times)``; ``exclude``: each row's own target (untimed training
        rows, ``PAD`` elsewhere), kept out of its history and its activity counts."""
        up, snap = self._user_side(users, times, exclude)
        self._endpoint_theta((up, snap))
        self._hide_graph(up, snap)
        self.built_batches += 1
        return up

    def room_part(self, authors: np.ndarray, times: np.ndarray, own: Optional[np.ndarray] = None,
                  segments: Optional[np.ndarray] = None) -> RoomPart:
        """The author side of candidates ``(authors, times)``: author-only pieces once per distinct author,
        tokens once per distinct segment on air. ``own``: 1 where the candidate is the row's own training
        interaction (kept out of the untimed activity counts); ``segments``: known segment rows."""
        rp, snap = self._room_side(authors, times, own, segments)
        self._endpoint_theta((rp, snap))
        self._hide_graph(rp, snap)
        self.built_batches += 1
        return rp

    def _both_sides(self, users: np.ndarray, user_times: np.ndarray, exclude: Optional[np.ndarray],
                    authors: np.ndarray, room_times: np.ndarray, own: Optional[np.ndarray] = None,
                    segments: Optional[np.ndarray] = None, user_rows: Optional[np.ndarray] = None,
                    room_rows: Optional[np.ndarray] = None):
        """``user_part`` and ``room_part`` of one batch, sharing the second hop (one Θ read per node type);
        ``user_rows`` / ``room_rows``: the logged impression each side belongs to (out-of-fold graphs)."""
        up, usnap = self._user_side(users, user_times, exclude, user_rows)
        rp, rsnap = self._room_side(authors, room_times, own, segments, room_rows)
        self._endpoint_theta((up, usnap), (rp, rsnap))
        self._hide_graph(up, usnap)
        self._hide_graph(rp, rsnap)
        self.built_batches += 1
        return up, rp

    def snapshot_of(self, times: np.ndarray, rows: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """``[n]`` the graph snapshot each time (or logged impression ``rows``, for out-of-fold graphs) reads
        (-1: none yet), or None without graph features."""
        if self.snapshots is None or not self.cfg.metapaths:
            return None
        return self.snapshots.index(times, rows)

    def _user_side(self, users: np.ndarray, times: np.ndarray, exclude: Optional[np.ndarray],
                   rows: Optional[np.ndarray] = None):
        """The user side without the endpoints' Θ (hop 1), and each row's graph snapshot (or None)."""
        cfg = self.cfg
        ut = torch.from_numpy(users)
        hist, hist_code = {}, {}
        for name, h in self.histories.items():
            if h.codes is not None:                    # ranker.history_values (timed data: nothing to exclude)
                ids, codes = h.lookup_codes(users, times, cfg.hist_len)
                hist[name] = torch.from_numpy(trim(ids))
                hist_code[name] = torch.from_numpy(codes[:, :hist[name].shape[1]])
            else:
                hist[name] = torch.from_numpy(trim(h.lookup(users, times, cfg.hist_len, exclude)))
        up = UserPart(user=ut, hist=hist, hist_code=hist_code,
                      cats={k: torch.from_numpy(v[0][users]) for k, v in self.user_cats.items()},
                      dense=None if self.user_dense is None else torch.from_numpy(self.user_dense[users]))
        if cfg.user_activity and self.user_activity is not None:
            own = None if exclude is None else (np.asarray(exclude) != PAD).astype(np.float64)
            up.activity = torch.from_numpy(self.user_activity.features(users, times, own))
        snap = self.snapshot_of(times, rows)
        self._node_features(up, "user", ut, snap)
        return up, snap

    @staticmethod
    def _hide_graph(part, snap: Optional[np.ndarray]) -> None:
        """Rows (of a user part) or distinct (author, snapshot) entries (of a room part) from before the first
        graph snapshot see no graph: zero Θ, no expansions, as a node without gifts would."""
        if snap is None or not (snap < 0).any():
            return
        rows = torch.from_numpy(snap < 0)
        if part.theta is not None:
            part.theta = part.theta.masked_fill(rows.to(part.theta.device)[:, None], 0.0)
        for m in part.exp:
            part.exp[m] = part.exp[m].masked_fill(rows.to(part.exp[m].device)[:, None], PAD)
            if m in part.exp_theta:
                part.exp_theta[m] = part.exp_theta[m].masked_fill(rows.to(part.exp_theta[m].device)[:, None, None], 0.0)

    def _node_features(self, part, ntype: str, ids: torch.Tensor, snap: Optional[np.ndarray],
                       extra: List[str] = ()) -> Dict[str, torch.Tensor]:
        """Hop 1 of one node type, one read: Θ and the expansions seeded there (into ``part``; of each id's
        graph snapshot ``snap``), and ``extra``."""
        cfg = self.cfg
        seeded = [m for m in cfg.metapaths if METAPATHS[m].seed == ntype]
        names = (["theta"] if cfg.metapaths and cfg.theta_pretrained else []) + [f"exp_{m}" for m in seeded]
        names += list(extra)
        if not names:
            return {}
        got = self.store.rows(ntype, ids, names, snapshot=None if snap is None else torch.from_numpy(snap))
        if "theta" in got:
            part.theta = got["theta"]
        for m in seeded:
            part.exp[m] = got[f"exp_{m}"].long()
        return got

    def _endpoint_theta(self, *parts) -> None:
        """Hop 2: the Θ of every expansion endpoint of ``parts`` (``(part, snapshot per row)`` pairs; an
        endpoint's Θ is of its row's snapshot), one read per endpoint node type (the ids over every metapath;
        a distributed store pulls each distinct row once), split back per metapath."""
        if not self.cfg.theta_pretrained:
            return
        uses: Dict[str, list] = {}
        for part, snap in parts:
            for m in part.exp:
                uses.setdefault(METAPATHS[m].endpoint, []).append((part, snap, m))
        found = {}
        for ntype, pm in uses.items():
            flat = [part.exp[m].clamp(min=0).reshape(-1) for part, _, m in pm]
            snaps = None
            if pm[0][1] is not None:                         # each endpoint in its row's snapshot
                snaps = torch.cat([torch.from_numpy(snap).repeat_interleave(part.exp[m].shape[1])
                                   for part, snap, m in pm])
            theta = self.store.rows(ntype, torch.cat(flat), ["theta"], snapshot=snaps)["theta"]
            for (part, _, m), rows in zip(pm, torch.split(theta, [len(f) for f in flat])):
                found[(id(part), m)] = rows.view(*part.exp[m].shape, theta.shape[-1])
        for part, _ in parts:                                # in the order of the expansions
            part.exp_theta = {m: found[(id(part), m)] for m in part.exp}

    def _room_side(self, authors: np.ndarray, times: np.ndarray, own: Optional[np.ndarray] = None,
                   segments: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None):
        """The author side without the endpoints' Θ (hop 1), and the graph snapshot of each distinct entry
        (or None). Author-only pieces are computed once per distinct author — per distinct (author, snapshot)
        pair when the rows read several graph snapshots."""
        cfg = self.cfg
        snap = self.snapshot_of(times, rows)
        if snap is None:
            uniq, inv = np.unique(authors, return_inverse=True)
            usnap = None
        else:
            span = len(self.snapshots) + 1
            ukey, inv = np.unique(np.asarray(authors, dtype=np.int64) * span + (snap + 1), return_inverse=True)
            uniq, usnap = ukey // span, ukey % span - 1
        ut = torch.from_numpy(uniq)
        rp = RoomPart(author=torch.from_numpy(authors), uniq=ut, inv=torch.from_numpy(inv.astype(np.int64)),
                      cats={k: torch.from_numpy(v[0][uniq]) for k, v in self.author_cats.items()},
                      dense=None if self.author_dense is None else torch.from_numpy(self.author_dense[uniq]))
        got = self._node_features(rp, "author", ut, usnap, ["prod_time", "prod_feat"] if cfg.product_cats else [])
        if cfg.modalities:
            seg = self.segments.rows(authors, times) if segments is None else segments
            # a room with no segment on air keeps a key of its own (its author's query, no tokens)
            key = np.where(seg >= 0, seg, -1 - authors)
            ukey, sinv = np.unique(key, return_inverse=True)
            rows = np.clip(ukey, 0, None)
            rp.seg_author = torch.from_numpy(np.where(ukey >= 0, self.seg_author[rows], -1 - ukey))
            rp.seg_inv = torch.from_numpy(sinv.astype(np.int64))
            rp.seg_key = torch.from_numpy(ukey)
            on_air = torch.from_numpy(ukey >= 0)
            tokens = self.store.rows("segment", torch.from_numpy(rows),
                                     [n for m in cfg.modalities for n in (m, f"{m}_len")])
            for m in cfg.modalities:
                x = tokens[m]
                n = tokens[f"{m}_len"].long().masked_fill(~on_air.to(x.device), 0)
                rp.tokens[m] = (x.float(), torch.arange(x.shape[1], device=x.device)[None, :] < n[:, None])
        if self.room_stats is not None and (cfg.stat_forecast or cfg.realtime):
            steps = self.room_stats.steps(authors, times)
            if cfg.stat_forecast:
                rp.stat = self.room_stats.forecast(authors, steps)
            if cfg.realtime:
                rp.realtime = self.room_stats.realtime(authors, steps)
        if cfg.activity and self.activity is not None:
            rp.popularity = torch.from_numpy(self.activity.features(authors, times, own))
        if cfg.product_cats:
            rp.prod_probs, rp.prod_enc = self._product_features(got["prod_time"], got["prod_feat"], rp.inv, times)
        return rp, usnap

    def _product_features(self, ptime: torch.Tensor, pfeat: torch.Tensor, inv: torch.Tensor, times: np.ndarray):
        """The product forecaster's output after the products on sale up to the time (an offline table
        row per author and prefix length; see ``ProductForecaster.prefix_table``). ``ptime [Au, P]`` (padded
        with int64 max) and ``pfeat`` are the distinct authors' tables, ``inv`` each candidate's author."""
        inv_t = inv.to(ptime.device)
        t = torch.from_numpy(np.asarray(times, dtype=np.int64)).to(ptime.device)
        count = (ptime[inv_t] <= t[:, None]).sum(1)
        row = pfeat[inv_t, count]                                              # [N, K3 + D]
        k = self.cfg.product_cats
        return row[:, :k], row[:, k:]

    # ------------------------------------------------------------------ batches
    def _exclude(self, idx: np.ndarray) -> Optional[np.ndarray]:
        """Untimed data: a training row's own author is kept out of its history."""
        if self.timed:
            return None
        return np.where(self.is_train[idx], self.authors[idx], PAD)

    def impressions(self, idx: np.ndarray) -> Batch:
        """One candidate per row: the logged impressions ``idx`` (labels included)."""
        idx = np.asarray(idx, dtype=np.int64)
        u, a, t = self.users[idx], self.authors[idx], self.times[idx]
        own = (self.is_train[idx] & ~self.timed).astype(np.float64) if self.cfg.activity else None
        seg = self.imp_segment[idx] if self.segments is not None and self.imp_segment is not None else None
        up, rp = self._both_sides(u, t, self._exclude(idx), a, t, own, seg, idx, idx)
        return Batch(users=up, rooms=rp, cand=torch.arange(len(idx))[:, None], labels=torch.from_numpy(self.labels[idx]))

    def pairs(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> Batch:
        """One candidate per row for arbitrary (user, author, time) triples (serving, sampled evaluation)."""
        users, authors = np.asarray(users, dtype=np.int64), np.asarray(authors, dtype=np.int64)
        up, rp = self._both_sides(users, times, None, authors, times)
        return Batch(users=up, rooms=rp, cand=torch.arange(len(users))[:, None])

    def sample_negatives(self, idx: np.ndarray, rng: np.random.Generator):
        """``(candidates [B, 1 + M], valid [B, 1 + M], logq [B, 1 + M])`` for training rows ``idx``."""
        cfg, A = self.cfg, self.ds.num_authors
        B, M = len(idx), cfg.negatives
        u, pos = self.users[idx], self.authors[idx]
        uniform = rng.random((B, M)) < cfg.uniform_share
        neg = np.where(uniform, rng.integers(0, A, (B, M)), pos[rng.integers(0, B, (B, M))])
        cand = np.concatenate([pos[:, None], neg], axis=1)
        valid = np.ones(cand.shape, dtype=bool)
        valid[:, 1:] = neg != pos[:, None]
        if self.known is not None:
            valid[:, 1:] &= ~self.known.contains(np.repeat(u, M).reshape(B, M), neg)
        q = cfg.uniform_share / A + (1.0 - cfg.uniform_share) * self.positive_share[cand]
        return cand, valid, np.log(np.maximum(q, 1e-12)).astype(np.float32)

    def training(self, idx: np.ndarray, rng: np.random.Generator) -> Batch:
        """A training batch: the impressions ``idx``, each with ``negatives`` sampled authors when the
        sampled-softmax objective is on."""
        idx = np.asarray(idx, dtype=np.int64)
        if not self.cfg.negatives:
            return self.impressions(idx)
        cand, valid, logq = self.sample_negatives(idx, rng)
        B, C = cand.shape
        t = self.times[idx]
        flat_a, flat_t = cand.reshape(-1), np.repeat(t, C)
        own = None
        if self.cfg.activity and not self.timed:
            own = np.zeros((B, C))
            own[:, 0] = self.is_train[idx]
            own = own.reshape(-1)
        up, rp = self._both_sides(self.users[idx], t, self._exclude(idx), flat_a, flat_t, own, None, idx,
                                  np.repeat(idx, C))
        batch = Batch(users=up, rooms=rp, cand=torch.arange(B * C).view(B, C), labels=torch.from_numpy(self.labels[idx]),
                      valid=torch.from_numpy(valid))
        if self.cfg.logq:
            batch.logq = torch.from_numpy(logq)
        return batch

    def rank_users(self, users: np.ndarray, time: int) -> UserPart:
        """The user side of users ranked at one ``time`` (full ranking)."""
        users = np.asarray(users, dtype=np.int64)
        return self.user_part(users, np.full(len(users), time, dtype=np.int64))

    def all_rooms(self, time: int) -> RoomPart:
        """Every author's room side at one ``time`` (full ranking)."""
        authors = np.arange(self.ds.num_authors, dtype=np.int64)
        return self.room_part(authors, np.full(len(authors), time, dtype=np.int64))
