"""The ranker stage: assemble the feature store, train the ranker, score validation and test."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..data.dataset import SPLITS
from ..gie.metapath import METAPATHS
from ..models.ranker import Ranker, RankerSpec
from ..stage import RunContext, Stage
from .batches import BatchBuilder, BatchConfig, GiftHistory, side_features
from .store import open_store
from .train import evaluate_split, predict, train_ranker


def enabled_modules(ctx: RunContext) -> Dict[str, Any]:
    """Which ranker modules this run uses: config switches intersected with what exists."""
    sec, ds, st = ctx.cfg.ranker, ctx.dataset, ctx.state
    exp = st.get("expansions", {})
    metapaths = [m for m in METAPATHS if sec.use_gie and sec[f"use_{m}"] and m in exp]
    return {
        "metapaths": metapaths,
        "theta_pretrained": bool(metapaths) and "theta" in st,
        "modalities": ds.modalities() if sec.use_mfq and ds.has("segments") else [],
        "stat_forecast": sec.use_stat_forecast and "stat_forecaster" in st,
        "product_forecast": sec.use_product_forecast and "product_forecaster" in st,
    }


def model_name(mods: Dict[str, Any]) -> str:
    on = mods["metapaths"] or mods["modalities"] or mods["stat_forecast"] or mods["product_forecast"]
    return "mmbee" if on else "din"


def graph_name_for(folder: Path) -> str:
    """DGL names shared memory after the graph: one name per run (or partition) folder."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"graphrec_{Path(folder).name}")


def node_data(ctx: RunContext, mods: Dict[str, Any]):
    """``{ntype: {name: tensor}}``: every ranker feature that lives on the graph's nodes."""
    ds, st = ctx.dataset, ctx.state
    U, A = ds.num_users, ds.num_authors
    data: Dict[str, Dict[str, torch.Tensor]] = {"user": {}, "author": {}, "segment": {}}
    if mods["theta_pretrained"]:
        data["user"]["theta"] = st["theta"][:U].float()
        data["author"]["theta"] = st["theta"][U:].float()
    for m in mods["metapaths"]:
        seed_type = METAPATHS[m][0]
        # int32 as cached (the batch builder widens the rows it reads): at 1M users this halves 480 MB
        data[seed_type][f"exp_{m}"] = torch.from_numpy(np.ascontiguousarray(st["expansions"][m], dtype=np.int32))
    if mods["modalities"]:
        seg = ds.tables["segments"]
        for m in mods["modalities"]:
            data["segment"][m] = torch.from_numpy(seg[m].astype(np.float32, copy=False))   # no copy when float32
            data["segment"][f"{m}_len"] = torch.from_numpy(seg.get(f"{m}_len", np.full(len(seg[m]), seg[m].shape[1])).astype(np.int64))
    if mods["stat_forecast"]:
        stt = ds.tables["stats"]
        values = np.zeros((A,) + stt["values"].shape[1:], np.float32)
        values[stt["author"]] = stt["values"]
        start = np.zeros(A, np.int64)
        start[stt["author"]] = stt["start"]
        data["author"]["stats"] = torch.from_numpy(values)
        data["author"]["stats_start"] = torch.from_numpy(start)
    if mods["product_forecast"]:
        pr = ds.tables["products"]
        counts = np.bincount(pr["author"], minlength=A)
        P = max(int(counts.max()), 1)
        pos = np.arange(len(pr["author"])) - np.concatenate([[0], np.cumsum(counts)])[pr["author"]]
        items = np.zeros((A, P, 4), np.int64)
        times = np.full((A, P), np.iinfo(np.int64).max, np.int64)
        items[pr["author"], pos] = np.stack([pr["product"], pr["cat1"], pr["cat2"], pr["cat3"]], axis=1)
        times[pr["author"], pos] = pr["time"]
        model = st["product_forecaster"]
        data["author"]["prod_feat"] = model.prefix_table(torch.from_numpy(items), torch.from_numpy(counts))
        data["author"]["prod_time"] = torch.from_numpy(times)
    return {nt: d for nt, d in data.items() if d}


