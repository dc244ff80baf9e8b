"""The entries of a run's ``metrics.json``, each built in one place.

A standalone run (:mod:`graphrec.run`, :mod:`graphrec.pipeline`, :mod:`graphrec.ranking.stage`) and a
distributed one (:mod:`graphrec.dist.trainer`, :mod:`graphrec.dist.graphcl`) build these entries with the same
functions, so both files have the same keys (``tests/test_dist.py`` compares them) and
:func:`graphrec.report.run_report` renders either:

* ``run``: :func:`run_entry` (with :func:`software_entry`: the code's commit and the library versions);
  ``config_file``: the experiment file the run was given (None: defaults only);
* ``data``: :func:`data_entry`;
* ``graph``, ``expansion``, ``stat_forecast``, ``product_forecast``: their stages (:mod:`graphrec.pipeline`); a
  distributed run runs those in its partition step, which keeps the entries in ``prepared.json``
  (:data:`PARTITION_STEP_ENTRIES`) for the trainers to copy;
* ``graphcl``: :func:`graphcl_entry` (the standalone stage, in a run or a partition step, or the trainers);
* ``stage_cache``: ``{stage: file}`` for each pre-training stage whose output an earlier run had cached
  (:func:`graphrec.stage.cached_stage_output`), ``{}`` when every stage trained; a distributed run copies its
  partition step's;
* ``ranker``: :func:`ranker_entry`;
* ``eval``: :mod:`graphrec.evaluation`'s schema (``record``; ``evaluate_distributed`` on the trainers);
* ``stages``: one :func:`stage_row` per stage (a distributed run: per step of its trainers);
* ``dist``: a distributed run only: world, partitions, shares, feature reads, timings.

Plain Python over plain values: importing it imports neither torch nor DGL.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

# the entries a distributed run takes from its partition step (which runs those stages standalone)
PARTITION_STEP_ENTRIES = ("graph", "expansion", "graphcl", "stat_forecast", "product_forecast", "stage_cache")


def run_entry(cfg, run_dir: Path, device: str, distributed: bool = False) -> Dict[str, Any]:
    """``run``: the run's name, folder, device (a distributed run: rank 0's), seed, whether it ran on DGL's
    distributed engine, and what software it ran (:func:`software_entry`)."""
    return {"name": cfg.run.name, "dir": str(run_dir), "device": device, "seed": cfg.run.seed,
            "distributed": bool(distributed), "software": software_entry()}


def _installed(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(repo: Path, *args: str) -> Optional[str]:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def software_entry() -> Dict[str, Any]:
    """The code and library versions a run used, so a result can be traced to them (two PyTorch releases give
    a run on the GPU machine and one here): graphrec's git commit and whether tracked files differed from it
    (None outside a git checkout, e.g. an installed wheel), and the versions of Python, PyTorch, NumPy and DGL
    (None where not installed). Read from package metadata: nothing is imported."""
    import platform

    repo = Path(__file__).resolve().parents[1]
    commit = _git(repo, "rev-parse", "HEAD") if (repo / ".git").exists() else None
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "python": platform.python_version(),
            **{name: _installed(name) for name in ("torch", "numpy", "dgl")}}


def data_entry(ds) -> Dict[str, Any]:
    """``data``: the dataset's folder (absolute: :func:`graphrec.load_run` finds it from anywhere), name, main
    label, feedback, counts, impressions and main-label positives per split, and the simulator's planted rates
    and gifting statistics where it has them."""
    from .data.dataset import SPLITS

    imp, main = ds.impressions, ds.main_label
    split = {s: int((imp["split"] == code).sum()) for s, code in SPLITS.items()}
    positives = {s: int(((imp["split"] == code) & (imp[main] == 1)).sum()) for s, code in SPLITS.items()}
    entry = {"path": str(Path(ds.path).resolve()), "name": ds.name, "main_label": main,
             "feedback": "implicit" if ds.implicit else "explicit", "timed": ds.timed, **ds.counts(),
             "split": split, "split_positives": positives}
    for key in ("oracle", "gifting"):
        if key in ds.meta:
            entry[key] = ds.meta[key]
    return entry


def ranker_entry(name: str, modules: Mapping[str, Any], result, monitor: Optional[str], model) -> Dict[str, Any]:
    """``ranker``: the model (``mmbee``/``din``), its modules, the training history of ``result`` (a
    :class:`graphrec.fit.FitResult`), the epoch kept and its monitored value, the training time and the
    parameter count."""
    return {"model": name, "modules": dict(modules), "history": result.history, "best_epoch": result.best_epoch,
            "best_val": result.best, "monitor": monitor, "stopped_early": result.stopped_early,
            "epochs_run": len(result.history), "resumed_from_epoch": result.resumed_from,
            "train_seconds": result.seconds, "parameters": int(sum(p.numel() for p in model.parameters()))}


def graphcl_entry(history: List[Dict[str, Any]], best_epoch: int, link_prediction: Mapping[str, Any], mode: str,
                  resumed_from_epoch: Optional[int] = None,
                  snapshots: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``graphcl``: where Θ was trained (``mode``: ``standalone``, or ``distributed`` on the trainers), the
    training history, the epoch kept, and the link prediction of held-out gifts by the trained and the
    untrained Θ; ``snapshots``: per graph snapshot, with several."""
    entry = {"mode": mode, "final_loss": history[-1]["train_loss"] if history else float("nan"), "history": history,
             "epochs_run": len(history), "best_epoch": best_epoch, "resumed_from_epoch": resumed_from_epoch,
             "link_prediction": dict(link_prediction)}
    if snapshots is not None:
        entry["snapshots"] = snapshots
    return entry


def stage_row(name: str, status: str = "ran", seconds: float = 0.0,
              peak_rss_gib: Optional[float] = None) -> Dict[str, Any]:
    """One row of ``stages``: ``status`` is ``ran`` or ``skipped: <why>``."""
    row: Dict[str, Any] = {"name": name, "status": status, "seconds": seconds}
    if peak_rss_gib is not None:
        row["peak_rss_gib"] = peak_rss_gib
    return row


@contextmanager
def timed(row: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Fill a :func:`stage_row`'s ``seconds`` and ``peak_rss_gib`` with what the ``with`` block took."""
    t0 = time.perf_counter()
    yield row
    row["seconds"] = time.perf_counter() - t0
    row["peak_rss_gib"] = peak_rss_gib()


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
