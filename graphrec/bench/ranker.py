"""Ranker benchmarks on a simulated world (``--cfg``, default ``yaml/live.yaml``).

``train``: training throughput (impressions/s, batch building included) of the ranker with every
module on and of the plain DIN ranker of the same width, in one process; the cost ratio is the
DESIGN.md target (≤ 2.5×).

``serve``: latency of scoring one user against ``--candidates`` authors (batch building + forward),
p50/p95/p99 over ``--requests`` requests, with the offline expansion cache (looked up in the
feature store) and with the expansions walked online per request (the paper's response-time
comparison).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import write_results

def din_modules(mods: Dict) -> Dict:
    """The plain DIN ranker of the same run: every MMBee / LiveForesighter module off, base features kept."""
    return {**mods, "metapaths": [], "theta_pretrained": False, "modalities": [], "stat_forecast": False,
            "product_forecast": False}


def prepare(cfg_path: Optional[str], overrides: List[str], workdir: Path, device: str = "cpu"):
    """Run the pipeline stages that precede the ranker; returns the run context."""
    import logging

    from torch.utils.tensorboard import SummaryWriter

    from ..config import load_config
    from ..pipeline import STAGES, RunContext, run_stages

    cfg = load_config(cfg_path, list(overrides) + ["run.progress=false"])
    log = logging.getLogger("graphrec.bench")
    ctx = RunContext(cfg=cfg, run_dir=workdir, log=log, writer=SummaryWriter(str(workdir / "tb")), device=device,
                     progress=False)
    upto = [s for s in STAGES if s.name in ("data", "graph", "expansion", "graphcl", "stat_forecast",
                                            "product_forecast")]
    run_stages(ctx, upto)
    return ctx


def train_throughput(ctx, impressions: int, repeats: int = 3, batch_size: Optional[int] = None) -> Dict:
    """Impressions per second of ranker training (batch building included) through the one training loop,
    every module on vs the plain DIN ranker. The two train in alternating one-epoch rounds (the order
    flips every round), so a machine that speeds up or slows down during the benchmark affects both
    alike; the first round warms up, the best of ``repeats`` counts, and every round's ratio is kept.
    ``batch_size``: impressions per step (default ``ranker.batch_size``)."""
    from ..fit import FitSpec, fit
    from ..ranking.stage import build_ranker, enabled_modules
    from ..ranking.train import RankerObjective, RankerTask

    ds, cfg = ctx.dataset, ctx.cfg
    batch_size = batch_size or cfg.ranker.batch_size
    train_idx = np.flatnonzero(ds.impressions["split"] == 0)[:impressions]
    mods = enabled_modules(cfg, ds, ctx.state)
    runs = {}
    for name, m in (("mmbee", mods), ("din", din_modules(mods))):
        model, builder, spec = build_ranker(cfg, ds, m, ctx.state, device=ctx.device)
        objective = RankerObjective(spec.tasks, ds.labels, {t: 1.0 for t in ds.labels}, ds.implicit,
                                    ds.main_label if ds.implicit else ("exposure" if "exposure" in spec.tasks else None))
        runs[name] = (model, RankerTask(builder, train_idx, batch_size, objective), m)
    seconds: Dict[str, List[float]] = {name: [] for name in runs}
    for r in range(repeats + 1):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            model, task, _ = runs[name]
            res = fit(model, task, FitSpec(epochs=1, lr=1e-3, amp=cfg.run.amp, tag=f"bench-{name}"), ctx.device)
            seconds[name].append(res.history[0]["seconds"])
    out = {}
    for name, (model, task, m) in runs.items():
        out[name] = {"impressions_per_s": len(train_idx) / min(seconds[name][1:]),
                     "parameters": int(sum(p.numel() for p in model.parameters())), "modules": m,
                     "epoch_seconds": seconds[name][1:]}
        out[name]["breakdown_ms_per_batch"] = breakdown(model, task, ctx.device)
    out["cost_ratio"] = out["din"]["impressions_per_s"] / out["mmbee"]["impressions_per_s"]
    out["cost_ratio_per_round"] = [a / b for a, b in zip(seconds["mmbee"][1:], seconds["din"][1:])]
    out["impressions"] = int(len(train_idx))
    out["batch_size"] = int(batch_size)
    out["device"] = ctx.device
    return out


PARTS = ("batch building", "ranker.user_side", "ranker.author_side", "ranker.mfq", "ranker.pair",
         "backward + optimizer")


def breakdown(model, task, device: str, batches: int = 8) -> Dict[str, float]:
    """Where one training step's time goes (ms per batch): batch building, the forward parts of the ranker
    (``ranker.mfq`` is inside ``ranker.author_side``), and the rest (loss, backward, Adam)."""
    from ..fit import to_device
    from ..models.sections import section, timed_sections

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=torch.device(device).type == "cuda" or None)
    model.train()
    it = iter(task.batches(0, np.random.default_rng(0)))
    n, total = 0, 0.0
    with timed_sections() as times:
        for _ in range(batches):
            t0 = time.perf_counter()
            with section("batch building"):
                try:
                    batch = to_device(next(it), torch.device(device))
                except StopIteration:
                    break
            loss = task.loss(model, batch)[0]
            with section("backward + optimizer"):
                opt.zero_grad()
                loss.backward()
                opt.step()
            total += time.perf_counter() - t0
            n += 1
    out = {k: times.get(k, 0.0) * 1000.0 / max(n, 1) for k in PARTS}
    out["step"] = total * 1000.0 / max(n, 1)           # with the sections' synchronisations
    return out


class OnlineExpansions:
    """A feature store whose expansions are walked per request instead of read from the offline cache."""

    def __init__(self, store, graph, ks: Dict[str, int], seed: int = 0, oversample: int = 1) -> None:
        from ..gie.metapath import CSRWalker, GiftedLookup

        self.store, self.graph, self.ks, self.oversample = store, graph, ks, oversample
        self.walker = CSRWalker(graph)
        self.gifted = GiftedLookup(graph)
        self.gen = torch.Generator().manual_seed(seed)

    def rows(self, ntype: str, ids: torch.Tensor, names, snapshot=None) -> Dict[str, torch.Tensor]:
        """The store's rows, but the expansions walked now on ``graph`` (the latest snapshot: serving's)."""
        from ..gie.metapath import expand

        walk = [n for n in names if n.startswith("exp_")]
        out = self.store.rows(ntype, ids, [n for n in names if n not in walk], snapshot=snapshot)
        if walk:
            uniq, inverse = torch.unique(ids.long(), return_inverse=True)
            for name in walk:
                m = name[4:]
                out[name] = expand(self.walker, self.graph, m, uniq, self.ks[m], generator=self.gen,
                                   gifted=self.gifted, oversample=self.oversample)[inverse]
        return {n: out[n] for n in names}


def serve_latency(ctx, requests: int, candidates: int, seed: int = 0) -> Dict:
    from ..ranking.stage import build_ranker, enabled_modules
    from ..schema import METAPATHS
    from ..serve import SegmentCache

    ds = ctx.dataset
    model, builder, _ = build_ranker(ctx.cfg, ds, enabled_modules(ctx.cfg, ds, ctx.state), ctx.state)
    model.eval()
    rng = np.random.default_rng(seed)
    t_now = int(ds.impressions["time"].max())
    ks = {m: ctx.cfg.expansion[f"k_{m}"] for m in METAPATHS}
    cache = SegmentCache()
    offline = builder.store
    variants = {"offline cache": (offline, None), "offline cache + room cache": (offline, cache),
                "online walk": (OnlineExpansions(offline, ctx.state["graph"], ks, seed,
                                                 ctx.cfg.expansion.oversample), None)}
    out = {}
    for name, (store, seg_cache) in variants.items():
        builder.store, model.segment_cache = store, seg_cache
        lat = []
        for r in range(requests + 10):                     # the first 10 warm up
            u = np.full(candidates, rng.integers(0, ds.num_users))
            a = rng.choice(ds.num_authors, candidates, replace=candidates > ds.num_authors)
            t = time.perf_counter()
            with torch.no_grad():
                scores = torch.sigmoid(model(builder.pairs(u, a, np.full(candidates, t_now)))[:, 0])
                scores[:, 0].argsort(descending=True)
            if r >= 10:
                lat.append((time.perf_counter() - t) * 1000)
        lat = np.array(lat)
        out[name] = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean())}
    builder.store, model.segment_cache = offline, None
    out["room_cache"] = {"hits": cache.hits, "misses": cache.misses}
    out["requests"], out["candidates"], out["torch_threads"] = requests, candidates, torch.get_num_threads()
    return out


def _common(prog: str, doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=doc)
    ap.add_argument("--cfg", default="yaml/live.yaml", help="experiment YAML of the simulated world")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", help="JSON results (default runs/bench/<what>.json)")
    return ap


def train_main(argv: Optional[List[str]] = None) -> int:
    ap = _common("python -m graphrec.bench train", "ranker training throughput: every module on vs plain DIN")
    ap.add_argument("--impressions", type=int, default=100_000, help="training impressions per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up round (best counts)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the ranker trains")
    ap.add_argument("--batch-size", type=int, nargs="+", default=None, metavar="N",
                    help="impressions per step; several values measure each on the same world (default: "
                         "ranker.batch_size)")
    args = ap.parse_args(argv)
    from ..run import resolve_device

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = prepare(args.cfg, args.overrides, Path(tmp), resolve_device(args.device))
        for bs in args.batch_size or [ctx.cfg.ranker.batch_size]:
            results.append(train_throughput(ctx, args.impressions, args.repeats, bs))
    for res in results:
        print(f"\nbatch {res['batch_size']}, device {res['device']}, {torch.get_num_threads()} torch threads, "
              f"{res['impressions']:,} impressions per pass")
        print(f"{'model':8s} {'impressions/s':>14s} {'parameters':>11s}")
        for name in ("mmbee", "din"):
            print(f"{name:8s} {res[name]['impressions_per_s']:14.0f} {res[name]['parameters']:11,d}")
        print("where a training step's time goes (ms per batch; ranker.mfq is part of ranker.author_side):")
        print(f"{'part':22s} " + " ".join(f"{n:>8s}" for n in ("mmbee", "din")))
        for part in PARTS + ("step",):
            print(f"{part:22s} " + " ".join(f"{res[n]['breakdown_ms_per_batch'][part]:8.1f}" for n in ("mmbee", "din")))
        print(f"cost of every module on: {res['cost_ratio']:.2f}x the plain DIN ranker (target <= 2.5x in "
              f"DESIGN.md); round by round (epoch seconds, alternating order): "
              + ", ".join(f"{r:.2f}x" for r in res["cost_ratio_per_round"]))
    # the first batch size at the top level (the layout of a one-size run), every size in by_batch_size
    write_results({**results[0], "by_batch_size": results}, args.out or "runs/bench/train.json")
    return 0


def epoch_times(history) -> Dict:
    """Per-epoch training seconds of a run's ranker history and how much the slowest grew over the first."""
    secs = [float(h["seconds"]) for h in history]
    first = secs[0] if secs else float("nan")
    return {"epoch_seconds": secs, "first": first, "max_over_first": max(secs) / first if secs else float("nan"),
            "last_over_first": secs[-1] / first if secs else float("nan")}


