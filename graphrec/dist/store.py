"""The ranker's features as node data of a DGL ``DistGraph``, for runs on DGL's distributed engine.

Θ, the offline expansions, each author's product tables and each segment's multimodal tokens live on
the nodes of the gifting heterograph (node types ``user``, ``author``, ``segment``; ``s2a`` links a
segment to its author). ``python -m graphrec.partition`` partitions it with
``dgl.distributed.partition_graph``; the trainers open it as a ``DistGraph`` against the graph servers.

Each node type's features are packed into one byte table, node data ``packed``
(:mod:`graphrec.dist.packed`; the layout is returned by :func:`partition_features` and kept in
``prepared.json``), so that :meth:`FeatureStore.rows` reads every feature a batch needs of one node
type with one pull. Θ is also kept on its own (node data ``theta``): the second hop reads the Θ of
expansion endpoints only, and pulling whole packed rows for it would move every other feature too.
Lookups take original node ids; the partition's id mapping is applied here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..ranking.features import at_snapshot, per_snapshot
from ..schema import CANONICAL_ETYPES, ETYPE_ENDS, REVERSE_ETYPES
from .packed import DTYPES, layout_of, pack, unpack

PACKED = "packed"          # node data: every feature of a node type, as bytes (graphrec.dist.packed)
ALONE = ("theta",)         # features also kept as node data of their own (the second hop reads only these)

_INITIALIZED = False


def _initialize(ip_config: Path) -> None:
    """``dgl.distributed.initialize`` once per process (standalone mode needs no servers)."""
    global _INITIALIZED
    import dgl

    if not _INITIALIZED:
        os.environ.setdefault("DGL_DIST_MODE", "standalone")
        ip_config.write_text("127.0.0.1\n")
        dgl.distributed.initialize(str(ip_config))
        _INITIALIZED = True


def partition_features(graph, num_users: int, num_authors: int, segment_author: Optional[np.ndarray],
                       node_data: Mapping[str, Mapping[str, torch.Tensor]], out_dir: Path, graph_name: str,
                       num_parts: int = 1, part_method: str = "random"
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Dict[str, object]]]:
    """Partition the heterograph with ``node_data`` packed per node type; returns ``{ntype: original ids
    in new-id order}`` and ``{ntype: layout}`` (:func:`graphrec.dist.packed.layout_of` plus ``alone``: the
    features also stored on their own), which :class:`FeatureStore` needs to unpack."""
    import dgl

    edges = {}
    if graph is not None:
        for et in graph.canonical_etypes:
            if graph.num_edges(et) > 0:          # DGL 2.1 cannot partition empty edge types
                edges[et] = graph.edges(etype=et)
        # distributed walks step along in-edges (see dist/walk.py): every edge type whose reverse is not an edge
        # type of the graph already (a2a's a2a_rev) gets it here
        for src, et, dst in CANONICAL_ETYPES:
            if (src, et, dst) in edges and REVERSE_ETYPES[et] not in ETYPE_ENDS:
                edges[(dst, REVERSE_ETYPES[et], src)] = edges[(src, et, dst)][::-1]
    nodes = {"user": num_users, "author": num_authors}
    if segment_author is not None and len(segment_author):
        nodes["segment"] = len(segment_author)
        edges[("segment", "s2a", "author")] = (torch.arange(len(segment_author)), torch.from_numpy(
            np.asarray(segment_author, dtype=np.int64)))
    if not edges:                                # nothing links anything: a self-loop keeps DGL happy
        edges[("author", "self", "author")] = (torch.arange(num_authors), torch.arange(num_authors))
    g = dgl.heterograph(edges, num_nodes_dict=nodes)
    layouts = {}
    for nt, feats in node_data.items():
        if not feats:
            continue
        g.nodes[nt].data[PACKED] = pack(feats)
        layouts[nt] = {**layout_of(feats), "alone": [n for n in ALONE if n in feats]}
        for name in layouts[nt]["alone"]:
            g.nodes[nt].data[name] = feats[name]
    orig, _ = dgl.distributed.partition_graph(g, graph_name, num_parts, str(out_dir), part_method=part_method,
                                              return_mapping=True)
    if not isinstance(orig, dict):
        orig = {g.ntypes[0]: orig}
    return orig, layouts


class FeatureStore:
    """Reads node data of a ``DistGraph`` by original node id, several features of one node type per pull.

    ``layouts`` (from :func:`partition_features`, kept in ``prepared.json``) is the authority on what
    exists: in standalone mode DGL keeps node data in one process-wide store where a later graph
    overwrites equally named data but never removes what an earlier graph had. In distributed mode
    (``DGL_DIST_MODE=distributed``, after ``dgl.distributed.initialize``) the same reads go to the graph
    servers. ``on_read`` is called on every pull (the trainers' progress watchdog).

    ``pulls`` counts pulls (one per node data tensor read, whatever the number of rows); ``remote_bytes``
    the bytes of the rows read whose owner is another partition (another machine's server), by DGL's
    partition book.

    :meth:`cache_remote` keeps the rows read from other machines in this process, up to a byte budget,
    so later batches that need them again read memory instead of the network (``dist.remote_cache_mb``;
    the trainers turn it on for the ranker, once every trainer has written its Θ and walks). A pull is
    made only for the rows not cached; :meth:`write` drops the written rows from the cache.
    """

    def __init__(self, part_config: Path, graph_name: str, orig_ids: Mapping[str, torch.Tensor],
                 layouts: Mapping[str, Mapping[str, object]], on_read: Optional[Callable[[], None]] = None) -> None:
        import dgl
        from dgl.distributed import kvstore

        self.layouts = {nt: dict(layout) for nt, layout in layouts.items()}
        self.on_read = on_read
        self.pulls = 0
        self.remote_bytes = 0
        self.cache_budget = 0                                 # bytes; 0 = no cache of remote rows
        self.cached_bytes = 0
        self.cache_hits = 0                                   # rows served from the cache
        self._cache: Dict[Tuple[str, str], _RowCache] = {}
        if os.environ.get("DGL_DIST_MODE", "standalone") == "standalone":
            _initialize(Path(part_config).parent / "ip_config.txt")
            # the standalone store is process-wide and keeps the partition policies (node counts) of
            # the first graph it saw; a fresh one per graph lets one process open several graphs
            kvstore.close_kvstore()
            kvstore.init_kvstore(None, 0, "default")
        self.graph = dgl.distributed.DistGraph(graph_name, part_config=str(part_config))
        self.book = self.graph.get_partition_book()
        self.here = self.book.partid                     # this machine's partition
        self.orig_of_new = {nt: torch.as_tensor(orig) for nt, orig in orig_ids.items()}
        self.new_of_orig = {}
        for nt, orig in self.orig_of_new.items():
            inv = torch.empty_like(orig)
            inv[orig] = torch.arange(len(orig))
            self.new_of_orig[nt] = inv

    def owned_nodes(self, ntype: str, rank: int) -> torch.Tensor:
        """Original ids of the ``ntype`` nodes trainer ``rank`` owns: ``dgl.distributed.node_split`` of every node
        (``force_even``), disjoint and covering across trainers, mostly nodes of this machine's partition. The
        ranker's impressions (those of its users), GraphCL's anchors and the walked seeds all follow it.

        ``rank`` is the DDP rank (machine * trainers per machine + local rank), not DGL's own trainer rank, which
        follows the order the trainers happened to register with the servers: a resumed trainer must own the
        share it trained on before (its epoch seeds follow its rank)."""
        import dgl

        mask = torch.ones(self.graph.num_nodes(ntype), dtype=torch.bool)
        new = dgl.distributed.node_split(mask, self.book, ntype=ntype, force_even=True, rank=rank)
        return self.orig_of_new[ntype][new]

    def _columns(self, ntype: str, names: Sequence[str]) -> Dict[str, Dict[str, object]]:
        columns = self.layouts.get(ntype, {}).get("columns", {})
        missing = [n for n in names if n not in columns]
        if missing:
            raise KeyError(f"feature store has no {ntype} feature(s) {missing} (it has {sorted(columns)})")
        return columns

    def rows(self, ntype: str, ids: torch.Tensor, names: Sequence[str],
             snapshot: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{name: tensor [len(ids), ...]}``: the features ``names`` of nodes ``ids`` (original ids) in one
        pull of the packed table (of Θ alone, when only Θ is asked for); with ``snapshot [len(ids)]`` the
        per-snapshot features (Θ, expansions) of that graph snapshot only (the rows hold every snapshot)."""
        self._columns(ntype, names)
        layout = self.layouts[ntype]
        uniq, inv = torch.unique(self.new_of_orig[ntype][ids.long()], return_inverse=True)
        if len(names) == 1 and names[0] in layout["alone"]:
            out = {names[0]: self._read(names[0], ntype, uniq)[inv]}
        else:
            out = unpack(self._read(PACKED, ntype, uniq)[inv], layout, names)
        if snapshot is not None:
            out = {n: at_snapshot(t, snapshot) if per_snapshot(n) else t for n, t in out.items()}
        return out

    def cache_remote(self, max_bytes: int) -> None:
        """Keep up to ``max_bytes`` of rows read from other partitions in memory (0: off); starts empty."""
        self.cache_budget, self.cached_bytes = int(max_bytes), 0
        self._cache.clear()

    def prefetch_remote(self, chunk_bytes: int = 64 << 20) -> int:
        """Fill the cache with whole tables' remote rows, smallest table first, each only if all of its
        remote rows fit in what is left of the budget (in pulls of at most ``chunk_bytes``), so the first
        epoch does not wait on a round trip to another machine per batch; returns the bytes cached."""
        if not self.cache_budget:
            return 0
        tables = []
        for nt, layout in self.layouts.items():
            ids = torch.arange(len(self.orig_of_new.get(nt, ())))
            if not len(ids):
                continue
            remote = ids[self.book.nid2partid(ids, nt) != self.here]
            for name in [PACKED] + list(layout.get("alone", [])):
                source = self.graph.nodes[nt].data[name]
                row = _row_bytes(source.shape[1:], source.dtype)
                tables.append((row * len(remote), row, nt, name, remote))
        before = self.cached_bytes
        for total, row, nt, name, remote in sorted(tables, key=lambda t: t[0]):
            if not len(remote) or self.cached_bytes + total > self.cache_budget:
                continue
            for chunk in remote.split(max(1, chunk_bytes // max(row, 1))):
                self._read(name, nt, chunk)
        return self.cached_bytes - before

    def _read(self, name: str, ntype: str, new_ids: torch.Tensor) -> torch.Tensor:
        """Rows ``new_ids`` (distinct) of node data ``name``: from the cache where held, the rest in one pull."""
        source = self.graph.nodes[ntype].data[name]
        if not self.cache_budget or len(new_ids) == 0:
            return self._pull(source, ntype, new_ids)
        key = (ntype, name)
        cache = self._cache.get(key)
        if cache is None:
            cache = self._cache[key] = _RowCache(len(self.orig_of_new[ntype]), tuple(source.shape[1:]), source.dtype)
        slot = cache.slot[new_ids]
        hit = slot >= 0
        if bool(hit.all()):
            if self.on_read is not None:            # a read from the cache is progress too (the watchdog)
                self.on_read()
            self.cache_hits += len(new_ids)
            return cache.rows[slot]
        miss = ~hit
        pulled = self._pull(source, ntype, new_ids[miss])
        out = torch.empty((len(new_ids), *source.shape[1:]), dtype=source.dtype)
        out[miss] = pulled
        if bool(hit.any()):
            out[hit] = cache.rows[slot[hit]]
            self.cache_hits += int(hit.sum())
        remote = self.book.nid2partid(new_ids[miss], ntype) != self.here
        if bool(remote.any()):
            room = (self.cache_budget - self.cached_bytes) // max(cache.row_bytes, 1)
            keep = torch.nonzero(remote).flatten()[:max(int(room), 0)]
            if len(keep):
                cache.put(new_ids[miss][keep], pulled[keep])
                self.cached_bytes += len(keep) * cache.row_bytes
        return out

    def write(self, ntype: str, ids: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Overwrite features ``{name: [len(ids), ...]}`` of nodes ``ids`` (original ids, distinct) in the
        packed table (and on their own, for a feature also stored alone), where every trainer reads them (the
        walked expansions of ``dist.expansion=walk``, the distributed GraphCL's Θ).
        Whole rows are pulled, patched and pushed back: trainers must write disjoint rows."""
        columns = self._columns(ntype, list(values))
        for name, v in values.items():
            want = tuple(columns[name]["shape"])
            if tuple(v.shape) != (len(ids),) + want:
                raise ValueError(f"{ntype} feature '{name}': writing {tuple(v.shape)} into rows of {want} per node "
                                 f"(were the partitions made with other expansion settings? re-run graphrec.partition)")
        if len(ids) == 0:
            return
        new = self.new_of_orig[ntype][ids.long()]
        table = self.graph.nodes[ntype].data[PACKED]
        rows = self._pull(table, ntype, new)
        for name, v in values.items():
            col = columns[name]
            piece = v.to(DTYPES[col["dtype"]]).contiguous().reshape(len(new), -1).view(torch.uint8)
            rows[:, col["offset"]:col["offset"] + piece.shape[1]] = piece
        table[new] = rows
        for cache in (c for (nt, _), c in self._cache.items() if nt == ntype):
            cache.slot[new] = -1                               # read afresh next time
        for name in self.layouts[ntype]["alone"]:          # kept equal to its column of the packed table
            if name in values:
                self.graph.nodes[ntype].data[name][new] = values[name].to(DTYPES[columns[name]["dtype"]])

    def _pull(self, source, ntype: str, new_ids: torch.Tensor) -> torch.Tensor:
        """``source[new_ids]``, counted (see the class docstring)."""
        if len(new_ids) == 0:
            return torch.empty((0, *source.shape[1:]), dtype=source.dtype)
        if self.on_read is not None:
            self.on_read()
        self.pulls += 1
        remote = int((self.book.nid2partid(new_ids, ntype) != self.here).sum())
        if remote:
            self.remote_bytes += remote * _row_bytes(source.shape[1:], source.dtype)
        return source[new_ids]


def _row_bytes(row_shape, dtype: torch.dtype) -> int:
    """Bytes of one row of a tensor with rows of ``row_shape``."""
    return int(np.prod(row_shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


class _RowCache:
    """Rows of one node data tensor, held by node id (``slot[id]``: its row in ``rows``, or -1)."""

    def __init__(self, num_nodes: int, row_shape: Tuple[int, ...], dtype: torch.dtype) -> None:
        self.slot = torch.full((num_nodes,), -1, dtype=torch.long)
        self.rows = torch.empty((0, *row_shape), dtype=dtype)
        self.n = 0
        self.row_bytes = _row_bytes(row_shape, dtype)

    def put(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        if self.n + len(ids) > len(self.rows):                # grow by doubling
            grown = torch.empty((max(2 * len(self.rows), self.n + len(ids), 1024), *self.rows.shape[1:]),
                                dtype=self.rows.dtype)
            grown[:self.n] = self.rows[:self.n]
            self.rows = grown
        self.rows[self.n:self.n + len(ids)] = rows
        self.slot[ids] = torch.arange(self.n, self.n + len(ids))
        self.n += len(ids)


def graph_name_for(folder: Path) -> str:
    """DGL names shared memory after the graph: one name per run (or partition) folder. The folder's name
    alone is not enough: two runs on one host in folders of the same name (``part`` under two experiments,
    two test sessions) would map each other's partition book; a digest of the absolute path keeps them apart."""
    import hashlib
    import re

    where = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_]", "_", f"graphrec_{Path(folder).name}_{where}")
