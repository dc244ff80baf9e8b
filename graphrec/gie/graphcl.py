"""GraphCL pre-training of the node embeddings Θ (MMBee poster, Algorithm 1), and its evaluation.

Θ holds one vector per user and per author (authors after users). Each epoch shuffles all nodes
(users and authors together); for every node of a minibatch one positive is drawn from its
expansion (``u2a2u`` for a user, ``a2u2a`` for an author) and ``negatives`` random nodes of the same
type. The loss is ``L_CE + λ·L_NCE``: binary cross-entropy on the dot-product scores of the positive
(label 1) and the negatives (label 0), plus InfoNCE over cosine similarities with temperature ``τ``
(the positive against the negatives). Nodes without any positive (no gifts yet) are left out of the
loss, and their exported Θ is the zero vector: they have no graph evidence, and a frozen random
vector would hand the ranker a random per-user id to memorise (measured on the simulator: the
ranker's per-user score offsets came out twice as spread as the true ones, test AUC 0.743; with the
cold users' Θ replaced by a constant, 0.775 without retraining).

Quality is measured as link prediction of held-out gift edges: a user is represented by the mean of
the (normalised) Θ of the authors they gifted in training, an author by its Θ, and pairs are scored by
cosine. Positives are validation/test gifts to authors the user had not gifted in training; each is
ranked against random authors. AUC, MRR and Hits@K (OGB's ``ogbl-citation2`` ranking) are reported for
the trained Θ and for the untrained initial Θ side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metapath import PAD


def graphcl_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float,
                 nce_weight: float) -> Dict[str, torch.Tensor]:
    """``L_CE + λ·L_NCE`` of the embeddings of anchors ``a [B, d]``, their positives ``p [B, d]`` and
    negatives ``n [B, M, d]``: the one loss of Algorithm 1, whether Θ is a local table (:class:`GraphCL`)
    or a ``DistEmbedding`` (:mod:`graphrec.dist.graphcl`)."""
    pos_dot = (a * p).sum(-1)
    neg_dot = torch.einsum("bd,bmd->bm", a, n)
    l_ce = F.binary_cross_entropy_with_logits(pos_dot, torch.ones_like(pos_dot)) + \
        F.binary_cross_entropy_with_logits(neg_dot, torch.zeros_like(neg_dot))
    an, pn, nn_ = F.normalize(a, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
    logits = torch.cat([(an * pn).sum(-1, keepdim=True), torch.einsum("bd,bmd->bm", an, nn_)], dim=1)
    l_nce = F.cross_entropy(logits / temperature, torch.zeros(len(a), dtype=torch.long, device=a.device))
    return {"loss": l_ce + nce_weight * l_nce, "ce": l_ce, "nce": l_nce}


class GraphCL(nn.Module):
    """The embedding table Θ (``[num_users + num_authors, dim]``) and the GraphCL loss."""

    def __init__(self, num_users: int, num_authors: int, dim: int = 32, temperature: float = 0.2,
                 nce_weight: float = 1.0, sparse: bool = False) -> None:
        super().__init__()
        self.num_users, self.num_authors = num_users, num_authors
        self.theta = nn.Embedding(num_users + num_authors, dim, sparse=sparse)   # sparse: rows of the batch only
        nn.init.normal_(self.theta.weight, std=0.1)
        self.temperature = temperature
        self.nce_weight = nce_weight

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``L_CE + λ·L_NCE`` of ``anchor [B]``, ``positive [B]``, ``negatives [B, M]`` (global node ids,
        authors offset by ``num_users``)."""
        return graphcl_loss(self.theta(anchor), self.theta(positive), self.theta(negatives), self.temperature,
                            self.nce_weight)

    def author_embeddings(self) -> torch.Tensor:
        return self.theta.weight[self.num_users:].detach()


@dataclass
class GraphCLResult:
    model: GraphCL
    initial: torch.Tensor          # Θ before training (the untrained baseline)
    history: List[Dict[str, float]]
    best_epoch: int = 0            # the epoch kept (0: the last; no validation)
    trained: Optional[torch.Tensor] = None   # [U + A] bool: nodes with a positive (the others stay untrained)

    def theta(self) -> torch.Tensor:
        """Θ as the ranker reads it: the trained vectors, zero for nodes without any positive."""
        theta = self.model.theta.weight.detach().clone()
        if self.trained is not None:
            theta[~self.trained] = 0.0
        return theta


class GraphCLTask:
    """Algorithm 1 as a :class:`graphrec.fit.Task`: every epoch shuffles the nodes that have a positive;
    each anchor gets one random positive from its expansion and ``negatives`` random nodes of its type."""

    def __init__(self, positives: torch.Tensor, num_users: int, num_authors: int, negatives: int,
                 batch_size: int) -> None:
        self.pos, self.num_users, self.num_authors = positives, num_users, num_authors
        self.nodes = (positives >= 0).any(dim=1).nonzero().squeeze(1)
        self.negatives, self.batch_size = negatives, batch_size

    def batches(self, epoch: int, rng) -> List[torch.Tensor]:
        order = self.nodes[torch.randperm(len(self.nodes), device=self.nodes.device)]
        return [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]

    def loss(self, model, anchor: torch.Tensor):
        return anchor_loss(model, anchor, self.pos[anchor], self.num_users, self.num_authors, self.negatives)


