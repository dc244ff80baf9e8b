"""A restricted unpickler for downloaded sparse matrices.

Published splits such as MMSSL/DiffMM's TikTok ship ``scipy.sparse`` matrices as Python pickles.
Plain ``pickle.load`` would run whatever a tampered file asks for; this unpickler admits only the
numpy and scipy classes such files contain and refuses everything else by name.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError

# (module, name) -> dotted import path of the object to hand back. Old scipy pickles name the
# pre-1.8 private modules (scipy.sparse.coo); they map to the public classes.
_ALLOWED = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
}
for _fmt in ("coo", "csr", "csc"):
    for _mod in (f"scipy.sparse.{_fmt}", f"scipy.sparse._{_fmt}", "scipy.sparse"):
        _ALLOWED[(_mod, f"{_fmt}_matrix")] = ("scipy.sparse", f"{_fmt}_matrix")
        _ALLOWED[(_mod, f"{_fmt}_array")] = ("scipy.sparse", f"{_fmt}_array")


class RefusedClassError(pickle.UnpicklingError):
    """The pickle names a class outside the whitelist."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted numpy/scipy classes."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise RefusedClassError(f"refusing to load '{module}.{name}': only numpy arrays and "
                                         f"scipy sparse matrices are allowed")
        mod = __import__(target[0], fromlist=[target[1]])
        return getattr(mod, target[1])


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_sparse_pickle(path: Path):
    """Load a pickled scipy sparse matrix from ``path`` with the restricted unpickler, as COO."""
    import scipy.sparse as sp

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        obj = restricted_loads(path.read_bytes())
    except RefusedClassError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: truncated or malformed pickle ({type(exc).__name__}: {exc})") from None
    if not sp.issparse(obj):
        raise DataError(f"{path}: expected a scipy sparse matrix, got {type(obj).__name__}")
    return sp.coo_matrix(obj)
