"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers (state dict, hyper-parameters, names), so it
loads without unpickling arbitrary objects even when it comes from someone else's run folder.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict

import torch

from .data.dataset import atomic_write_bytes
from .errors import DataError


def save_checkpoint(path: Path, payload: Dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/Runtime/EOF errors for bad or foreign files
        raise DataError(f"{path}: not a loadable graphrec checkpoint ({type(exc).__name__}: {exc})") from None
