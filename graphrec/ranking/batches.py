"""Turning impression indices into ranker batches (the ``collate_fn`` of ``DistDataLoader``).

For each impression: ids and side features; the user's gift history *strictly before the
impression's time* (no future, no label of the impression itself); from the feature store the
expansions (the target author padded out of user-side author sequences, so a training impression's
own edge is never evidence for itself), Θ, the segment's tokens; the statistic window that ends
before the impression's step and the products on sale up to its time, both run through the frozen
forecasters under ``no_grad``. For implicit-feedback data (positives only) each training positive
gets ``negatives`` random authors as label-0 rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..data.dataset import Dataset
from ..gie.metapath import PAD
from ..models.ranker import ENDPOINT


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


class GiftHistory:
    """Each user's gifts (main-label positives) sorted by time, for 'last L before t' look-ups."""

    def __init__(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray, num_users: int) -> None:
        order = np.lexsort((times, users))
        self.users, self.authors, self.times = users[order].astype(np.int64), authors[order].astype(np.int64), times[order]
        self.start = np.searchsorted(self.users, np.arange(num_users + 1))

    def before(self, users: np.ndarray, times: np.ndarray, length: int) -> np.ndarray:
        """``[B, length]`` authors of each user's latest gifts strictly before ``times`` (PAD-left-aligned)."""
        out = np.full((len(users), length), PAD, dtype=np.int64)
        if length == 0 or len(self.users) == 0:
            return out
        lo = self.start[users]
        hi = self.start[users + 1]
        # per row: first index in [lo, hi) with time >= t  (vectorised binary search over the block)
        left, right = lo.copy(), hi.copy()
        while True:
            active = left < right
            if not active.any():
                break
            mid = (left + right) // 2
            go_right = active & (self.times[np.minimum(mid, len(self.times) - 1)] < times)
            left = np.where(go_right, mid + 1, left)
            right = np.where(active & ~go_right, mid, right)
        end = left
        begin = np.maximum(lo, end - length)
        n = end - begin
        cols = np.arange(length)
        valid = cols[None, :] < n[:, None]
        idx = np.where(valid, begin[:, None] + cols[None, :], 0)
        out[valid] = self.authors[idx[valid]]
        return out


@dataclass
class BatchConfig:
    tasks: List[str]
    hist_len: int = 20
    metapaths: List[str] = field(default_factory=list)
    theta_pretrained: bool = False
    modalities: List[str] = field(default_factory=list)
    stat_input_steps: int = 0
    stat_log1p: bool = True
    stat_step_seconds: float = 30.0
    product_max_len: int = 0
    implicit_negatives: int = 0


