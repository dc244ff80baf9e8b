"""LightGCN (He et al., SIGIR 2020): the top-K baseline, trained with BPR on training positives.

Embeddings of users and authors are propagated over the symmetric-normalised bipartite adjacency
``D^{-1/2} A D^{-1/2}`` for ``layers`` steps without weights or non-linearities; the final
representation is the mean over layers 0..K, and a pair is scored by the dot product.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn


def normalized_adjacency(users: np.ndarray, authors: np.ndarray, num_users: int, num_authors: int) -> torch.Tensor:
    n = num_users + num_authors
    row = np.concatenate([users, authors + num_users])
    col = np.concatenate([authors + num_users, users])
    deg = np.bincount(row, minlength=n).astype(np.float32)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0)
    val = inv_sqrt[row] * inv_sqrt[col]
    return torch.sparse_coo_tensor(np.stack([row, col]), val.astype(np.float32), (n, n)).coalesce()


class LightGCN(nn.Module):
    def __init__(self, num_users: int, num_authors: int, adjacency: torch.Tensor, dim: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.num_users, self.num_authors, self.layers = num_users, num_authors, layers
        self.embedding = nn.Embedding(num_users + num_authors, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.register_buffer("adj", adjacency, persistent=False)

    def propagate(self) -> torch.Tensor:
        e = self.embedding.weight
        out = [e]
        for _ in range(self.layers):
            e = torch.sparse.mm(self.adj, e)
            out.append(e)
        return torch.stack(out).mean(0)

    def split(self):
        e = self.propagate()
        return e[: self.num_users], e[self.num_users:]


class BPRTask:
    """BPR over (user, gifted author, random author) triples with L2 on the batch's layer-0 embeddings,
    as a :class:`graphrec.fit.Task`."""

    def __init__(self, users: np.ndarray, authors: np.ndarray, num_authors: int, batch_size: int, reg: float) -> None:
        self.u = torch.from_numpy(users.astype(np.int64))
        self.a = torch.from_numpy(authors.astype(np.int64))
        self.num_authors, self.batch_size, self.reg = num_authors, batch_size, reg

    def batches(self, epoch: int, rng: np.random.Generator):
        perm = torch.from_numpy(rng.permutation(len(self.u)))
        neg = torch.from_numpy(rng.integers(0, self.num_authors, len(self.u)))
        return [(self.u[perm[s:s + self.batch_size]], self.a[perm[s:s + self.batch_size]],
                 neg[s:s + self.batch_size]) for s in range(0, len(perm), self.batch_size)]

    def loss(self, model: LightGCN, batch):
        u, p, n = batch
        eu, ea = model.split()
        x = (eu[u] * ea[p]).sum(-1) - (eu[u] * ea[n]).sum(-1)
        w = model.embedding.weight
        nu = model.num_users
        reg = (w[u].pow(2).sum() + w[p + nu].pow(2).sum() + w[n + nu].pow(2).sum()) / len(u)
        return -torch.nn.functional.logsigmoid(x).mean() + self.reg * reg, len(u)
