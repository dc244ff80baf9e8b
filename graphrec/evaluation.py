"""Evaluation, in one place: every model of a run is measured here, the same way.

A model is evaluated through a *scorer* with up to three methods:

* ``impression_scores(idx) -> [n, labels]``: a score per logged impression and label (explicit data);
* ``pair_scores(users, authors, times) -> [n]``: the main label's score of arbitrary triples (implicit
  data, whose per-impression AUC ranks each positive against ``eval.negatives`` random authors);
* ``rank(users, time) -> [B, authors]``: full-ranking scores of every author for each user at ``time``.

:func:`evaluate` turns a scorer into one metrics entry — the **schema** every consumer reads
(``metrics.json``, report.md, ``--ablate``, plots, benchmarks, the distributed trainer)::

    eval[split][model] = {<label>: {"auc", "uauc", "gauc"}, ...,
                          "topk": {"label", "k", "recall@k", "ndcg@k", "precision@k", "users"},
                          "topk_two_stage": {... same, plus "candidates", "retriever"},
                          "<label>@<bucket>": ..., "topk@<bucket>": ...}

``<key>@<bucket>`` is the same entry over the users of one **activity bucket**: users with ``0``, ``1-2`` or
``3+`` training positives of the main label (``eval.activity_buckets`` sets the edges). MMBee's claim is about
sparse gifters, so every metric is also reported per bucket (:class:`ActivityBuckets`).

Full ranking follows the published TikTok protocol: all authors ranked, each user's training
positives masked, users without positives in the split skipped. With real timestamps a split is
ranked once, at its first time (what a recommender knows when the period starts); histories and
room states are taken then. The popularity baseline is defined here once (:class:`Popularity`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .data.dataset import SPLITS, Dataset
from .metrics import ranking_report


def positives_matrix(ds: Dataset, label: str, mask: np.ndarray) -> sp.csr_matrix:
    """Users x authors 0/1 matrix of the ``mask``ed impressions that are positives of ``label``."""
    imp = ds.impressions
    keep = mask & (imp[label] == 1)
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (imp["user"][keep], imp["author"][keep])),
                      shape=(ds.num_users, ds.num_authors))
    m.data[:] = 1.0                       # duplicates summed by the constructor count once
    return m


def split_mask(ds: Dataset, split: str) -> np.ndarray:
    return ds.impressions["split"] == SPLITS[split]


def ranking_time(ds: Dataset, split: str) -> int:
    """When a split's full ranking is made: its first impression's time (untimed data: the split code)."""
    mask = split_mask(ds, split)
    return int(ds.impressions["time"][mask].min()) if mask.any() else 0


def full_ranking(rank: Callable[[np.ndarray], torch.Tensor], train: sp.csr_matrix, test: sp.csr_matrix,
                 k: int = 20, batch_size: int = 1024, users: Optional[np.ndarray] = None) -> Dict[str, float]:
    """``rank(user_ids) -> [len(user_ids), num_items]`` scores; ``train``/``test`` users x items 0/1 matrices.
    Returns ``recall@k``, ``precision@k``, ``ndcg@k`` and ``users`` (averaged over users with test items)."""
    users, per_user = per_user_ranking(rank, train, test, k, batch_size, users)
    return mean_ranking(per_user, len(users), min(k, test.shape[1]))


def mean_ranking(per_user: Mapping[str, np.ndarray], n: int, k: int, rows: Optional[np.ndarray] = None) -> Dict[str, float]:
    """The averages of :func:`per_user_ranking`'s arrays (over ``rows`` of them only, when given)."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    n = n if rows is None else int(len(rows))
    out = {f"{m}@{k}": float(pick(v).sum() / max(n, 1)) for m, v in per_user.items()}
    return {f"recall@{k}": out[f"recall@{k}"], f"precision@{k}": out[f"precision@{k}"], f"ndcg@{k}": out[f"ndcg@{k}"],
            "users": int(n)}


