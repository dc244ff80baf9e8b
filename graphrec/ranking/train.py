"""Ranker training: ``DistDataLoader`` over impression indices, Adam, early stopping on validation
GAUC of the main task, an atomic checkpoint after every epoch, and exact resumption.

Determinism: every source of randomness of an epoch (the loader's shuffle, dropout, sampled
negatives) is re-seeded from ``(seed, epoch)`` at the epoch's start, so a run resumed from the
checkpoint of epoch ``e`` continues exactly as the uninterrupted run would have (on CPU).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..dist.comm import LocalComm
from ..metrics import ranking_report
from ..models.ranker import Ranker


@dataclass
class TrainResult:
    model: Ranker
    history: List[Dict[str, float]]
    best_epoch: int
    best_val: float
    resumed_from: Optional[int] = None


def _loader(indices: np.ndarray, batch_size: int, collate, shuffle: bool):
    import dgl

    return dgl.distributed.DistDataLoader(indices, batch_size=batch_size, collate_fn=collate, shuffle=shuffle,
                                          drop_last=False)


@torch.no_grad()
def predict(model: Ranker, builder, indices: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Sigmoid scores ``[len(indices), tasks]`` in the order of ``indices``."""
    model.eval()
    out = []
    for batch in _loader(indices, batch_size, lambda b: builder(b), shuffle=False):
        out.append(torch.sigmoid(model(batch)).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(builder.cfg.tasks)), np.float32)


def evaluate_split(model: Ranker, builder, indices: np.ndarray, tasks: List[str], implicit_negatives: int = 0,
                   seed: int = 0, comm: Optional[LocalComm] = None) -> Dict[str, Dict[str, float]]:
    """AUC/UAUC/GAUC per task on the given impressions. For implicit feedback (positives only) each
    positive is scored against ``implicit_negatives`` random authors (a fixed, seeded sample).

    Distributed, ``indices`` is this trainer's share: every trainer scores its own and all of them
    compute the same report over the gathered scores (so early stopping agrees everywhere)."""
    comm = comm or LocalComm()
    if implicit_negatives:
        rng = np.random.default_rng(seed + 7919 * comm.rank)
        u = builder.users[indices]
        t = builder.times[indices]
        a_neg = rng.integers(0, builder.ds.num_authors, len(indices) * implicit_negatives)
        uu = np.concatenate([u, np.repeat(u, implicit_negatives)])
        aa = np.concatenate([builder.authors[indices], a_neg])
        tt = np.concatenate([t, np.repeat(t, implicit_negatives)])
        y = np.concatenate([np.ones(len(indices)), np.zeros(len(a_neg))])
        model.eval()
        scores = []
        with torch.no_grad():
            for s in range(0, len(uu), 4096):
                scores.append(torch.sigmoid(model(builder.build(uu[s:s + 4096], aa[s:s + 4096], tt[s:s + 4096]))).numpy())
        scores = np.concatenate(scores) if scores else np.zeros((0, len(tasks)), np.float32)
        parts = comm.gather((uu, y, scores[:, 0]))
        uu, y, s0 = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return {tasks[0]: ranking_report(uu, y, s0)}
    scores = predict(model, builder, indices)
    if comm.world > 1:
        parts = comm.gather((np.asarray(indices), scores))
        indices = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
    out = {}
    for i, task in enumerate(tasks):
        y = builder.labels[indices, i]
        if 0 < y.sum() < len(y):
            out[task] = ranking_report(builder.users[indices], y, scores[:, i])
    return out


