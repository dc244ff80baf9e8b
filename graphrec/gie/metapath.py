"""MMBee's five metapath expansions, with two interchangeable random-walk back ends.

==========  ======  =============================  ==========================================
name        seed    hops                           what it finds
==========  ======  =============================  ==========================================
u2a2u       user    u2a, a2u                       users who gifted the same authors
u2a2u2a     user    u2a, a2u, u2a                  new authors of similar users (not yet gifted)
u2a2a       user    u2a, a2a                       authors similar to the user's gifted ones
a2a         author  a2a                            authors similar to the target author
a2u2a       author  a2u, u2a                       authors the target's gifters also gift
==========  ======  =============================  ==========================================

Each expansion draws ``K`` walk endpoints per seed (uniform neighbour choice at every hop, with
replacement). An endpoint equal to the seed itself is rejected (a node is never its own expansion),
and so is, for ``u2a2u2a``, an author the user already gifted; rejected and dead-end walks are
re-drawn up to ``retries`` times and otherwise become padding (``PAD = -1``, mask False).
With ``oversample`` N > 1 (``expansion.oversample``) a seed walks N·K times and keeps the K distinct
endpoints it reached most often (Pixie's visit counts: a ranked neighbourhood instead of a sample with
repeats; :func:`most_visited`).

Back ends, equal in distribution (tested):
* :class:`DGLWalker`: ``dgl.sampling.random_walk(metapath=...)``, the CPU reference;
* :class:`CSRWalker`: plain PyTorch over int32 CSR arrays, on whatever device they live on (CUDA when
  present). The first hop reads each seed's neighbour range once and draws all ``K`` samples from it.

Offline expansion (the paper's "offline walk" for serving) runs every seed once and caches the
arrays with the graph's fingerprint (:func:`save_expansions` / :func:`load_expansions`), so a stale
cache is never used.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.dataset import save_table
from ..schema import METAPATHS
from .graph import csr_of

PAD = -1


class DGLWalker:
    """Reference back end: DGL's C++ random walk (CPU)."""

    name = "dgl"

    def __init__(self, g) -> None:
        """``g``: a :class:`~graphrec.gie.graph.GiftGraph` (converted here) or a DGL heterograph."""
        self.g = g.to_dgl() if hasattr(g, "to_dgl") else g

    def walk(self, seeds: torch.Tensor, etypes: Sequence[str], k: int,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        import dgl

        if generator is not None:
            dgl.seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        rep = seeds.cpu().repeat_interleave(k)
        traces, _ = dgl.sampling.random_walk(self.g, rep, metapath=list(etypes))
        return traces[:, -1].view(len(seeds), k).to(seeds.device)


class CSRWalker:
    """Vectorised PyTorch back end over per-edge-type CSR arrays (int32 neighbours)."""

    name = "torch"

    def __init__(self, g=None, device: str = "cpu",
                 csr: Optional[Mapping[str, Tuple[torch.Tensor, torch.Tensor]]] = None) -> None:
        """From a gift graph ``g`` (``GiftGraph`` or DGL heterograph), or ``csr = {etype: (indptr, indices)}``."""
        self.device = torch.device(device)
        self.csr: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        if csr is None:
            csr = {}
            for _, et, _ in g.canonical_etypes:
                indptr, indices, _ = g.adj_tensors("csr", etype=et)
                csr[et] = (indptr, indices)
        for et, (indptr, indices) in csr.items():
            small = indices.numel() < 2**31
            self.csr[et] = (indptr.to(self.device), indices.to(torch.int32 if small else torch.int64).to(self.device))

    @classmethod
    def from_edges(cls, edges: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], num_src: Mapping[str, int],
                   device: str = "cpu") -> "CSRWalker":
        """From ``{etype: (src, dst)}`` edge lists and each edge type's number of source nodes."""
        return cls(device=device, csr={et: csr_of(src, dst, num_src[et]) for et, (src, dst) in edges.items()})

    def walk(self, seeds: torch.Tensor, etypes: Sequence[str], k: int,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        seeds = seeds.to(self.device)
        # first hop: one neighbour-range read per seed, k draws from it
        indptr, indices = self.csr[etypes[0]]
        if indices.numel() == 0:                         # an edge type without edges: every walk ends here
            return torch.full((len(seeds), k), PAD, dtype=torch.long, device=self.device)
        start = indptr[seeds]
        deg = indptr[seeds + 1] - start
        r = torch.rand(len(seeds), k, device=self.device, generator=generator)
        pos = start[:, None] + (r * deg[:, None]).long()
        alive = (deg > 0)[:, None].expand(-1, k)
        cur = torch.where(alive, indices[pos.clamp(max=max(indices.numel() - 1, 0))].long(), PAD).reshape(-1)
        for et in etypes[1:]:
            indptr, indices = self.csr[et]
            if indices.numel() == 0:
                cur = torch.full_like(cur, PAD)
                break
            ok = cur >= 0
            v = cur.clamp(min=0)
            start = indptr[v]
            deg = indptr[v + 1] - start
            ok &= deg > 0
            r = torch.rand(cur.numel(), device=self.device, generator=generator)
            pos = (start + (r * deg).long()).clamp(max=max(indices.numel() - 1, 0))
            cur = torch.where(ok, indices[pos].long(), PAD)
        return cur.view(len(seeds), k)


def make_walker(g, backend: str, device: str = "cpu"):
    if backend == "dgl":
        return DGLWalker(g)
    if backend == "torch":
        return CSRWalker(g, device)
    raise ValueError(f"expansion.backend must be 'dgl' or 'torch', got {backend!r}")


class GiftedLookup:
    """Membership test for (user, author) gift edges via sorted int64 keys (any device)."""

    def __init__(self, g, device: str = "cpu") -> None:
        u, a = g.edges(etype="u2a")
        self.num_authors = g.num_nodes("author")
        self.keys = torch.unique(u.long() * self.num_authors + a.long()).to(device)

    @classmethod
    def from_edges(cls, users: torch.Tensor, authors: torch.Tensor, num_authors: int) -> "GiftedLookup":
        """A lookup over the given ``u2a`` edges only (a distributed trainer knows its own seeds' edges)."""
        self = cls.__new__(cls)
        self.num_authors = num_authors
        self.keys = torch.unique(users.long() * num_authors + authors.long())
        return self

    def contains(self, users: torch.Tensor, authors: torch.Tensor) -> torch.Tensor:
        if self.keys.numel() == 0:
            return torch.zeros_like(users, dtype=torch.bool)
        q = users.long() * self.num_authors + authors.clamp(min=0).long()
        idx = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
        return self.keys[idx] == q


def most_visited(ends: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]``: each row's ``k`` distinct non-``PAD`` values of ``ends [N, M]`` that occur most often (ties: the
    smaller id first), ``PAD`` where a row has fewer."""
    s, _ = torch.sort(ends, dim=1)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    run = torch.cumsum(starts, dim=1) - 1                          # which run of equal values each entry is in
    counts = torch.zeros(s.shape, dtype=torch.long, device=s.device).scatter_add_(1, run, torch.ones_like(run))
    values = torch.full_like(s, PAD).scatter_(1, run, s)
    counts = counts.masked_fill(values < 0, 0)                     # padding is never an expansion
    order = torch.sort(counts, dim=1, descending=True, stable=True).indices[:, :k]
    top = values.gather(1, order).masked_fill(counts.gather(1, order) == 0, PAD)
    if top.shape[1] < k:
        top = torch.cat([top, torch.full((len(top), k - top.shape[1]), PAD, dtype=top.dtype, device=top.device)], 1)
    return top


def expand(walker, g, name: str, seeds: torch.Tensor, k: int, retries: int = 3,
           generator: Optional[torch.Generator] = None, gifted: Optional[GiftedLookup] = None,
           oversample: int = 1) -> torch.Tensor:
    """``[len(seeds), k]`` endpoint ids of metapath ``name`` (``PAD`` where none was found); with ``oversample``
    N > 1, the ``k`` distinct endpoints most often reached by ``N·k`` walks."""
    if oversample > 1:
        return most_visited(expand(walker, g, name, seeds, k * oversample, retries, generator, gifted), k)
    seed_type, etypes = METAPATHS[name].seed, METAPATHS[name].etypes
    out = walker.walk(seeds, etypes, k, generator)
    same_type = METAPATHS[name].endpoint == seed_type
    if name == "u2a2u2a" and gifted is None:
        gifted = GiftedLookup(g, str(out.device))

    def bad(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b = ids < 0
        if same_type:
            b |= ids == s
        if name == "u2a2u2a":
            b |= gifted.contains(s.expand_as(ids), ids)
        return b

    seeds_d = seeds.to(out.device)[:, None]
    invalid = bad(out, seeds_d)
    for _ in range(retries):
        rows = invalid.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        redo = walker.walk(seeds_d[rows, 0], etypes, k, generator)
        cur = out[rows]
        take = invalid[rows] & ~bad(redo, seeds_d[rows])
        out[rows] = torch.where(take, redo, cur)
        invalid[rows] = invalid[rows] & ~take
    return out.masked_fill(invalid, PAD)


class ExpansionSampler:
    """Draws every metapath with ``ks[name] > 0`` for every node of its seed type, with one walker on
    its device: the offline cache, and the per-epoch redraws of ``ranker.redraw_expansions``."""

    def __init__(self, g, ks: Mapping[str, int], backend: str = "torch", device: str = "cpu", retries: int = 3,
                 batch_size: int = 65536, oversample: int = 1) -> None:
        self.walker = make_walker(g, backend, device)
        self.device = self.walker.device if backend == "torch" else torch.device("cpu")
        self.gifted = GiftedLookup(g, str(self.device))
        self.g, self.ks, self.retries, self.batch_size, self.oversample = g, dict(ks), retries, batch_size, oversample
        self.num_nodes = {nt: g.num_nodes(nt) for nt in g.ntypes}

    def draw(self, seed: int, progress: bool = False) -> Dict[str, torch.Tensor]:
        """``{name: [N, K]}`` int32 tensors on the sampler's device."""
        from tqdm import tqdm

        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = {}
        for name, k in self.ks.items():
            if k <= 0:
                continue
            n = self.num_nodes[METAPATHS[name].seed]
            parts = []
            for s in tqdm(range(0, n, self.batch_size), desc=f"expand {name}", disable=not progress, leave=False):
                seeds = torch.arange(s, min(s + self.batch_size, n), device=self.device)
                parts.append(expand(self.walker, self.g, name, seeds, k, self.retries, gen, self.gifted,
                                    self.oversample).int())
            out[name] = torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.int32, device=self.device)
        return out


