"""One distributed trainer process (started by ``python -m graphrec.launch``, never by hand).

:func:`train` runs its steps in order:

1. :func:`connect`: reach the graph servers (``dgl.distributed.initialize``), join the DDP group;
2. :func:`load_inputs`: the dataset, the forecasters, the partitioned features as a ``DistGraph``
   (:class:`graphrec.dist.store.FeatureStore`), watched from then on;
3. :func:`walk_expansions` (``dist.expansion=walk``): walk the expansions of the seeds it owns;
   :func:`pretrain_graphcl` (``graphcl.distributed``): pre-train Θ on the DistGraph (:mod:`graphrec.dist.graphcl`);
4. :func:`train_ranker_share`: take its share of the impressions (those of the users
   ``dgl.distributed.node_split`` gives it, so user features are mostly local) and train the ranker with
   :func:`graphrec.ranking.stage.train_ranker`;
5. :func:`evaluate_ranker`: validation and test, each trainer scoring its share;
6. :func:`write_metrics`: rank 0 writes the checkpoint and ``metrics.json``.

Rank 0 writes the checkpoints, ``metrics.json`` and TensorBoard; every rank writes its log and its
share (``shares/rank<r>.npz``) to the run folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import Config, load_config
from ..data.dataset import save_table
from ..errors import UserError
from ..metrics_schema import stage_row, timed
from ..numerics import flush_denormals
from .lifecycle import WATCHDOG_EXIT


class ServerUnreachable(UserError):
    pass


class NullWriter:
    """TensorBoard for ranks other than 0: accepts every call, writes nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _logger(run_dir: Path, rank: int, world: int) -> logging.Logger:
    log = logging.getLogger(f"graphrec.trainer.{rank}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    fh = logging.FileHandler(run_dir / f"trainer-{rank}.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO)
    sh.setFormatter(logging.Formatter(f"[graphrec trainer {rank}/{world}] %(message)s"))
    log.addHandler(fh)
    log.addHandler(sh)
    return log


def owned_impressions(store, users: np.ndarray, rank: int) -> np.ndarray:
    """Mask of the impressions whose user trainer ``rank`` owns (:meth:`~graphrec.dist.store.FeatureStore.owned_nodes`:
    disjoint, covering)."""
    owner = np.zeros(store.graph.num_nodes("user"), dtype=bool)
    owner[store.owned_nodes("user", rank).numpy()] = True
    return owner[users]


def evaluate_distributed(scorer, ds, split: str, share: np.ndarray, cfg: Config, comm,
                         owns: Callable[[np.ndarray], np.ndarray]) -> Dict[str, Any]:
    """The standalone metrics entry of one split (:func:`graphrec.evaluation.evaluate`), computed across
    trainers: per-impression scores on each trainer's share, gathered; the full-ranking top-K (and the
    two-stage top-K of a standalone run, ``eval.two_stage_candidates``; a distributed run has no LightGCN,
    so popularity retrieves the candidates) ranked by every trainer for the users ``node_split`` gives it,
    reading every partition through the DistGraph, and averaged over all of them; implicit data's
    sampled-negative AUC with each trainer scoring its users' pairs. ``owns(users)``: the mask of the
    users that are this trainer's."""
    from ..evaluation import (ShardedPairScores, activity_buckets, gathered_scores, impression_metrics, merge_topk,
                              topk_metrics, topk_users)
    from ..ranking.stage import two_stage

    # per impression: explicit data's share of the split, implicit data's positives and sampled negatives
    # of the trainer's users; every trainer computes the report from all of them
    scores = ShardedPairScores(scorer, owns, comm) if ds.implicit else gathered_scores(scorer, share, comm)
    buckets = activity_buckets(ds, cfg.eval.activity_buckets)
    entry: Dict[str, Any] = dict(impression_metrics(scores, ds, split, cfg.eval.negatives, cfg.run.seed + 1,
                                                    buckets=buckets))
    # every trainer ranks its own users (rank 0 ranking them all kept the others waiting for minutes at 1M users)
    ranked = {}
    retriever = two_stage(cfg, ds, scorer)
    if cfg.eval.topk or retriever is not None:
        users = topk_users(ds, split)
        mine = users[owns(users)]
    if cfg.eval.topk:
        rep = topk_metrics(scorer, ds, split, cfg.eval.k, users=mine, buckets=buckets)
        if rep is not None:
            ranked.update(rep if buckets is not None else {"topk": rep})
    if retriever is not None:
        rep = topk_metrics(retriever, ds, split, cfg.eval.k, users=mine)
        ranked["topk_two_stage"] = rep and {**rep, "candidates": retriever.n, "retriever": retriever.name}
    every = comm.gather(ranked)                                   # each trainer's {key: entry of its users}
    for key in dict.fromkeys(k for part in every for k in part):     # a trainer may have no user of a bucket
        merged = merge_topk([part.get(key) for part in every])
        if merged is not None:
            entry[key] = merged
    return comm.gather(entry)[0]