def train_ranker(model: Ranker, builder, train_idx: np.ndarray, val_idx: np.ndarray, sec: Mapping[str, Any],
                 task_weights: torch.Tensor, main_task: str, seed: int, checkpoint_path: Path,
                 resume: bool = False, log: Callable[[str], None] = print,
                 on_epoch_end: Callable[[int, Dict[str, float]], None] = lambda e, h: None,
                 progress: bool = False, on_step: Callable[[int, float], None] = lambda step, loss: None,
                 log_every: int = 20, comm: Optional[LocalComm] = None) -> TrainResult:
    """Train ``model`` on ``train_idx``; with a distributed ``comm`` (DDP), ``train_idx`` and ``val_idx``
    are this trainer's shares, gradients are averaged by DDP and rank 0 writes the checkpoints."""
    from tqdm import tqdm

    comm = comm or LocalComm()
    net = comm.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=sec["lr"], weight_decay=sec["weight_decay"])
    history: List[Dict[str, float]] = []
    best_val, best_epoch, bad = -1.0, -1, 0
    best_state = copy.deepcopy(model.state_dict())
    start_epoch, resumed_from = 0, None
    if resume and Path(checkpoint_path).exists():
        ck = load_checkpoint(checkpoint_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        best_state, best_val, best_epoch, bad = ck["best_state"], ck["best_val"], ck["best_epoch"], ck["bad_epochs"]
        history = list(ck["history"])
        start_epoch = resumed_from = ck["epoch"] + 1
        log(f"resumed ranker training after epoch {ck['epoch'] + 1} from {checkpoint_path}")
    implicit = builder.cfg.implicit_negatives
    for epoch in range(start_epoch, sec["epochs"]):
        if bad >= sec["patience"]:
            break
        torch.manual_seed(seed * 1_000_003 + epoch)        # loader shuffle + dropout
        builder.gen = np.random.default_rng(seed * 1_000_003 + epoch + 7919 * comm.rank)   # sampled negatives
        model.train()
        total, n = 0.0, 0
        epoch_idx = train_idx
        cap = sec.get("max_train_impressions", 0) // comm.world
        if cap and len(train_idx) > cap:                      # a fresh sample per epoch, seeded by epoch
            pick = np.random.default_rng(seed * 1_000_003 + epoch + 7919 * comm.rank).choice(len(train_idx), cap,
                                                                                             replace=False)
            epoch_idx = train_idx[np.sort(pick)]
        step = epoch * ((len(epoch_idx) + sec["batch_size"] - 1) // sec["batch_size"])   # global, resume-proof
        loader = _loader(epoch_idx, sec["batch_size"], lambda b: builder(b, train=True), shuffle=True)
        with comm.join(net):
            for batch in tqdm(loader, desc=f"ranker {epoch + 1}/{sec['epochs']}", disable=not progress, leave=False):
                logits = net(batch)
                loss = model.loss(logits, batch["labels"], task_weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss) * len(batch["user"])
                n += len(batch["user"])
                if step % log_every == 0:
                    on_step(step, float(loss))
                step += 1
        if comm.world > 1:
            total, n = (sum(x) for x in zip(*comm.gather((total, n))))
        val = evaluate_split(model, builder, val_idx, builder.cfg.tasks, implicit, seed, comm)
        val_gauc = val.get(main_task, {}).get("gauc", float("nan"))
        if np.isnan(val_gauc):
            val_gauc = val.get(main_task, {}).get("auc", float("nan"))
        h = {"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_gauc": float(val_gauc),
             "val_auc": float(val.get(main_task, {}).get("auc", float("nan"))), "lr": float(opt.param_groups[0]["lr"])}
        history.append(h)
        if val_gauc > best_val:
            best_val, best_epoch, bad = float(val_gauc), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if comm.is_main:
            save_checkpoint(checkpoint_path, {"epoch": epoch, "model": model.state_dict(), "optim": opt.state_dict(),
                                              "best_state": best_state, "best_val": best_val, "best_epoch": best_epoch,
                                              "bad_epochs": bad, "history": history})
        log(f"ranker epoch {epoch + 1}: train loss {h['train_loss']:.4f}, val {main_task} GAUC {val_gauc:.4f}"
            f"{' (best)' if bad == 0 else ''}")
        on_epoch_end(epoch, h)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch + 1, best_val, resumed_from)