def offline_expansions(g, ks: Mapping[str, int], backend: str = "torch", device: str = "cpu", seed: int = 0,
                       retries: int = 3, batch_size: int = 65536, progress: bool = False,
                       oversample: int = 1) -> Dict[str, np.ndarray]:
    """Every metapath with ``ks[name] > 0`` for every node of its seed type: ``{name: [N, K] int32}``."""
    drawn = ExpansionSampler(g, ks, backend, device, retries, batch_size, oversample).draw(seed, progress)
    return {name: t.cpu().numpy() for name, t in drawn.items()}


def save_expansions(path: Path, expansions: Mapping[str, np.ndarray], fingerprint: str, params: Mapping) -> None:
    save_table(Path(path), {**expansions, "__meta__": np.frombuffer(json.dumps(
        {"fingerprint": fingerprint, "params": dict(params)}, sort_keys=True).encode(), dtype=np.uint8)})


def load_expansions(path: Path, fingerprint: str, params: Mapping) -> Optional[Dict[str, np.ndarray]]:
    """The cached expansions, or None when absent or made for another graph or other parameters."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["__meta__"]).decode())
            if meta.get("fingerprint") != fingerprint or meta.get("params") != json.loads(json.dumps(dict(params))):
                return None
            return {k: npz[k] for k in npz.files if k != "__meta__"}
    except (ValueError, OSError, EOFError, KeyError, json.JSONDecodeError, zipfile.BadZipFile):
        return None                      # a damaged cache is rebuilt
