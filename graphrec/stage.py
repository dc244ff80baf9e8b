"""What every pipeline stage shares: the run context and the stage interface."""
from __future__ import annotations

import abc
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from .config import Config
from .data.dataset import Dataset, atomic_write_text


@dataclass
class RunContext:
    cfg: Config
    run_dir: Path
    log: logging.Logger
    writer: Any                      # torch.utils.tensorboard.SummaryWriter
    device: str
    progress: bool
    metrics: Dict[str, Any] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> Dataset:
        return self.state["dataset"]

    def save_metrics(self) -> None:
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(self.metrics, indent=2, default=jsonable))


def jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


class Stage(abc.ABC):
    """One pipeline step. Subclasses set ``name``/``summary`` and implement ``run``."""

    name = "stage"
    summary = ""
    section: Optional[str] = None      # config section whose `enabled` key switches the stage off

    def skip_reason(self, ctx: RunContext) -> Optional[str]:
        """Why this stage does not run now (switched off, or its inputs are absent), or None."""
        if self.section is not None and not ctx.cfg[self.section]["enabled"]:
            return f"{self.section}.enabled is false"
        return self.missing_inputs(ctx)

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        """What this stage needs and does not have, or None."""
        return None

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> None:
        """Do the stage's work, reading and extending ``ctx.state`` and ``ctx.metrics``."""


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """A hash of graphrec's own source and defaults: a stage's cached output is reused only by the code
    that made it (any edit to the package recomputes it)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.yaml")]):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def stage_cache_file(ctx: RunContext, stage: str, sections: Sequence[str],
                     extra: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """Where the output of ``stage`` is cached for this run (``run.stage_cache``), or None when off.

    The name hashes everything the output depends on: the dataset folder (named by its own inputs'
    fingerprint), the ``data`` section (the split) and the stage's ``sections``, the seed, bf16 autocast,
    the device type, :func:`code_digest`, the PyTorch and NumPy versions (a second environment on another
    PyTorch shares the cache folder) and ``extra`` (e.g. the graph's fingerprint). None also for a
    dataset held in memory only (no folder to name it by)."""
    import torch

    if not ctx.cfg.run.stage_cache or ctx.dataset.path is None:
        return None
    key = {"stage": stage, "dataset": str(Path(ctx.dataset.path).resolve()),
           "config": {s: dict(ctx.cfg[s]) for s in ("data", *sections)}, "seed": ctx.cfg.run.seed,
           "amp": ctx.cfg.run.amp, "device": torch.device(ctx.device).type, "code": code_digest(),
           "torch": torch.__version__, "numpy": np.__version__,
           "extra": dict(extra or {})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(ctx.cfg.data.cache_dir) / "stages" / f"{stage}-{digest}.pt"


def cached_stage_output(ctx: RunContext, stage: str, sections: Sequence[str],
                        compute: Callable[[], Dict[str, Any]],
                        extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``compute()``'s payload (tensors and plain containers only), or the same payload cached by an earlier
    run with the same inputs (:func:`stage_cache_file`): ``--resume``, ``--seeds``/``--ablate`` variants that
    share a stage, and a second ``make run`` then skip the pre-training they already did. A damaged cache
    file is recomputed and replaced."""
    from .checkpoint import load_checkpoint, save_checkpoint
    from .errors import DataError

    path = stage_cache_file(ctx, stage, sections, extra)
    if path is not None and path.exists():
        try:
            payload = load_checkpoint(path)
        except DataError as exc:
            ctx.log.warning("%s; computing the stage again", exc)
        else:
            ctx.log.info("%s: reusing %s (an earlier run's output for the same data, settings, seed and code; "
                         "run.stage_cache false recomputes)", stage, path)
            ctx.metrics.setdefault("stage_cache", {})[stage] = str(path)
            return payload
    payload = compute()
    if path is not None:
        save_checkpoint(path, payload)
    return payload
