"""One byte table per node type: every ranker feature of a node in one row, so that a trainer reads all
of them with one pull (an RPC per partition) instead of one pull per feature.

The features have different dtypes (float32 Θ and tokens, int32 expansions, int64 lengths and product
times padded with int64 max), so a row holds their raw bytes: ``pack`` writes each feature's
``[N, ...]`` tensor into a column slice of a ``uint8 [N, row_bytes]`` table, and ``unpack`` views the
slices of the rows read back as the original dtype and shape. Both are exact (bytes are copied, never
converted); they assume every machine has the same byte order, as DGL's own tensor transfer does.
Plain PyTorch (no DGL).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

# the dtypes a layout may name; anything else is refused when packing
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                                    torch.bool)}


def layout_of(features: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """``{"row_bytes": int, "columns": {name: {"offset", "dtype", "shape"}}}`` of ``features`` (one node
    type, equal first dimension), columns in name order; JSON-ready (it is kept in ``prepared.json``)."""
    columns, offset = {}, 0
    for name in sorted(features):
        t = features[name]
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise TypeError(f"feature '{name}' has dtype {t.dtype}, which cannot be packed (use one of {sorted(DTYPES)})")
        shape = list(t.shape[1:])
        columns[name] = {"offset": offset, "dtype": dtype, "shape": shape}
        offset += _numel(shape) * t.element_size()
    return {"row_bytes": offset, "columns": columns}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def pack(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``uint8 [N, row_bytes]``: each feature's bytes in its column slice (see :func:`layout_of`). Written
    slice by slice into one table, so packing costs one copy of the features, not two."""
    layout = layout_of(features)
    lengths = {len(t) for t in features.values()}
    if len(lengths) != 1:
        raise ValueError(f"features of one node type must have one row per node; got {sorted(lengths)} rows "
                         f"({ {k: len(v) for k, v in features.items()} })")
    n = lengths.pop()
    table = torch.empty((n, layout["row_bytes"]), dtype=torch.uint8)
    for name, col in layout["columns"].items():
        t = features[name].detach().cpu().contiguous().reshape(n, -1)
        start = col["offset"]
        table[:, start:start + t.shape[1] * t.element_size()] = t.view(torch.uint8)
    return table


def unpack(rows: torch.Tensor, layout: Mapping[str, object], names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``{name: [B, ...] tensor}`` of ``names`` from ``rows`` (``uint8 [B, row_bytes]``, rows of a packed table)."""
    columns = layout["columns"]
    out = {}
    for name in names:
        col = columns[name]
        dtype = DTYPES[col["dtype"]]
        width = _numel(col["shape"]) * torch.empty((), dtype=dtype).element_size()
        piece = rows[:, col["offset"]:col["offset"] + width].contiguous()
        out[name] = piece.view(dtype).view(len(rows), *col["shape"])
    return out
