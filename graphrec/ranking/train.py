"""The ranker's objective, its training task for :func:`graphrec.fit.fit`, and its evaluation scorer.

Objectives, by what the data is:

* **impression logs** (the simulator, MovieLens: every shown item has a label): per-impression binary
  cross-entropy of every label head, summed with ``ranker.weight_<label>``. With
  ``ranker.exposure_head`` an extra head learns *which* authors a user is shown (ESMM-style, Ma et al.
  SIGIR 2018): a sampled softmax of the logged author against ``ranker.negatives`` sampled ones; a
  full ranking then orders authors by ``P(shown) · P(label | shown)``, the entire-space probability.
* **implicit feedback** (TikTok: positives only): a sampled softmax of each interaction against
  ``ranker.negatives`` sampled authors — uniform plus in-batch, with the logQ correction
  (Yi et al., RecSys 2019) and known positives masked — which trains for ranking all authors rather
  than for separating a positive from four random ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import gathered_scores, impression_metrics, main_metric, split_mask, topk_metrics, topk_users
from ..models.ranker import Ranker


class RankerObjective:
    """The loss of a batch of ``[B, C, heads]`` logits (see the module docstring)."""

    def __init__(self, heads: List[str], tasks: List[str], weights: Dict[str, float], implicit: bool,
                 softmax_head: Optional[str], softmax_weight: float = 1.0) -> None:
        self.implicit = implicit
        self.bce = [] if implicit else [(heads.index(t), i, weights[t]) for i, t in enumerate(tasks) if weights[t] > 0]
        self.softmax = heads.index(softmax_head) if softmax_head is not None else None
        self.softmax_weight = softmax_weight

    def __call__(self, logits: torch.Tensor, batch) -> torch.Tensor:
        loss = logits.new_zeros(())
        for head, col, w in self.bce:
            loss = loss + w * F.binary_cross_entropy_with_logits(logits[:, 0, head], batch.labels[:, col])
        if self.softmax is not None and logits.shape[1] > 1:
            s = logits[:, :, self.softmax].float()
            if batch.logq is not None:
                s = s - batch.logq
            if batch.valid is not None:
                s = s.masked_fill(~batch.valid, float("-inf"))
            target = torch.zeros(len(s), dtype=torch.long, device=s.device)
            loss = loss + self.softmax_weight * F.cross_entropy(s, target)
        return loss


class _Batches:
    """The epoch's minibatches, built lazily in order (so one generator drives them all). ``setup()``
    runs before the first batch and returns what undoes it after the last (the expansion redraws)."""

    def __init__(self, chunks: List[np.ndarray], build: Callable[[np.ndarray], Any],
                 setup: Optional[Callable[[], Callable[[], None]]] = None) -> None:
        self.chunks, self.build, self.setup = chunks, build, setup

    def __len__(self) -> int:
        return len(self.chunks)

    def skip(self, k: int) -> "_Batches":
        """The epoch's batches after its first ``k``, which are never built (a resumed epoch: graphrec.fit)."""
        return _Batches(self.chunks[k:], self.build, self.setup)

    def __iter__(self):
        undo = self.setup() if self.setup is not None else None
        try:
            for c in self.chunks:
                yield self.build(c)
        finally:
            if undo is not None:
                undo()


