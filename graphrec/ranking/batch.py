"""The ranker's typed batch: what :class:`~graphrec.ranking.batches.BatchBuilder` hands the model.

A batch has ``B`` rows (impressions, or users to rank for) and ``C`` candidate authors per row:
one for per-impression scoring, the row's positive plus sampled negatives for the sampled-softmax
objective. Work is split by what it depends on, so each piece is done once:

* :class:`UserPart` — one entry per row: the user's ids, side features, behaviour history and
  user-seeded expansions;
* :class:`RoomPart` — one entry per candidate (``N`` of them), but its author-only pieces are stored
  once per *distinct* author of the batch (``uniq`` + ``inv``) and its segment tokens once per distinct
  segment on air (``seg_author`` + ``seg_inv``), so MFQ runs once per room segment, not per impression;
* :class:`Batch` — both parts, the ``[B, C]`` candidate indices into the rooms, labels, the mask of
  usable candidates and the sampling correction.

Every part has ``.to(device)`` (non-blocking copies) and ``.pin_memory()`` (torchrec's ``Batch`` is the
model for this).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

Tokens = Tuple[torch.Tensor, torch.Tensor]      # ([S, L, d] features, [S, L] valid mask)


def _map(x: Any, fn) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_map(v, fn) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _map(getattr(x, f.name), fn) for f in dataclasses.fields(x)})
    return x


class _Movable:
    def to(self, device, non_blocking: bool = True):
        """A copy on ``device`` (tensors already there are not copied)."""
        device = torch.device(device)
        return _map(self, lambda t: t.to(device, non_blocking=non_blocking and t.is_pinned()))

    def pin_memory(self):
        """A copy in page-locked memory, so that ``.to("cuda")`` overlaps with compute."""
        return _map(self, lambda t: t.pin_memory() if t.device.type == "cpu" else t)


@dataclass
class UserPart(_Movable):
    user: torch.Tensor                                            # [B] ids
    hist: Dict[str, torch.Tensor]                                 # per behaviour sequence, [B, L] author ids (PAD = -1)
    hist_code: Dict[str, torch.Tensor] = field(default_factory=dict)   # [B, L] value codes (ranker.history_values)
    cats: Dict[str, torch.Tensor] = field(default_factory=dict)   # side features, [B] codes each
    dense: Optional[torch.Tensor] = None                          # [B, k]
    theta: Optional[torch.Tensor] = None                          # [B, td] pretrained Θ of the user
    exp: Dict[str, torch.Tensor] = field(default_factory=dict)    # user-seeded expansions, [B, K] ids
    exp_theta: Dict[str, torch.Tensor] = field(default_factory=dict)   # their pretrained Θ, [B, K, td]
    activity: Optional[torch.Tensor] = None                       # [B, Fa] time-aware user activity

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class RoomPart(_Movable):
    author: torch.Tensor                                          # [N] author of each candidate
    uniq: torch.Tensor                                            # [Au] distinct authors (with several graph
                                                                  # snapshots: of distinct (author, snapshot) pairs)
    inv: torch.Tensor                                             # [N] index into uniq
    cats: Dict[str, torch.Tensor] = field(default_factory=dict)   # [Au] per distinct author
    dense: Optional[torch.Tensor] = None                          # [Au, k]
    theta: Optional[torch.Tensor] = None                          # [Au, td]
    exp: Dict[str, torch.Tensor] = field(default_factory=dict)    # author-seeded expansions [Au, K]
    exp_theta: Dict[str, torch.Tensor] = field(default_factory=dict)
    seg_author: Optional[torch.Tensor] = None                     # [S] author of each distinct segment on air
    seg_inv: Optional[torch.Tensor] = None                        # [N] index into the segments
    seg_key: Optional[torch.Tensor] = None                        # [S] segment row (-1 - author: none on air)
    tokens: Dict[str, Tokens] = field(default_factory=dict)       # per modality, [S, L, d] + mask
    stat: Optional[torch.Tensor] = None                           # [N, Fs] frozen statistic forecaster features
    realtime: Optional[torch.Tensor] = None                       # [N, Fr] the room's latest statistics
    popularity: Optional[torch.Tensor] = None                     # [N, Fp] time-aware author activity
    prod_probs: Optional[torch.Tensor] = None                     # [N, K3] softmax(ĉ_next)
    prod_enc: Optional[torch.Tensor] = None                       # [N, D]

    def __len__(self) -> int:
        return len(self.author)


@dataclass
class Batch(_Movable):
    users: UserPart
    rooms: RoomPart
    cand: torch.Tensor                          # [B, C] index into rooms of each row's candidates
    labels: Optional[torch.Tensor] = None       # [B, T] labels of candidate 0 (the logged impression)
    valid: Optional[torch.Tensor] = None        # [B, C] False: a sampled negative that is a known positive
    logq: Optional[torch.Tensor] = None         # [B, C] log sampling probability (logQ correction)

    def __len__(self) -> int:
        return len(self.users)
