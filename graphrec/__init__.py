"""graphrec: gift prediction and live-stream recommendation on DGL (MMBee, LiveForesighter)."""
import os as _os

# DGL picks its tensor backend from this variable; graphrec is PyTorch-only.
_os.environ.setdefault("DGLBACKEND", "pytorch")
# ogb (imported through DGL) otherwise asks PyPI for its latest version on import.
_os.environ.setdefault("OUTDATED_IGNORE", "1")

__version__ = "0.1.0"
