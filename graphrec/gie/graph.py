"""MMBee's gifting graphs, as plain PyTorch edge lists (a DGL heterograph on demand).

Node types ``user`` and ``author``; edge types ``u2a`` (a user gifted an author: one edge per
distinct pair, with ``count`` = positive impressions and ``value`` = summed gift value), its reverse
``a2u`` (same data) and ``a2a`` (Swing similarity, each author's top-k, ``score``). Built from
*training* impressions only, so nothing of validation or test reaches any embedding or expansion.

:class:`GiftGraph` answers the few questions the standalone pipeline asks (edges, degrees, CSR) with
the names DGL uses, without importing DGL: the walker, GraphCL and the ranker run on a machine
without DGL (a GPU box). DGL comes in where it is needed: ``to_dgl()`` for its random-walk reference,
and ``graphrec.dist`` for partitioning and the distributed engine.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..data.dataset import SPLITS, Dataset
from ..schema import CANONICAL_ETYPES, NODE_TYPES
from .swing import swing, top_k_per_source

EType = Union[str, Tuple[str, str, str]]


def csr_of(src: torch.Tensor, dst: torch.Tensor, num_src: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(indptr, indices)``: rows by source, each row's neighbours in edge-id order (as DGL orders them)."""
    src, dst = torch.as_tensor(src).long(), torch.as_tensor(dst).long()
    order = torch.argsort(src, stable=True)
    indptr = torch.zeros(num_src + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(src, minlength=num_src), 0)
    return indptr, dst[order]


class GiftGraph:
    """The u2a/a2u/a2a relations: ``(src, dst)`` int64 edge lists, edge data and node counts.

    Methods follow DGL's heterograph (``num_nodes``, ``num_edges``, ``edges(etype=)``, ``out_degrees``,
    ``in_degrees``, ``adj_tensors("csr")``); an edge type is its name or its canonical triple."""

    ntypes = NODE_TYPES
    canonical_etypes = CANONICAL_ETYPES

    def __init__(self, edges: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], num_nodes: Mapping[str, int],
                 edge_data: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None) -> None:
        self._types = {et: (s, d) for s, et, d in CANONICAL_ETYPES}
        self._edges = {et: (torch.as_tensor(edges[et][0]).long(), torch.as_tensor(edges[et][1]).long())
                       for et in self._types}
        self._num_nodes = {nt: int(num_nodes[nt]) for nt in NODE_TYPES}
        self.edge_data: Dict[str, Dict[str, torch.Tensor]] = {et: dict((edge_data or {}).get(et, {}))
                                                               for et in self._types}

    def _etype(self, etype: EType) -> str:
        et = etype[1] if isinstance(etype, tuple) else etype
        if et not in self._types:
            raise KeyError(f"edge type {etype!r}: the gift graph has {list(self._types)}")
        return et

    def to_canonical_etype(self, etype: EType) -> Tuple[str, str, str]:
        et = self._etype(etype)
        return (self._types[et][0], et, self._types[et][1])

    def num_nodes(self, ntype: str) -> int:
        return self._num_nodes[ntype]

    def num_edges(self, etype: EType) -> int:
        return int(self._edges[self._etype(etype)][0].numel())

    def edges(self, etype: EType) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._edges[self._etype(etype)]

    def out_degrees(self, etype: EType) -> torch.Tensor:
        et = self._etype(etype)
        return torch.bincount(self._edges[et][0], minlength=self._num_nodes[self._types[et][0]])

    def in_degrees(self, etype: EType) -> torch.Tensor:
        et = self._etype(etype)
        return torch.bincount(self._edges[et][1], minlength=self._num_nodes[self._types[et][1]])

    def adj_tensors(self, fmt: str, etype: EType):
        """``(indptr, indices, None)`` for ``fmt="csr"`` (DGL's signature; edge ids are not kept)."""
        if fmt != "csr":
            raise ValueError(f"GiftGraph.adj_tensors: only 'csr' is available, got {fmt!r}")
        et = self._etype(etype)
        return (*csr_of(*self._edges[et], self._num_nodes[self._types[et][0]]), None)

    def to_dgl(self):
        """The same graph as a ``dgl.heterograph`` with its edge data (needs DGL)."""
        import dgl

        g = dgl.heterograph({c: self._edges[c[1]] for c in CANONICAL_ETYPES}, num_nodes_dict=self._num_nodes)
        for et, data in self.edge_data.items():
            for k, v in data.items():
                g.edges[et].data[k] = v
        return g

