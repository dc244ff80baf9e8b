"""Metapath expansion on a ``DistGraph``, which has no random walk: hop by hop with
``dgl.distributed.sample_etype_neighbors`` (fan-out ≥ 1, with replacement).

A partition holds every in-edge of the nodes it owns but not every out-edge (DGL assigns an edge
to its destination's partition), so an out-step along ``u2a`` is sampled as an in-step along its
reverse ``a2u`` (and ``a2a`` along ``a2a_rev``, which the partitions carry for this).

Each hop samples, for every distinct node the walkers stand on, as many out-neighbours as the most
walkers any node holds; walker ``j`` on node ``v`` takes ``v``'s ``j``-th draw. Draws with replacement
are independent and uniform over ``v``'s out-edges, so every walker takes a uniform step, as
:class:`graphrec.gie.metapath.CSRWalker` does (tested against it). :func:`walk_owned_expansions`
walks the seeds a trainer owns (``node_split``) and writes them over the offline cache's columns of the
packed node data (:meth:`graphrec.dist.store.FeatureStore.write`), so a batch still reads each node
type in one pull.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..gie.metapath import METAPATHS, PAD, GiftedLookup, expand
from ..schema import REVERSE_ETYPES


class DistWalker:
    """The walker interface of :mod:`graphrec.gie.metapath` over a ``DistGraph`` (new, per-type ids)."""

    name = "dist"

    def __init__(self, g, on_hop: Optional[Callable[[], None]] = None) -> None:
        self.g = g
        self.device = torch.device("cpu")
        self.canonical = {et: (s, et, d) for s, et, d in g.canonical_etypes}
        missing = [REVERSE_ETYPES[et] for et in REVERSE_ETYPES if et in self.canonical
                   and REVERSE_ETYPES[et] not in self.canonical]
        if missing:
            raise ValueError(f"the partitioned graph lacks the reverse edge type(s) {missing}; "
                             "re-run graphrec.partition")
        self.on_hop = on_hop

    def _sample(self, nodes: torch.Tensor, etype: str, fanout: int):
        """Out-edges ``(node, neighbour)`` of ``nodes`` over ``etype``: ``fanout`` draws with
        replacement (all edges when ``fanout`` is -1), as in-edges of the reverse edge type."""
        import dgl

        rev = self.canonical[REVERSE_ETYPES[etype]]
        fanouts = {c: (fanout if c == rev else 0) for c in self.g.canonical_etypes}
        frontier = dgl.distributed.sample_etype_neighbors(self.g, {rev[2]: nodes}, fanouts, edge_dir="in",
                                                          replace=fanout > 0, etype_sorted=False)
        if self.on_hop is not None:
            self.on_hop()
        neighbour, node = frontier.edges(etype=rev)
        return node, neighbour

    def step(self, cur: torch.Tensor, etype: str) -> torch.Tensor:
        """One uniform out-step of every walker in ``cur`` (``PAD``: dead walker, stays dead)."""
        out = torch.full_like(cur, PAD)
        alive = (cur >= 0).nonzero().squeeze(1)
        if alive.numel() == 0:
            return out
        uniq, inv, counts = torch.unique(cur[alive], return_inverse=True, return_counts=True)
        src, dst = self._sample(uniq, etype, int(counts.max()))
        order = torch.argsort(src, stable=True)
        src, dst = src[order], dst[order]
        first = torch.searchsorted(src, uniq)                          # each node's first draw
        drawn = torch.searchsorted(src, uniq, right=True) - first      # 0 for nodes without out-edges
        by_node = torch.argsort(inv, stable=True)                      # walkers grouped by node
        group_start = torch.cumsum(counts, 0) - counts
        occurrence = torch.empty_like(inv)
        occurrence[by_node] = torch.arange(len(inv)) - group_start.repeat_interleave(counts)
        ok = occurrence < drawn[inv]
        take = (first[inv] + occurrence).clamp(max=max(len(dst) - 1, 0))
        out[alive[ok]] = dst[take[ok]].long()
        return out

    def walk(self, seeds: torch.Tensor, etypes: Sequence[str], k: int,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        import dgl

        if generator is not None:
            dgl.seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        cur = seeds.long().repeat_interleave(k)
        for et in etypes:
            cur = self.step(cur, et)
        return cur.view(len(seeds), k)

    def gifted(self, users: torch.Tensor) -> GiftedLookup:
        """The ``u2a`` edges of ``users`` (all of them), for u2a2u2a's already-gifted exclusion."""
        src, dst = self._sample(users.long(), "u2a", -1)
        return GiftedLookup.from_edges(src, dst, self.g.num_nodes(self.canonical["u2a"][2]))


def walk_owned_expansions(store, ks: Mapping[str, int], seed: int = 0, retries: int = 3, rank: int = 0,
                          batch_size: int = 65536, log: Callable[[str], None] = lambda m: None, oversample: int = 1
                          ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Walk every metapath with ``ks[name] > 0`` for the seeds this trainer owns (``node_split``) and
    write them, in original ids, into ``store``'s ``exp_<name>`` (every trainer reads them there after
    a barrier, which is the caller's). Returns ``{name: (seeds, expansions)}``, this trainer's own walks
    in original ids."""
    g = store.graph
    walker = DistWalker(g, on_hop=store.on_read)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    owned = {}
    mine = {}
    for name, k in ks.items():
        if k <= 0:
            continue
        seed_type = METAPATHS[name].seed
        if seed_type not in owned:                  # partition ids: the walker steps in them
            owned[seed_type] = store.new_of_orig[seed_type][store.owned_nodes(seed_type, rank)]
        seeds = owned[seed_type]
        end = METAPATHS[name].endpoint
        parts = []
        for s in range(0, len(seeds), batch_size):
            batch = seeds[s:s + batch_size]
            gifted = walker.gifted(batch) if name == "u2a2u2a" else None
            ids = expand(walker, g, name, batch, k, retries, gen, gifted, oversample)
            orig = torch.where(ids >= 0, store.orig_of_new[end][ids.clamp(min=0)], torch.full_like(ids, PAD))
            # one graph snapshot (graph.snapshots 1 is required with dist.expansion=walk)
            store.write(seed_type, store.orig_of_new[seed_type][batch], {f"exp_{name}": orig.unsqueeze(1)})
            parts.append(orig)
        log(f"walked {name}: {len(seeds):,} {seed_type} seeds x {k} on this trainer")
        mine[name] = (store.orig_of_new[seed_type][seeds], torch.cat(parts) if parts else torch.zeros(0, k).long())
    return mine
