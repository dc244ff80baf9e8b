"""Target attention: pool a behaviour sequence by its relevance to a target.

Two forms, both computed on a *grid*: row ``b``'s sequence against each of its candidates
``cand[b, :]`` (one candidate per row for an impression; the sampled negatives of a training row;
every author for a full ranking), with batched matrix products instead of a copy of the sequence
per candidate:

* :class:`TargetAttention` — DIN's (Zhou et al., KDD 2018; FuxiCTR's ``DIN_Attention``): each
  behaviour ``h_i`` is scored against the target ``t`` by an MLP over ``[t, h_i, t − h_i, t · h_i]``.
  The MLP's first layer is linear, so it splits exactly into a target part, a behaviour part and
  the ``t · h_i`` part; only the last depends on the pair (a ``[B, C, L, d]`` product, the smallest
  tensor of the pair: the layer's output is ``[B, C, L, h]`` with ``h ≥ d`` by default).
* :class:`DotTargetAttention` — scaled dot-product attention with the target as the query (the
  multi-head target attention of Kuaishou's rankers; MMBee pools its expanded sequences this way).

Scores are softmax-normalised over the *valid* positions only, so a padded position gets exactly
zero weight, and a row without any valid position pools to the zero vector.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn


def _pool(scores: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores [B, C, L]`` over valid positions, then the weighted sums of ``seq [B, L, d]``:
    ``[B, C, d]`` (one batched matmul; no per-pair copy of the sequence)."""
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    w = torch.nan_to_num(w, nan=0.0).masked_fill(~mask, 0.0)          # all-padded rows: zero weights
    return torch.matmul(w.to(seq.dtype), seq)


def at(x: torch.Tensor, cand: Optional[torch.Tensor]) -> torch.Tensor:
    """``x``'s rows for each row's candidates: ``x[cand]`` ``[B, C, ...]``; ``cand=None`` means every row of ``x``
    for every row, a broadcast view ``[1, N, ...]`` (a full ranking shares its candidates)."""
    return x.unsqueeze(0) if cand is None else x[cand]


def _grid_mask(seq_mask: torch.Tensor, pair_mask: Optional[torch.Tensor], C: int) -> torch.Tensor:
    mask = seq_mask.unsqueeze(1).expand(-1, C, -1)
    return mask if pair_mask is None else mask & pair_mask


def _width(target: torch.Tensor, cand: Optional[torch.Tensor]) -> int:
    return len(target) if cand is None else cand.shape[1]


class TargetAttention(nn.Module):
    def __init__(self, dim: int, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        self.dim = dim
        layers, width = [], 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.score = nn.Sequential(*layers)

    def scores(self, target: torch.Tensor, seq: torch.Tensor, cand: Optional[torch.Tensor]) -> torch.Tensor:
        """Scores ``[B, C, L]`` of row ``b``'s sequence ``seq [B, L, d]`` against its candidates ``target[cand[b]]``
        (``target [N, d]``, ``cand [B, C]``; ``None``: all ``N`` for every row)."""
        first = self.score[0]
        w_t, w_h, w_diff, w_prod = first.weight.split(self.dim, dim=1)
        t_part = at(target @ (w_t + w_diff).T, cand)                  # [B|1, C, h]  once per target
        h_part = seq @ (w_h - w_diff).T                               # [B, L, h]  once per sequence
        prod = at(target, cand).unsqueeze(2) * seq.unsqueeze(1)       # [B, C, L, d]  the pair part: t · h_i
        pre = torch.matmul(prod, w_prod.T)                            # [B, C, L, h]
        pre = pre.add_((h_part + first.bias).unsqueeze(1)).add_(t_part.unsqueeze(2))   # in place: matmul keeps no output
        return self.score[1:](pre).squeeze(-1)

    def grid(self, target: torch.Tensor, seq: torch.Tensor, seq_mask: torch.Tensor, cand: Optional[torch.Tensor],
             pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``seq [B, L, d]`` pooled against each of its row's candidates ``target[cand[b, c]]``: ``[B, C, d]``.
        ``pair_mask [B, C, L]`` (optional) drops positions for one candidate only (e.g. the target itself)."""
        C = _width(target, cand)
        if seq.shape[1] == 0:
            return target.new_zeros(len(seq), C, self.dim)
        return _pool(self.scores(target, seq, cand), seq, _grid_mask(seq_mask, pair_mask, C))

    def weights(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Row-aligned attention weights ``[B, L]`` (target ``b`` against sequence ``b``)."""
        cand = torch.arange(len(target), device=target.device)[:, None]
        w = torch.softmax(self.scores(target, seq, cand)[:, 0].masked_fill(~mask, float("-inf")), dim=1)
        return torch.nan_to_num(w, nan=0.0).masked_fill(~mask, 0.0)

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Row-aligned pooling ``[B, d]``."""
        cand = torch.arange(len(target), device=target.device)[:, None]
        return self.grid(target, seq, mask, cand)[:, 0]


def attention_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of every target attention in ``model`` (:class:`TargetAttention`'s scoring MLP,
    :class:`DotTargetAttention`'s query and key): they only shape the attention weights, and they must not be
    weight-decayed. At initialisation the weights are near uniform and these parameters' gradients are tiny, so
    Adam's L2 term (coupled: ``wd·p`` added to the gradient, then normalised) dominates their update and moves
    each weight towards zero by about the learning rate per step; the scorer then gets no gradient at all and
    decays geometrically (measured on the default world: every attention weight of a trained ranker was below
    1e-29, so DIN's and GIE's target attentions were plain means)."""
    return [p for m in model.modules() if isinstance(m, (TargetAttention, DotTargetAttention)) for p in m.parameters()]


class DotTargetAttention(nn.Module):
    """``softmax(<W_q t, W_k h_i> / sqrt(k))``-weighted sum of the ``h_i``, computed as
    ``<W_k^T W_q t, h_i>``: the same function, but the projection runs on the targets, not on each
    sequence element (a training batch has one target per row and ``K`` elements)."""

    def __init__(self, dim: int, key_dim: int = 32) -> None:
        super().__init__()
        self.dim, self.key_dim = dim, key_dim
        self.query = nn.Linear(dim, key_dim, bias=False)
        self.key = nn.Linear(dim, key_dim, bias=False)

    def grid(self, target: torch.Tensor, seq: torch.Tensor, seq_mask: torch.Tensor, cand: Optional[torch.Tensor],
             pair_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        C = _width(target, cand)
        if seq.shape[1] == 0:
            return target.new_zeros(len(seq), C, self.dim)
        # <W_q t, W_k h_i> = <W_k^T W_q t, h_i>: project the targets (one per candidate) instead of every
        # sequence element; with a frozen sequence (pretrained Θ) nothing flows back into [B, L, d] at all
        q = self.query(target) @ (self.key.weight / math.sqrt(self.key_dim))   # [N, d] once per target
        scores = torch.matmul(at(q, cand), seq.transpose(1, 2))       # [B, C, L]
        return _pool(scores, seq, _grid_mask(seq_mask, pair_mask, C))

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cand = torch.arange(len(target), device=target.device)[:, None]
        return self.grid(target, seq, mask, cand)[:, 0]
