"""GraphCL pre-training of Θ on DGL's distributed engine (``graphcl.distributed: true``).

The partitions are made Θ-less (:mod:`graphrec.dist.prepare` skips the standalone graphcl stage and
stores a zero Θ column), and every trainer of ``python -m graphrec.launch`` trains Θ as its first phase,
before the ranker:

* Θ is two ``dgl.distributed.DistEmbedding`` tables (users, authors), sharded like the nodes of the
  DistGraph and updated by ``dgl.distributed.optim.SparseAdam``; there are no dense parameters, so there
  is nothing for DDP to synchronise (the sparse optimizer exchanges the gradients itself).
* Anchors: each trainer's ``dgl.distributed.node_split`` share of users and of authors (the same split as the
  ranker's impressions), kept where the node has a positive, iterated with ``DistDataLoader``. Every trainer
  makes the same number of steps per epoch (the sparse optimizer's step is a collective): the one with fewer
  anchors makes slightly smaller batches, and pads with empty steps if that is not enough.
* Positives: a random valid entry of the node's ``u2a2u`` / ``a2u2a`` expansion, read from the node data
  (the offline cache, or what the distributed walker wrote); negatives uniform of the same type.
* The loss is :func:`graphrec.gie.graphcl.graphcl_loss`, the standalone one, over the gathered rows, and the
  loop is :func:`graphrec.fit.fit` with the sparse optimizer: early stopping on the link prediction of the
  validation gifts, the best epoch's Θ kept, a checkpoint after every epoch (rank 0 writes the whole Θ and
  optimizer tables, every trainer loads its slice back on ``--resume``).
* Θ starts from the standalone stage's initial table (same seed), and the trained Θ (zero for nodes without
  a positive, as standalone) is written into the DistGraph's node data the ranker reads (the packed table
  and Θ alone), by each trainer for its own share: no copy through one machine.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..data.dataset import save_table
from ..data.split import graph_snapshots_for
from ..gie.graph import graph_label
from ..gie.graphcl import GraphCL, HeldOutGifts, anchor_loss, graphcl_loss
from ..gie.metapath import PAD
from ..schema import GRAPHCL_POSITIVES, NODE_TYPES

POSITIVES = {nt: f"exp_{m}" for nt, m in GRAPHCL_POSITIVES.items()}   # the node data holding each type's positives
VALIDATION = ("link_auc", "link_mrr")                           # what HeldOutGifts.validation returns


def _chunk(n: int, rank: int, world: int) -> torch.Tensor:
    """The rows ``[rank*n/world, (rank+1)*n/world)``: which slice of a whole table each trainer writes back."""
    return torch.arange(n * rank // world, n * (rank + 1) // world)


class DistTheta(nn.Module):
    """Θ as one ``DistEmbedding`` per node type, addressed with the standalone global ids (users, then
    authors offset by ``num_users``); ``forward`` is :class:`GraphCL`'s loss over the gathered rows.
    ``state_dict`` is the whole table (new-id order), ``load_state_dict`` writes it back, each trainer its slice."""

    def __init__(self, store, num_users: int, num_authors: int, dim: int, temperature: float, nce_weight: float,
                 comm, name: str, on_read: Callable[[], None] = lambda: None) -> None:
        from dgl.distributed import DistEmbedding

        super().__init__()
        self.store, self.comm, self.on_read = store, comm, on_read
        self.num_users, self.num_authors = num_users, num_authors
        self.temperature, self.nce_weight = temperature, nce_weight
        g = store.graph
        self.emb = {nt: DistEmbedding(g.num_nodes(nt), dim, name=f"{name}_{nt}",
                                      part_policy=g.get_node_partition_policy(nt)) for nt in NODE_TYPES}

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.on_read()
        B = len(anchor)
        ids = torch.cat([anchor, positive, negatives.reshape(-1)])
        uniq, inv = torch.unique(ids, return_inverse=True)        # sorted: the users, then the authors
        is_user = uniq < self.num_users
        parts = []
        for nt, orig in (("user", uniq[is_user]), ("author", uniq[~is_user] - self.num_users)):
            if len(orig):                  # an empty pull would leave a gradient-less trace
                parts.append(self.emb[nt](self.store.new_of_orig[nt][orig]))
        rows = torch.cat(parts)[inv]
        a, p, n = rows[:B], rows[B:2 * B], rows[2 * B:].view(B, negatives.shape[1], -1)
        return graphcl_loss(a, p, n, self.temperature, self.nce_weight)

    def table(self, ntype: str, orig: torch.Tensor) -> torch.Tensor:
        """Θ rows of ``ntype`` nodes ``orig`` (original ids)."""
        self.on_read()
        return self.emb[ntype].weight[self.store.new_of_orig[ntype][orig.long()]]

    def author_embeddings(self) -> torch.Tensor:
        return self.table("author", torch.arange(self.num_authors))

    def state_dict(self, *args, **kwargs) -> Dict[str, torch.Tensor]:      # type: ignore[override]
        self.on_read()
        return {nt: e.weight[torch.arange(e.num_embeddings)] for nt, e in self.emb.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True):   # type: ignore[override]
        for nt, e in self.emb.items():
            rows = _chunk(e.num_embeddings, self.comm.rank, self.comm.world)
            if len(rows):
                e.weight[rows] = state[nt][rows]
        self.comm.barrier()
        self.on_read()


def exchange_rows(rows: List[torch.Tensor], values: List[torch.Tensor], dest: List[torch.Tensor],
                  world: int, device: Optional[torch.device] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Send each row id ``rows[e][i]`` (int64) of table ``e`` with its ``values[e][i]`` (``[n_e, d]``, the same
    ``d`` and floating dtype for every table) to trainer ``dest[e][i]``, every table at once: one all-to-all
    of the counts, then one of the rows ``[id's bits as values | values]``. Returns per table the ``(ids,
    values)`` this trainer received, ordered by sender rank and, within a sender, as sent (what DGL's sparse
    optimizer gathers with three collectives and two barriers per table). ``device``: where the collectives
    run (nccl: this trainer's GPU); the results come back on the values' device."""
    import torch.distributed as dist

    tables, dtype, home = len(rows), values[0].dtype, values[0].device
    words = 8 // dtype.itemsize                                       # an int64 id seen as values
    packed = torch.cat([torch.cat([r.view(dtype).view(-1, words), v], dim=1) for r, v in zip(rows, values)])
    key = torch.cat([d * tables + e for e, d in enumerate(dest)])    # rank-major, then table, stable
    count = torch.bincount(key, minlength=world * tables)
    wire = device if device is not None else home
    got = torch.empty_like(count, device=wire)
    dist.all_to_all_single(got, count.to(wire))
    got = got.to(home)
    out = packed.new_empty((int(got.sum()), packed.shape[1]), device=wire)
    dist.all_to_all_single(out, packed[torch.argsort(key, stable=True)].to(wire),
                           got.view(world, tables).sum(1).tolist(), count.view(world, tables).sum(1).tolist())
    out = out.to(home)
    table = torch.arange(tables).repeat(world).repeat_interleave(got)
    result = []
    for e in range(tables):
        mine = out[table == e]
        result.append((mine[:, :words].reshape(-1).clone().view(torch.int64), mine[:, words:]))
    return result