def _machines(ip_config: Path):
    from .launch import read_ip_config

    try:
        return read_ip_config(ip_config)
    except UserError:
        return []


def _this_machine(machines) -> int:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    return rank // max(1, world // max(1, len(machines)))


def lost_peer(message: str, machines) -> str:
    """Which machine of the ip config a failed collective names (gloo says ``... by peer [10.0.0.12]:4711``):
    ``machine 1 (10.0.0.12) went away (its launcher, trainer or link is gone)``; "" when none is named."""
    import re

    ips = {ip: m for m, (ip, _) in enumerate(machines)}
    for ip in re.findall(r"(\d{1,3}(?:\.\d{1,3}){3})\]?:\d+", message):
        if ip in ips:
            m = ips[ip]
            if m == _this_machine(machines):
                return f"another trainer on this machine (machine {m}, {ip}) went away"
            return f"machine {m} ({ip}) went away (its launcher, a trainer or the link to it is gone)"
    return ""


def unreachable_servers(machines, timeout_s: float = 2.0) -> str:
    """Which machines' first graph server port accepts no TCP connection (asked when a trainer stalls):
    a launcher that ends takes its servers with it, so this names the machine that went away."""
    import socket

    gone = []
    for m, (ip, port) in enumerate(machines):
        try:
            socket.create_connection((ip, port), timeout=timeout_s).close()
        except OSError:
            gone.append(f"machine {m} ({ip}:{port})")
    return (f"the graph server of {', '.join(gone)} is gone (its launcher went away, or the link to it)"
            if gone else "")


class FeatureReads:
    """Feature store pulls and bytes read from other machines' servers per batch, per training epoch
    (its batches and its validation's), logged at each epoch end: what a batch costs on the network."""

    def __init__(self, store, builder, log) -> None:
        self.store, self.builder, self.log = store, builder, log
        self.epochs: List[Dict[str, float]] = []
        self._last = self._now()

    def _now(self):
        return self.builder.built_batches, self.store.pulls, self.store.remote_bytes, self.store.cache_hits

    def epoch_end(self, epoch: int, h: Dict[str, float]) -> None:
        now = self._now()
        batches, pulls, remote, hits = (a - b for a, b in zip(now, self._last))
        self._last = now
        entry = {"epoch": epoch + 1, "batches": batches, "pulls": pulls, "remote_bytes": remote,
                 "pulls_per_batch": pulls / max(batches, 1), "remote_kb_per_batch": remote / 1024 / max(batches, 1),
                 "cache_hits": hits, "cached_mb": self.store.cached_bytes / 2**20}
        self.epochs.append(entry)
        self.log(f"feature reads, epoch {epoch + 1}: {entry['pulls_per_batch']:.2f} pulls/batch, "
                 f"{entry['remote_kb_per_batch']:.1f} KB/batch from other machines ({batches} batches, "
                 f"training and validation); {hits:,} rows from the cache of remote rows "
                 f"({entry['cached_mb']:.1f} MB held)")

    @staticmethod
    def summary(per_rank: List[List[Dict[str, float]]]) -> Dict[str, Any]:
        """Every rank's epochs, and pulls and remote KB per batch over all of them."""
        entries = [e for rank in per_rank for e in rank]
        batches = max(sum(e["batches"] for e in entries), 1)
        return {"pulls_per_batch": sum(e["pulls"] for e in entries) / batches,
                "remote_kb_per_batch": sum(e["remote_bytes"] for e in entries) / 1024 / batches,
                "per_rank": per_rank}


