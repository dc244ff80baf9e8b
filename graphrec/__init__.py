"""graphrec: gift prediction and live-stream recommendation on DGL (MMBee, LiveForesighter)."""
import os as _os
import sys as _sys

# DGL picks its tensor backend from this variable; graphrec is PyTorch-only.
_os.environ.setdefault("DGLBACKEND", "pytorch")

# `import dgl` imports ogb, and `import ogb` starts a thread that asks PyPI for ogb's latest
# version. A library should make no network calls of its own: with the `outdated` package masked,
# ogb.version skips that check (it treats the failed import as "no checker"). Only ogb uses it.
if "ogb" not in _sys.modules and "outdated" not in _sys.modules:
    _sys.modules["outdated"] = None  # type: ignore[assignment]

__version__ = "0.1.0"


def load_run(run_dir, device: str = "cpu"):
    """Reload a finished run folder in one call (see :mod:`graphrec.reload`)."""
    from .reload import load_run as _load_run

    return _load_run(run_dir, device)
