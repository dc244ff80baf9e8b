"""The ranker's features as node data of a DGL ``DistGraph``, for runs on DGL's distributed engine.

Θ, the offline expansions, each author's product tables and each segment's multimodal tokens are
node data of the gifting heterograph (node types ``user``, ``author``, ``segment``; ``s2a`` links a
segment to its author). ``python -m graphrec.partition`` partitions it with
``dgl.distributed.partition_graph``; the trainers open it as a ``DistGraph`` against the graph
servers. :class:`FeatureStore` has the ``get`` of the standalone
:class:`~graphrec.ranking.features.TensorStore`: lookups take original node ids; the partition's id
mapping is applied here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..schema import REVERSE_ETYPES

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
                       num_parts: int = 1, part_method: str = "random") -> Dict[str, torch.Tensor]:
    """Partition the heterograph with ``node_data``; returns ``{ntype: original ids in new-id order}``."""
    import dgl

    edges = {}
    if graph is not None:
        for et in graph.canonical_etypes:
            if graph.num_edges(et) > 0:          # DGL 2.1 cannot partition empty edge types
                edges[et] = graph.edges(etype=et)
        a2a = ("author", "a2a", "author")
        if a2a in edges:                         # distributed walks step along in-edges (see dist/walk.py)
            edges[("author", REVERSE_ETYPES["a2a"], "author")] = edges[a2a][::-1]
    nodes = {"user": num_users, "author": num_authors}
    if segment_author is not None and len(segment_author):
        nodes["segment"] = len(segment_author)
        edges[("segment", "s2a", "author")] = (torch.arange(len(segment_author)), torch.from_numpy(
            np.asarray(segment_author, dtype=np.int64)))
    if not edges:                                # nothing links anything: a self-loop keeps DGL happy
        edges[("author", "self", "author")] = (torch.arange(num_authors), torch.arange(num_authors))
    g = dgl.heterograph(edges, num_nodes_dict=nodes)
    for nt, feats in node_data.items():
        for name, value in feats.items():
            g.nodes[nt].data[name] = value
    orig, _ = dgl.distributed.partition_graph(g, graph_name, num_parts, str(out_dir), part_method=part_method,
                                              return_mapping=True)
    if not isinstance(orig, dict):
        orig = {g.ntypes[0]: orig}
    return orig


class FeatureStore:
    """Reads node data of a ``DistGraph`` by original node id.

    In standalone mode DGL keeps node data in one process-wide store where a later graph overwrites
    equally named data but never removes data an earlier graph had; ``names`` (what this store's
    graph was partitioned with) is therefore the authority on what exists. In distributed mode
    (``DGL_DIST_MODE=distributed``, after ``dgl.distributed.initialize``) the same reads go to the
    graph servers. ``on_read`` is called on every read (the trainers' progress watchdog).
    """

    def __init__(self, part_config: Path, graph_name: str, orig_ids: Mapping[str, torch.Tensor],
                 names: Mapping[str, set], on_read: Optional[Callable[[], None]] = None) -> None:
        import dgl
        from dgl.distributed import kvstore

        self.names = {nt: set(v) for nt, v in names.items()}
        self.overrides: Dict[Tuple[str, str], object] = {}
        self.on_read = on_read
        if os.environ.get("DGL_DIST_MODE", "standalone") == "standalone":
            _initialize(Path(part_config).parent / "ip_config.txt")
            # the standalone store is process-wide and keeps the partition policies (node counts) of
            # the first graph it saw; a fresh one per graph lets one process open several graphs
            kvstore.close_kvstore()
            kvstore.init_kvstore(None, 0, "default")
        self.graph = dgl.distributed.DistGraph(graph_name, part_config=str(part_config))
        self.orig_of_new = {nt: torch.as_tensor(orig) for nt, orig in orig_ids.items()}
        self.new_of_orig = {}
        for nt, orig in self.orig_of_new.items():
            inv = torch.empty_like(orig)
            inv[orig] = torch.arange(len(orig))
            self.new_of_orig[nt] = inv

    def has(self, ntype: str, name: str) -> bool:
        return name in self.names.get(ntype, ()) or (ntype, name) in self.overrides

    def override(self, ntype: str, name: str, tensor) -> None:
        """Serve ``name`` from ``tensor`` (indexed by new ids, e.g. a ``DistTensor``) instead of node data."""
        self.overrides[(ntype, name)] = tensor

    def get(self, ntype: str, name: str, ids: torch.Tensor) -> torch.Tensor:
        if not self.has(ntype, name):
            raise KeyError(f"feature store has no {ntype} feature '{name}' (it has {sorted(self.names.get(ntype, ()))})")
        if self.on_read is not None:
            self.on_read()
        source = self.overrides.get((ntype, name))
        if source is None:
            source = self.graph.nodes[ntype].data[name]
        return source[self.new_of_orig[ntype][ids.long()]]


def open_store(graph, num_users: int, num_authors: int, segment_author: Optional[np.ndarray],
               node_data: Mapping[str, Mapping[str, torch.Tensor]], workdir: Path, graph_name: str) -> FeatureStore:
    """Partition (one part) and open the standalone ``DistGraph`` feature store under ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    orig = partition_features(graph, num_users, num_authors, segment_author, node_data, workdir, graph_name)
    return FeatureStore(workdir / f"{graph_name}.json", graph_name, orig,
                        {nt: set(feats) for nt, feats in node_data.items()})


def graph_name_for(folder: Path) -> str:
    """DGL names shared memory after the graph: one name per run (or partition) folder."""
    import re

    return re.sub(r"[^A-Za-z0-9_]", "_", f"graphrec_{Path(folder).name}")