@dataclass
class Trainer:
    """What the steps of one trainer share (the distributed counterpart of :class:`graphrec.stage.RunContext`)."""

    cfg: Config
    config_file: Optional[str]         # the experiment file given (None: defaults only), for metrics.json
    part_dir: Path
    run_dir: Path
    ip_config: Path
    prepared: Dict[str, Any]           # the partition folder's prepared.json
    comm: Any                          # graphrec.dist.comm.DDPComm
    device: str
    log: logging.Logger
    writer: Any                        # TensorBoard on rank 0, a NullWriter elsewhere
    t_start: float
    watchdog: Any = None               # graphrec.dist.lifecycle.Watchdog, from load_inputs on
    store: Any = None                  # graphrec.dist.store.FeatureStore, from load_inputs on

    @property
    def modules(self) -> Dict[str, Any]:
        return self.prepared["modules"]


@dataclass
class RankerRun:
    """What :func:`train_ranker_share` leaves for the evaluation and the metrics."""

    model: Any
    builder: Any
    spec: Any                          # graphrec.models.ranker.RankerSpec
    name: str                          # mmbee or din
    share: Dict[str, np.ndarray]       # this trainer's impressions per split
    result: Any                        # graphrec.fit.FitResult
    reads: FeatureReads
    seconds: float


class Steps:
    """The trainer's steps as the rows of ``metrics.json``'s ``stages`` (:func:`graphrec.metrics_schema.stage_row`):
    each one's seconds and this process's peak resident memory after it (rank 0's rows are the ones written)."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []

    def run(self, name: str, step: Callable[..., Any], *args: Any) -> Any:
        row = stage_row(name)
        self.rows.append(row)              # before running, so the report step lists itself
        with timed(row):
            return step(*args)

    def skip(self, name: str, why: str, value: Any = None) -> Any:
        self.rows.append(stage_row(name, f"skipped: {why}"))
        return value


def train(cfg: Config, part_dir: Path, run_dir: Path, ip_config: Path, resume: bool = False,
          stage: str = "all", config_file: Optional[str] = None) -> Dict[str, Any]:
    """The body of one trainer, step by step; every rank returns the same metrics (rank 0 also writes them).
    ``stage`` ``graphcl``: stop after the distributed GraphCL pre-training (no ranker entries)."""
    steps = Steps()
    t = steps.run("connect", connect, cfg, part_dir, run_dir, ip_config, config_file)
    ds, artifacts = steps.run("load", load_inputs, t)
    if cfg.dist.expansion == "walk" and t.modules["metapaths"]:
        walked = steps.run("walk", walk_expansions, t)
    else:
        walked = steps.skip("walk", "no metapath in use" if not t.modules["metapaths"] else
                            "dist.expansion=cache: the partitions' offline expansions", {})
    if t.prepared.get("graphcl") == "distributed":
        graphcl = steps.run("graphcl", pretrain_graphcl, t, ds, resume)
    elif stage == "graphcl":
        raise UserError(f"--stage graphcl: the partitions in {part_dir} hold a Θ trained by graphrec.partition; "
                        f"partition with --set graphcl.distributed=true to pre-train on the trainers")
    else:
        graphcl = steps.skip("graphcl", "Θ was trained by graphrec.partition", ({}, {}))
    if stage == "graphcl":
        return steps.run("report", write_metrics, t, ds, steps.rows, walked, graphcl)
    ranker = steps.run("ranker", train_ranker_share, t, ds, artifacts, resume)
    evals = steps.run("evaluation", evaluate_ranker, t, ds, ranker)
    # the process group is not destroyed: ProcessGroupGloo's destructor joins its worker threads while
    # holding the GIL, and a worker still freeing the tensors of the last collective waits for the GIL (a
    # deadlock, seen in about 1 of 10 runs). The process leaves with os._exit instead (see __main__).
    return steps.run("report", write_metrics, t, ds, steps.rows, walked, graphcl, ranker, evals)


def connect(cfg: Config, part_dir: Path, run_dir: Path, ip_config: Path, config_file: Optional[str] = None) -> Trainer:
    """Check the partitions against ``cfg``, reach every graph server (``dgl.distributed.initialize``), join the
    DDP group (after DGL: its rule), and open this rank's log and, on rank 0, TensorBoard."""
    import dgl

    from .comm import DDPComm, trainer_device
    from .prepare import check_one_snapshot_on_trainers, load_prepared

    t_start = time.perf_counter()
    prepared = load_prepared(part_dir, cfg)
    check_one_snapshot_on_trainers(cfg)
    try:
        dgl.distributed.initialize(str(ip_config))
    except dgl.distributed.rpc.DistConnectError as exc:
        raise ServerUnreachable(f"cannot reach every graph server of {ip_config} within dist.connect_timeout_s="
                                f"{cfg.dist.connect_timeout_s} (is graphrec.launch running on every machine?): "
                                f"{exc.message}") from None
    device, backend = trainer_device(cfg.run.device, cfg.dist.backend, int(os.environ.get("LOCAL_RANK", 0)),
                                     torch.cuda.device_count())
    comm = DDPComm(backend, timeout_s=cfg.dist.stall_timeout_s, device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _logger(run_dir, comm.rank, comm.world)
    writer = NullWriter()
    if comm.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir))
    return Trainer(cfg, config_file, part_dir, run_dir, ip_config, prepared, comm, device, log, writer, t_start)


