"""MMBee's gifting graphs as one DGL heterograph.

Node types ``user`` and ``author``; edge types ``u2a`` (a user gifted an author: one edge per
distinct pair, with ``count`` = positive impressions and ``value`` = summed gift value), its reverse
``a2u`` (same data) and ``a2a`` (Swing similarity, each author's top-k, ``score``). Built from
*training* impressions only, so nothing of validation or test reaches any embedding or expansion.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Optional

import numpy as np
import torch

from ..data.dataset import SPLITS, Dataset
from .swing import swing, top_k_per_source

NODE_TYPES = ("user", "author")
CANONICAL_ETYPES = (("user", "u2a", "author"), ("author", "a2u", "user"), ("author", "a2a", "author"))


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
                swing_cfg: Optional[Mapping] = None, seed: int = 0):
    """The heterograph from gift edges; ``swing_cfg``: alpha, a2a_topk, max_authors_per_user,
    max_users_per_author."""
    import dgl

    sc = {"alpha": 1.0, "a2a_topk": 10, "max_authors_per_user": 50, "max_users_per_author": 50,
          **(dict(swing_cfg) if swing_cfg else {})}
    src, dst, score = swing(users, authors, num_authors, sc["alpha"], sc["max_authors_per_user"],
                            sc["max_users_per_author"], seed)
    src, dst, score = top_k_per_source(src, dst, score, sc["a2a_topk"])
    u = torch.from_numpy(np.asarray(users, dtype=np.int64))
    a = torch.from_numpy(np.asarray(authors, dtype=np.int64))
    g = dgl.heterograph({
        ("user", "u2a", "author"): (u, a),
        ("author", "a2u", "user"): (a, u),
        ("author", "a2a", "author"): (torch.from_numpy(src), torch.from_numpy(dst)),
    }, num_nodes_dict={"user": num_users, "author": num_authors})
    n = len(u)
    count_t = torch.from_numpy(np.asarray(count if count is not None else np.ones(n), dtype=np.float32))
    value_t = torch.from_numpy(np.asarray(value if value is not None else np.ones(n), dtype=np.float32))
    for et in ("u2a", "a2u"):
        g.edges[et].data["count"] = count_t
        g.edges[et].data["value"] = value_t
    g.edges["a2a"].data["score"] = torch.from_numpy(score)
    return g


def build_gift_graph(ds: Dataset, label: Optional[str] = None, swing_cfg: Optional[Mapping] = None, seed: int = 0,
                     rows: Optional[np.ndarray] = None):
    """The heterograph from ``ds``'s *training* positives of ``label`` (default: the main label); ``rows``:
    the training rows to take them from (default all; see ``graphrec.data.split.graph_period``)."""
    label = label or ds.main_label
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
