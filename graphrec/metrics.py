"""Ranking metrics: AUC, UAUC (mean per-user AUC), GAUC (impression-weighted per-user AUC), and the
expected AUC of a probability vector (the Bayes-optimal AUC when the probabilities are the truth).

All are rank based with tied scores counted as half, and vectorised over users (no Python loop),
so they run on tens of millions of impressions.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


def _average_ranks_sorted(keys_changed: np.ndarray, n: int) -> np.ndarray:
    """1-based ranks of a sorted sequence where ties (runs between changes) share their mean rank."""
    starts = np.flatnonzero(np.concatenate([[True], keys_changed]))
    ends = np.concatenate([starts[1:], [n]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of start+1 .. end
    return np.repeat(mean_rank, ends - starts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = _average_ranks_sorted(np.diff(s[order]) != 0, len(s))
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """AUC of every user with both classes: ``(user_ids, aucs, impressions_per_user)``."""
    u = np.asarray(users, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if len(u) == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    order = np.lexsort((s, u))
    u, y, s = u[order], y[order], s[order]
    user_change = u[1:] != u[:-1]
    changed = user_change | (s[1:] != s[:-1])
    ranks_global = _average_ranks_sorted(changed, len(u))      # ties only within the same user
    user_start = np.flatnonzero(np.concatenate([[True], user_change]))
    group = np.cumsum(np.concatenate([[0], user_change.astype(np.int64)]))
    ranks = ranks_global - user_start[group]                    # rank within the user's block
    n = np.bincount(group)
    n_pos = np.bincount(group, weights=y).astype(np.int64)
    n_neg = n - n_pos
    pos_rank_sum = np.bincount(group, weights=ranks * y)
    ok = (n_pos > 0) & (n_neg > 0)
    aucs = (pos_rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return u[user_start][ok], aucs, n[ok]


def uauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-user AUC over users with both classes (NaN if there are none)."""
    _, aucs, _ = per_user_auc(users, labels, scores)
    return float(aucs.mean()) if len(aucs) else float("nan")


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC weighted by the user's impression count (NaN if no user has both classes)."""
    _, aucs, n = per_user_auc(users, labels, scores)
    return float((aucs * n).sum() / n.sum()) if len(aucs) else float("nan")


def ranking_report(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> Dict[str, float]:
    """AUC, UAUC and GAUC in one dict."""
    _, aucs, n = per_user_auc(users, labels, scores)
    return {
        "auc": auc(labels, scores),
        "uauc": float(aucs.mean()) if len(aucs) else float("nan"),
        "gauc": float((aucs * n).sum() / n.sum()) if len(aucs) else float("nan"),
    }


def ranks_against_negatives(pos: np.ndarray, neg: np.ndarray) -> Dict[str, float]:
    """MRR and Hits@1/3/10 of each positive score ``pos[i]`` ranked against its own negatives ``neg[i]``.

    OGB's ``ogbl-citation2`` protocol: a tie counts half (rank = 1 + #greater + #equal / 2)."""
    pos, neg = np.asarray(pos, dtype=np.float64)[:, None], np.asarray(neg, dtype=np.float64)
    rank = 1.0 + (neg > pos).sum(1) + 0.5 * (neg == pos).sum(1)
    return {"mrr": float((1.0 / rank).mean()), **{f"hits@{k}": float((rank <= k).mean()) for k in (1, 3, 10)}}


def expected_auc(p: np.ndarray) -> float:
    """Expected AUC of scoring by ``p`` when each label is an independent Bernoulli(``p``).

    Over all ordered pairs (i, j), i != j: E[#correctly ordered pos/neg pairs] / E[#pos/neg pairs],
    i.e. sum_{i,j} p_i (1 - p_j) [p_i > p_j] (ties 1/2) / (sum_{i != j} p_i (1 - p_j)). When ``p`` is the
    true probability this is the Bayes-optimal AUC: no scorer has a higher expected numerator.
    NaN when there is no pair to order (fewer than two probabilities, or all of them 0 or all 1).
    """
    p = np.sort(np.asarray(p, dtype=np.float64).ravel())
    if len(p) < 2:                                          # no pair to order (e.g. no shopping impression)
        return float("nan")
    q = 1.0 - p
    # sum over j with p_j < p_i of q_j, ties counted half: use the mean-rank trick on cumulative sums
    cq = np.concatenate([[0.0], np.cumsum(q)])
    change = np.concatenate([[True], p[1:] != p[:-1], [True]])
    idx = np.flatnonzero(change)
    start = np.repeat(idx[:-1], np.diff(idx))              # first index of each element's tie run
    end = np.repeat(idx[1:], np.diff(idx))                 # one past the last index of the run
    below = cq[start]                                       # strictly smaller p
    ties = cq[end] - cq[start] - q                          # equal p, excluding itself
    numer = float(np.sum(p * (below + 0.5 * ties)))
    denom = float(p.sum() * q.sum() - np.sum(p * q))
    return numer / denom if denom > 0 else float("nan")