def load_inputs(t: Trainer):
    """``(dataset, forecasters)``: the dataset and the forecasters the partitions were made with; then the
    feature store (the ``DistGraph``), watched from here on: a trainer that stalls, or whose graph servers,
    launcher or peers go away, stops with a message (:class:`graphrec.dist.lifecycle.Watchdog`)."""
    from ..data.sources import load_data
    from ..reload import load_forecasters
    from .lifecycle import Watchdog
    from .prepare import load_orig_ids
    from .store import FeatureStore

    ds = load_data(t.cfg, log=t.log.info)
    artifacts = load_forecasters(t.part_dir, t.modules, t.prepared["checkpoints"])
    pids = [int(p) for p in os.environ.get("GRAPHREC_SERVER_PIDS", "").split(",") if p]
    launcher = os.environ.get("GRAPHREC_LAUNCHER_PID")
    machines = _machines(t.ip_config)
    here = _this_machine(machines)
    peers = {ip: f"machine {m} ({ip})" if m != here else f"a process on this machine (machine {m}, {ip})"
             for m, (ip, _) in enumerate(machines)}
    t.watchdog = Watchdog(t.cfg.dist.stall_timeout_s, pids, what=f"trainer {t.comm.rank}",
                          launcher_pid=int(launcher) if launcher else None, peers=peers,
                          on_stall=lambda: unreachable_servers(machines)).start()
    t.store = FeatureStore(t.part_dir / t.prepared["part_config"], t.prepared["graph_name"], load_orig_ids(t.part_dir),
                           t.prepared["features"], on_read=t.watchdog.kick)
    return ds, artifacts


def walk_expansions(t: Trainer) -> Dict[str, Any]:
    """``dist.expansion=walk``: walk the metapaths in use from the seeds this trainer owns into the node data
    (:func:`graphrec.dist.walk.walk_owned_expansions`), then wait for every trainer's walks; returns the
    ``dist.walked`` entry."""
    from .walk import walk_owned_expansions

    cfg, store, rank = t.cfg, t.store, t.comm.rank
    t0 = time.perf_counter()
    ks = {m: cfg.expansion[f"k_{m}"] for m in t.modules["metapaths"]}
    mine = walk_owned_expansions(store, ks, cfg.run.seed, cfg.expansion.retries, rank, log=t.log.info,
                                 oversample=cfg.expansion.oversample)
    store.graph.barrier()               # every trainer's walks are written before anyone reads them
    save_table(t.run_dir / "expansions" / f"rank{rank}.npz",     # what this trainer walked, original ids
               {**{f"{m}_seeds": s.numpy() for m, (s, _) in mine.items()},
                **{m: e.numpy().astype(np.int32) for m, (_, e) in mine.items()}})
    return {"seconds": time.perf_counter() - t0, "metapaths": sorted(mine),
            "pad_fraction": {m: float((e < 0).float().mean()) if e.numel() else 0.0 for m, (_, e) in mine.items()}}