class RankerTask:
    """What :func:`graphrec.fit.fit` trains the ranker on: shuffled minibatches of this trainer's training
    impressions (a fresh seeded sample of ``max_train`` per epoch when set), and the objective. Its batches
    draw on the epoch's numpy generator alone, so :func:`graphrec.fit.fit` may build them ahead in a thread
    on a GPU (``prefetch``)."""

    prefetch = True
    unit = "impressions"                 # what fit's progress lines count

    def __init__(self, builder, train_idx: np.ndarray, batch_size: int, objective: RankerObjective,
                 max_train: int = 0, world: int = 1, redraw=None) -> None:
        self.builder, self.train_idx, self.batch_size = builder, np.asarray(train_idx), batch_size
        self.objective = objective
        self.cap = max_train // world if max_train else 0
        self.redraw = redraw             # epoch -> fresh expansions for training (ranker.redraw_expansions)

    def epoch_indices(self, rng: np.random.Generator) -> np.ndarray:
        idx = self.train_idx
        if self.cap and len(idx) > self.cap:                  # a fresh sample per epoch, seeded by epoch
            idx = idx[np.sort(rng.choice(len(idx), self.cap, replace=False))]
        return idx[rng.permutation(len(idx))]

    def batches(self, epoch: int, rng: np.random.Generator) -> _Batches:
        idx = self.epoch_indices(rng)
        chunks = [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        setup = None
        if self.redraw is not None:
            def setup():
                return self.builder.store.swap({f"exp_{m}": t for m, t in self.redraw(epoch).items()})
        return _Batches(chunks, lambda c: self.builder.training(c, rng), setup)

    def loss(self, net, batch):
        return self.objective(net(batch), batch), len(batch)


class RankerScorer:
    """A ranker as a scorer of :mod:`graphrec.evaluation` (and of serving).

    ``ranking_score`` turns a candidate's head logits into the score a full ranking orders by: the main
    head's logit; with an exposure head, ``log P(shown) + log P(label | shown)``. The author side of a
    full ranking is computed once per ranking time and kept, so make a new scorer after the weights
    change."""

    def __init__(self, model: Ranker, builder, device: str = "cpu", batch_size: int = 4096,
                 pair_chunk: int = 32768) -> None:
        self.model, self.builder = model.eval(), builder
        self.device = torch.device(device)
        self.batch_size, self.pair_chunk = batch_size, pair_chunk
        heads = model.spec.tasks
        self.main = heads.index(builder.ds.main_label)
        self.exposure = heads.index("exposure") if "exposure" in heads else None
        self.label_heads = [heads.index(t) for t in builder.cfg.tasks]
        self._rooms: Dict[int, Any] = {}

    def ranking_score(self, logits: torch.Tensor) -> torch.Tensor:
        if self.exposure is None:
            return logits[..., self.main].float()
        return logits[..., self.exposure].float() + F.logsigmoid(logits[..., self.main].float())

    @torch.no_grad()
    def _logits(self, batch) -> torch.Tensor:
        return self.model(batch.to(self.device))[:, 0].float().cpu()

    @torch.no_grad()
    def impression_scores(self, idx: np.ndarray) -> np.ndarray:
        """Label-head logits ``[n, labels]`` of logged impressions."""
        out = [self._logits(self.builder.impressions(idx[s:s + self.batch_size]))[:, self.label_heads]
               for s in range(0, len(idx), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.label_heads)), np.float32)

    @torch.no_grad()
    def pair_scores(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        out = [self.ranking_score(self._logits(self.builder.pairs(users[s:s + self.batch_size],
                                                                  authors[s:s + self.batch_size],
                                                                  times[s:s + self.batch_size])))
               for s in range(0, len(users), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    @torch.no_grad()
    def rank(self, users: np.ndarray, time: int) -> torch.Tensor:
        """Ranking scores ``[len(users), authors]``: user side once per user, author side once per time."""
        if time not in self._rooms:
            self._rooms = {time: self.model.author_side(self.builder.all_rooms(time).to(self.device))}
        ar = self._rooms[time]
        users = np.asarray(users, dtype=np.int64)
        B, A = len(users), len(ar.author)
        # users with similar history lengths share a chunk, so each chunk's sequences are trimmed to its longest
        lengths = np.zeros(B, np.int64)
        for h in self.builder.histories.values():
            lengths += (h.lookup(users, np.full(B, time), self.builder.cfg.hist_len) >= 0).sum(1)
        order = np.argsort(lengths, kind="stable")
        out = torch.empty(B, A)
        per = max(1, self.pair_chunk // A)
        for s in range(0, B, per):
            rows = order[s:s + per]
            ur = self.model.user_side(self.builder.rank_users(users[rows], time).to(self.device))
            out[torch.from_numpy(rows)] = self.ranking_score(self.model.logits(ur, ar, None)).cpu()
        return out


def validation_sample(ds, n: int, seed: int) -> Optional[np.ndarray]:
    """``ranker.validation_users``: a fixed seeded sample of ``n`` validation users, sorted (None: all). Drawn
    from those the per-epoch check can score (implicit data: users with a validation positive, whom the full
    ranking averages over; impression logs: users with a validation impression), from the whole dataset, so
    every distributed trainer draws the same sample."""
    if n <= 0:
        return None
    if ds.implicit:
        users = topk_users(ds, "val")
    else:
        users = np.unique(ds.impressions["user"][split_mask(ds, "val")])
    if n >= len(users):
        return None
    return np.sort(np.random.default_rng(seed).choice(users, n, replace=False)).astype(np.int64)


def validation(scorer_of: Callable[[], RankerScorer], ds, val_idx: np.ndarray, k: int, negatives: int,
               seed: int, comm=None, users: Optional[np.ndarray] = None) -> Callable[[Any, int], Dict[str, float]]:
    """The per-epoch validation of :func:`graphrec.fit.fit`: Recall@k etc. of the model's own full ranking
    (implicit data) or AUC/GAUC of the main label (impression logs); ``users``: only these users'
    (:func:`validation_sample`). Distributed, per-impression scores are computed on each trainer's share and
    gathered; the full ranking on rank 0, then shared."""
    main = ds.main_label
    sample_idx = None
    if users is not None and not ds.implicit:     # the sample's rows: this trainer's share of them, and all of them
        imp = ds.impressions
        val_idx = val_idx[np.isin(imp["user"][val_idx], users)]
        sample_idx = np.flatnonzero(split_mask(ds, "val") & np.isin(imp["user"], users))

    def validate(model, epoch: int) -> Dict[str, float]:
        scorer = scorer_of()
        if ds.implicit:
            rep = None
            if comm is None or comm.is_main:
                rep = topk_metrics(scorer, ds, "val", k, users=users) or {}
            if comm is not None and comm.world > 1:
                rep = comm.gather(rep)[0]
            return {key: float(v) for key, v in rep.items() if key not in ("label", "users", "k")}
        if comm is not None and comm.world > 1:
            scorer = gathered_scores(scorer, val_idx, comm)
        rep = impression_metrics(scorer, ds, "val", negatives, seed, idx=sample_idx)
        auc = float(rep.get(main, {}).get("auc", float("nan")))
        gauc = main_metric(rep, main, False)
        return {"gauc": auc if np.isnan(gauc) else gauc, "auc": auc}

    return validate