def build_ranker(ctx: RunContext, mods: Dict[str, Any], store_dir: Optional[Path] = None, store=None):
    """The ranker, its batch builder and feature store for ``mods`` (see :func:`enabled_modules`).

    Without ``store``, the features are partitioned into ``store_dir`` (default ``<run>/dist``) and
    opened as a standalone ``DistGraph``; a distributed trainer passes its own store."""
    ds, sec, cfg = ctx.dataset, ctx.cfg.ranker, ctx.cfg
    imp = ds.impressions
    tasks = ds.labels
    main = ds.meta.get("main_label", tasks[0])
    implicit = ds.meta.get("feedback") == "implicit"
    truth = ds.meta.get("truth_columns", {})
    seg_author = ds.tables["segments"]["author"] if mods["modalities"] else None
    if store is None:
        store = open_store(ctx.state.get("graph"), ds.num_users, ds.num_authors, seg_author, node_data(ctx, mods),
                           store_dir or ctx.run_dir / "dist", graph_name_for(ctx.run_dir))
    gifts = imp[main] == 1
    history = GiftHistory(imp["user"][gifts], imp["author"][gifts], imp["time"][gifts], ds.num_users)
    stat_sec, prod_sec = cfg.stat_forecast, cfg.product_forecast
    bcfg = BatchConfig(tasks=tasks, hist_len=sec.hist_len, metapaths=mods["metapaths"],
                       theta_pretrained=mods["theta_pretrained"], modalities=mods["modalities"],
                       stat_input_steps=stat_sec.input_steps if mods["stat_forecast"] else 0,
                       stat_log1p=stat_sec.log1p,
                       stat_step_seconds=float(ds.meta.get("stats", {}).get("step_seconds", 30)),
                       product_max_len=prod_sec.max_len if mods["product_forecast"] else 0,
                       implicit_negatives=sec.implicit_negatives if implicit else 0)
    user_side = side_features(ds.tables["users"], truth.get("users", []))
    author_side = side_features(ds.tables["authors"], truth.get("authors", []))
    stat_model = ctx.state.get("stat_forecaster") if mods["stat_forecast"] else None
    prod_model = ctx.state.get("product_forecaster") if mods["product_forecast"] else None
    builder = BatchBuilder(ds, store, bcfg, history, user_side, author_side, stat_model, prod_model, cfg.run.seed)
    stat_dim = 0
    if stat_model is not None:
        stat_dim = stat_model.num_variates * (stat_model.horizon + stat_model.dim)
    spec = RankerSpec(
        num_users=ds.num_users, num_authors=ds.num_authors, tasks=tasks,
        user_cats={k: v[1] for k, v in user_side[0].items()}, author_cats={k: v[1] for k, v in author_side[0].items()},
        user_dense=0 if user_side[1] is None else user_side[1].shape[1],
        author_dense=0 if author_side[1] is None else author_side[1].shape[1],
        id_dim=sec.id_dim, theta_dim=cfg.graphcl.dim, theta_pretrained=mods["theta_pretrained"],
        metapaths=mods["metapaths"], modality_dims={m: int(ds.tables["segments"][m].shape[-1]) for m in mods["modalities"]},
        mfq=dict(cfg.mfq), stat_dim=stat_dim,
        product_cats=prod_model.num_cat3 if prod_model is not None else 0,
        product_enc_dim=prod_model.dim if prod_model is not None else 0, mlp=list(sec.mlp), dropout=sec.dropout)
    torch.manual_seed(cfg.run.seed)
    model = Ranker(spec)
    return model, builder, spec