def _sparse_adam():
    """DGL's ``SparseAdam`` with the gradient exchange of all tables in one go (:func:`exchange_rows`): the
    same rows reach the same trainer in the same order, then DGL's own ``update`` (the Adam moments in the
    kvstore) runs per table. DGL's ``step`` exchanges table by table, with a barrier after each exchange —
    13 synchronisations per step for two tables on two trainers instead of 3, which on small worlds is most
    of the step. On nccl the collectives run on this trainer's own GPU (``device``, the trainers' ``LOCAL_RANK``
    GPU): DGL's step puts them on ``cuda:<global rank>``, which on a second machine's trainer is a GPU it does
    not have. Falls back to DGL's step where its routing is not one chunk per trainer."""
    import torch.distributed as dist
    from dgl.distributed.optim import SparseAdam

    class BatchedSparseAdam(SparseAdam):
        device: Optional[torch.device] = None      # where the collectives run: this trainer's GPU on nccl

        def _routing(self):
            """Trainers per server when DGL routes one chunk of rows to each trainer, else None."""
            world, servers = self._world_size, self._params[0].weight.kvstore.num_servers   # one kvstore
            backend = dist.get_backend()
            if world == 1 or world % servers or backend not in ("gloo", "nccl"):
                return None
            if backend == "nccl" and (self.device is None or self.device.type != "cuda"):
                return None
            return world // servers

        def step(self):
            per_server = self._routing()
            if per_server is None:
                return super().step()
            with torch.no_grad():
                rows, grads, dest = [], [], []
                for emb in self._params:
                    idx = [t[0] for t in emb._trace if t[1].grad is not None]
                    grd = [t[1].grad.data for t in emb._trace if t[1].grad is not None]
                    idx = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
                    grd = torch.cat(grd) if grd else torch.zeros((0, emb.embedding_dim), dtype=torch.float32)
                    part = emb.weight.kvstore.get_partid(emb.data_name, idx).long()
                    rows.append(idx)
                    grads.append(grd)
                    dest.append(part * per_server + torch.remainder(idx, per_server) if per_server > 1 else part)
                received = exchange_rows(rows, grads, dest, self._world_size, self.device)
                if self._clean_grad:
                    for emb in self._params:
                        emb.reset_trace()
                    self._clean_grad = False
                for emb, (idx, grad) in zip(self._params, received):
                    self.update(idx, grad, emb)
            # every trainer's pushes are out before anyone pulls again (DGL's barrier; an all-to-all of one
            # number is one, at less than half the cost on gloo)
            dist.all_to_all_single(torch.empty(self._world_size, device=self.device),
                                   torch.zeros(self._world_size, device=self.device))

    return BatchedSparseAdam


