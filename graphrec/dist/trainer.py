"""One distributed trainer process (started by ``python -m graphrec.launch``, never by hand).

It connects to the graph servers (``dgl.distributed.initialize``), joins the DDP group, opens the
partitioned features as a ``DistGraph``, takes its share of the impressions (the impressions of the
users ``dgl.distributed.node_split`` gives it, so user features are mostly local), optionally walks
the expansions of the seeds it owns, with ``graphcl.distributed`` pre-trains Θ on the DistGraph
(:mod:`graphrec.dist.graphcl`), and trains the ranker with :func:`graphrec.ranking.train.train_ranker`.
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
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..config import Config, load_config
from ..data.dataset import save_table
from ..errors import UserError
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
    """Mask of the impressions whose user ``node_split`` gives trainer ``rank`` (disjoint, covering).

    ``rank`` is the DDP rank (machine * trainers per machine + local rank), not DGL's own trainer rank,
    which follows the order the trainers happened to register with the servers: a resumed trainer must
    own the share it trained on before (its epoch seeds follow its rank)."""
    import dgl

    g = store.graph
    mask = torch.ones(g.num_nodes("user"), dtype=torch.bool)
    new = dgl.distributed.node_split(mask, g.get_partition_book(), ntype="user", force_even=True, rank=rank)
    owner = np.zeros(g.num_nodes("user"), dtype=bool)
    owner[store.orig_of_new["user"][new].numpy()] = True
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
    from ..launch import read_ip_config

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


def train(cfg: Config, part_dir: Path, run_dir: Path, ip_config: Path, resume: bool = False,
          stage: str = "all") -> Dict[str, Any]:
    """The body of one trainer; every rank returns the same metrics (rank 0 also writes them). ``stage``
    ``graphcl``: stop after the distributed GraphCL pre-training (metrics: its entry only)."""
    import dgl

    from ..checkpoint import save_checkpoint
    from ..data.dataset import SPLITS
    from ..data.sources import load_data
    from ..models.product_forecaster import ProductForecaster
    from ..models.stat_forecaster import StatForecaster
    from ..ranking.stage import build_ranker, model_name, train_ranker
    from ..ranking.train import RankerScorer
    from .comm import DDPComm, Watchdog, trainer_device
    from .prepare import check_one_snapshot_on_trainers, load_orig_ids, load_prepared
    from .store import FeatureStore
    from .walk import walk_owned_expansions

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
    ds = load_data(cfg, log=log.info)
    mods = prepared["modules"]
    artifacts: Dict[str, Any] = {}
    if mods["stat_forecast"]:
        artifacts["stat_forecaster"] = StatForecaster.from_checkpoint(part_dir / prepared["checkpoints"]["stat_forecast"])
    if mods["product_forecast"]:
        artifacts["product_forecaster"] = ProductForecaster.from_checkpoint(
            part_dir / prepared["checkpoints"]["product_forecast"])

    pids = [int(p) for p in os.environ.get("GRAPHREC_SERVER_PIDS", "").split(",") if p]
    launcher = os.environ.get("GRAPHREC_LAUNCHER_PID")
    machines = _machines(ip_config)
    here = _this_machine(machines)
    peers = {ip: f"machine {m} ({ip})" if m != here else f"a process on this machine (machine {m}, {ip})"
             for m, (ip, _) in enumerate(machines)}
    watchdog = Watchdog(cfg.dist.stall_timeout_s, pids, what=f"trainer {comm.rank}",
                        launcher_pid=int(launcher) if launcher else None, peers=peers,
                        on_stall=lambda: unreachable_servers(machines)).start()
    store = FeatureStore(part_dir / prepared["part_config"], prepared["graph_name"], load_orig_ids(part_dir),
                         prepared["features"], on_read=watchdog.kick)
    walked = {}
    if cfg.dist.expansion == "walk" and mods["metapaths"]:
        t0 = time.perf_counter()
        ks = {m: cfg.expansion[f"k_{m}"] for m in mods["metapaths"]}
        mine = walk_owned_expansions(store, ks, cfg.run.seed, cfg.expansion.retries, comm.rank, log=log.info)
        store.graph.barrier()               # every trainer's walks are written before anyone reads them
        walked = {"seconds": time.perf_counter() - t0, "metapaths": sorted(mine),
                  "pad_fraction": {m: float((e < 0).float().mean()) if e.numel() else 0.0
                                   for m, (_, e) in mine.items()}}
        save_table(run_dir / "expansions" / f"rank{comm.rank}.npz",     # what this trainer walked, original ids
                  {**{f"{m}_seeds": s.numpy() for m, (s, _) in mine.items()},
                   **{m: e.numpy().astype(np.int32) for m, (_, e) in mine.items()}})
    graphcl: Dict[str, Any] = {}
    if prepared.get("graphcl") == "distributed":      # Θ first, into the node data the ranker reads
        from .graphcl import train_dist_graphcl

        graphcl = train_dist_graphcl(cfg, ds, store, comm, run_dir, resume, log.info, writer, kick=watchdog.kick)
    elif stage == "graphcl":
        raise UserError(f"--stage graphcl: the partitions in {part_dir} hold a Θ trained by graphrec.partition; "
                        f"partition with --set graphcl.distributed=true to pre-train on the trainers")
    if stage == "graphcl":
        watchdog.stop()
        metrics = {"run": {"dir": str(run_dir), "seed": cfg.run.seed, "distributed": True, "stage": stage},
                   "dist": {"world_size": comm.world, "num_parts": prepared["num_parts"], "part_dir": str(part_dir),
                            "graphcl_seconds": graphcl["seconds"], "wall_seconds": time.perf_counter() - t_start},
                   "graphcl": graphcl}
        _write_metrics(run_dir, metrics, writer, comm)
        return metrics
    if cfg.dist.remote_cache_mb:
        store.graph.barrier()               # every trainer's Θ and walks are written before rows are cached
        store.cache_remote(cfg.dist.remote_cache_mb << 20)
        t_cache = time.perf_counter()
        held = store.prefetch_remote()
        log.info("cache of remote rows: %.1f MB of other machines' tables prefetched in %.1f s (budget %d MB)",
                 held / 2**20, time.perf_counter() - t_cache, cfg.dist.remote_cache_mb)
    model, builder, spec = build_ranker(cfg, ds, mods, artifacts, store=store)

    imp = ds.impressions
    mine = owned_impressions(store, imp["user"], comm.rank)
    share = {s: np.flatnonzero(mine & (imp["split"] == code)) for s, code in SPLITS.items()}
    save_table(run_dir / "shares" / f"rank{comm.rank}.npz", share)
    log.info("share: %s impressions (%s)", f"{int(mine.sum()):,}",
             ", ".join(f"{s} {len(v):,}" for s, v in share.items()))

    reads = FeatureReads(store, builder, log.info)
    t_train = time.perf_counter()
    model.to(device)                    # the feature store stays in CPU memory; batches are copied over
    result = train_ranker(cfg, ds, model, builder, share["train"], share["val"], device,
                          run_dir / "checkpoints" / "ranker_last.pt", resume=resume, writer=writer, log=log.info,
                          comm=comm, on_epoch_end=reads.epoch_end)
    train_seconds = time.perf_counter() - t_train
    name = model_name(mods)
    evals: Dict[str, Any] = {}
    scorer = RankerScorer(model, builder, device)
    for split_name in ("val", "test"):
        entry = evaluate_distributed(scorer, ds, split_name, share[split_name], cfg, comm,
                                     lambda users: owned_impressions(store, users, comm.rank))
        evals[split_name] = {name: entry}
        for key, r in entry.items():
            log.info("%s %s: %s", split_name, key, r)
    counts = comm.gather({s: int(len(v)) for s, v in share.items()})
    feature_reads = FeatureReads.summary(comm.gather(reads.epochs))
    watchdog.stop()
    metrics = {"run": {"dir": str(run_dir), "seed": cfg.run.seed, "distributed": True},
               "data": {"path": str(ds.path), "name": ds.name, "main_label": ds.main_label,
                        "feedback": "implicit" if ds.implicit else "explicit", "timed": ds.timed, **ds.counts()},
               "dist": {"world_size": comm.world, "num_parts": prepared["num_parts"],
                        "part_method": prepared["part_method"], "part_dir": str(part_dir),
                        "expansion": cfg.dist.expansion, "walked": walked, "shares": counts,
                        "feature_reads": feature_reads,
                        "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t_start},
               "ranker": {"model": name, "modules": mods, "history": result.history,
                          "best_epoch": result.best_epoch, "best_val": result.best,
                          "stopped_early": result.stopped_early, "epochs_run": len(result.history),
                          "resumed_from_epoch": result.resumed_from},
               "eval": evals}
    if graphcl:
        metrics["graphcl"] = graphcl
        metrics["dist"]["graphcl_seconds"] = graphcl["seconds"]
    if comm.is_main:
        import dataclasses

        save_checkpoint(run_dir / "checkpoints" / "ranker.pt",
                        {"state_dict": model.state_dict(), "spec": dataclasses.asdict(spec)})
    _write_metrics(run_dir, metrics, writer, comm)
    # the process group is not destroyed: ProcessGroupGloo's destructor joins its worker threads while
    # holding the GIL, and a worker still freeing the tensors of the last collective waits for the GIL (a
    # deadlock, seen in about 1 of 10 runs). The process leaves with os._exit instead (see __main__).
    return metrics


def _write_metrics(run_dir: Path, metrics: Dict[str, Any], writer, comm) -> None:
    """Rank 0 writes ``metrics.json`` and closes TensorBoard; then every rank waits for it."""
    if comm.is_main:
        from ..data.dataset import atomic_write_text
        from ..stage import jsonable

        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=jsonable))
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
        train(cfg, Path(args.part_dir), Path(args.run_dir), Path(args.ip_config), args.resume, args.stage)
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