def epochs_main(argv: Optional[List[str]] = None) -> int:
    ap = _common("python -m graphrec.bench epochs", "does an epoch take longer as training goes on? The ranker "
                 "trained for a fixed number of epochs (no early stopping), every epoch's time printed")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--limit", type=float, default=1.5, help="the slowest epoch may take this many times the first")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush subnormal floats to zero (graphrec.numerics), to measure what it saves")
    args = ap.parse_args(argv)
    from ..config import load_config
    from ..run import run

    if args.keep_denormals:
        torch.set_flush_denormal(False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.cfg, list(args.overrides) + [f"ranker.epochs={args.epochs}", "ranker.patience=0",
                                                            f"run.out_dir={tmp}", "run.progress=false",
                                                            "run.skip_stages=[lightgcn]"])
        result = run(cfg, config_file=args.cfg)
        res = epoch_times(result.metrics["ranker"]["history"])
    res.update(flush_denormals=not args.keep_denormals, cfg=args.cfg, overrides=list(args.overrides),
               torch_threads=torch.get_num_threads(), limit=args.limit, within_limit=res["max_over_first"] <= args.limit)
    print("epoch seconds: " + ", ".join(f"{x:.1f}" for x in res["epoch_seconds"]))
    print(f"slowest / first: {res['max_over_first']:.2f}x, last / first: {res['last_over_first']:.2f}x "
          f"(limit {args.limit}x: {'within' if res['within_limit'] else 'OVER'}; subnormals "
          f"{'flushed' if res['flush_denormals'] else 'kept'}, {res['torch_threads']} torch threads)")
    write_results(res, args.out or "runs/bench/epochs.json")
    return 0 if res["within_limit"] else 1


def serve_main(argv: Optional[List[str]] = None) -> int:
    ap = _common("python -m graphrec.bench serve", "latency of scoring 1 user x N candidate authors")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=200)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = prepare(args.cfg, args.overrides, Path(tmp))
        res = serve_latency(ctx, args.requests, args.candidates)
    print(f"{'variant':27s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    for name in ("offline cache", "offline cache + room cache", "online walk"):
        r = res[name]
        print(f"{name:27s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"1 user x {args.candidates} candidates, {args.requests} requests, {res['torch_threads']} torch threads "
          f"(target: p99 <= 10 ms with the cache); the ranker is untrained: latency does not depend on its weights")
    write_results(res, args.out or "runs/bench/serve.json")
    return 0