def anchor_loss(model, anchor: torch.Tensor, cand: torch.Tensor, num_users: int, num_authors: int, negatives: int):
    """One step of Algorithm 1 for ``anchor [B]`` whose candidate positives are ``cand [B, K]`` (global ids,
    ``PAD`` = none; at least one valid): one random valid positive each, ``negatives`` uniform nodes of the
    anchor's type; ``(loss, B, parts)`` as :func:`graphrec.fit.fit` wants it."""
    dev = anchor.device
    valid = cand >= 0
    # one random valid positive per anchor: argmax of random keys over valid slots
    pick = torch.where(valid, torch.rand(cand.shape, device=dev), -1.0).argmax(dim=1)
    positive = cand[torch.arange(len(anchor), device=dev), pick]
    is_user = anchor < num_users
    neg = torch.where(is_user[:, None], torch.randint(0, num_users, (len(anchor), negatives), device=dev),
                      num_users + torch.randint(0, num_authors, (len(anchor), negatives), device=dev))
    out = model(anchor, positive, neg)
    return out["loss"], len(anchor), {"ce": out["ce"], "nce": out["nce"]}


def train_graphcl(num_users: int, num_authors: int, user_pos: np.ndarray, author_pos: np.ndarray,
                  sec: Mapping[str, Any], seed: int = 0, device: str = "cpu", progress: bool = False,
                  writer: Any = None, log: Callable[[str], None] = lambda s: None, amp: bool = False,
                  validate: Optional[Callable[[GraphCL, int], Dict[str, float]]] = None,
                  init: Optional[torch.Tensor] = None, tag: str = "graphcl") -> GraphCLResult:
    """Algorithm 1 with :func:`graphrec.fit.fit`. ``user_pos [U, K]`` holds ``u2a2u`` user ids,
    ``author_pos [A, K]`` ``a2u2a`` author ids (``PAD`` = none). With ``validate`` (returning ``link_auc``),
    the epoch with the best validation link prediction is kept and training stops after
    ``sec.patience`` epochs without a better one. ``init``: the table to start from (an earlier graph
    snapshot's Θ, so that the snapshots' Θ share one space) instead of a random one; ``tag``: TensorBoard's
    section. ``sec["sparse_updates"]``: the table gets sparse gradients and ``torch.optim.SparseAdam`` (lazy
    Adam: a step updates, and moves the moments of, only the rows in the batch) instead of dense Adam, whose
    every step touches all ``U + A`` rows — at 1M users that, not the batch, is the cost of a step."""
    from ..fit import FitSpec, fit

    torch.manual_seed(seed)
    sparse = bool(sec.get("sparse_updates", False))
    model = GraphCL(num_users, num_authors, sec["dim"], sec["temperature"], sec["nce_weight"], sparse=sparse)
    if init is not None:
        with torch.no_grad():
            model.theta.weight.copy_(init)
    initial = model.theta.weight.detach().clone()
    # positives as global ids; authors are offset by num_users
    a_pos = torch.from_numpy(author_pos.astype(np.int64))
    pos = torch.cat([torch.from_numpy(user_pos.astype(np.int64)), torch.where(a_pos >= 0, a_pos + num_users, PAD)])
    task = GraphCLTask(pos.to(device), num_users, num_authors, sec["negatives"], sec["batch_size"])
    spec = FitSpec(epochs=sec["epochs"], lr=sec["lr"], seed=seed, amp=amp, tag=tag,
                   patience=sec.get("patience", 0) if validate else 0, monitor="link_auc" if validate else None)
    model.to(device)
    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=sec["lr"]) if sparse else None
    result = fit(model, task, spec, device, writer=writer, log=log, progress=progress, validate=validate,
                 optimizer=optimizer)
    trained = (pos >= 0).any(dim=1)
    return GraphCLResult(model.cpu(), initial, result.history, result.best_epoch, trained)


