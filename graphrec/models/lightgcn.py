"""LightGCN (He et al., SIGIR 2020): the top-K baseline, trained with BPR on training positives.

Embeddings of users and authors are propagated over the symmetric-normalised bipartite adjacency
``D^{-1/2} A D^{-1/2}`` for ``layers`` steps without weights or non-linearities; the final
representation is the mean over layers 0..K, and a pair is scored by the dot product.
"""
from __future__ import annotations

from typing import Callable, Mapping

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


def train_lightgcn(users: np.ndarray, authors: np.ndarray, num_users: int, num_authors: int, sec: Mapping,
                   seed: int = 0, on_epoch: Callable[[int, float], None] = lambda e, l: None) -> LightGCN:
    """BPR over (user, gifted author, random author) triples; L2 on the batch's layer-0 embeddings."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = LightGCN(num_users, num_authors, normalized_adjacency(users, authors, num_users, num_authors),
                     sec["dim"], sec["layers"])
    opt = torch.optim.Adam(model.parameters(), lr=sec["lr"])
    u_all, a_all = torch.from_numpy(users.astype(np.int64)), torch.from_numpy(authors.astype(np.int64))
    for epoch in range(sec["epochs"]):
        perm = torch.randperm(len(u_all), generator=gen)
        total = 0.0
        for s in range(0, len(perm), sec["batch_size"]):
            idx = perm[s:s + sec["batch_size"]]
            u, p = u_all[idx], a_all[idx]
            n = torch.randint(0, num_authors, (len(idx),), generator=gen)
            eu, ea = model.split()
            x = (eu[u] * ea[p]).sum(-1) - (eu[u] * ea[n]).sum(-1)
            w = model.embedding.weight
            reg = (w[u].pow(2).sum() + w[p + num_users].pow(2).sum() + w[n + num_users].pow(2).sum()) / len(idx)
            loss = -torch.nn.functional.logsigmoid(x).mean() + sec["reg"] * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        on_epoch(epoch, total / max(len(perm), 1))
    model.eval()
    return model