def pretrain_graphcl(t: Trainer, ds, resume: bool) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Partitions made for ``graphcl.distributed``: pre-train Θ across the trainers into the node data the ranker
    reads (:func:`graphrec.dist.graphcl.train_dist_graphcl`); returns its ``graphcl`` entry and ``dist.graphcl``."""
    from .graphcl import train_dist_graphcl

    return train_dist_graphcl(t.cfg, ds, t.store, t.comm, t.run_dir, resume, t.log.info, t.writer,
                              kick=t.watchdog.kick)


def train_ranker_share(t: Trainer, ds, artifacts: Dict[str, Any], resume: bool) -> RankerRun:
    """Build the ranker on the feature store and train it with DDP on this trainer's share: the impressions of
    the users it owns (:meth:`graphrec.dist.store.FeatureStore.owned_nodes`), saved to ``shares/rank<r>.npz``."""
    from ..data.dataset import SPLITS
    from ..ranking.stage import build_ranker, model_name, train_ranker

    cfg, store, comm, log = t.cfg, t.store, t.comm, t.log
    if cfg.dist.remote_cache_mb:
        store.graph.barrier()               # every trainer's Θ and walks are written before rows are cached
        store.cache_remote(cfg.dist.remote_cache_mb << 20)
        t_cache = time.perf_counter()
        held = store.prefetch_remote()
        log.info("cache of remote rows: %.1f MB of other machines' tables prefetched in %.1f s (budget %d MB)",
                 held / 2**20, time.perf_counter() - t_cache, cfg.dist.remote_cache_mb)
    model, builder, spec = build_ranker(cfg, ds, t.modules, artifacts, store=store)

    imp = ds.impressions
    mine = owned_impressions(store, imp["user"], comm.rank)
    share = {s: np.flatnonzero(mine & (imp["split"] == code)) for s, code in SPLITS.items()}
    save_table(t.run_dir / "shares" / f"rank{comm.rank}.npz", share)
    log.info("share: %s impressions (%s)", f"{int(mine.sum()):,}",
             ", ".join(f"{s} {len(v):,}" for s, v in share.items()))

    reads = FeatureReads(store, builder, log.info)
    t_train = time.perf_counter()
    model.to(t.device)                  # the feature store stays in CPU memory; batches are copied over
    result = train_ranker(cfg, ds, model, builder, share["train"], share["val"], t.device,
                          t.run_dir / "checkpoints" / "ranker_last.pt", resume=resume, writer=t.writer, log=log.info,
                          comm=comm, on_epoch_end=reads.epoch_end)
    return RankerRun(model, builder, spec, model_name(t.modules), share, result, reads, time.perf_counter() - t_train)


def evaluate_ranker(t: Trainer, ds, r: RankerRun) -> Dict[str, Any]:
    """The ``eval`` entry: validation and test, each trainer scoring its share (:func:`evaluate_distributed`)."""
    from ..ranking.train import RankerScorer

    evals: Dict[str, Any] = {}
    scorer = RankerScorer(r.model, r.builder, t.device)
    for split_name in ("val", "test"):
        entry = evaluate_distributed(scorer, ds, split_name, r.share[split_name], t.cfg, t.comm,
                                     lambda users: owned_impressions(t.store, users, t.comm.rank))
        evals[split_name] = {r.name: entry}
        for key, rep in entry.items():
            t.log.info("%s %s: %s", split_name, key, rep)
    return evals


def write_metrics(t: Trainer, ds, stages: List[Dict[str, Any]], walked: Dict[str, Any],
                  graphcl: Tuple[Dict[str, Any], Dict[str, Any]], ranker: Optional[RankerRun] = None,
                  evals: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every rank's shares and feature reads gathered; rank 0 writes ``checkpoints/ranker.pt``, ``metrics.json``
    (a standalone run's entries, built by :mod:`graphrec.metrics_schema`, the partition step's stage entries,
    plus ``dist``) and ``report.md``. Without ``ranker`` (``--stage graphcl``) there are no ranker entries."""
    from ..checkpoint import save_checkpoint
    from ..metrics_schema import data_entry, ranker_entry, run_entry
    from ..ranking.stage import fit_spec

    cfg, comm = t.cfg, t.comm
    entry, graphcl_details = graphcl
    dist: Dict[str, Any] = {"world_size": comm.world, "num_parts": t.prepared["num_parts"],
                            "part_method": t.prepared["part_method"], "part_dir": str(t.part_dir),
                            "expansion": cfg.dist.expansion, "walked": walked}
    if ranker is None:
        dist["stage"] = "graphcl"
    else:
        dist["shares"] = comm.gather({s: int(len(v)) for s, v in ranker.share.items()})
        dist["feature_reads"] = FeatureReads.summary(comm.gather(ranker.reads.epochs))
        dist["train_seconds"] = ranker.seconds
    if entry:
        dist["graphcl"] = graphcl_details
        dist["graphcl_seconds"] = graphcl_details["seconds"]
    t.watchdog.stop()
    dist["wall_seconds"] = time.perf_counter() - t.t_start
    metrics: Dict[str, Any] = {"run": run_entry(cfg, t.run_dir, t.device, distributed=True),
                               "config_file": t.config_file, "data": data_entry(ds),
                               **t.prepared.get("metrics", {})}     # the partition step's graph, expansion, ...
    if entry:
        metrics["graphcl"] = entry
    if ranker is not None:
        metrics["ranker"] = ranker_entry(ranker.name, t.modules, ranker.result, fit_spec(cfg, ds).monitor,
                                         ranker.model)
        metrics["eval"] = evals
    metrics["stages"] = stages
    metrics["dist"] = dist
    if comm.is_main and ranker is not None:
        import dataclasses

        save_checkpoint(t.run_dir / "checkpoints" / "ranker.pt",
                        {"state_dict": ranker.model.state_dict(), "spec": dataclasses.asdict(ranker.spec)})
    _write_metrics(t.run_dir, metrics, t.writer, comm)
    return metrics


