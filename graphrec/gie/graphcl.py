"""GraphCL pre-training of the node embeddings Θ (MMBee poster, Algorithm 1), and its evaluation.

Θ holds one vector per user and per author (authors after users). Each epoch shuffles all nodes
(users and authors together); for every node of a minibatch one positive is drawn from its
expansion (``u2a2u`` for a user, ``a2u2a`` for an author) and ``negatives`` random nodes of the same
type. The loss is ``L_CE + λ·L_NCE``: binary cross-entropy on the dot-product scores of the positive
(label 1) and the negatives (label 0), plus InfoNCE over cosine similarities with temperature ``τ``
(the positive against the negatives). Nodes without any positive (no gifts yet) are left out of the
loss and keep their initial vectors.

Quality is measured as link prediction of held-out gift edges: a user is represented by the mean of
the (normalised) Θ of the authors they gifted in training, an author by its Θ, and pairs are scored by
cosine. Positives are validation/test gifts to authors the user had not gifted in training; each is
ranked against random authors. AUC and Hits@K (``ogb``'s ``ogbl-collab`` evaluator) are reported for
the trained Θ and for the untrained initial Θ side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metapath import PAD


class GraphCL(nn.Module):
    """The embedding table Θ (``[num_users + num_authors, dim]``) and the GraphCL loss."""

    def __init__(self, num_users: int, num_authors: int, dim: int = 32, temperature: float = 0.2,
                 nce_weight: float = 1.0) -> None:
        super().__init__()
        self.num_users, self.num_authors = num_users, num_authors
        self.theta = nn.Embedding(num_users + num_authors, dim)
        nn.init.normal_(self.theta.weight, std=0.1)
        self.temperature = temperature
        self.nce_weight = nce_weight

    def loss(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``anchor [B]``, ``positive [B]``, ``negatives [B, M]``: global node ids (authors offset)."""
        a = self.theta(anchor)
        p = self.theta(positive)
        n = self.theta(negatives)
        pos_dot = (a * p).sum(-1)
        neg_dot = torch.einsum("bd,bmd->bm", a, n)
        l_ce = F.binary_cross_entropy_with_logits(pos_dot, torch.ones_like(pos_dot)) + \
            F.binary_cross_entropy_with_logits(neg_dot, torch.zeros_like(neg_dot))
        an, pn, nn_ = F.normalize(a, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
        logits = torch.cat([(an * pn).sum(-1, keepdim=True), torch.einsum("bd,bmd->bm", an, nn_)], dim=1)
        l_nce = F.cross_entropy(logits / self.temperature, torch.zeros(len(anchor), dtype=torch.long,
                                                                       device=anchor.device))
        return {"loss": l_ce + self.nce_weight * l_nce, "ce": l_ce, "nce": l_nce}

    def author_embeddings(self) -> torch.Tensor:
        return self.theta.weight[self.num_users:].detach()


@dataclass
class GraphCLResult:
    model: GraphCL
    initial: torch.Tensor          # Θ before training (the untrained baseline)
    history: List[Dict[str, float]]


def train_graphcl(num_users: int, num_authors: int, user_pos: np.ndarray, author_pos: np.ndarray,
                  sec: Mapping[str, Any], seed: int = 0, device: str = "cpu", progress: bool = False,
                  on_epoch: Callable[[int, Dict[str, float]], None] = lambda e, h: None) -> GraphCLResult:
    """Algorithm 1. ``user_pos [U, K]`` holds ``u2a2u`` user ids, ``author_pos [A, K]`` ``a2u2a``
    author ids (``PAD`` = none)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GraphCL(num_users, num_authors, sec["dim"], sec["temperature"], sec["nce_weight"]).to(device)
    initial = model.theta.weight.detach().clone().cpu()
    # positives as global ids; authors are offset by num_users
    pos = torch.cat([torch.from_numpy(user_pos.astype(np.int64)),
                     torch.where(torch.from_numpy(author_pos.astype(np.int64)) >= 0,
                                 torch.from_numpy(author_pos.astype(np.int64)) + num_users, PAD)])
    has_pos = (pos >= 0).any(dim=1)
    nodes = has_pos.nonzero().squeeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=sec["lr"])
    history: List[Dict[str, float]] = []
    M, B = sec["negatives"], sec["batch_size"]
    for epoch in range(sec["epochs"]):
        order = nodes[torch.randperm(len(nodes), generator=gen)]
        sums = {"loss": 0.0, "ce": 0.0, "nce": 0.0}
        for s in tqdm(range(0, len(order), B), desc=f"graphcl {epoch + 1}/{sec['epochs']}", disable=not progress,
                      leave=False):
            anchor = order[s:s + B]
            cand = pos[anchor]
            valid = cand >= 0
            # one random valid positive per anchor: argmax of random keys over valid slots
            pick = torch.where(valid, torch.rand(cand.shape, generator=gen), -1.0).argmax(dim=1)
            positive = cand[torch.arange(len(anchor)), pick]
            is_user = anchor < num_users
            neg = torch.where(is_user[:, None], torch.randint(0, num_users, (len(anchor), M), generator=gen),
                              num_users + torch.randint(0, num_authors, (len(anchor), M), generator=gen))
            out = model.loss(anchor.to(device), positive.to(device), neg.to(device))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            for k in sums:
                sums[k] += float(out[k]) * len(anchor)
        h = {k: v / max(len(order), 1) for k, v in sums.items()}
        history.append(h)
        on_epoch(epoch, h)
    model.eval()
    return GraphCLResult(model.cpu(), initial, history)


def link_prediction(author_emb: torch.Tensor, train_u: np.ndarray, train_a: np.ndarray, test_u: np.ndarray,
                    test_a: np.ndarray, negatives: int = 100, seed: int = 0) -> Dict[str, float]:
    """AUC, MRR and Hits@1/3/10 of held-out gifts, each ranked against ``negatives`` random authors
    (see the module docstring); users without training gifts and pairs gifted in training are skipped."""
    from ogb.linkproppred import Evaluator

    from ..metrics import auc

    num_authors = author_emb.shape[0]
    emb = F.normalize(author_emb.float(), dim=-1)
    users, inverse = np.unique(train_u, return_inverse=True)
    profile = torch.zeros(len(users), emb.shape[1]).index_add_(0, torch.from_numpy(inverse), emb[train_a])
    profile = F.normalize(profile, dim=-1)
    row = {int(u): i for i, u in enumerate(users)}
    seen = set(zip(train_u.tolist(), train_a.tolist()))
    pairs = [(row[u], a) for u, a in zip(test_u.tolist(), test_a.tolist()) if u in row and (u, a) not in seen]
    if not pairs:
        return {"auc": float("nan"), "mrr": float("nan"), "hits@10": float("nan"), "pairs": 0}
    pr, pa = (torch.tensor(x) for x in zip(*pairs))
    pos_score = (profile[pr] * emb[pa]).sum(-1)
    rng = np.random.default_rng(seed)
    na = torch.from_numpy(rng.integers(0, num_authors, (len(pairs), negatives)))
    neg_score = torch.einsum("pd,pmd->pm", profile[pr], emb[na])
    labels = np.concatenate([np.ones(len(pairs)), np.zeros(neg_score.numel())])
    result: Dict[str, float] = {"auc": auc(labels, np.concatenate([pos_score.numpy(), neg_score.numpy().ravel()])),
                                "pairs": len(pairs)}
    # per-positive ranking against its own negatives: OGB's ogbl-citation2 protocol
    ranked = Evaluator(name="ogbl-citation2").eval({"y_pred_pos": pos_score, "y_pred_neg": neg_score})
    for key in ("mrr", "hits@1", "hits@3", "hits@10"):
        result[key] = float(ranked[f"{key}_list" if key != "mrr" else "mrr_list"].mean())
    return result