def gift_edges(ds: Dataset, label: str, mask: np.ndarray):
    """Distinct (user, author) positive pairs among ``mask``ed impressions with count and value."""
    imp = ds.impressions
    keep = mask & (imp[label] == 1)
    u = imp["user"][keep].astype(np.int64)
    a = imp["author"][keep].astype(np.int64)
    value = imp["value"][keep].astype(np.float64) if "value" in imp else np.ones(len(u))
    key, inverse = np.unique(u * ds.num_authors + a, return_inverse=True)
    count = np.bincount(inverse, minlength=len(key)).astype(np.float32)
    total = np.bincount(inverse, weights=value, minlength=len(key)).astype(np.float32)
    return key // ds.num_authors, key % ds.num_authors, count, total


def build_graph(users: np.ndarray, authors: np.ndarray, num_users: int, num_authors: int,
                count: Optional[np.ndarray] = None, value: Optional[np.ndarray] = None,
                swing_cfg: Optional[Mapping] = None, seed: int = 0) -> GiftGraph:
    """The gift graph from gift edges; ``swing_cfg``: alpha, a2a_topk, max_authors_per_user,
    max_users_per_author."""
    sc = {"alpha": 1.0, "a2a_topk": 10, "max_authors_per_user": 50, "max_users_per_author": 50,
          **(dict(swing_cfg) if swing_cfg else {})}
    src, dst, score = swing(users, authors, num_authors, sc["alpha"], sc["max_authors_per_user"],
                            sc["max_users_per_author"], seed)
    src, dst, score = top_k_per_source(src, dst, score, sc["a2a_topk"])
    u = torch.from_numpy(np.asarray(users, dtype=np.int64))
    a = torch.from_numpy(np.asarray(authors, dtype=np.int64))
    n = len(u)
    count_t = torch.from_numpy(np.asarray(count if count is not None else np.ones(n), dtype=np.float32))
    value_t = torch.from_numpy(np.asarray(value if value is not None else np.ones(n), dtype=np.float32))
    return GiftGraph({"u2a": (u, a), "a2u": (a, u), "a2a": (torch.from_numpy(src), torch.from_numpy(dst))},
                     {"user": num_users, "author": num_authors},
                     {"u2a": {"count": count_t, "value": value_t}, "a2u": {"count": count_t, "value": value_t},
                      "a2a": {"score": torch.from_numpy(score)}})


def graph_label(cfg: Mapping, ds: Dataset) -> str:
    """The label whose training positives make the gifting graph (and GraphCL's held-out gifts): ``graph.label``,
    or the dataset's main label when that is null. ``cfg``: the run's configuration or its ``graph`` section.
    The standalone stages and the distributed trainers all ask here."""
    section = cfg["graph"] if "graph" in cfg else cfg
    return section["label"] or ds.main_label


def build_gift_graph(ds: Dataset, label: str, swing_cfg: Optional[Mapping] = None, seed: int = 0,
                     rows: Optional[np.ndarray] = None) -> GiftGraph:
    """The gift graph from ``ds``'s *training* positives of ``label`` (:func:`graph_label`); ``rows``:
    the training rows to take them from (default all; see ``graphrec.data.split.graph_period``)."""
    train = ds.impressions["split"] == SPLITS["train"] if rows is None else rows
    u, a, count, value = gift_edges(ds, label, train)
    return build_graph(u, a, ds.num_users, ds.num_authors, count, value, swing_cfg, seed)


def graph_fingerprint(g) -> str:
    """A hash of the graph's node counts and edges: expansion caches are valid for this graph only."""
    h = hashlib.sha256()
    for nt in sorted(g.ntypes):
        h.update(f"{nt}:{g.num_nodes(nt)};".encode())
    for et in sorted(g.canonical_etypes):
        s, d = g.edges(etype=et)
        h.update(str(et).encode())
        h.update(s.numpy().astype(np.int64).tobytes())
        h.update(d.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]
