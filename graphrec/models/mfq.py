"""MFQ: MMBee's Multi-modal Fusion with a learnable Query.

A live room's current segment is seen as token sequences of up to three modalities (frame, ASR,
comments). Following the MMBee poster::

    Y_m  = OP(X_m, X_a, X_b)                  keep what the other two modalities do not already say
    h_m  = CrossAttention(X_m W^Q, Y_m W^K, Y_m W^V)              one per modality
    h_f  = SelfAttention(h_v ⊕ h_s ⊕ h_t)                         ⊕ = concatenation of the tokens
    h_m' = CrossAttention(q_aid W^Q, h_f W^K, h_f W^V)            q_aid: learnable, from the author id
    h_m  = SelfAttention(h_m')

Each attention block is residual with layer normalisation. Padded tokens never influence the
output: they are excluded from every span, key set and pooled mean. A modality may be absent from
a dataset (TikTok has frame + ASR, MovieLens only text); then OP projects against the ones present,
and with a single modality it is the identity.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Tokens = Tuple[torch.Tensor, torch.Tensor]   # ([B, L, d], valid mask [B, L] bool)
QUERY_INIT_STD = 0.02      # the per-author learnable queries start as N(0, 0.02²)
CHOLESKY_MIN_PIVOT = 1e-3   # OP solves by Cholesky above it (condition ≲ 1e3: float32 keeps 4 digits)


def orthogonal_projection(x: torch.Tensor, others: torch.Tensor, others_mask: Optional[torch.Tensor] = None,
                          rtol: float = 1e-5) -> torch.Tensor:
    """OP: the component of every row of ``x`` orthogonal to the span of the valid rows of ``others``.

    ``x``: ``[B, L, D]``; ``others``: ``[B, K, D]`` (the other modalities' tokens, concatenated);
    ``others_mask``: ``[B, K]``, True where a token is valid. Computes ``x - x O^T (O O^T)^+ O``, so padded
    (zeroed) and linearly dependent tokens are handled exactly; when the other tokens span all of R^D
    nothing is left. Differentiable.

    How: a padded token's row and column of the Gram matrix ``O O^T`` are zero; a one on its diagonal
    makes the matrix invertible without changing the answer (its coefficient multiplies a zero row).
    Where the valid tokens are independent (the usual case: fewer tokens than dimensions), a Cholesky
    solve gives the projection — about half the cost of the pseudo-inverse's eigendecomposition, forward
    and backward, on a CPU. Rows whose Gram matrix is singular or ill-conditioned (a squared Cholesky
    pivot below ``CHOLESKY_MIN_PIVOT`` of the largest diagonal entry: nearly dependent tokens, or more
    tokens than dimensions) take the pseudo-inverse with relative cut-off ``rtol``, as before.
    """
    if others.shape[1] == 0:
        return x
    o = others if others_mask is None else others * others_mask.unsqueeze(-1).to(others.dtype)
    gram = o @ o.transpose(1, 2)                                         # [B, K, K]
    if others_mask is not None:
        gram = gram + torch.diag_embed((~others_mask.bool()).to(gram.dtype))
    rhs = o @ x.transpose(1, 2)                                          # [B, K, L]
    with torch.no_grad():
        chol, info = torch.linalg.cholesky_ex(gram)
        pivots = chol.diagonal(dim1=-2, dim2=-1).square()
        scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp(min=torch.finfo(gram.dtype).tiny)
        singular = (info != 0) | ~(pivots.amin(-1) > CHOLESKY_MIN_PIVOT * scale)   # NaN counts as singular
    if not singular.any():
        coef = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))   # [B, K, L]
    else:
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        safe = torch.where(singular[:, None, None], eye, gram)         # factorable everywhere
        coef = torch.cholesky_solve(rhs, torch.linalg.cholesky(safe))
        rows = singular.nonzero().squeeze(1)
        coef = coef.index_put((rows,), torch.linalg.pinv(gram[rows], hermitian=True, rtol=rtol) @ rhs[rows])
    return x - coef.transpose(1, 2) @ o


class _Attend(nn.Module):
    """Residual multi-head attention + feed-forward (post-norm), safe for rows with no valid key.

    The parameters are ``nn.MultiheadAttention``'s (checkpoints keep their keys); the attention itself
    is computed here. On a CPU, with MFQ's few tokens per row (4–12), PyTorch's softmax kernel spends
    its time per row of the score tensor, and an explicit ``exp / sum`` over the whole tensor is 25–30%
    cheaper forward and backward; on CUDA the fused ``scaled_dot_product_attention`` is used. Both
    compute the same function (tested against ``nn.MultiheadAttention``)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def attention(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of ``q [B, Lq, D]`` over ``kv [B, S, D]``; ``pad [B, S]`` True = ignore
        (every row keeps at least one key)."""
        mha = self.attn
        B, Lq, D = q.shape
        S, H = kv.shape[1], mha.num_heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        if q is kv:
            qq, kk, vv = F.linear(q, w, b).split(D, dim=-1)
        else:
            qq = F.linear(q, w[:D], b[:D])
            kk, vv = F.linear(kv, w[D:], b[D:]).split(D, dim=-1)
        qq = qq.reshape(B, Lq, H, D // H).transpose(1, 2)
        kk = kk.reshape(B, S, H, D // H).transpose(1, 2)
        vv = vv.reshape(B, S, H, D // H).transpose(1, 2)
        p = mha.dropout if self.training else 0.0
        if q.is_cuda:
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=~pad[:, None, None, :], dropout_p=p)
        else:
            s = (qq * (D // H) ** -0.5) @ kk.transpose(-1, -2)               # [B, H, Lq, S]
            s = s.masked_fill(pad[:, None, None, :], float("-inf"))
            e = (s - s.amax(-1, keepdim=True).detach()).exp()               # shift-invariant: exact gradient
            a = F.dropout(e / e.sum(-1, keepdim=True), p, self.training)
            out = a @ vv
        return mha.out_proj(out.transpose(1, 2).reshape(B, Lq, D))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        empty = ~kv_mask.any(dim=1)                                        # rows with nothing to attend
        pad = ~kv_mask
        if empty.any():
            pad = pad.clone()
            pad[empty, 0] = False                                          # attend a dummy, zeroed below
        out = self.attention(q, kv, pad)
        out = out.masked_fill(empty[:, None, None], 0.0)
        h = self.norm1(q + out)
        return self.norm2(h + self.ff(h))


class MFQ(nn.Module):
    """Fuses a segment's multimodal tokens into ``h_m`` ``[B, dim]``, conditioned on the author id.

    ``modality_dims`` maps each modality present in the dataset to its token dimension.
    """

    def __init__(self, modality_dims: Mapping[str, int], num_authors: int, dim: int = 32, heads: int = 4,
                 query_tokens: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if not modality_dims:
            raise ValueError("MFQ needs at least one modality")
        if dim % heads:
            raise ValueError(f"mfq.dim={dim} must be divisible by mfq.heads={heads}")
        self.modalities = list(modality_dims)
        self.dim = dim
        self.query_tokens = query_tokens
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in modality_dims.items()})
        self.cross = nn.ModuleDict({m: _Attend(dim, heads, dropout) for m in self.modalities})
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.fuse = _Attend(dim, heads, dropout)
        self.author_query = nn.Embedding(num_authors, query_tokens * dim)
        nn.init.normal_(self.author_query.weight, std=QUERY_INIT_STD)
        self.query_cross = _Attend(dim, heads, dropout)
        self.query_self = _Attend(dim, heads, dropout)

    @classmethod
    def from_config(cls, sec, modality_dims: Mapping[str, int], num_authors: int) -> "MFQ":
        """Build from the ``mfq`` config section."""
        return cls(modality_dims, num_authors, sec["dim"], sec["heads"], sec["query_tokens"], sec["dropout"])

    def forward(self, tokens: Mapping[str, Tokens], author: torch.Tensor, return_tokens: bool = False):
        """``tokens[m] = (X_m [B, L_m, d_m], valid [B, L_m])`` for every modality of the model;
        ``author``: ``[B]`` ids. Returns ``h_m`` ``[B, dim]`` (and the query tokens if asked)."""
        missing = [m for m in self.modalities if m not in tokens]
        if missing:
            raise KeyError(f"MFQ: missing modality tokens {missing}; model modalities are {self.modalities}")
        x: Dict[str, torch.Tensor] = {}
        valid: Dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.modalities):
            raw, mask = tokens[m]
            mask = mask.bool()
            x[m] = (self.proj[m](raw) + self.modality_embedding[i]) * mask.unsqueeze(-1)
            valid[m] = mask
        fused, fused_mask = [], []
        for m in self.modalities:
            rest = [o for o in self.modalities if o != m]
            if rest:
                others = torch.cat([x[o] for o in rest], dim=1)
                others_mask = torch.cat([valid[o] for o in rest], dim=1)
                y = orthogonal_projection(x[m], others, others_mask)
            else:
                y = x[m]
            fused.append(self.cross[m](x[m], y, valid[m]))
            fused_mask.append(valid[m])
        h_f_in = torch.cat(fused, dim=1)
        h_mask = torch.cat(fused_mask, dim=1)
        h_f = self.fuse(h_f_in, h_f_in, h_mask)
        q = self.author_query(author).view(-1, self.query_tokens, self.dim)
        h = self.query_cross(q, h_f, h_mask)
        h = self.query_self(h, h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device))
        out = h.mean(dim=1)
        return (out, h) if return_tokens else out
