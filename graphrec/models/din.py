"""DIN-style target attention (Zhou et al., KDD 2018), as FuxiCTR's ``DIN_Attention``.

Each behaviour ``h_i`` is scored against the target ``t`` by an MLP over ``[t, h_i, t − h_i, t · h_i]``;
scores are softmax-normalised over the *valid* positions only, so a padded position gets exactly
zero weight, and a row without any valid position pools to the zero vector.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class TargetAttention(nn.Module):
    def __init__(self, dim: int, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        layers, width = [], 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.score = nn.Sequential(*layers)

    def weights(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``target [B, d]``, ``seq [B, L, d]``, ``mask [B, L]`` (True = valid) -> weights ``[B, L]``."""
        t = target.unsqueeze(1).expand_as(seq)
        s = self.score(torch.cat([t, seq, t - seq, t * seq], dim=-1)).squeeze(-1)
        s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1)
        return torch.nan_to_num(w, nan=0.0).masked_fill(~mask, 0.0)   # all-padded rows: zero weights

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention-pooled sequence ``[B, d]``."""
        if seq.shape[1] == 0:
            return torch.zeros_like(target)
        w = self.weights(target, seq, mask)
        return (w.unsqueeze(-1) * seq.masked_fill(~mask.unsqueeze(-1), 0.0)).sum(dim=1)
