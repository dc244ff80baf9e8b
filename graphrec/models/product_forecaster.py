"""LiveForesighter's product sequence forecaster (§2.3).

A shopping room's product sequence ``[p_i, c1_i, c2_i, c3_i]`` is embedded (product and the three
category levels, concatenated: ``4D``, projected to the model width), encoded by a causal Transformer
and, at every position, classified into the *next* product's fine category ``c3`` (cross-entropy).
Causal masking lets one pass train every prefix. For the ranker it exposes, under stop-gradient,
``softmax(ĉ)`` for the next product and the encoding of the latest position; the ranker multiplies
the former with its own category table (``softmax(ĉ)·C̃``).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class ProductForecaster(nn.Module):
    """``items [B, L, 4]`` (product, cat1, cat2, cat3; left-aligned) + ``lengths [B]`` ->
    ``logits [B, L, num_cat3]`` (position i predicts item i+1) and ``encoding [B, L, dim]``."""

    def __init__(self, num_products: int, num_cat1: int, num_cat2: int, num_cat3: int, dim: int = 64,
                 layers: int = 2, heads: int = 4, max_len: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"product_forecast.dim={dim} must be divisible by product_forecast.heads={heads}")
        self.num_cat3, self.max_len, self.dim = num_cat3, max_len, dim
        self.tables = nn.ModuleList([nn.Embedding(n, dim) for n in (num_products, num_cat1, num_cat2, num_cat3)])
        self.inp = nn.Linear(4 * dim, dim)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_cat3)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = items.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds product_forecast.max_len={self.max_len}")
        emb = torch.cat([t(items[..., i]) for i, t in enumerate(self.tables)], dim=-1)
        h = self.inp(emb) + self.position(torch.arange(L, device=items.device))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=items.device), diagonal=1)
        pad = torch.arange(L, device=items.device)[None, :] >= lengths[:, None]
        enc = self.norm(self.encoder(h, mask=causal, src_key_padding_mask=pad))
        return self.head(enc), enc

    @classmethod
    def from_config(cls, sec, sizes) -> "ProductForecaster":
        """Build from the ``product_forecast`` config section and the dataset's ``meta.products`` sizes."""
        return cls(int(sizes["num_products"]), int(sizes["num_cat1"]), int(sizes["num_cat2"]),
                   int(sizes["num_cat3"]), sec["dim"], sec["layers"], sec["heads"], sec["max_len"], sec["dropout"])

    def checkpoint(self, sec, sizes) -> dict:
        """What the pipeline saves: weights plus everything :meth:`from_checkpoint` needs."""
        return {"state_dict": self.state_dict(), "hparams": dict(sec),
                "sizes": {k: int(v) for k, v in sizes.items() if k.startswith("num_")}}

    @classmethod
    def from_checkpoint(cls, path) -> "ProductForecaster":
        """Load a saved forecaster (``torch.load(weights_only=True)``), in eval mode."""
        from ..checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        model = cls.from_config(ck["hparams"], ck["sizes"])
        model.load_state_dict(ck["state_dict"])
        return model.eval()

    @torch.no_grad()
    def prefix_table(self, items: torch.Tensor, counts: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Ranker features after every prefix of every room's sequence, computed offline.

        ``items [R, P, 4]`` (left-aligned), ``counts [R]``. Returns ``[R, P + 1, num_cat3 + dim]`` whose row
        ``c`` holds ``[softmax(ĉ_next), encoding]`` after the first ``c`` products (zeros for ``c = 0``), each
        computed from the latest ``max_len`` products as :meth:`ranker_features` would."""
        R, P, _ = items.shape
        out = torch.zeros(R, P + 1, self.num_cat3 + self.dim)
        L = self.max_len
        head = min(P, L)
        for s in range(0, R, batch_size):                     # prefixes up to max_len: one causal pass
            rows = slice(s, s + batch_size)
            logits, enc = self.forward(items[rows, :head], counts[rows].clamp(min=1, max=head))
            out[rows, 1:head + 1] = torch.cat([torch.softmax(logits, -1), enc], dim=-1)
        for c in range(L + 1, P + 1):                         # longer prefixes: the window of the last L
            rows = (counts >= c).nonzero().squeeze(1)
            for s in range(0, len(rows), batch_size):
                r = rows[s:s + batch_size]
                logits, enc = self.forward(items[r, c - L:c], torch.full((len(r),), L))
                out[r, c] = torch.cat([torch.softmax(logits[:, -1], -1), enc[:, -1]], dim=-1)
        out[torch.arange(P + 1)[None, :].expand(R, -1) > counts[:, None]] = 0.0
        return out

    @torch.no_grad()
    def ranker_features(self, items: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stop-gradient ``(softmax(ĉ_next) [B, num_cat3], encoding of the latest item [B, dim])``."""
        logits, enc = self.forward(items, lengths)
        last = (lengths - 1).clamp(min=0)
        rows = torch.arange(len(lengths), device=items.device)
        return torch.softmax(logits[rows, last], dim=-1).detach(), enc[rows, last].detach()