class RankerStage(Stage):
    name = "ranker"
    section = "ranker"
    summary = "train the MMBee ranker (or the plain DIN baseline) over impressions via DGL's DistDataLoader"

    def run(self, ctx: RunContext) -> None:
        ds, sec, cfg = ctx.dataset, ctx.cfg.ranker, ctx.cfg
        imp = ds.impressions
        mods = enabled_modules(ctx)
        name = model_name(mods)
        tasks = ds.labels
        main = ds.meta.get("main_label", tasks[0])
        implicit = ds.meta.get("feedback") == "implicit"
        model, builder, spec = build_ranker(ctx, mods)
        weights = torch.tensor([sec[f"weight_{t}"] for t in tasks], dtype=torch.float32)
        split = imp["split"]
        train_idx = np.flatnonzero(split == SPLITS["train"])
        val_idx = np.flatnonzero(split == SPLITS["val"])
        test_idx = np.flatnonzero(split == SPLITS["test"])
        ctx.log.info("ranker '%s': modules %s; %s train / %s val / %s test impressions", name,
                     {k: v for k, v in mods.items()}, f"{len(train_idx):,}", f"{len(val_idx):,}", f"{len(test_idx):,}")

        def on_epoch_end(epoch: int, h: Dict[str, float]) -> None:
            for k, v in h.items():
                if k != "epoch":
                    ctx.writer.add_scalar(f"ranker/{k}", v, epoch + 1)

        result = train_ranker(model, builder, train_idx, val_idx, sec, weights, main, cfg.run.seed,
                              ctx.run_dir / "checkpoints" / "ranker_last.pt", resume=ctx.state.get("resume", False),
                              log=ctx.log.info, on_epoch_end=on_epoch_end, progress=ctx.progress,
                              on_step=lambda step, loss: ctx.writer.add_scalar("ranker/train_loss_step", loss, step))
        results = ctx.metrics.setdefault("eval", {})
        neg = sec.eval_negatives if implicit else 0
        for split_name, idx in (("val", val_idx), ("test", test_idx)):
            if len(idx) == 0:
                continue
            rep = evaluate_split(result.model, builder, idx, tasks, neg, cfg.run.seed + 1)
            results.setdefault(split_name, {})[name] = rep
            for task, r in rep.items():
                for k, v in r.items():
                    ctx.writer.add_scalar(f"{split_name}/{name}/{task}/{k}", v, 0)
                ctx.log.info("%s %-10s %-9s auc=%.4f uauc=%.4f gauc=%.4f", split_name, name, task, r["auc"],
                             r["uauc"], r["gauc"])
        if len(test_idx) and not implicit and main in tasks:
            scores = predict(result.model, builder, test_idx)[:, tasks.index(main)]
            ctx.writer.add_pr_curve(f"test/{name}/{main}_pr", torch.from_numpy(imp[main][test_idx].astype(np.int64)),
                                    torch.from_numpy(scores), 0)
        if sec.topk_candidates > 0:
            self._two_stage_topk(ctx, result.model, builder, name, main)
        ctx.metrics["ranker"] = {"model": name, "modules": mods, "history": result.history,
                                 "best_epoch": result.best_epoch, "best_val_gauc": result.best_val,
                                 "resumed_from_epoch": result.resumed_from,
                                 "parameters": int(sum(p.numel() for p in model.parameters()))}
        from ..checkpoint import save_checkpoint

        save_checkpoint(ctx.run_dir / "checkpoints" / "ranker.pt",
                        {"state_dict": result.model.state_dict(), "spec": dataclasses.asdict(spec)})
        ctx.state["ranker"] = result.model
        ctx.state["ranker_builder"] = builder

    def _two_stage_topk(self, ctx: RunContext, model, builder, name: str, main: str) -> None:
        """Full-ranking top-K of the ranker, two-stage: retrieve ``ranker.topk_candidates`` authors per user
        (LightGCN scores when that stage ran, popularity otherwise; training items masked), rerank them
        with the ranker at the user's first impression time of the split; the rest rank below."""
        from ..pipeline import positives_matrix
        from ..topk import full_ranking

        ds, imp = ctx.dataset, ctx.dataset.impressions
        train = imp["split"] == SPLITS["train"]
        train_pos = positives_matrix(ds, main, train)
        retrieve = ctx.state.get("lightgcn_scores")
        if retrieve is None:
            pop = torch.from_numpy(np.asarray(train_pos.sum(axis=0)).ravel().astype(np.float32))
            retrieve = lambda users: pop.expand(len(users), -1).clone()
        n = min(ctx.cfg.ranker.topk_candidates, ds.num_authors)
        task = builder.cfg.tasks.index(main)
        for split_name in ("val", "test"):
            mask = imp["split"] == SPLITS[split_name]
            if not mask.any():
                continue
            first_time = {}
            for u, t in zip(imp["user"][mask][::-1], imp["time"][mask][::-1]):
                first_time[int(u)] = t

            def score_users(users: np.ndarray) -> torch.Tensor:
                base = retrieve(users).float()
                seen = train_pos[users].tocoo()
                base[torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long()] = -float("inf")
                cand = torch.topk(base, n, dim=1).indices                       # [B, n]
                uu = np.repeat(users, n)
                tt = np.array([first_time.get(int(u), 0) for u in users]).repeat(n)
                with torch.no_grad():
                    s = torch.sigmoid(model(builder.build(uu, cand.reshape(-1).numpy(), tt)))[:, task]
                out = torch.full_like(base, -float("inf"))
                out.scatter_(1, cand, s.view(len(users), n).float())
                return out

            rep = full_ranking(score_users, train_pos, positives_matrix(ds, main, mask), k=min(20, ds.num_authors - 1),
                               batch_size=256)
            rep["candidates"] = n
            ctx.metrics.setdefault("eval", {}).setdefault(split_name, {}).setdefault(name, {})[f"{main}_topk"] = rep
            ctx.log.info("%s %s %s two-stage full ranking (%d candidates): %s", split_name, name, main, n,
                         ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items()))
