"""What every pipeline stage shares: the run context and the stage interface."""
from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

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
