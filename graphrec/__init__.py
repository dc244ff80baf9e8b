"""graphrec: gift prediction and live-stream recommendation on DGL (MMBee, LiveForesighter)."""
import os as _os

# DGL picks its tensor backend from this variable; graphrec is PyTorch-only.
_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
