"""Everything a distributed run needs before its trainers start, in one folder (``dist.part_dir``).

``prepare`` runs the pipeline up to the ranker (data, graph, expansions, GraphCL unless
``graphcl.distributed`` leaves it to the launched trainers (:mod:`graphrec.dist.graphcl`), forecasters),
then partitions the heterograph with every ranker feature as node data (Θ, the expansion cache,
statistic and product sequences, segment tokens) packed into one table per node type
(:mod:`graphrec.dist.store`) with ``dgl.distributed.partition_graph``, and writes beside the
partitions: ``orig_ids.npz`` (original id of every new id, per node type), the forecaster checkpoints,
and ``prepared.json`` (format version, graph name, modules, the packed layout of every node type and a
signature of the configuration the partitions were made with). The folder is built under a temporary name
and renamed into place, so a failed run never leaves a half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..config import Config, Section, load_schema
from ..data.dataset import atomic_write_text
from ..errors import ConfigError, DataError
from ..metrics_schema import PARTITION_STEP_ENTRIES
from ..reload import FORECASTER_CHECKPOINTS
from ..schema import GRAPHCL_POSITIVES, METAPATHS

PREPARED = "prepared.json"
# 1: one node data tensor per feature; 2: one packed byte table per node type ("features": layouts)
PARTITION_FORMAT = 2
STAGES_AFTER_PARTITION = ["lightgcn", "ranker", "evaluation", "report"]
# the configuration a partition folder depends on: a launch with other values here must re-partition
SIGNATURE_SECTIONS = ("data", "simulate", "graph", "expansion", "graphcl", "stat_forecast", "product_forecast")
# ranker settings besides its ``use_*`` switches that decide which features become node data (enabled_modules)
RANKER_FEATURE_SETTINGS = ("realtime_steps", "exposure_head")


def signature_keys() -> Tuple[Tuple[str, str], ...]:
    """``(section, key)`` outside :data:`SIGNATURE_SECTIONS` that the partitions depend on: ``run.seed``, every
    ``ranker.use_*`` switch of the configuration schema (``use_gie``, ``use_<metapath>`` for every metapath of
    :data:`graphrec.schema.METAPATHS`, ``use_mfq``, ...) and :data:`RANKER_FEATURE_SETTINGS`. Read from the
    schema, so a new switch or metapath is part of the signature without an edit here."""
    ranker = load_schema()["ranker"]
    missing = [f"use_{m}" for m in METAPATHS if f"use_{m}" not in ranker]
    if missing:
        raise RuntimeError(f"graphrec/defaults.yaml: ranker has no switch {missing} for the metapath(s) of "
                           "graphrec.schema")
    switches = [k for k in ranker if k.startswith("use_")]
    return (("run", "seed"),) + tuple(("ranker", k) for k in switches + list(RANKER_FEATURE_SETTINGS))


SIGNATURE_KEYS = signature_keys()


def distributed_graphcl(cfg: Config) -> bool:
    """Whether the launched trainers train Θ (``graphcl.distributed``) instead of the partition step."""
    return bool(cfg.graphcl.enabled and cfg.graphcl.distributed and "graphcl" not in cfg.run.skip_stages)


def check_one_snapshot_on_trainers(cfg: Config) -> None:
    """The trainers train Θ (``graphcl.distributed``) or walk the expansions (``dist.expansion=walk``) on the one
    graph they hold; several graph snapshots are built by the partition step, with Θ trained there and the
    expansions read from the cache. Out-of-fold graphs (``graph.folds``, untimed data) are standalone only."""
    if cfg.graph.folds:
        raise ConfigError(f"graph.folds={cfg.graph.folds}: out-of-fold graphs run standalone only (the distributed "
                          "trainers do not yet read a training row's fold graph); set graph.folds=0 to distribute")
    if cfg.graph.snapshots == 1:
        return
    if distributed_graphcl(cfg):
        raise ConfigError(f"graph.snapshots={cfg.graph.snapshots} with graphcl.distributed=true: the trainers hold one "
                          "graph; train Θ in the partition step (graphcl.distributed=false) or set graph.snapshots=1")
    if cfg.dist.expansion == "walk":
        raise ConfigError(f"graph.snapshots={cfg.graph.snapshots} with dist.expansion=walk: the trainers walk the one "
                          "graph they hold; read the offline expansions (dist.expansion=cache) or set graph.snapshots=1")


def part_dir_of(cfg: Config, num_parts: Optional[int] = None) -> Path:
    """``dist.part_dir``, or ``<run.out_dir>/<run.name>-<N>parts`` (N: ``num_parts`` or ``dist.num_parts``)."""
    if cfg.dist.part_dir is not None:
        return Path(cfg.dist.part_dir)
    return Path(cfg.run.out_dir) / f"{cfg.run.name}-{num_parts or cfg.dist.num_parts}parts"


def signature(cfg: Config) -> Dict[str, Any]:
    sig = {s: dict(cfg[s]) for s in SIGNATURE_SECTIONS}
    for s, k in SIGNATURE_KEYS:
        sig[f"{s}.{k}"] = cfg[s][k]
    return json.loads(json.dumps(sig, default=str))


def _flatten(sig: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in sig.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def load_prepared(part_dir: Path, cfg: Optional[Config] = None) -> Dict[str, Any]:
    """``prepared.json`` of ``part_dir``; with ``cfg``, also checks that it was made with ``cfg``."""
    path = Path(part_dir) / PREPARED
    if not path.exists():
        raise DataError(f"{path}: no partitions here; run `python -m graphrec.partition --cfg ... "
                        f"--num-parts N` first (it writes dist.part_dir)")
    try:
        prepared = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    found = prepared.get("format", 1)
    if found != PARTITION_FORMAT:
        raise DataError(f"{path}: partitions in format {found}, but this graphrec reads format {PARTITION_FORMAT} "
                        f"(each node type's features packed into one table); re-run `python -m graphrec.partition "
                        f"--cfg ... --num-parts N` to write them again")
    if cfg is not None:
        mine, theirs = _flatten(signature(cfg)), _flatten(prepared["signature"])
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            shown = ", ".join(f"{k}: partitions {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in diff[:5])
            raise ConfigError(f"{path}: the partitions were made with another configuration ({shown}"
                              f"{', ...' if len(diff) > 5 else ''}); re-run graphrec.partition with this one")
    return prepared


def load_orig_ids(part_dir: Path) -> Dict[str, torch.Tensor]:
    with np.load(Path(part_dir) / "orig_ids.npz", allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def _partition(part, out: Path, name: str, num_parts: int, method: str, log) -> str:
    """``partition_features`` with METIS, falling back to random where DGL has no METIS."""
    try:
        part(out, name, num_parts, method)
        return method
    except Exception as exc:          # DGL raises a bare DGLError when built without METIS
        if method != "metis" or "metis" not in str(exc).lower():
            raise
        log(f"METIS is unavailable ({exc}); partitioning at random")
        shutil.rmtree(out, ignore_errors=True)
        part(out, name, num_parts, "random")
        return "random"


def prepare(cfg: Config, config_file: Optional[str] = None, log: Callable[[str], None] = print) -> Path:
    """Run the stages before the ranker and write ``dist.part_dir`` (see the module docstring)."""
    from ..ranking.stage import enabled_modules, node_data
    from ..run import run
    from ..stage import jsonable
    from .store import graph_name_for, partition_features

    if not cfg.ranker.enabled:
        raise ConfigError("ranker.enabled is false: there is nothing to train distributed")
    check_one_snapshot_on_trainers(cfg)
    part_dir = part_dir_of(cfg)
    dist_graphcl = distributed_graphcl(cfg)
    skip = sorted(set(cfg.run.skip_stages) | set(STAGES_AFTER_PARTITION) | ({"graphcl"} if dist_graphcl else set()))
    prep_cfg = Config({s: Section(dict(v)) for s, v in cfg.items()})
    prep_cfg.run["skip_stages"] = skip
    prep_cfg.run["name"] = f"{cfg.run.name}-partition"
    result = run(prep_cfg, config_file=config_file)
    ds = result.state["dataset"]
    state = dict(result.state)
    if dist_graphcl and "expansions" in state:      # a Θ column for the trainers to fill (graphrec.dist.graphcl)
        state["theta"] = torch.zeros(ds.num_users + ds.num_authors, 1, cfg.graphcl.dim)
    mods = enabled_modules(cfg, ds, state)
    data = node_data(ds, mods, state)
    dist_graphcl = dist_graphcl and mods["theta_pretrained"]
    if dist_graphcl:                                # its positives, whether the ranker reads them or not
        for nt, m in GRAPHCL_POSITIVES.items():
            data.setdefault(nt, {}).setdefault(f"exp_{m}", torch.from_numpy(
                np.ascontiguousarray(state["expansions"][m], dtype=np.int32)))
    seg_author = ds.tables["segments"]["author"] if mods["modalities"] else None
    graph_name = graph_name_for(part_dir)
    part_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_dir.parent / f".{part_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    orig: Dict[str, torch.Tensor] = {}
    layouts: Dict[str, Dict[str, Any]] = {}

    def part(out: Path, name: str, n: int, method: str) -> None:
        ids, packed = partition_features(result.state.get("graph"), ds.num_users, ds.num_authors, seg_author, data,
                                         out, name, num_parts=n, part_method=method)
        orig.update(ids)
        layouts.update(packed)
    try:
        method = _partition(part, tmp, graph_name, cfg.dist.num_parts, cfg.dist.part_method, log)
        np.savez(tmp / "orig_ids.npz", **{nt: ids.numpy() for nt, ids in orig.items()})
        (tmp / "checkpoints").mkdir()
        checkpoints = {}                             # the forecasters, where a run folder keeps them
        for key, rel in FORECASTER_CHECKPOINTS.items():
            if mods[key]:
                shutil.copy2(result.run_dir / rel, tmp / rel)
                checkpoints[key] = rel
        prepared = {"format": PARTITION_FORMAT, "graph_name": graph_name, "part_config": f"{graph_name}.json", "num_parts": cfg.dist.num_parts,
                    "part_method": method, "modules": mods, "checkpoints": checkpoints,
                    "features": layouts, "graphcl": "distributed" if dist_graphcl else "standalone",
                    "num_nodes": {nt: int(len(ids)) for nt, ids in orig.items()},
                    "prepared_by": str(result.run_dir), "signature": signature(cfg),
                    # the entries of the stages run here, for the trainers' metrics.json (graphrec.metrics_schema)
                    "metrics": json.loads(json.dumps({k: result.metrics[k] for k in PARTITION_STEP_ENTRIES
                                                      if k in result.metrics}, default=jsonable))}
        atomic_write_text(tmp / PREPARED, json.dumps(prepared, indent=2))
        if part_dir.exists():
            shutil.rmtree(part_dir)
        os.replace(tmp, part_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{cfg.dist.num_parts} partition(s) ({method}) of graph '{graph_name}' in {part_dir}")
    return part_dir
