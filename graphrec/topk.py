"""Full-ranking top-K evaluation (the protocol MMSSL/DiffMM publish for TikTok).

For every user with at least one test item: score all items, mask the user's training items,
take the top K, and compute Recall@K (hits / number of test items), Precision@K (hits / K) and
NDCG@K (DCG of hits over the ideal DCG of min(K, #test items) hits); averages over those users.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import scipy.sparse as sp
import torch


def full_ranking(score_users: Callable[[np.ndarray], torch.Tensor], train: sp.csr_matrix,
                 test: sp.csr_matrix, k: int = 20, batch_size: int = 1024) -> Dict[str, float]:
    """``score_users(user_ids) -> [len(user_ids), num_items]`` scores; ``train``/``test`` are users x
    items 0/1 matrices. Returns ``recall@k``, ``precision@k``, ``ndcg@k`` and ``users``."""
    train = sp.csr_matrix(train, dtype=np.float32)
    test = sp.csr_matrix(test, dtype=np.float32)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    recall = precision = ndcg = 0.0
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = score_users(batch).detach().float().cpu()
        seen = train[batch].tocoo()
        scores[torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long()] = -float("inf")
        top = torch.topk(scores, k, dim=1).indices.numpy()
        truth = test[batch]
        hits = np.asarray(truth[np.repeat(np.arange(len(batch)), k), top.ravel()]).reshape(len(batch), k) > 0
        n_true = np.diff(truth.indptr)
        n_hit = hits.sum(axis=1)
        recall += float((n_hit / n_true).sum())
        precision += float((n_hit / k).sum())
        ndcg += float(((hits * discounts).sum(axis=1) / ideal[np.minimum(n_true, k)]).sum())
    n = max(len(users), 1)
    return {f"recall@{k}": recall / n, f"precision@{k}": precision / n, f"ndcg@{k}": ndcg / n,
            "users": int(len(users))}
