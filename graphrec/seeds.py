"""Several seeds of one configuration, reported as mean ± sd (``--seeds N`` / ``run.seeds``).

Each seed is a complete run in ``<parent>/seed<s>/`` (``run.seed`` = base + s; a simulated world
stays ``simulate.seed``, so the seeds differ in the models' randomness only). The parent folder gets
``metrics.json`` with the aggregate — the evaluation schema of :mod:`graphrec.evaluation` with every
number replaced by ``{"mean", "sd", "n", "values"}`` — a ``report.md`` and TensorBoard scalars
(``<split>/<model>/<key>/<metric>/mean`` and ``/sd``). ``sd`` is the sample standard deviation over
seeds (0 for one seed). A difference smaller than the seeds' sd is reported as a tie.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .report import mean_sd


def summary(values: Sequence[float]) -> Dict[str, Any]:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()) if len(v) else float("nan"), "sd": sd, "n": int(len(v)),
            "values": [float(x) for x in v]}


def aggregate_eval(evals: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Per split, model, key and metric: the summary over runs (numbers only; labels etc. kept)."""
    out: Dict[str, Any] = {}
    for split in dict.fromkeys(s for e in evals for s in e):
        for model in dict.fromkeys(m for e in evals for m in e.get(split, {})):
            for key in dict.fromkeys(k for e in evals for k in e.get(split, {}).get(model, {})):
                reps = [e.get(split, {}).get(model, {}).get(key) for e in evals]
                reps = [r for r in reps if r is not None]
                agg: Dict[str, Any] = {}
                for metric in dict.fromkeys(m for r in reps for m in r):
                    vals = [r.get(metric) for r in reps]
                    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None):
                        agg[metric] = summary([v for v in vals if v is not None])
                    else:
                        agg[metric] = next(v for v in vals if v is not None)
                out.setdefault(split, {}).setdefault(model, {})[key] = agg
    return out


def aggregate(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], dirs: Sequence[str]) -> Dict[str, Any]:
    """The parent folder's ``metrics.json`` from the seeds' ones."""
    first = runs[0]
    out: Dict[str, Any] = {"kind": "seeds", "seeds": list(seeds), "runs": list(dirs),
                           "data": first.get("data", {}), "eval": aggregate_eval([m.get("eval", {}) for m in runs])}
    if "ranker" in first:
        out["ranker"] = {"model": first["ranker"]["model"], "modules": first["ranker"]["modules"],
                         "monitor": first["ranker"].get("monitor"),
                         "epochs_run": summary([m["ranker"].get("epochs_run", len(m["ranker"]["history"])) for m in runs]),
                         "best_epoch": summary([m["ranker"]["best_epoch"] for m in runs]),
                         "best_val": summary([m["ranker"].get("best_val") for m in runs])}
    stages: Dict[str, List[float]] = {}
    for m in runs:
        for s in m.get("stages", []):
            stages.setdefault(s["name"], []).append(s["seconds"])
    out["stage_seconds"] = {k: summary(v) for k, v in stages.items()}
    out["wall_seconds"] = summary([sum(s["seconds"] for s in m.get("stages", [])) for m in runs])
    return out


def write_tensorboard(writer, agg: Mapping[str, Any]) -> None:
    for split, models in agg.get("eval", {}).items():
        for model, entry in models.items():
            for key, rep in entry.items():
                for metric, v in rep.items():
                    mean, sd = mean_sd(v)
                    if sd is not None and mean == mean:
                        writer.add_scalar(f"{split}/{model}/{key}/{metric}/mean", mean, 0)
                        writer.add_scalar(f"{split}/{model}/{key}/{metric}/sd", sd, 0)


