"""``graphrec.load_run(run_dir)``: a finished run, reloaded in one call (RecBole's ``load_data_and_model``).

Serving, the benchmarks and the A/B tool read runs through it; nothing else re-assembles a run
from its files. Checkpoints are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from .config import Config
from .data.dataset import Dataset
from .errors import DataError


@dataclass
class LoadedRun:
    """A trained run: its configuration, dataset, the earlier stages' artifacts and the ranker."""

    run_dir: Path
    cfg: Config
    metrics: Dict[str, Any]
    dataset: Dataset
    modules: Dict[str, Any]
    artifacts: Dict[str, Any] = field(default_factory=dict)   # theta, expansions, stat/product forecaster
    ranker: Any = None                                        # graphrec.models.Ranker, in eval mode
    builder: Any = None                                       # its BatchBuilder
    device: str = "cpu"

    @property
    def model_name(self) -> str:
        return self.metrics.get("ranker", {}).get("model", "mmbee")

    def scorer(self):
        """The ranker as a :mod:`graphrec.evaluation` scorer."""
        from .ranking.train import RankerScorer

        return RankerScorer(self.ranker, self.builder, self.device)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path.parent if path.parent.name != 'checkpoints' else path.parent.parent}: "
                        f"not a trained run folder ({what} missing: {path.name})")
    return path


def dataset_path(run_dir: Path, metrics: Dict[str, Any]) -> Path:
    """The run's dataset folder. Runs record it absolute; older ones recorded it relative to the
    directory they ran in, which is not recorded, so a relative path is tried against the current
    directory, then against the run folder's parents (``runs/<name>`` beside ``cache/`` is the usual
    layout). A dataset that is nowhere is an error listing the places tried."""
    data = metrics.get("data") or {}
    if not data.get("path"):
        raise DataError(f"{run_dir / 'metrics.json'}: 'data' has no 'path' (the dataset folder the run used)")
    recorded = Path(data["path"]).expanduser()
    if recorded.is_absolute():
        tried = [recorded]
    else:
        bases = [Path.cwd(), *Path(run_dir).resolve().parents]
        tried = [base / recorded for i, base in enumerate(bases) if base not in bases[:i]]
    for path in tried:
        if path.is_dir():
            return path
    where = str(tried[0]) if len(tried) == 1 else f"{recorded} (tried {', '.join(str(p) for p in tried)})"
    raise DataError(f"{run_dir}: its dataset {where} is gone; rebuild it with "
                    f"`python -m graphrec.run --cfg {run_dir / 'config.yaml'}` (same data settings), or, for a "
                    f"dataset that only moved, set data.path in {run_dir / 'metrics.json'} to its folder")


def _load_expansions(run_dir: Path, names) -> Dict[str, np.ndarray]:
    """The run's ``expansions.npz``; a damaged one (e.g. a copy cut short) is a :class:`DataError`, not a
    zip traceback from the server."""
    import zipfile

    path = _need(run_dir / "expansions.npz", "the offline expansions")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {m: npz[m] for m in names if m in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: unreadable or truncated expansions file ({type(exc).__name__}: {exc}); copy it "
                        f"again from the run's origin, or re-run `python -m graphrec.run --cfg "
                        f"{run_dir / 'config.yaml'}` (if that says it uses cached expansions, delete that cache "
                        f"file first)") from None


# where a run folder keeps each forecaster's checkpoint (a partition folder too: graphrec.dist.prepare copies them)
FORECASTER_CHECKPOINTS = {"stat_forecast": "checkpoints/stat_forecast.pt",
                          "product_forecast": "checkpoints/product_forecast.pt"}


def load_forecasters(folder: Path, mods: Mapping[str, Any],
                     checkpoints: Mapping[str, str] = FORECASTER_CHECKPOINTS) -> Dict[str, Any]:
    """The forecasters the ranker modules ``mods`` use, read from ``folder`` (``checkpoints``: module -> file
    relative to it): ``{"stat_forecaster": ..., "product_forecaster": ...}``, the artifact names
    :func:`graphrec.ranking.stage.build_ranker` reads. A run folder and the distributed trainers' partition
    folder both load them here."""
    from .models.product_forecaster import ProductForecaster
    from .models.stat_forecaster import StatForecaster

    out: Dict[str, Any] = {}
    if mods["stat_forecast"]:
        out["stat_forecaster"] = StatForecaster.from_checkpoint(Path(folder) / checkpoints["stat_forecast"])
    if mods["product_forecast"]:
        out["product_forecaster"] = ProductForecaster.from_checkpoint(Path(folder) / checkpoints["product_forecast"])
    return out


def load_run(run_dir, device: str = "cpu") -> LoadedRun:
    """Reload the run in ``run_dir`` (a folder written by ``python -m graphrec.run``)."""
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data.dataset import load_dataset
    from .data.split import ensure_split
    from .gie.metapath import METAPATHS
    from .models.ranker import Ranker, RankerSpec
    from .ranking.stage import build_ranker

    run_dir = Path(run_dir)
    for need in ("config.yaml", "metrics.json", "checkpoints/ranker.pt"):
        _need(run_dir / need, need)
    cfg = load_config(run_dir / "config.yaml")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{run_dir / 'metrics.json'}: not valid JSON ({exc})") from None
    if "ranker" not in metrics or "data" not in metrics:
        raise DataError(f"{run_dir}: the run did not finish its ranker stage (metrics.json has no 'ranker')")
    ds = load_dataset(dataset_path(run_dir, metrics))
    ensure_split(ds, cfg.data.val_fraction, cfg.data.test_fraction)
    mods = metrics["ranker"]["modules"]
    art: Dict[str, Optional[Any]] = {}
    if mods["metapaths"]:
        art["expansions"] = _load_expansions(run_dir, METAPATHS)
    if mods["theta_pretrained"]:
        art["theta"] = load_checkpoint(_need(run_dir / "checkpoints" / "graphcl.pt", "GraphCL's Θ"))["theta"]
    art.update(load_forecasters(run_dir, mods))
    _, builder, spec = build_ranker(cfg, ds, mods, art, device=device)
    ck = load_checkpoint(run_dir / "checkpoints" / "ranker.pt")
    if RankerSpec(**ck["spec"]) != spec:
        raise DataError(f"{run_dir}: checkpoints/ranker.pt does not match the run's data and config")
    model = Ranker(spec)
    model.load_state_dict(ck["state_dict"])
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, metrics, ds, mods, art, model, builder, device)