class SparseOptimizer:
    """DGL's ``SparseAdam`` (with the batched gradient exchange of :func:`_sparse_adam`) behind torch's optimizer
    interface, for :func:`graphrec.fit.fit`. ``state_dict``: the whole state tables (every trainer can read
    them); ``load_state_dict``: each trainer writes its slice back."""

    def __init__(self, theta: DistTheta, lr: float) -> None:
        self.theta = theta
        self.opt = _sparse_adam()(list(theta.emb.values()), lr=lr)
        self.opt.device = getattr(theta.comm, "device", None)
        self.param_groups = [{"lr": lr}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad()

    def step(self) -> None:
        self.opt.step()

    def state_dict(self) -> Dict[str, List[torch.Tensor]]:
        return {nt: [t[torch.arange(e.num_embeddings)] for t in self.opt._state[e.name]]
                for nt, e in self.theta.emb.items()}

    def load_state_dict(self, state: Mapping[str, List[torch.Tensor]]) -> None:
        comm = self.theta.comm
        for nt, e in self.theta.emb.items():
            rows = _chunk(e.num_embeddings, comm.rank, comm.world)
            for t, saved in zip(self.opt._state[e.name], state[nt]):
                if len(rows):
                    t[rows] = saved[rows]
        comm.barrier()


class DistGraphCLTask:
    """Algorithm 1 on this trainer's anchors (original global ids, each with a positive) whose candidate
    positives ``rows [n, K]`` (global ids, ``PAD`` = none) were read from the node data; ``steps`` batches per
    epoch, drawn by ``DistDataLoader``, padded with empty ones to ``steps``."""

    def __init__(self, anchors: torch.Tensor, rows: torch.Tensor, num_users: int, num_authors: int, negatives: int,
                 steps: int) -> None:
        self.anchors, self.rows, self.num_users, self.num_authors = anchors, rows, num_users, num_authors
        self.negatives, self.steps = negatives, steps
        self.row_of = torch.full((num_users + num_authors,), -1, dtype=torch.long)
        self.row_of[anchors] = torch.arange(len(anchors))
        self.per_batch = max(1, math.ceil(len(anchors) / max(steps, 1)))

    def batches(self, epoch: int, rng) -> List[torch.Tensor]:
        from dgl.distributed import DistDataLoader

        out: List[torch.Tensor] = []
        if len(self.anchors):
            loader = DistDataLoader(self.anchors.numpy(), batch_size=self.per_batch, shuffle=True,
                                    collate_fn=lambda xs: torch.as_tensor(np.asarray(xs, dtype=np.int64)))
            out = list(loader)
        return out + [torch.empty(0, dtype=torch.long)] * (self.steps - len(out))

    def candidates(self, anchor: torch.Tensor) -> torch.Tensor:
        return self.rows[self.row_of[anchor]]

    def loss(self, model, anchor: torch.Tensor):
        if len(anchor) == 0:           # a padding step: nothing to learn, but the optimizer's collective runs
            zero = torch.zeros((), requires_grad=True)
            return zero, 0, {"ce": zero.detach(), "nce": zero.detach()}
        return anchor_loss(model, anchor, self.candidates(anchor), self.num_users, self.num_authors, self.negatives)


def read_anchors(store, num_users: int, rank: int):
    """This trainer's share of both node types: ``(nodes [N] global ids, has_positive [N], rows [N, K])``."""
    nodes, rows = [], []
    for nt in NODE_TYPES:
        orig = store.owned_nodes(nt, rank)
        cand = store.rows(nt, orig, [POSITIVES[nt]])[POSITIVES[nt]][:, 0].long()   # one graph snapshot
        if nt == "author":
            orig = orig + num_users
            cand = torch.where(cand >= 0, cand + num_users, PAD)
        nodes.append(orig)
        rows.append(cand)
    width = max(r.shape[1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=PAD) for r in rows]
    nodes, rows = torch.cat(nodes), torch.cat(rows)
    return nodes, (rows >= 0).any(dim=1), rows


def train_dist_graphcl(cfg, ds, store, comm, run_dir: Path, resume: bool, log: Callable[[str], None],
                       writer: Any = None, kick: Callable[[], None] = lambda: None
                       ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train Θ across the trainers and write it into the DistGraph's ``theta`` node data; returns the
    ``graphcl`` metrics entry (:func:`graphrec.metrics_schema.graphcl_entry`, as the standalone stage's) and the
    distributed details for ``dist.graphcl``: each trainer's anchors, steps per epoch, the largest difference
    between Θ and what the ranker reads from the node data, the training and the whole phase's seconds."""
    from ..fit import FitSpec, fit
    from ..metrics_schema import graphcl_entry

    t0 = time.perf_counter()
    sec, seed = cfg.graphcl, cfg.run.seed
    U, A = ds.num_users, ds.num_authors
    nodes, has_pos, rows = read_anchors(store, U, comm.rank)
    anchors = nodes[has_pos]
    steps = max(math.ceil(n / sec.batch_size) for n in comm.gather(len(anchors)))
    save_table(run_dir / "shares" / f"graphcl-rank{comm.rank}.npz", {"anchors": anchors.numpy()})
    log(f"graphcl: {len(anchors):,} anchors of {len(nodes):,} owned nodes, {steps} steps per epoch")

    theta = DistTheta(store, U, A, sec.dim, sec.temperature, sec.nce_weight, comm, name="graphcl_theta", on_read=kick)
    torch.manual_seed(seed)            # the standalone stage's initial Θ (the untrained baseline too)
    initial = GraphCL(U, A, sec.dim).theta.weight.detach().clone()
    theta.load_state_dict({"user": initial[:U][store.orig_of_new["user"]],
                           "author": initial[U:][store.orig_of_new["author"]]})
    opt = SparseOptimizer(theta, sec.lr)
    task = DistGraphCLTask(anchors, rows[has_pos], U, A, sec.negatives, steps)

    graph_rows = graph_snapshots_for(ds, cfg).rows[-1]
    gifts = HeldOutGifts(ds, graph_label(cfg, ds), graph_rows, sec.eval_negatives, seed)
    validate = None
    if len(gifts.val[0]):
        def validate(model, epoch: int) -> Dict[str, float]:
            # one reader; every trainer takes its numbers (one early-stopping decision)
            mine = gifts.validation(model.author_embeddings()) if comm.is_main else {}
            return dict(zip(VALIDATION, comm.sum([mine.get(k, 0.0) for k in VALIDATION])))
    spec = FitSpec(epochs=sec.epochs, lr=sec.lr, seed=seed, tag="graphcl",
                   patience=sec.get("patience", 0) if validate else 0, monitor="link_auc" if validate else None,
                   checkpoint_every_s=cfg.run.checkpoint_every_s)
    result = fit(theta, task, spec, "cpu", checkpoint=run_dir / "checkpoints" / "graphcl_last.pt", resume=resume,
                 writer=writer, log=log, comm=comm, validate=validate, optimizer=opt)
    train_seconds = time.perf_counter() - t0

    # Θ into the node data the ranker reads: each trainer its own share, zero where there is no positive
    for nt in NODE_TYPES:
        mine = nodes[nodes >= U] - U if nt == "author" else nodes[nodes < U]
        pos = has_pos[nodes >= U] if nt == "author" else has_pos[nodes < U]
        values = theta.table(nt, mine)
        values[~pos] = 0.0
        store.write(nt, mine, {"theta": values.unsqueeze(1)})              # one graph snapshot
    store.graph.barrier()
    comm.barrier()

    quality: Dict[str, Any] = {}
    if comm.is_main:
        # what the ranker will read, both ways (Θ alone and its column of the packed table), against Θ
        ids = torch.arange(A)
        want = theta.table("author", ids)
        want[~(store.rows("author", ids, [POSITIVES["author"]])[POSITIVES["author"]][:, 0] >= 0).any(dim=1)] = 0.0
        got = [store.rows("author", ids, names)["theta"][:, 0] for names in (["theta"], ["theta", POSITIVES["author"]])]
        quality["node_data_max_abs_diff"] = max(float((g - want).abs().max()) for g in got) if A else 0.0
        quality.update(gifts.report(theta.author_embeddings(), initial[U:]))
        log(f"graphcl ({len(result.history)} epochs, best {result.best_epoch}) link prediction on "
            f"{quality['trained']['pairs']} test gifts: trained AUC {quality['trained']['auc']:.4f}, "
            f"untrained AUC {quality['untrained']['auc']:.4f}")
    quality = comm.gather(quality)[0]
    entry = graphcl_entry(result.history, result.best_epoch, {k: quality[k] for k in ("trained", "untrained")},
                          "distributed", resumed_from_epoch=result.resumed_from)
    return entry, {"anchors": comm.gather(int(len(anchors))), "steps_per_epoch": steps,
                   "node_data_max_abs_diff": quality["node_data_max_abs_diff"], "train_seconds": train_seconds,
                   "seconds": time.perf_counter() - t0}
