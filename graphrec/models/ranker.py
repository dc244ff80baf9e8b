"""The MMBee ranker: LiveForesighter's base model plus MMBee's GIE and MFQ features.

A score for (user, author, time) is built from three parts, each computed once for what it
depends on (so that one user can be scored against every author, and a batch's rooms share work):

* **user side** (per row): the user's id and side features, their recent activity (impressions and
  positives before the row), the mean of each behaviour history, with
  GIE its pretrained Θ and the ``u2a2u`` expansion (similar users) pooled against it;
* **author side** (per candidate; pieces per distinct author or segment): the author's id and side
  features, with GIE its Θ and the ``a2a`` / ``a2u2a`` expansions pooled against it, with MFQ ``h_m``
  of the segment on air (once per segment), the frozen forecasters' stop-gradient features (statistics:
  ``flatten(Ŝ), flatten(E)``; products: ``softmax(ĉ)·C̃`` with a trainable category table ``C̃`` and the
  sequence encoding), the room's latest real-time statistics, and the author's recent activity;
* **pair** (per user × candidate): each behaviour history pooled by DIN target attention against the
  candidate, and the user-seeded author expansions (``u2a2u2a``, ``u2a2a``) pooled by target attention
  against the candidate's Θ, with the candidate itself masked out of them, and (``expansion_similarity``)
  the cosines of the candidate's Θ with each of them (:func:`expansion_cosines`).

The three parts meet in an MLP tower whose first layer is split by part (the user and author parts
of it are computed once per user / candidate), plus a factorisation-machine term: the element-wise
product of a user-side and an author-side projection, shared by the heads and weighted per head, so
the dense labels (click) teach the interactions the sparse ones (gift) use (LiveForesighter's base
model lists FM among its components; an MLP alone learns dot-product interactions poorly). One logit
per head.

With every module switched off it is the plain DIN baseline (ids + own history).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ranking.batch import Batch, RoomPart, UserPart
from ..schema import METAPATHS
from .din import DotTargetAttention, TargetAttention, at
from .mfq import MFQ, QUERY_INIT_STD
from .sections import section   # names the ranker's parts (profiles, bench train)

ID_INIT_STD = 0.01      # user- and author-id embeddings start as N(0, 0.01²)
THETA_INIT_STD = 0.1    # −GraphCL: the ranker's own Θ starts as N(0, 0.1²)


@dataclass
class RankerSpec:
    """Everything the ranker's shape depends on (saved with checkpoints)."""

    num_users: int
    num_authors: int
    tasks: List[str]                                              # one head (logit) per entry
    histories: List[str] = field(default_factory=lambda: ["main"])   # behaviour sequences (DIN each)
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
    realtime_dim: int = 0                                         # latest room statistics (0 = off)
    popularity_dim: int = 0                                       # author activity features (0 = off)
    user_activity_dim: int = 0                                    # user activity features (0 = off)
    product_cats: int = 0                                         # num_cat3 (0 = off)
    product_enc_dim: int = 0
    mlp: List[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1
    fm_dim: int = 32                                              # width of the shared FM product (0 = off)
    attention_hidden: int = 32                                    # hidden units of DIN's attention MLP
    user_id: bool = True                                          # learn an embedding per user id
    popularity_offset_head: int = -1                              # head that gets w·logit(author rate); -1 = none
    user_activity_bias: bool = False                              # user activity as an additive per-head bias only
    history_value_codes: int = 0                                  # value codes of history entries (0 = off)
    expansion_similarity: bool = False                            # cos(candidate Θ, each user-side author
                                                                  # expansion) as pair inputs (ranker.expansion_similarity)


class UserRep(NamedTuple):
    fields: torch.Tensor                 # [B, Fu]
    hist_emb: Dict[str, torch.Tensor]    # per behaviour sequence [B, L, d]
    hist_ids: Dict[str, torch.Tensor]    # [B, L]
    seqs: Dict[str, torch.Tensor]        # user-seeded author expansions as Θ, [B, K, td]
    seq_ids: Dict[str, torch.Tensor]     # their ids [B, K]
    bias: Optional[torch.Tensor] = None  # [B, heads] additive user-level logit (ranker.user_activity_bias)


class AuthorRep(NamedTuple):
    fields: torch.Tensor                 # [N, Fa]
    emb: torch.Tensor                    # [N, d] id embedding (DIN target)
    theta: Optional[torch.Tensor]        # [N, td] Θ (GIE target)
    author: torch.Tensor                 # [N] ids
    offset: Optional[torch.Tensor] = None   # [N] logit of the author's positive rate so far (popularity offset)


def pair_user_seqs(metapaths: List[str]) -> List[str]:
    """User-seeded metapaths that end on authors: pooled per (user, candidate) pair."""
    return [m for m in metapaths if METAPATHS[m].seed == "user" and METAPATHS[m].endpoint == "author"]


def expansion_cosines(target: torch.Tensor, target_ids: torch.Tensor, seq: torch.Tensor, ids: torch.Tensor,
                      pooled: torch.Tensor) -> torch.Tensor:
    """``[B, C, 2]``: the cosine of each candidate's Θ ``target [B|1, C, td]`` (ids ``target_ids [B|1, C]``) with
    the direction of a user-side expansion ``seq [B, K, td]`` (ids ``ids [B, K]``: the mean of its valid unit
    vectors, the candidate's own positions left out as in the attention) and with its target-attention pooling
    ``pooled [B, C, td]``; 0 where nothing is left. Pooled vectors alone leave the MLP to discover a dot product;
    on the default world the first cosine alone ranks a 1–2-gift viewer's test gifts at AUC 0.70–0.71 (u2a2a,
    u2a2u2a), as high as the ranker's whole score did without it."""
    valid = ids >= 0
    unit = F.normalize(seq.float(), dim=-1) * valid.unsqueeze(-1)
    t = F.normalize(target.float(), dim=-1)
    own = ((ids.unsqueeze(1) == target_ids.unsqueeze(-1)) & valid.unsqueeze(1)).sum(-1)      # [B, C]
    left = valid.sum(1, keepdim=True) - own                                                 # positions kept
    direction = F.normalize(unit.sum(1).unsqueeze(1) - own.unsqueeze(-1) * t, dim=-1)      # [B, C, td]
    to_mean = torch.where(left > 0, (t * direction).sum(-1), torch.zeros_like(left, dtype=t.dtype))
    to_pooled = (t * F.normalize(pooled.float(), dim=-1)).sum(-1)
    return torch.stack([to_mean, to_pooled], dim=-1).to(pooled.dtype)


class Ranker(nn.Module):
    def __init__(self, spec: RankerSpec) -> None:
        super().__init__()
        self.spec = spec
        d, td = spec.id_dim, spec.theta_dim
        self.user_emb = nn.Embedding(spec.num_users, d) if spec.user_id else None
        self.author_emb = nn.Embedding(spec.num_authors, d)
        for emb in (self.user_emb, self.author_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=ID_INIT_STD)
        self.user_cat = nn.ModuleDict({k: nn.Embedding(n, d) for k, n in spec.user_cats.items()})
        self.author_cat = nn.ModuleDict({k: nn.Embedding(n, d) for k, n in spec.author_cats.items()})
        self.user_dense = nn.Linear(spec.user_dense, d) if spec.user_dense else None
        self.author_dense = nn.Linear(spec.author_dense, d) if spec.author_dense else None
        self.hist_att = nn.ModuleDict({h: TargetAttention(d, (spec.attention_hidden,)) for h in spec.histories})
        # ranker.history_values: what the viewer made of each entry (rating, gift value), added to its embedding
        self.hist_value = nn.ModuleDict({h: nn.Embedding(spec.history_value_codes, d, padding_idx=0)
                                         for h in spec.histories}) if spec.history_value_codes else None
        for emb in (self.hist_value or {}).values():
            nn.init.normal_(emb.weight, std=0.01)
            emb.weight.data[0].zero_()
        H = len(spec.histories)
        in_tower = bool(spec.user_activity_dim) and not spec.user_activity_bias
        user_w = d * (spec.user_id + H + len(spec.user_cats) + bool(spec.user_dense)    # id, history means, side,
                      + in_tower)                                                        # activity
        self.user_activity = (nn.Sequential(nn.LayerNorm(spec.user_activity_dim), nn.Linear(spec.user_activity_dim, d))
                              if in_tower else None)
        # ranker.user_activity_bias: the activity only shifts all of a user's logits alike (per head)
        self.user_bias = (nn.Sequential(nn.LayerNorm(spec.user_activity_dim), nn.Linear(spec.user_activity_dim, d),
                                        nn.ReLU(), nn.Linear(d, len(spec.tasks)))
                          if spec.user_activity_dim and spec.user_activity_bias else None)
        author_w = d * (1 + len(spec.author_cats) + bool(spec.author_dense))    # id, side
        pair_w = d * H                                                          # DIN history pools
        self.pair_seqs = pair_user_seqs(spec.metapaths)
        if spec.metapaths:
            if not spec.theta_pretrained:   # −GraphCL: Θ is learned by the ranker itself
                self.theta = nn.Embedding(spec.num_users + spec.num_authors, td)
                nn.init.normal_(self.theta.weight, std=THETA_INIT_STD)
            self.exp_att = nn.ModuleDict({m: DotTargetAttention(td) for m in spec.metapaths})
            user_w += td * (1 + sum(METAPATHS[m].seed == "user" and m not in self.pair_seqs for m in spec.metapaths))
            author_w += td * (1 + sum(METAPATHS[m].seed == "author" for m in spec.metapaths))
            pair_w += td * len(self.pair_seqs)
            if spec.expansion_similarity:                           # two cosines per user-side author expansion
                pair_w += 2 * len(self.pair_seqs)
        self.mfq = None
        if spec.modality_dims:
            self.mfq = MFQ(spec.modality_dims, spec.num_authors, int(spec.mfq.get("dim", 32)),
                           int(spec.mfq.get("heads", 4)), int(spec.mfq.get("query_tokens", 4)),
                           float(spec.mfq.get("dropout", 0.0)))
            author_w += self.mfq.dim
        self.room_dense = nn.ModuleDict()
        for name, width in (("stat", spec.stat_dim), ("realtime", spec.realtime_dim),
                            ("popularity", spec.popularity_dim)):
            if width:
                self.room_dense[name] = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d))
                author_w += d
        if spec.product_cats:
            self.cat_table = nn.Linear(spec.product_cats, d, bias=False)   # softmax(ĉ) · C̃
            self.prod_proj = nn.Linear(spec.product_enc_dim, d)
            author_w += 2 * d
        self.widths = (user_w, author_w, pair_w)
        hidden = spec.mlp or [64]
        self.first = nn.Linear(user_w + author_w + pair_w, hidden[0])
        layers: List[nn.Module] = []
        width = hidden[0]
        for h in hidden[1:]:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = h
        self.tower = nn.Sequential(*layers)
        self.drop = nn.Dropout(spec.dropout)
        self.heads = nn.Linear(width, len(spec.tasks))
        self.segment_cache = None      # serving: h_m per segment, kept across requests (graphrec.serve)
        self.fm_user = self.fm_author = None
        if spec.fm_dim:                # one user and one author projection, shared by the heads
            self.fm_user = nn.Linear(user_w, spec.fm_dim)
            self.fm_author = nn.Linear(author_w, spec.fm_dim)
            self.fm_weight = nn.Parameter(torch.ones(len(spec.tasks), spec.fm_dim))
        if spec.popularity_offset_head >= 0:
            if not spec.popularity_dim:
                raise ValueError("ranker.popularity_offset needs the author activity features (ranker.use_activity)")
            self.offset_weight = nn.Parameter(torch.ones(()))

    def id_tables(self) -> List[Tuple[nn.Parameter, float]]:
        """The tables indexed by a user or author id, each with the std it is initialised with: the id
        embeddings, MFQ's per-author queries and, for −GraphCL, the Θ the ranker learns itself
        (``ranker.reinit_ids`` draws them afresh each epoch)."""
        out = [(e.weight, ID_INIT_STD) for e in (self.user_emb, self.author_emb) if e is not None]
        if self.mfq is not None:
            out.append((self.mfq.author_query.weight, QUERY_INIT_STD))
        if getattr(self, "theta", None) is not None:
            out.append((self.theta.weight, THETA_INIT_STD))
        return out

    # ------------------------------------------------------------------ Θ
    def _theta(self, kind: str, ids: torch.Tensor) -> torch.Tensor:
        """Θ vectors of ``ids`` (``kind`` user/author) from the ranker's own table (−GraphCL)."""
        offset = 0 if kind == "user" else self.spec.num_users
        return self.theta(ids.clamp(min=0) + offset)

    def _seq_theta(self, part, m: str) -> torch.Tensor:
        if self.spec.theta_pretrained:
            return part.exp_theta[m]
        return self._theta(METAPATHS[m].endpoint, part.exp[m])

    # ------------------------------------------------------------------ the three parts
    def user_side(self, up: UserPart) -> UserRep:
        parts = [self.user_emb(up.user)] if self.spec.user_id else []
        hist_emb = {}
        for h in self.spec.histories:
            mask = up.hist[h] >= 0
            hist_emb[h] = self.author_emb(up.hist[h].clamp(min=0))
            if self.hist_value is not None:
                hist_emb[h] = hist_emb[h] + self.hist_value[h](up.hist_code[h])
            parts.append((hist_emb[h] * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
        parts += [self.user_cat[k](up.cats[k]) for k in self.user_cat]
        if self.user_dense is not None:
            parts.append(self.user_dense(up.dense))
        if self.user_activity is not None:
            parts.append(self.user_activity(up.activity))
        seqs: Dict[str, torch.Tensor] = {}
        seq_ids: Dict[str, torch.Tensor] = {}
        if self.spec.metapaths:
            t_u = up.theta if self.spec.theta_pretrained else self._theta("user", up.user)
            parts.append(t_u)
            for m in self.spec.metapaths:
                if METAPATHS[m].seed != "user":
                    continue
                ids, seq = up.exp[m], self._seq_theta(up, m)
                if m in self.pair_seqs:
                    seqs[m], seq_ids[m] = seq, ids
                else:                                               # similar users, against the user's Θ
                    parts.append(self.exp_att[m](t_u, seq, ids >= 0))
        bias = self.user_bias(up.activity) if self.user_bias is not None else None
        return UserRep(torch.cat(parts, dim=1), hist_emb, up.hist, seqs, seq_ids, bias)

    def author_side(self, rp: RoomPart) -> AuthorRep:
        uniq, inv = rp.uniq, rp.inv
        e_a = self.author_emb(uniq)
        parts = [e_a]
        parts += [self.author_cat[k](rp.cats[k]) for k in self.author_cat]
        if self.author_dense is not None:
            parts.append(self.author_dense(rp.dense))
        t_a = None
        if self.spec.metapaths:
            t_a = rp.theta if self.spec.theta_pretrained else self._theta("author", uniq)
            parts.append(t_a)
            for m in self.spec.metapaths:
                if METAPATHS[m].seed == "author":
                    ids = rp.exp[m]
                    parts.append(self.exp_att[m](t_a, self._seq_theta(rp, m), ids >= 0))
        fields = torch.cat(parts, dim=1)[inv]                       # distinct authors -> candidates
        room = [fields]
        if self.mfq is not None:                                    # once per distinct segment on air
            with section("ranker.mfq"):
                if self.segment_cache is not None:
                    h_m = self.segment_cache.vectors(self.mfq, rp.tokens, rp.seg_author, rp.seg_key)
                else:
                    h_m = self.mfq(rp.tokens, rp.seg_author)
            room.append(h_m[rp.seg_inv])
        for name, proj in self.room_dense.items():
            room.append(proj(getattr(rp, name)))
        if self.spec.product_cats:
            room += [self.cat_table(rp.prod_probs), self.prod_proj(rp.prod_enc)]
        offset = None
        if self.spec.popularity_offset_head >= 0:                   # all-time smoothed rate: the last column
            offset = torch.logit(rp.popularity[:, -1].float().clamp(1e-4, 1 - 1e-4))
        return AuthorRep(torch.cat(room, dim=1), e_a[inv], None if t_a is None else t_a[inv], rp.author, offset)

    def logits(self, ur: UserRep, ar: AuthorRep, cand: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, C, heads]`` of user row ``b`` against its candidates ``cand[b]`` (rows of ``ar``);
        ``cand=None``: every row of ``ar`` for every user (a full ranking)."""
        wu, wa, _ = self.widths
        w = self.first.weight
        h = ur.fields @ w[:, :wu].T + self.first.bias               # once per user
        a = ar.fields @ w[:, wu:wu + wa].T                          # once per candidate
        pair = [self.hist_att[n].grid(ar.emb, ur.hist_emb[n], ur.hist_ids[n] >= 0, cand)
                for n in self.spec.histories]
        if self.pair_seqs:
            target = at(ar.author, cand).unsqueeze(-1)              # [B|1, C, 1]
            for m in self.pair_seqs:                                # the candidate itself is masked out
                ids = ur.seq_ids[m]
                pooled = self.exp_att[m].grid(ar.theta, ur.seqs[m], ids >= 0, cand, ids.unsqueeze(1) != target)
                pair.append(pooled)
                if self.spec.expansion_similarity:
                    pair.append(expansion_cosines(at(ar.theta, cand), target.squeeze(-1), ur.seqs[m], ids, pooled))
        if pair:
            x = (torch.cat(pair, dim=-1) @ w[:, wu + wa:].T).add_(h.unsqueeze(1)).add_(at(a, cand))   # in place
        else:
            x = h.unsqueeze(1) + at(a, cand)
        out = self.heads(self.tower(self.drop(F.relu(x))))
        if self.fm_user is not None:
            out = out + (self.fm_user(ur.fields).unsqueeze(1) * at(self.fm_author(ar.fields), cand)) @ self.fm_weight.T
        if ar.offset is not None:
            h = self.spec.popularity_offset_head
            bump = torch.zeros(out.shape[-1], dtype=out.dtype, device=out.device)
            bump[h] = 1.0
            out = out + (self.offset_weight * at(ar.offset, cand)).unsqueeze(-1) * bump
        if ur.bias is not None:
            out = out + ur.bias.unsqueeze(1)
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B, C, heads]`` of every row's candidates."""
        with section("ranker.user_side"):
            ur = self.user_side(batch.users)
        with section("ranker.author_side"):
            ar = self.author_side(batch.rooms)
        with section("ranker.pair"):
            return self.logits(ur, ar, batch.cand)