class HeldOutGifts:
    """The gifts GraphCL is judged on, the same in the standalone and the distributed stage: the graph's
    training gifts (user profiles; ``graph_rows``: the impressions the graph snapshot was built from), the validation gifts (early stopping) and the test gifts (the report;
    the validation gifts when there is no test split), each scored by :func:`link_prediction` (prepared
    once per split)."""

    def __init__(self, ds, label: str, graph_rows: np.ndarray, negatives: int, seed: int) -> None:
        from ..data.dataset import SPLITS
        from .graph import gift_edges

        split = ds.impressions["split"]
        self.train = gift_edges(ds, label, graph_rows)[:2]          # the rows the graph was built from
        self.val = gift_edges(ds, label, split == SPLITS["val"])[:2]
        test = gift_edges(ds, label, split == SPLITS["test"])[:2]
        self.test = test if len(test[0]) else self.val
        self.negatives, self.seed, self.num_authors = negatives, seed, ds.num_authors
        self._scorers: Dict[str, LinkPrediction] = {}

    def _scorer(self, which: str) -> "LinkPrediction":
        """The prepared :class:`LinkPrediction` of the ``val`` or ``test`` gifts (built on first use)."""
        if which not in self._scorers:
            self._scorers[which] = LinkPrediction(self.num_authors, *self.train, *getattr(self, which),
                                                  self.negatives, self.seed)
        return self._scorers[which]

    def validation(self, author_emb: torch.Tensor) -> Optional[Dict[str, float]]:
        """``{link_auc, link_mrr}`` of the validation gifts (the monitor of early stopping); None without any."""
        if not len(self.val[0]):
            return None
        rep = self._scorer("val")(author_emb)
        return {"link_auc": rep["auc"], "link_mrr": rep.get("mrr", float("nan"))}

    def report(self, trained: torch.Tensor, untrained: torch.Tensor) -> Dict[str, Dict[str, float]]:
        """Link prediction of the test gifts by the trained and by the untrained author Θ."""
        return {which: self._scorer("test")(emb) for which, emb in (("trained", trained), ("untrained", untrained))}


def link_prediction(author_emb: torch.Tensor, train_u: np.ndarray, train_a: np.ndarray, test_u: np.ndarray,
                    test_a: np.ndarray, negatives: int = 100, seed: int = 0) -> Dict[str, float]:
    """AUC, MRR and Hits@1/3/10 of held-out gifts, each ranked against ``negatives`` random authors
    (see the module docstring); users without training gifts and pairs gifted in training are skipped."""
    return LinkPrediction(author_emb.shape[0], train_u, train_a, test_u, test_a, negatives, seed)(author_emb)


class LinkPrediction:
    """:func:`link_prediction` with everything that does not depend on Θ prepared once (the profiles' gift
    lists, the held-out pairs, their random negatives), for scoring a Θ every epoch: early stopping calls it
    after each one, and rebuilding the pairs (a Python set of every training gift) would cost more than
    scoring them on a large log."""

    def __init__(self, num_authors: int, train_u: np.ndarray, train_a: np.ndarray, test_u: np.ndarray,
                 test_a: np.ndarray, negatives: int = 100, seed: int = 0) -> None:
        self.num_authors = num_authors
        users, inverse = np.unique(train_u, return_inverse=True)
        self.num_profiles = len(users)
        self.profile_of, self.gifted = torch.from_numpy(inverse), torch.from_numpy(np.asarray(train_a, np.int64))
        # held-out pairs of profiled users, not gifted in training (one int64 key per pair: no Python set)
        test_u, test_a = np.asarray(test_u, np.int64), np.asarray(test_a, np.int64)
        pos, known = np.searchsorted(users, test_u), np.isin(test_u, users)
        key = lambda u, a: u * num_authors + a
        keep = known & ~np.isin(key(test_u, test_a), key(np.asarray(train_u, np.int64), self.gifted.numpy()))
        self.pr, self.pa = torch.from_numpy(pos[keep]), torch.from_numpy(test_a[keep])
        rng = np.random.default_rng(seed)
        self.na = torch.from_numpy(rng.integers(0, num_authors, (len(self.pr), negatives)))
        self.labels = np.concatenate([np.ones(len(self.pr)), np.zeros(self.na.numel())])

    def __call__(self, author_emb: torch.Tensor) -> Dict[str, float]:
        from ..metrics import auc, ranks_against_negatives

        if author_emb.shape[0] != self.num_authors:
            raise ValueError(f"link prediction: Θ has {author_emb.shape[0]} author rows, expected {self.num_authors}")
        if not len(self.pr):
            return {"auc": float("nan"), "mrr": float("nan"), "hits@10": float("nan"), "pairs": 0}
        emb = F.normalize(author_emb.detach().cpu().float(), dim=-1)
        profile = torch.zeros(self.num_profiles, emb.shape[1]).index_add_(0, self.profile_of, emb[self.gifted])
        user = F.normalize(profile, dim=-1)[self.pr]
        pos_score = (user * emb[self.pa]).sum(-1)
        neg_score = torch.einsum("pd,pmd->pm", user, emb[self.na])
        result: Dict[str, float] = {"auc": auc(self.labels, np.concatenate([pos_score.numpy(),
                                                                            neg_score.numpy().ravel()])),
                                    "pairs": len(self.pr)}
        result.update(ranks_against_negatives(pos_score.numpy(), neg_score.numpy()))   # each against its own
        return result
