"""Metapath sampling throughput: DGL's ``random_walk`` vs graphrec's PyTorch CSR sampler.

Builds a synthetic gifting graph (power-law author popularity, power-law user activity, random
top-k a2a lists), warms both back ends up, then times, in this one process, ``K`` walks for each of
``--seeds`` seeds on each of the five metapaths. It reports walks/s, hops/s and the ratio, beside
the machine's ceiling for this kind of work: random int64 gathers per second from a 10M-element
tensor (a walk hop is about two dependent random reads).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch


def power_law_graph(num_users: int, num_authors: int, num_edges: int, a2a_k: int = 10, seed: int = 0):
    """A u2a/a2u/a2a gift graph with power-law author in-degrees (Zipf-like) and user out-degrees."""
    from ..gie.graph import GiftGraph

    rng = np.random.default_rng(seed)
    author_w = 1.0 / np.arange(1, num_authors + 1) ** 0.9
    user_w = rng.pareto(1.5, num_users) + 1.0
    authors = rng.permutation(num_authors)[np.searchsorted(np.cumsum(author_w) / author_w.sum(),
                                                           rng.random(num_edges))].astype(np.int64)
    users = np.searchsorted(np.cumsum(user_w) / user_w.sum(), rng.random(num_edges)).clip(max=num_users - 1)
    a2a_src = np.repeat(np.arange(num_authors), a2a_k)
    a2a_dst = (a2a_src + rng.integers(1, num_authors, len(a2a_src))) % num_authors
    u, a = torch.from_numpy(users.astype(np.int64)), torch.from_numpy(authors)
    return GiftGraph({"u2a": (u, a), "a2u": (a, u), "a2a": (torch.from_numpy(a2a_src), torch.from_numpy(a2a_dst))},
                     {"user": num_users, "author": num_authors})


def gather_ceiling(n: int = 10_000_000, repeats: int = 3) -> float:
    """Random int64 gathers per second from an ``n``-element tensor (best of ``repeats``)."""
    src = torch.randint(0, n, (n,), dtype=torch.int64)
    idx = torch.randint(0, n, (n,), dtype=torch.int64)
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        src[idx]
        best = min(best, time.perf_counter() - t)
    return n / best


def time_walks(walker, seeds: torch.Tensor, etypes, k: int, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (after one warm-up run)."""
    gen = torch.Generator(device=seeds.device).manual_seed(0)
    walker.walk(seeds, etypes, k, gen)
    if seeds.is_cuda:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        walker.walk(seeds, etypes, k, gen)
        if seeds.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def run(num_users: int, num_authors: int, num_edges: int, num_seeds: int, k: int, repeats: int,
        device: str = "cpu", seed: int = 0, log=print) -> Dict:
    from ..gie.metapath import METAPATHS, CSRWalker, DGLWalker

    t0 = time.perf_counter()
    g = power_law_graph(num_users, num_authors, num_edges, seed=seed)
    log(f"graph: {num_users:,} users, {num_authors:,} authors, {num_edges:,} u2a edges, "
        f"{g.num_edges('a2a'):,} a2a edges; built in {time.perf_counter() - t0:.1f}s")
    try:
        dgl_walker = DGLWalker(g)
    except ImportError:                  # a GPU machine without DGL: the PyTorch columns only
        dgl_walker = None
        log("DGL is not installed here: the DGL column is skipped (compare with a CPU run's JSON)")
    torch_walkers = {"cpu": CSRWalker(g, "cpu")}
    if device == "cuda":
        torch_walkers["cuda"] = CSRWalker(g, "cuda")
    ceiling = gather_ceiling()
    rows: List[Dict] = []
    rng = torch.Generator().manual_seed(seed)
    for name, path in METAPATHS.items():
        seed_type, etypes = path.seed, path.etypes
        seeds = torch.randint(0, g.num_nodes(seed_type), (num_seeds,), generator=rng)
        walks = num_seeds * k
        row = {"metapath": name, "hops": len(etypes), "walks": walks}
        if dgl_walker is not None:
            row["dgl_walks_per_s"] = walks / time_walks(dgl_walker, seeds, etypes, k, repeats)
        for dev, w in torch_walkers.items():
            t = time_walks(w, seeds.to(dev), etypes, k, repeats)
            row[f"torch_{dev}_walks_per_s"] = walks / t
        rows.append(row)
    total_hops = sum(r["walks"] * r["hops"] for r in rows)
    summary = {}
    if dgl_walker is not None:
        summary["dgl_hops_per_s"] = total_hops / sum(r["walks"] / r["dgl_walks_per_s"] for r in rows)
    for dev in torch_walkers:
        summary[f"torch_{dev}_hops_per_s"] = total_hops / sum(r["walks"] / r[f"torch_{dev}_walks_per_s"] for r in rows)
    return {"graph": {"users": num_users, "authors": num_authors, "u2a_edges": num_edges, "a2a_edges": int(g.num_edges("a2a"))},
            "seeds": num_seeds, "k": k, "repeats": repeats, "gather_ceiling_per_s": ceiling, "rows": rows,
            "overall": summary, "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}


def format_table(res: Dict) -> str:
    devs = [k[len("torch_"):-len("_walks_per_s")] for k in res["rows"][0] if k.startswith("torch_")]
    has_dgl = "dgl_hops_per_s" in res["overall"]
    head = ["metapath", "hops"] + (["DGL Mhops/s"] if has_dgl else []) + [f"torch-{d} Mhops/s" for d in devs]
    head += [f"torch-{d}/DGL" for d in devs] if has_dgl else []
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in res["rows"]:
        cells = [r["metapath"], str(r["hops"])] + ([f"{r['dgl_walks_per_s'] * r['hops'] / 1e6:.2f}"] if has_dgl else [])
        cells += [f"{r[f'torch_{d}_walks_per_s'] * r['hops'] / 1e6:.2f}" for d in devs]
        cells += [f"{r[f'torch_{d}_walks_per_s'] / r['dgl_walks_per_s']:.2f}x" for d in devs] if has_dgl else []
        lines.append(" | ".join(cells))
    o = res["overall"]
    cells = ["all five", ""] + ([f"{o['dgl_hops_per_s'] / 1e6:.2f}"] if has_dgl else [])
    cells += [f"{o[f'torch_{d}_hops_per_s'] / 1e6:.2f}" for d in devs]
    cells += [f"{o[f'torch_{d}_hops_per_s'] / o['dgl_hops_per_s']:.2f}x" for d in devs] if has_dgl else []
    lines.append(" | ".join(cells))
    lines.append(f"ceiling: {res['gather_ceiling_per_s'] / 1e6:.1f} M random int64 gathers/s from a 10M-element "
                 f"tensor ({res['torch_threads']} torch threads); {res['seeds']:,} seeds x K={res['k']} per metapath")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.bench sampler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--authors", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=10_000_000, help="u2a gift edges")
    ap.add_argument("--seeds", type=int, default=200_000, help="seeds per metapath")
    ap.add_argument("--k", type=int, default=10, help="walks per seed")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    ap.add_argument("--small", action="store_true", help="a quick preset: 100k users, 10k authors, 1M edges, 20k seeds")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="also time the PyTorch sampler on CUDA (auto: when available)")
    ap.add_argument("--out", default="runs/bench/sampler.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    if args.small:
        args.users, args.authors, args.edges, args.seeds = 100_000, 10_000, 1_000_000, 20_000
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    res = run(args.users, args.authors, args.edges, args.seeds, args.k, args.repeats, device)
    print(format_table(res))
    from ..data.dataset import atomic_write_text

    atomic_write_text(Path(args.out), json.dumps(res, indent=2))
    print(f"written {args.out}")
    return 0


def swing_main(argv: Optional[List[str]] = None) -> int:
    """``python -m graphrec.bench swing``: Swing + top-k on the same synthetic graph, wall time and peak RSS."""
    import resource

    from ..gie.swing import swing, top_k_per_source

    ap = argparse.ArgumentParser(prog="python -m graphrec.bench swing", description=swing_main.__doc__)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--authors", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--cap", type=int, default=50, help="max_authors_per_user = max_users_per_author")
    ap.add_argument("--topk", type=int, default=10)
    args = ap.parse_args(argv)
    g = power_law_graph(args.users, args.authors, args.edges)
    u, a = (x.numpy() for x in g.edges(etype="u2a"))
    t = time.perf_counter()
    s, d, sc = swing(u, a, args.authors, max_authors_per_user=args.cap, max_users_per_author=args.cap)
    s, d, sc = top_k_per_source(s, d, sc, args.topk)
    wall = time.perf_counter() - t
    print(f"swing on {args.users:,} users / {args.authors:,} authors / {args.edges:,} edges, caps {args.cap}: "
          f"{wall:.1f}s, {len(s):,} a2a edges for {len(np.unique(s)):,} authors, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0
