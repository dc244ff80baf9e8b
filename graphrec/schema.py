"""The gifting graph's schema, declared once: node types, edge types, their reverses, and MMBee's
five metapaths with their seed and endpoint types.

Everything that walks, stores or pools along the graph reads it from here (the GIE walkers, the
ranker's feature store and batches, the distributed walker, serving), so a new metapath or edge type
is one edit. Plain Python: importing it needs neither DGL nor torch.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

NODE_TYPES = ("user", "author")
CANONICAL_ETYPES = (("user", "u2a", "author"), ("author", "a2u", "user"), ("author", "a2a", "author"))
ETYPE_ENDS = {et: (src, dst) for src, et, dst in CANONICAL_ETYPES}
# A DGL partition holds every *in*-edge of its nodes, not every out-edge: a distributed walk takes an
# out-step over an edge type as an in-step over its reverse (u2a and a2u reverse each other).
REVERSE_ETYPES = {"u2a": "a2u", "a2u": "u2a", "a2a": "a2a_rev"}


class Metapath(NamedTuple):
    """``seed`` node type, the edge types walked in order, and the node type the walk ends on."""

    seed: str
    etypes: Tuple[str, ...]
    endpoint: str
    meaning: str


def _metapath(etypes: Tuple[str, ...], meaning: str) -> Metapath:
    seed = ETYPE_ENDS[etypes[0]][0]
    for a, b in zip(etypes, etypes[1:]):
        if ETYPE_ENDS[a][1] != ETYPE_ENDS[b][0]:
            raise ValueError(f"metapath {etypes}: {a} ends where {b} does not start")
    return Metapath(seed, etypes, ETYPE_ENDS[etypes[-1]][1], meaning)


METAPATHS: Dict[str, Metapath] = {
    "u2a2u": _metapath(("u2a", "a2u"), "users who gifted the same authors"),
    "u2a2u2a": _metapath(("u2a", "a2u", "u2a"), "new authors of similar users (not yet gifted)"),
    "u2a2a": _metapath(("u2a", "a2a"), "authors similar to the user's gifted ones"),
    "a2a": _metapath(("a2a",), "authors similar to the target author"),
    "a2u2a": _metapath(("a2u", "u2a"), "authors the target's gifters also gift"),
}
USER_SEEDED = tuple(m for m, p in METAPATHS.items() if p.seed == "user")
AUTHOR_SEEDED = tuple(m for m, p in METAPATHS.items() if p.seed == "author")
# The two metapaths whose endpoints are GraphCL's positives (Algorithm 1): users, then authors.
GRAPHCL_POSITIVES = {"user": "u2a2u", "author": "a2u2a"}
