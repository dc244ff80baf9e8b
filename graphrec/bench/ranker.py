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

DIN_MODULES = {"metapaths": [], "theta_pretrained": False, "modalities": [], "stat_forecast": False,
               "product_forecast": False}


def prepare(cfg_path: Optional[str], overrides: List[str], workdir: Path):
    """Run the pipeline stages that precede the ranker; returns the run context."""
    import logging

    from torch.utils.tensorboard import SummaryWriter

    from ..config import load_config
    from ..pipeline import STAGES, RunContext, run_stages

    cfg = load_config(cfg_path, list(overrides) + ["run.progress=false"])
    log = logging.getLogger("graphrec.bench")
    ctx = RunContext(cfg=cfg, run_dir=workdir, log=log, writer=SummaryWriter(str(workdir / "tb")), device="cpu",
                     progress=False)
    upto = [s for s in STAGES if s.name in ("data", "graph", "expansion", "graphcl", "stat_forecast",
                                            "product_forecast")]
    run_stages(ctx, upto)
    return ctx


def train_throughput(ctx, impressions: int, repeats: int = 1) -> Dict:
    from ..ranking.stage import build_ranker, enabled_modules
    from ..ranking.train import _loader

    train_idx = np.flatnonzero(ctx.dataset.impressions["split"] == 0)[:impressions]
    out = {}
    for name, mods in (("mmbee", enabled_modules(ctx)), ("din", DIN_MODULES)):
        model, builder, _ = build_ranker(ctx, mods, ctx.run_dir / f"dist-{name}")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        weights = torch.ones(len(builder.cfg.tasks))
        best = float("inf")
        for rep in range(repeats + 1):                     # the first pass warms up
            torch.manual_seed(rep)
            t = time.perf_counter()
            for batch in _loader(train_idx, ctx.cfg.ranker.batch_size, lambda b: builder(b, train=True), shuffle=True):
                loss = model.loss(model(batch), batch["labels"], weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if rep:
                best = min(best, time.perf_counter() - t)
        out[name] = {"impressions_per_s": len(train_idx) / best, "parameters": int(sum(p.numel() for p in model.parameters())),
                     "modules": mods}
    out["cost_ratio"] = out["din"]["impressions_per_s"] / out["mmbee"]["impressions_per_s"]
    out["impressions"] = int(len(train_idx))
    return out


class OnlineExpansions:
    """A feature store whose expansions are walked per request instead of read from the offline cache."""

    def __init__(self, store, graph, ks: Dict[str, int], seed: int = 0) -> None:
        from ..gie.metapath import CSRWalker, GiftedLookup

        self.store, self.graph, self.ks = store, graph, ks
        self.walker = CSRWalker(graph)
        self.gifted = GiftedLookup(graph)
        self.gen = torch.Generator().manual_seed(seed)

    def get(self, ntype: str, name: str, ids: torch.Tensor) -> torch.Tensor:
        from ..gie.metapath import expand

        if not name.startswith("exp_"):
            return self.store.get(ntype, name, ids)
        m = name[4:]
        uniq, inverse = torch.unique(ids.long(), return_inverse=True)
        walked = expand(self.walker, self.graph, m, uniq, self.ks[m], generator=self.gen, gifted=self.gifted)
        return walked[inverse]


def serve_latency(ctx, requests: int, candidates: int, seed: int = 0) -> Dict:
    from ..gie.metapath import METAPATHS
    from ..ranking.stage import build_ranker, enabled_modules

    ds = ctx.dataset
    model, builder, _ = build_ranker(ctx, enabled_modules(ctx), ctx.run_dir / "dist-serve")
    model.eval()
    rng = np.random.default_rng(seed)
    t_now = int(ds.impressions["time"].max())
    ks = {m: ctx.cfg.expansion[f"k_{m}"] for m in METAPATHS}
    from ..serve import AuthorSideCache

    cache = AuthorSideCache(model, builder)
    variants = {"offline cache": (builder.store, builder.build),
                "offline cache + room cache": (builder.store, cache.build),
                "online walk": (OnlineExpansions(builder.store, ctx.state["graph"], ks, seed), builder.build)}
    out = {}
    for name, (store, build) in variants.items():
        builder.store = store
        lat = []
        for r in range(requests + 10):                     # the first 10 warm up
            u = np.full(candidates, rng.integers(0, ds.num_users))
            a = rng.choice(ds.num_authors, candidates, replace=candidates > ds.num_authors)
            t = time.perf_counter()
            with torch.no_grad():
                scores = torch.sigmoid(model(build(u, a, np.full(candidates, t_now))))
                scores[:, 0].argsort(descending=True)
            if r >= 10:
                lat.append((time.perf_counter() - t) * 1000)
        lat = np.array(lat)
        out[name] = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean())}
    builder.store = variants["offline cache"][0]
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
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = prepare(args.cfg, args.overrides, Path(tmp))
        res = train_throughput(ctx, args.impressions, args.repeats)
    print(f"{'model':8s} {'impressions/s':>14s} {'parameters':>11s}")
    for name in ("mmbee", "din"):
        print(f"{name:8s} {res[name]['impressions_per_s']:14.0f} {res[name]['parameters']:11,d}")
    print(f"cost of every module on: {res['cost_ratio']:.2f}x the plain DIN ranker (target <= 2.5x); "
          f"{res['impressions']:,} impressions per pass, batch {ctx.cfg.ranker.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    write_results(res, args.out or "runs/bench/train.json")
    return 0


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