def per_user_ranking(rank: Callable[[np.ndarray], torch.Tensor], train: sp.csr_matrix, test: sp.csr_matrix,
                     k: int = 20, batch_size: int = 1024, users: Optional[np.ndarray] = None):
    """``(users, {"recall", "precision", "ndcg": [len(users)]})``: each ranked user's Recall/Precision/NDCG@k."""
    train = sp.csr_matrix(train, dtype=np.float32)
    test = sp.csr_matrix(test, dtype=np.float32)
    k = min(k, test.shape[1])
    if users is None:
        users = np.flatnonzero(np.diff(test.indptr) > 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    recall, precision, ndcg = (np.zeros(len(users)) for _ in range(3))
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = rank(batch).detach().float().cpu().clone()
        seen = train[batch].tocoo()
        scores[torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long()] = -float("inf")
        top = torch.topk(scores, k, dim=1).indices.numpy()
        truth = test[batch]
        hits = np.asarray(truth[np.repeat(np.arange(len(batch)), k), top.ravel()]).reshape(len(batch), k) > 0
        n_true = np.diff(truth.indptr)
        n_hit = hits.sum(axis=1)
        rows = slice(start, start + len(batch))
        recall[rows] = n_hit / n_true
        precision[rows] = n_hit / k
        ndcg[rows] = (hits * discounts).sum(axis=1) / ideal[np.minimum(n_true, k)]
    return users, {"recall": recall, "precision": precision, "ndcg": ndcg}


def activity_buckets(ds: Dataset, edges: Sequence[int]) -> Optional["ActivityBuckets"]:
    """The :class:`ActivityBuckets` of ``eval.activity_buckets``, or None when it is empty (off)."""
    return ActivityBuckets(ds, edges) if len(edges) else None


class ActivityBuckets:
    """Users grouped by their number of training positives of the main label: edges ``[1, 3]`` give the
    buckets ``0``, ``1-2`` and ``3+`` (``eval.activity_buckets``). MMBee's graph expansion is meant for the
    sparse ones: a user with a gift or two has little history of their own to go on."""

    def __init__(self, ds: Dataset, edges: Sequence[int] = (1, 3)) -> None:
        edges = sorted({int(e) for e in edges if int(e) > 0})
        imp = ds.impressions
        train = split_mask(ds, "train") & (imp[ds.main_label] == 1)
        self.count = np.bincount(imp["user"][train].astype(np.int64), minlength=ds.num_users)
        bounds = [0] + edges + [None]
        self.names = [bucket_name(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.of_user = np.searchsorted(np.asarray(edges, dtype=np.int64), self.count, side="right")

    def of(self, users: np.ndarray) -> np.ndarray:
        """The bucket index of each user."""
        return self.of_user[np.asarray(users, dtype=np.int64)]


def bucket_name(lo: int, hi: Optional[int]) -> str:
    """``3+`` for ``[3, ∞)``, ``1-2`` for ``[1, 3)``, ``0`` for ``[0, 1)``."""
    if hi is None:
        return f"{lo}+"
    return str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"


def is_bucket_key(key: str) -> bool:
    """Whether a metrics-entry key is a per-bucket one (``<key>@<bucket>``)."""
    return "@" in key


# ----------------------------------------------------------------------------- baselines
class Popularity:
    """The popularity baseline, from training impressions only.

    An impression is scored, per label, by its author's smoothed training positive rate of that label
    (``prior_weight`` pseudo-impressions at the global rate); a full ranking orders authors by their
    number of training positives of ``label`` (most-popular). On implicit data, where every impression
    is a positive, both are counts."""

    def __init__(self, ds: Dataset, label: str, train: np.ndarray, prior_weight: float = 10.0) -> None:
        imp = ds.impressions
        a = imp["author"][train]
        n = np.bincount(a, minlength=ds.num_authors).astype(np.float64)
        self.rates = np.zeros((ds.num_authors, len(ds.labels)))
        for i, l in enumerate(ds.labels):
            y = imp[l][train].astype(np.float64)
            pos = np.bincount(a, weights=y, minlength=ds.num_authors)
            prior = y.mean() if len(y) else 0.0
            self.rates[:, i] = (pos + prior_weight * prior) / (n + prior_weight)
            if l == label:
                self.positives = pos
        self.ds = ds
        self._count = torch.from_numpy(self.positives.astype(np.float32))

    def impression_scores(self, idx: np.ndarray) -> np.ndarray:
        return self.rates[self.ds.impressions["author"][idx]]

    def pair_scores(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        return self.positives[authors]

    def rank(self, users: np.ndarray, time: int) -> torch.Tensor:
        return self._count.expand(len(users), -1).clone()


class Oracle:
    """The simulator's true label probabilities: the Bayes-optimal ceiling (per impression only)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def impression_scores(self, idx: np.ndarray) -> np.ndarray:
        imp = self.ds.impressions
        return np.stack([imp[f"p_{l}"][idx] if f"p_{l}" in imp else np.full(len(idx), np.nan)
                         for l in self.ds.labels], axis=1)


class EmbeddingScorer:
    """Dot products of user and author embeddings (LightGCN)."""

    def __init__(self, users: torch.Tensor, authors: torch.Tensor, ds: Dataset) -> None:
        self.eu, self.ea, self.ds = users.detach().cpu(), authors.detach().cpu(), ds

    def pair_scores(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        u, a = torch.from_numpy(np.asarray(users)).long(), torch.from_numpy(np.asarray(authors)).long()
        return (self.eu[u] * self.ea[a]).sum(-1).numpy()

    def impression_scores(self, idx: np.ndarray) -> np.ndarray:
        imp = self.ds.impressions
        s = self.pair_scores(imp["user"][idx], imp["author"][idx], imp["time"][idx])
        return np.repeat(s[:, None], len(self.ds.labels), axis=1)

    def rank(self, users: np.ndarray, time: int) -> torch.Tensor:
        return self.eu[torch.from_numpy(np.asarray(users)).long()] @ self.ea.T


class PrecomputedScores:
    """Impression scores computed elsewhere (e.g. gathered from distributed trainers), looked up by index."""

    def __init__(self, idx: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(idx, kind="stable")
        self.idx, self.scores = np.asarray(idx)[order], np.asarray(scores)[order]

    def impression_scores(self, idx: np.ndarray) -> np.ndarray:
        return self.scores[np.searchsorted(self.idx, idx)]


def gathered_scores(scorer, idx: np.ndarray, comm) -> PrecomputedScores:
    """Every trainer scores its share ``idx`` of impressions; all get every share's scores."""
    parts = comm.gather((np.asarray(idx), np.asarray(scorer.impression_scores(idx))))
    return PrecomputedScores(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class ShardedPairScores:
    """``pair_scores`` of triples split across distributed trainers: each scores the rows whose user
    ``owns(users)`` says are its own, and every trainer gets all of them back in the callers' order (so
    implicit data's sampled-negative AUC draws the standalone negatives and each pair is scored once)."""

    def __init__(self, scorer, owns: Callable[[np.ndarray], np.ndarray], comm) -> None:
        self.scorer, self.owns, self.comm = scorer, owns, comm

    def pair_scores(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(self.owns(users))
        mine = np.asarray(self.scorer.pair_scores(users[rows], authors[rows], times[rows]), dtype=np.float64)
        out = np.full(len(users), np.nan)
        for r, s in self.comm.gather((rows, mine)):
            out[r] = s
        return out


class TwoStage:
    """``retriever``'s top ``candidates`` authors per user (training positives masked), reranked by
    ``reranker.pair_scores``; the rest rank below them."""

    def __init__(self, retriever, reranker, candidates: int, train_pos: sp.csr_matrix, name: str) -> None:
        self.retriever, self.reranker, self.n, self.train_pos, self.name = retriever, reranker, candidates, train_pos, name

    def rank(self, users: np.ndarray, time: int) -> torch.Tensor:
        base = self.retriever.rank(users, time).float().clone()
        seen = self.train_pos[users].tocoo()
        base[torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long()] = -float("inf")
        n = min(self.n, base.shape[1])
        cand = torch.topk(base, n, dim=1).indices
        s = self.reranker.pair_scores(np.repeat(users, n), cand.reshape(-1).numpy(),
                                      np.full(len(users) * n, time, dtype=np.int64))
        out = torch.full_like(base, -float("inf"))
        out.scatter_(1, cand, torch.as_tensor(np.asarray(s), dtype=torch.float32).view(len(users), n))
        return out


# ----------------------------------------------------------------------------- one entry
def impression_metrics(scorer, ds: Dataset, split: str, negatives: int = 20, seed: int = 0,
                       idx: Optional[np.ndarray] = None, buckets: Optional[ActivityBuckets] = None
                       ) -> Dict[str, Dict[str, float]]:
    """AUC / UAUC / GAUC per label on the split's impressions (``idx``: a share of them). Implicit data:
    each positive against ``negatives`` random authors (a fixed, seeded sample), main label only. With
    ``buckets``, also ``<label>@<bucket>`` over the impressions of each bucket's users (the same scores)."""
    imp = ds.impressions
    if idx is None:
        idx = np.flatnonzero(split_mask(ds, split))
    out: Dict[str, Dict[str, float]] = {}
    if len(idx) == 0:
        return out

    def report(key: str, users: np.ndarray, y: np.ndarray, scores: np.ndarray) -> None:
        if 0 < y.sum() < len(y) and np.isfinite(scores).all():
            out[key] = ranking_report(users, y, scores)
        if buckets is None:
            return
        which = buckets.of(users)
        for b, name in enumerate(buckets.names):
            rows = which == b
            yb = y[rows]
            if 0 < yb.sum() < len(yb) and np.isfinite(scores[rows]).all():
                out[f"{key}@{name}"] = ranking_report(users[rows], yb, scores[rows])

    if ds.implicit:
        if not hasattr(scorer, "pair_scores") or negatives <= 0:
            return out
        rng = np.random.default_rng(seed)
        u, t = imp["user"][idx].astype(np.int64), imp["time"][idx]
        neg = rng.integers(0, ds.num_authors, len(idx) * negatives)
        uu = np.concatenate([u, np.repeat(u, negatives)])
        aa = np.concatenate([imp["author"][idx].astype(np.int64), neg])
        tt = np.concatenate([t, np.repeat(t, negatives)])
        y = np.concatenate([np.ones(len(idx)), np.zeros(len(neg))])
        report(ds.main_label, uu, y, np.asarray(scorer.pair_scores(uu, aa, tt), dtype=np.float64))
        return {k: out[k] for k in sorted(out, key=is_bucket_key)}       # the overall entries first
    if not hasattr(scorer, "impression_scores"):
        return out
    scores = np.asarray(scorer.impression_scores(idx), dtype=np.float64)
    for i, label in enumerate(ds.labels):
        report(label, imp["user"][idx].astype(np.int64), imp[label][idx], scores[:, i])
    return {k: out[k] for k in sorted(out, key=is_bucket_key)}


def topk_users(ds: Dataset, split: str) -> np.ndarray:
    """The users a full ranking of ``split`` averages over: those with a positive of the main label in it."""
    return np.flatnonzero(np.diff(positives_matrix(ds, ds.main_label, split_mask(ds, split)).indptr) > 0)


def merge_topk(parts: Sequence[Optional[Mapping[str, Any]]]) -> Optional[Dict[str, Any]]:
    """One top-K entry from entries of disjoint user sets (a distributed run's shares): each metric the
    mean over all their users, weighted by ``users``; the other fields are the first entry's."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    n = sum(p["users"] for p in parts)
    out = dict(parts[0])
    for key in parts[0]:
        if "@" in key:                                   # recall@k, precision@k, ndcg@k
            out[key] = sum(p[key] * p["users"] for p in parts) / max(n, 1)
    out["users"] = n
    return out


def topk_metrics(scorer, ds: Dataset, split: str, k: int = 20, batch_size: int = 256,
                 users: Optional[np.ndarray] = None, buckets: Optional[ActivityBuckets] = None,
                 key: str = "topk") -> Optional[Dict[str, Any]]:
    """Full-ranking top-K of the main label on ``split`` (None when the split has no positives); ``users``:
    only these (of :func:`topk_users`; a distributed trainer's share). Without ``buckets`` the entry itself;
    with them ``{key: entry, f"{key}@{bucket}": entry over that bucket's users, ...}`` from the same ranking."""
    main = ds.main_label
    train_pos = positives_matrix(ds, main, split_mask(ds, "train"))
    test_pos = positives_matrix(ds, main, split_mask(ds, split))
    if not test_pos.nnz or not hasattr(scorer, "rank"):
        return None
    t = ranking_time(ds, split)
    ranked, per_user = per_user_ranking(lambda u: scorer.rank(u, t), train_pos, test_pos, k, batch_size, users)
    kk = min(k, ds.num_authors)
    head = {"label": main, "k": kk}
    if buckets is None:
        return {**head, **mean_ranking(per_user, len(ranked), kk)}
    out = {key: {**head, **mean_ranking(per_user, len(ranked), kk)}}
    which = buckets.of(ranked)
    for b, name in enumerate(buckets.names):
        rows = np.flatnonzero(which == b)
        if len(rows):
            out[f"{key}@{name}"] = {**head, **mean_ranking(per_user, len(ranked), kk, rows)}
    return out


def evaluate(scorer, ds: Dataset, split: str, k: int = 20, negatives: int = 20, seed: int = 0,
             two_stage: Optional[TwoStage] = None, topk: bool = True,
             buckets: Optional[ActivityBuckets] = None) -> Dict[str, Any]:
    """One model's metrics entry on one split (the schema in the module docstring); with ``buckets``, every
    metric also per user-activity bucket."""
    out: Dict[str, Any] = dict(impression_metrics(scorer, ds, split, negatives, seed, buckets=buckets))
    if topk:
        rep = topk_metrics(scorer, ds, split, k, buckets=buckets)
        if rep is not None:
            out.update(rep if buckets is not None else {"topk": rep})
    if two_stage is not None:
        rep = topk_metrics(two_stage, ds, split, k)
        if rep is not None:
            out["topk_two_stage"] = {**rep, "candidates": two_stage.n, "retriever": two_stage.name}
    return out


def record(metrics: Dict[str, Any], split: str, model: str, entry: Mapping[str, Any], writer=None, log=None) -> None:
    """Put ``entry`` at ``metrics["eval"][split][model]``, in TensorBoard (per-bucket keys under
    ``<split>/<model>/buckets/<key>/<metric>``) and in the log."""
    metrics.setdefault("eval", {}).setdefault(split, {})[model] = dict(entry)
    for key, rep in entry.items():
        for m, v in rep.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if writer is not None:
                    where = f"buckets/{key}" if is_bucket_key(key) else key
                    writer.add_scalar(f"{split}/{model}/{where}/{m}", v, 0)
        if log is not None:
            shown = ", ".join(f"{m}={v:.4f}" if isinstance(v, float) else f"{m}={v}" for m, v in rep.items())
            log(f"{split} {model:10s} {key}: {shown}")


def main_metric(entry: Mapping[str, Any], label: str, implicit: bool, k: int = 20) -> float:
    """The headline of an entry: Recall@k for implicit data, the main label's GAUC for impression logs."""
    if implicit:
        return float(entry.get("topk", {}).get(f"recall@{k}", float("nan")))
    return float(entry.get(label, {}).get("gauc", float("nan")))