class BatchBuilder:
    def __init__(self, ds: Dataset, store, cfg: BatchConfig, history: GiftHistory,
                 user_side, author_side, stat_model=None, product_model=None, seed: int = 0) -> None:
        self.ds, self.store, self.cfg, self.history = ds, store, cfg, history
        self.user_cats, self.user_dense = user_side
        self.author_cats, self.author_dense = author_side
        self.stat_model, self.product_model = stat_model, product_model
        imp = ds.impressions
        self.users, self.authors, self.times = imp["user"].astype(np.int64), imp["author"].astype(np.int64), imp["time"]
        self.labels = np.stack([imp[t] for t in cfg.tasks], axis=1).astype(np.float32)
        self.segment = None
        if cfg.modalities:
            seg = ds.tables["segments"]              # sorted by (author, start): one key, built once
            self._seg_author = seg["author"]
            self._seg_key = seg["author"].astype(np.int64) * (2**40) + seg["start"].astype(np.int64)
            self.segment = (imp["segment"].astype(np.int64) if "segment" in imp
                            else self._segment_of(self.authors, self.times))
        self.gen = np.random.default_rng(seed)

    def __call__(self, indices, train: bool = False) -> Dict:
        idx = np.asarray(indices, dtype=np.int64)
        u, a, t, y = self.users[idx], self.authors[idx], self.times[idx], self.labels[idx]
        if train and self.cfg.implicit_negatives:
            m = self.cfg.implicit_negatives
            u = np.concatenate([u, np.repeat(u, m)])
            t = np.concatenate([t, np.repeat(t, m)])
            a = np.concatenate([a, self.gen.integers(0, self.ds.num_authors, len(idx) * m)])
            y = np.concatenate([y, np.zeros((len(idx) * m, y.shape[1]), np.float32)])
        return self.build(u, a, t, y, idx if not (train and self.cfg.implicit_negatives) else None)

    def build(self, u: np.ndarray, a: np.ndarray, t: np.ndarray, y: Optional[np.ndarray] = None,
              imp_idx: Optional[np.ndarray] = None, author_side: bool = True) -> Dict:
        """A batch for arbitrary (user, author, time) triples (serving uses this too). With
        ``author_side=False`` the room-only parts (:meth:`room_features`) are left out for the caller
        to fill in (see ``graphrec.serve.AuthorSideCache``)."""
        cfg, store = self.cfg, self.store
        ut, at = torch.from_numpy(u), torch.from_numpy(a)
        b: Dict = {"user": ut, "author": at,
                   "user_cat": {k: torch.from_numpy(v[0][u]) for k, v in self.user_cats.items()},
                   "author_cat": {k: torch.from_numpy(v[0][a]) for k, v in self.author_cats.items()},
                   "hist": torch.from_numpy(self.history.before(u, t, cfg.hist_len))}
        if self.user_dense is not None:
            b["user_dense"] = torch.from_numpy(self.user_dense[u])
        if self.author_dense is not None:
            b["author_dense"] = torch.from_numpy(self.author_dense[a])
        if y is not None:
            b["labels"] = torch.from_numpy(y)
        if cfg.metapaths:
            b["exp"], b["exp_theta"] = {}, {}
            if cfg.theta_pretrained:
                b["theta_user"] = store.get("user", "theta", ut)
                b["theta_author"] = store.get("author", "theta", at)
            for m in cfg.metapaths:
                seed_type = "user" if m.startswith("u") else "author"
                ids = store.get(seed_type, f"exp_{m}", ut if seed_type == "user" else at).long()
                if ENDPOINT[m] == "author":
                    ids = ids.masked_fill(ids == at[:, None], PAD)       # never the target itself
                b["exp"][m] = ids
                if cfg.theta_pretrained:
                    b["exp_theta"][m] = store.get(ENDPOINT[m], "theta", ids.clamp(min=0).view(-1)).view(*ids.shape, -1)
        if author_side:
            b.update(self.room_features(a, t, imp_idx))
        if cfg.product_max_len and self.product_model is not None:
            b["prod_probs"], b["prod_enc"] = self._product_features(at, t)
        return b

    def room_features(self, a: np.ndarray, t: np.ndarray, imp_idx: Optional[np.ndarray] = None) -> Dict:
        """The parts of a batch that depend on the room alone: the segment's ``tokens`` and the
        statistic forecaster's ``stat_feat`` (each present when its module is on)."""
        cfg, store = self.cfg, self.store
        out: Dict = {}
        if cfg.modalities:
            seg = torch.from_numpy(self.segment[imp_idx] if imp_idx is not None else self._segment_of(a, t))
            ok = seg >= 0
            s = seg.clamp(min=0)
            out["tokens"] = {}
            for m in cfg.modalities:
                x = store.get("segment", m, s)
                n = store.get("segment", f"{m}_len", s).long().masked_fill(~ok, 0)
                out["tokens"][m] = (x.float(), torch.arange(x.shape[1])[None, :] < n[:, None])
        if cfg.stat_input_steps and self.stat_model is not None:
            out["stat_feat"] = self._stat_features(torch.from_numpy(a), t)
        return out

    def _segment_of(self, a: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Row of each author's latest segment started by time ``t`` (-1: none)."""
        pos = np.searchsorted(self._seg_key, a * (2**40) + t.astype(np.int64), side="right") - 1
        ok = (pos >= 0) & (self._seg_author[np.maximum(pos, 0)] == a)
        return np.where(ok, pos, -1)

    def segment_rows(self, a: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The segment row each (author, time) shows (-1: none); what MFQ's ``h_m`` depends on."""
        return self._segment_of(a, t) if self.cfg.modalities else np.full(len(a), -1, np.int64)

    def stat_steps(self, at: torch.Tensor, t: np.ndarray) -> np.ndarray:
        """The statistic step of each (author, time); what the statistic features depend on."""
        start = self.store.get("author", "stats_start", at).numpy()
        return np.floor((t - start) / self.cfg.stat_step_seconds).astype(np.int64)

    @torch.no_grad()
    def _stat_features(self, at: torch.Tensor, t: np.ndarray) -> torch.Tensor:
        values = self.store.get("author", "stats", at).float()               # [B, T, F]
        step = self.stat_steps(at, t)                                         # the impression's step
        I = self.cfg.stat_input_steps
        cols = torch.from_numpy(step[:, None] - I + np.arange(I))             # steps strictly before it
        valid = (cols >= 0) & (cols < values.shape[1])
        win = torch.gather(values, 1, cols.clamp(0, values.shape[1] - 1)[..., None].expand(-1, -1, values.shape[2]))
        win = win * valid[..., None]
        if self.cfg.stat_log1p:
            win = torch.log1p(win.clamp(min=0))
        return self.stat_model.ranker_features(win)

    @torch.no_grad()
    def _product_features(self, at: torch.Tensor, t: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """The product forecaster's output after the products on sale up to ``t`` (an offline table
        row per author and prefix length; see ``ProductForecaster.prefix_table``)."""
        ptime = self.store.get("author", "prod_time", at)                     # [B, P], padded with int64 max
        count = (ptime <= torch.from_numpy(t.astype(np.int64))[:, None]).sum(1)
        table = self.store.get("author", "prod_feat", at)                     # [B, P + 1, K3 + D]
        row = table[torch.arange(len(at)), count]
        k = self.product_model.num_cat3
        return row[:, :k], row[:, k:]
