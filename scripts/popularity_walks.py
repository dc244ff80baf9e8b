"""Would a popularity-corrected walk find the viewer's fan club? (docs/results.md, "Why the graph half does
not pay here").

GIE's walks step uniformly, so they end where most gifts go, at popular streamers. This compares, on the
graph of every training gift of a simulated world with patronage, the user-side author expansions
(``u2a2u2a``, ``u2a2a``; K = 20, graphrec's ``expand`` with its retries and exclusions) of:

* ``uniform``: graphrec's walk;
* ``weighted α``: every step picks a neighbour with probability ∝ its degree^-α in that relation (niche
  streamers and loyal gifters preferred);
* ``top-K of N·K``: N·K uniform walks, the K distinct endpoints visited most (``expansion.oversample`` N).

Per bucket of the viewer's training gifts: the share of expansions in the viewer's own fan club, the share
of slots filled, and the share of the bucket's test gifts whose streamer is among the viewer's expansions.

    python scripts/popularity_walks.py --cfg yaml/live.yaml
"""
import argparse

import numpy as np
import torch

from graphrec.config import load_config
from graphrec.data.sources import load_data
from graphrec.gie.graph import build_gift_graph, csr_of, graph_label
from graphrec.gie.metapath import METAPATHS, PAD, GiftedLookup, expand

NAMES = ("u2a2u2a", "u2a2a")


class WeightedWalker:
    """Each step draws a neighbour with probability ∝ (its in-degree in the relation)^-alpha, by inverting
    the relation's cumulative edge weights (alpha 0: graphrec's uniform step)."""

    def __init__(self, g, alpha: float) -> None:
        self.device = torch.device("cpu")
        self.csr = {}
        for src_t, et, dst_t in g.canonical_etypes:
            src, dst = g.edges(et)
            indptr, indices = csr_of(src, dst, g.num_nodes(src_t))
            degree = torch.bincount(dst, minlength=g.num_nodes(dst_t)).double().clamp(min=1)
            self.csr[et] = (indptr, indices, torch.cumsum(degree[indices] ** -alpha, 0))

    def walk(self, seeds, etypes, k, generator=None):
        cur = seeds.long().repeat_interleave(k)
        for et in etypes:
            indptr, indices, cum = self.csr[et]
            v = cur.clamp(min=0)
            start, end = indptr[v], indptr[v + 1]
            ok = (cur >= 0) & (end > start)
            last = (end - 1).clamp(min=0)
            below = torch.where(start > 0, cum[(start - 1).clamp(min=0)], torch.zeros(len(cur), dtype=cum.dtype))
            r = torch.rand(len(cur), generator=generator, dtype=cum.dtype)
            pos = torch.searchsorted(cum, below + r * (cum[last] - below), right=True)
            pos = torch.minimum(torch.maximum(pos, start), last).clamp(max=max(len(indices) - 1, 0))
            cur = torch.where(ok, indices[pos], torch.full_like(cur, PAD))
        return cur.view(len(seeds), k)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="yaml/live.yaml", help="the simulated world's experiment file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.cfg, args.overrides)
    ds = load_data(cfg, log=lambda m: None)
    if "fan_club" not in ds.tables["users"]:
        raise SystemExit("a world without patronage (simulate.weight_patronage=0) has no fan clubs")
    sec, label = cfg.graph, graph_label(cfg, ds)
    g = build_gift_graph(ds, label, {"alpha": sec.swing_alpha, "a2a_topk": sec.a2a_topk,
                                     "max_authors_per_user": sec.max_authors_per_user,
                                     "max_users_per_author": sec.max_users_per_author}, seed=cfg.run.seed)
    imp, club_u, club_a = ds.impressions, ds.tables["users"]["fan_club"], ds.tables["authors"]["fan_club"]
    gifts = np.bincount(imp["user"][(imp["split"] == 0) & (imp[label] > 0)], minlength=ds.num_users)
    test = (imp["split"] == 2) & (imp[label] > 0)
    test_u, test_a = imp["user"][test], imp["author"][test]
    seeds, gifted, k = torch.arange(ds.num_users), GiftedLookup(g), 20

    def variants():
        for alpha in (0.0, 0.5, 1.0):
            walker = WeightedWalker(g, alpha)
            yield ("uniform" if alpha == 0 else f"weighted α={alpha}",
                   {n: expand(walker, g, n, seeds, k, 3, torch.Generator().manual_seed(0), gifted) for n in NAMES})
        uniform = WeightedWalker(g, 0.0)
        for over in (4, 8):
            yield (f"top-K of {over}·K", {n: expand(uniform, g, n, seeds, k, 3, torch.Generator().manual_seed(0),
                                                    gifted, over) for n in NAMES})

    print("viewers by training gifts: share of expansions in the viewer's fan club (share of slots filled); "
          "share of test gifts whose streamer is expanded")
    for variant, exp in variants():
        cells = []
        for lo, hi, bucket in ((1, 2, "1-2"), (3, None, "3+")):
            users = np.flatnonzero((gifts >= lo) & (gifts <= (hi if hi is not None else gifts.max())))
            for n in NAMES:
                e = exp[n][users].numpy()
                filled = e >= 0
                in_club = (club_a[np.where(filled, e, 0)] == club_u[users][:, None])[filled].mean()
                cells.append(f"{bucket} {n} {in_club:.3f} ({filled.mean():.2f})")
            union = np.concatenate([exp[n].numpy() for n in NAMES], axis=1)
            rows = np.isin(test_u, users)
            hit = (union[test_u[rows]] == test_a[rows][:, None]).any(axis=1).mean()
            cells.append(f"{bucket} test gifts expanded {hit:.3f}")
        print(f"{variant:20s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