def _write_metrics(run_dir: Path, metrics: Dict[str, Any], writer, comm) -> None:
    """Rank 0 writes ``metrics.json`` and ``report.md`` (:func:`graphrec.report.run_report`, as a standalone run)
    and closes TensorBoard; then every rank waits for it."""
    if comm.is_main:
        from ..data.dataset import atomic_write_text
        from ..report import run_report
        from ..stage import jsonable

        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=jsonable))
        atomic_write_text(run_dir / "report.md", run_report(metrics, run_dir.name))
        writer.close()
    comm.barrier()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.dist.trainer",
                                 description="one trainer of a distributed run (started by graphrec.launch)")
    ap.add_argument("--cfg")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--part-dir", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--ip-config", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stage", choices=["all", "graphcl"], default="all")
    args = ap.parse_args(argv)
    rank = os.environ.get("RANK", "?")
    flush_denormals()                      # graphrec's process settings (graphrec.numerics)

    def on_sigterm(signum, frame):
        print(f"error: trainer {rank}: stopped by SIGTERM (the launcher stops every trainer when one process "
              f"fails)", file=sys.stderr, flush=True)
        os._exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        cfg = load_config(args.cfg, args.overrides)
        train(cfg, Path(args.part_dir), Path(args.run_dir), Path(args.ip_config), args.resume, args.stage, args.cfg)
    except UserError as exc:
        print(f"error: trainer {rank}: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:          # one readable line for the launcher's log, then the details
        import traceback

        traceback.print_exc()
        peer = lost_peer(str(exc), _machines(Path(args.ip_config)))
        print(f"error: trainer {rank}: {peer + ': ' if peer else ''}{type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        return WATCHDOG_EXIT if peer else 1        # a peer's loss is a consequence: the launcher names the cause
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 0 and "dgl.distributed.dist_context" in sys.modules:
        try:          # DGL's goodbye: a barrier of every trainer, then rank 0 shuts the graph servers down
            sys.modules["dgl.distributed.dist_context"].exit_client()
        except Exception as exc:
            print(f"error: trainer {os.environ.get('RANK', '?')}: leaving the graph servers: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr, flush=True)
            code = 1
    # Then leave without the interpreter's teardown: a failed trainer must not run DGL's exit handler
    # (its barrier waits forever when a peer is gone), and destroying gloo's process group can deadlock
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
