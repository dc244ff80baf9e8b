"""The MMBee ranker: the LiveForesighter base model plus MMBee's GIE and MFQ features.

Per impression it concatenates
* the user and author id embeddings and their side features (categorical embeddings, dense
  projections);
* the user's own gift history (authors gifted before the impression), pooled by DIN target
  attention against the target author;
* with GIE, each enabled metapath's expansion as Θ vectors, pooled by target attention (user-side
  user sequences against the user's Θ, author sequences against the target author's Θ);
* with MFQ, ``h_m`` of the room's segment at impression time;
* with the forecasters, their stop-gradient features (statistics: ``flatten(Ŝ), flatten(E)``;
  products: ``softmax(ĉ)·C̃`` with a trainable category table ``C̃``, and the sequence encoding),
then an MLP tower and one logit per task, trained with summed (weighted) BCE.

With every module switched off it is the plain DIN baseline (ids + own history).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .din import TargetAttention
from .mfq import MFQ

USER_SIDE = ("u2a2u", "u2a2u2a", "u2a2a")
AUTHOR_SIDE = ("a2a", "a2u2a")
ENDPOINT = {"u2a2u": "user", "u2a2u2a": "author", "u2a2a": "author", "a2a": "author", "a2u2a": "author"}


@dataclass
class RankerSpec:
    """Everything the ranker's shape depends on (saved with checkpoints)."""

    num_users: int
    num_authors: int
    tasks: List[str]
    user_cats: Dict[str, int] = field(default_factory=dict)       # name -> cardinality
    author_cats: Dict[str, int] = field(default_factory=dict)
    user_dense: int = 0
    author_dense: int = 0
    id_dim: int = 16
    theta_dim: int = 32
    theta_pretrained: bool = True                                 # Θ comes in the batch (GraphCL)
    metapaths: List[str] = field(default_factory=list)            # enabled GIE expansions
    modality_dims: Dict[str, int] = field(default_factory=dict)   # MFQ modalities (empty = no MFQ)
    mfq: Dict[str, float] = field(default_factory=dict)
    stat_dim: int = 0                                             # stat forecaster feature size (0 = off)
    product_cats: int = 0                                         # num_cat3 (0 = off)
    product_enc_dim: int = 0
    mlp: List[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1


class Ranker(nn.Module):
    def __init__(self, spec: RankerSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.id_dim
        self.user_emb = nn.Embedding(spec.num_users, d)
        self.author_emb = nn.Embedding(spec.num_authors, d)
        self.user_cat = nn.ModuleDict({k: nn.Embedding(n, d) for k, n in spec.user_cats.items()})
        self.author_cat = nn.ModuleDict({k: nn.Embedding(n, d) for k, n in spec.author_cats.items()})
        self.user_dense = nn.Linear(spec.user_dense, d) if spec.user_dense else None
        self.author_dense = nn.Linear(spec.author_dense, d) if spec.author_dense else None
        self.hist_att = TargetAttention(d)
        width = d * (3 + len(spec.user_cats) + len(spec.author_cats) + bool(spec.user_dense) + bool(spec.author_dense))
        td = spec.theta_dim
        if spec.metapaths:
            if not spec.theta_pretrained:   # −GraphCL: Θ is learned by the ranker itself
                self.theta = nn.Embedding(spec.num_users + spec.num_authors, td)
                nn.init.normal_(self.theta.weight, std=0.1)
            self.exp_att = nn.ModuleDict({m: TargetAttention(td) for m in spec.metapaths})
            width += td * len(spec.metapaths)
        self.mfq = None
        if spec.modality_dims:
            self.mfq = MFQ(spec.modality_dims, spec.num_authors, int(spec.mfq.get("dim", 32)),
                           int(spec.mfq.get("heads", 4)), int(spec.mfq.get("query_tokens", 4)),
                           float(spec.mfq.get("dropout", 0.0)))
            width += self.mfq.dim
        if spec.stat_dim:
            self.stat_proj = nn.Sequential(nn.LayerNorm(spec.stat_dim), nn.Linear(spec.stat_dim, d))
            width += d
        if spec.product_cats:
            self.cat_table = nn.Linear(spec.product_cats, d, bias=False)   # softmax(ĉ) · C̃
            self.prod_proj = nn.Linear(spec.product_enc_dim, d)
            width += 2 * d
        layers: List[nn.Module] = []
        for h in spec.mlp:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = h
        self.tower = nn.Sequential(*layers)
        self.heads = nn.Linear(width, len(spec.tasks))

    def _theta(self, batch: Mapping, kind: str, ids: torch.Tensor) -> torch.Tensor:
        """Θ vectors of ``ids`` (``kind`` user/author) when Θ is the ranker's own table."""
        offset = 0 if kind == "user" else self.spec.num_users
        return self.theta(ids.clamp(min=0) + offset)

    def forward(self, batch: Mapping) -> torch.Tensor:
        """Logits ``[B, len(tasks)]``."""
        u, a = batch["user"], batch["author"]
        e_u, e_a = self.user_emb(u), self.author_emb(a)
        parts = [e_u, e_a]
        parts += [self.user_cat[k](batch["user_cat"][k]) for k in self.user_cat]
        parts += [self.author_cat[k](batch["author_cat"][k]) for k in self.author_cat]
        if self.user_dense is not None:
            parts.append(self.user_dense(batch["user_dense"]))
        if self.author_dense is not None:
            parts.append(self.author_dense(batch["author_dense"]))
        hist = batch["hist"]
        parts.append(self.hist_att(e_a, self.author_emb(hist.clamp(min=0)), hist >= 0))
        if self.spec.metapaths:
            if self.spec.theta_pretrained:
                t_u, t_a = batch["theta_user"], batch["theta_author"]
            else:
                t_u, t_a = self._theta(batch, "user", u), self._theta(batch, "author", a)
            for m in self.spec.metapaths:
                ids = batch["exp"][m]
                seq = batch["exp_theta"][m] if self.spec.theta_pretrained else self._theta(batch, ENDPOINT[m], ids)
                target = t_u if ENDPOINT[m] == "user" else t_a
                parts.append(self.exp_att[m](target, seq, ids >= 0))
        if self.mfq is not None:    # serving may pass h_m precomputed (it depends on the room only)
            parts.append(batch["mfq_out"] if "mfq_out" in batch else self.mfq(batch["tokens"], a))
        if self.spec.stat_dim:
            parts.append(self.stat_proj(batch["stat_feat"]))
        if self.spec.product_cats:
            parts.append(self.cat_table(batch["prod_probs"]))
            parts.append(self.prod_proj(batch["prod_enc"]))
        return self.heads(self.tower(torch.cat(parts, dim=1)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
             label_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Summed per-task BCE, each task weighted; ``label_mask`` drops tasks a row has no label for."""
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if label_mask is not None:
            per = per * label_mask
            denom = label_mask.sum(0).clamp(min=1)
        else:
            denom = torch.full((logits.shape[1],), float(len(logits)), device=logits.device)
        return ((per.sum(0) / denom) * weights).sum()
