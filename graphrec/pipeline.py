"""The pipeline: an ordered list of stages sharing one run context.

Stages run in the order of :data:`STAGES` (data -> graph -> expansion -> pre-training -> ranker ->
evaluation -> report; the stages of later issues slot into that order). A stage is skipped, with
its reason logged, when ``run.skip_stages`` names it or when its ``skip_reason`` finds its inputs
absent (for example no statistic sequences in the dataset). Everything a stage learns that a later
one needs goes into ``ctx.state``; every number worth keeping goes into ``ctx.metrics``, which is
written to ``metrics.json`` after each stage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .data.dataset import SPLITS, Dataset, atomic_write_text
from .metrics_schema import data_entry, graphcl_entry, stage_row, timed
from .ranking.stage import RankerStage, history_names
from .schema import GRAPHCL_POSITIVES
from .report import counts_table, run_report, summary_text
from .stage import RunContext, Stage, cached_stage_output, jsonable


# ----------------------------------------------------------------------------- data
class DataStage(Stage):
    name = "data"
    summary = "build or reuse the canonical dataset, validate it, split train/val/test"

    def run(self, ctx: RunContext) -> None:
        from .data.sources import load_data

        ds = load_data(ctx.cfg, progress=ctx.progress, log=ctx.log.info)
        if ctx.cfg.ranker.enabled and "ranker" not in ctx.cfg.run.skip_stages:
            history_names(ctx.cfg.ranker.histories, ds)    # names the data defines: fail now, not after pre-training
        main = ds.main_label
        counts = ds.counts()
        ctx.state["dataset"] = ds
        ctx.metrics["data"] = data_entry(ds)
        split_counts, split_positives = ctx.metrics["data"]["split"], ctx.metrics["data"]["split_positives"]
        ctx.log.info("dataset %s: %s", ds.name, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        ctx.log.info("split: %s", ", ".join(f"{k}={v:,} ({split_positives[k]:,} {main} positives)"
                                            for k, v in split_counts.items()))
        for s, n in split_counts.items():
            if n and not split_positives[s]:
                ctx.log.warning("the %s split has no %s positives (of %d impressions): %s", s, main, n,
                                SPLIT_WITHOUT_POSITIVES[s])
        # one text card, not one-point scalar cards that TensorBoard would show before the training curves
        ctx.writer.add_text("data/counts", counts_table(counts, split_counts, split_positives, main), 0)
        ctx.writer.add_text("data/manifest", "```\n" + json.dumps(ds.manifest(), indent=2, default=jsonable)[:20000]
                            + "\n```", 0)


SPLIT_WITHOUT_POSITIVES = {
    "train": "the gifting graph is empty, so GraphCL and LightGCN have nothing to learn and the ranker sees one "
             "class; use more impressions or a higher positive rate",
    "val": "validation metrics are n/a and early stopping has nothing to monitor (the last epoch is kept); "
           "use more impressions or a larger data.val_fraction",
    "test": "test metrics of the main task are n/a; use more impressions or a larger data.test_fraction",
}


# ----------------------------------------------------------------------------- GIE
class GraphStage(Stage):
    name = "graph"
    section = "graph"
    summary = "build the U2A/A2U/A2A gifting heterograph (Swing top-k) from training positives, one per snapshot"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        from .gie.graph import graph_label

        label = graph_label(ctx.cfg, ctx.dataset)
        if label not in ctx.dataset.labels:
            return f"graph.label={label!r} is not a label of this dataset {ctx.dataset.labels}"
        return None

    def run(self, ctx: RunContext) -> None:
        from .data.split import graph_snapshots_for
        from .gie.graph import build_gift_graph, graph_fingerprint, graph_label

        sec = ctx.cfg.graph
        snaps = graph_snapshots_for(ctx.dataset, ctx.cfg)
        swing = {"alpha": sec.swing_alpha, "a2a_topk": sec.a2a_topk, "max_authors_per_user": sec.max_authors_per_user,
                 "max_users_per_author": sec.max_users_per_author}
        label = graph_label(ctx.cfg, ctx.dataset)
        graphs = [build_gift_graph(ctx.dataset, label, swing, seed=ctx.cfg.run.seed, rows=rows) for rows in snaps.rows]
        fps = [graph_fingerprint(g) for g in graphs]
        g = graphs[-1]                                 # the latest: what validation, test and serving read
        ctx.state.update(graph=g, graphs=graphs, snapshots=snaps, graph_fingerprints=fps,
                         graph_fingerprint=fps[0] if len(fps) == 1 else combined_fingerprint(fps))
        edges = {et: int(g.num_edges(et)) for _, et, _ in g.canonical_etypes}
        ctx.metrics["graph"] = {"label": label, "fingerprint": ctx.state["graph_fingerprint"],
                                "nodes": {nt: int(g.num_nodes(nt)) for nt in g.ntypes}, "edges": edges,
                                "users_with_gifts": int((g.out_degrees(etype="u2a") > 0).sum()),
                                "snapshots": [{"cut": None if snaps.cuts is None else int(snaps.cuts[j]),
                                               "u2a_edges": int(gj.num_edges("u2a")),
                                               "users_with_gifts": int((gj.out_degrees(etype="u2a") > 0).sum())}
                                              for j, gj in enumerate(graphs)]}
        summary_text(ctx.writer, "graph/summary", {f"edges {et}": n for et, n in edges.items()})
        ctx.log.info("graph: %s%s", ", ".join(f"{k}={v:,}" for k, v in edges.items()),
                     "" if len(graphs) == 1 else f" (latest of {len(graphs)} snapshots; u2a edges per snapshot "
                     + ", ".join(f"{s['u2a_edges']:,}" for s in ctx.metrics["graph"]["snapshots"]) + ")")


def combined_fingerprint(fingerprints: List[str]) -> str:
    """One fingerprint of several snapshots' graphs (in order)."""
    import hashlib

    return hashlib.sha256("|".join(fingerprints).encode()).hexdigest()[:16]


class ExpansionStage(Stage):
    name = "expansion"
    section = "expansion"
    summary = "offline metapath expansions (u2a2u, u2a2u2a, u2a2a, a2a, a2u2a) per snapshot, cached by graph fingerprint"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        if "graph" not in ctx.state:
            return "no graph (stage graph did not run)"
        return None

    def run(self, ctx: RunContext) -> None:
        from .gie.metapath import METAPATHS, load_expansions, offline_expansions, save_expansions

        sec = ctx.cfg.expansion
        ks = {name: sec[f"k_{name}"] for name in METAPATHS}
        params = {"ks": ks, "backend": sec.backend, "retries": sec.retries, "seed": ctx.cfg.run.seed,
                  "oversample": sec.oversample}
        graphs = ctx.state.get("graphs") or [ctx.state["graph"]]
        fps = ctx.state.get("graph_fingerprints") or [ctx.state["graph_fingerprint"]]
        per_snapshot, caches = [], []
        for g, fp in zip(graphs, fps):
            cache = (Path(ctx.cfg.data.cache_dir) / "expansions"
                     / f"{fp}-{ctx.cfg.fingerprint('expansion')}-s{ctx.cfg.run.seed}.npz")
            exp = load_expansions(cache, fp, params)
            if exp is None:
                device = ctx.device if sec.backend == "torch" else "cpu"
                exp = offline_expansions(g, ks, sec.backend, device, ctx.cfg.run.seed, sec.retries,
                                         progress=ctx.progress, oversample=sec.oversample)
                save_expansions(cache, exp, fp, params)
            else:
                ctx.log.info("using cached expansions %s", cache)
            per_snapshot.append(exp)
            caches.append(str(cache))
        # [N, snapshots, K] per metapath: a row reads the slice of its snapshot (graphrec.ranking.batches)
        exp = {m: np.stack([e[m] for e in per_snapshot], axis=1) for m in per_snapshot[0]}
        save_expansions(ctx.run_dir / "expansions.npz", exp, ctx.state["graph_fingerprint"], params)   # served
        ctx.state["expansions"] = exp
        fill = {name: float((ids[:, -1] >= 0).mean()) for name, ids in exp.items()}
        ctx.metrics["expansion"] = {"k": ks, "backend": sec.backend, "filled": fill, "cache": caches[-1],
                                    "snapshots": len(per_snapshot)}
        if len(per_snapshot) > 1:
            ctx.metrics["expansion"]["filled_per_snapshot"] = {
                name: [float((ids[:, j] >= 0).mean()) for j in range(ids.shape[1])] for name, ids in exp.items()}
        summary_text(ctx.writer, "expansion/summary", {f"{name} filled": f for name, f in fill.items()})
        ctx.log.info("expansions filled (share of non-padding%s): %s",
                     "" if len(per_snapshot) == 1 else ", latest snapshot",
                     ", ".join(f"{k}={v:.3f}" for k, v in fill.items()))


def author_labels(ds: Dataset) -> List[str]:
    """A label per author for TensorBoard's projector: planted cluster, first genre, vertical, or id."""
    authors = ds.tables["authors"]
    if "cluster" in authors:
        return [f"cluster {c}" for c in authors["cluster"].tolist()]
    if "genres" in authors and "genre_names" in ds.meta:
        names = ds.meta["genre_names"]
        return [names[int(np.argmax(g))] if g.any() else "none" for g in authors["genres"]]
    if "shopping" in authors:
        return ["shopping" if s else "talent" for s in authors["shopping"].tolist()]
    return [str(i) for i in range(ds.num_authors)]


class GraphCLStage(Stage):
    name = "graphcl"
    section = "graphcl"
    summary = "GraphCL pre-training of node embeddings Θ (L_CE + λ·L_NCE) per snapshot and its link-prediction check"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        exp = ctx.state.get("expansions", {})
        missing = [m for m in GRAPHCL_POSITIVES.values() if m not in exp]
        if missing:
            return f"needs the {missing} expansions (positives of Algorithm 1)"
        return None

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint

        ds = ctx.dataset
        out = cached_stage_output(ctx, self.name, ("graph", "expansion", "graphcl"), lambda: self.train(ctx),
                                  extra={"graph": ctx.state["graph_fingerprint"]})
        entry = json.loads(out["metrics"])
        ctx.metrics["graphcl"] = entry
        quality, per_snapshot = entry["link_prediction"], entry.get("snapshots")
        summary_text(ctx.writer, "graphcl/summary", {f"link prediction, {which} Θ: {k}": v
                                                       for which, q in quality.items() for k, v in q.items()})
        ctx.log.info("GraphCL (%d epochs, best %d%s) link prediction on %d test gifts: trained AUC %.4f MRR %.4f, "
                     "untrained AUC %.4f MRR %.4f", entry["epochs_run"], entry["best_epoch"],
                     "" if not per_snapshot else f"; latest of {len(per_snapshot)} snapshots, epochs "
                     + ", ".join(str(p["epochs_run"]) for p in per_snapshot),
                     quality["trained"]["pairs"], quality["trained"]["auc"], quality["trained"].get("mrr", float("nan")),
                     quality["untrained"]["auc"], quality["untrained"].get("mrr", float("nan")))
        ctx.state["theta"] = out["theta"]
        save_checkpoint(ctx.run_dir / "checkpoints" / "graphcl.pt",
                        {"theta": out["theta"], "num_users": ds.num_users, "num_authors": ds.num_authors,
                         "hparams": dict(ctx.cfg.graphcl)})
        ctx.writer.add_embedding(out["author_theta"], tag="author_theta", metadata=author_labels(ds))

    @staticmethod
    def train(ctx: RunContext) -> Dict[str, Any]:
        """Θ of every snapshot trained: ``{"theta": [U + A, snapshots, dim], "author_theta": the authors' rows
        of the latest model (TensorBoard's projector), "metrics": the graphcl entry as JSON}``."""
        from .data.split import graph_snapshots_for
        from .gie.graph import graph_label
        from .gie.graphcl import HeldOutGifts, train_graphcl

        ds, sec, exp = ctx.dataset, ctx.cfg.graphcl, ctx.state["expansions"]
        snaps = ctx.state.get("snapshots") or graph_snapshots_for(ds, ctx.cfg)
        thetas, per_snapshot, init, result, gifts, initial = [], [], None, None, None, None
        for j, rows in enumerate(snaps.rows):
            gifts = HeldOutGifts(ds, graph_label(ctx.cfg, ds), rows, sec.eval_negatives, ctx.cfg.run.seed)
            validate = None
            if len(gifts.val[0]):              # early stopping on link prediction of the validation gifts
                def validate(model, epoch: int, gifts=gifts) -> Dict[str, float]:
                    return gifts.validation(model.author_embeddings())
            last = j == len(snaps) - 1
            # each snapshot starts from the previous one's Θ (as a rebuilt graph's Θ is fine-tuned in production),
            # so the snapshots' Θ share one space and the ranker reads them alike
            result = train_graphcl(ds.num_users, ds.num_authors, exp[GRAPHCL_POSITIVES["user"]][:, j],
                                   exp[GRAPHCL_POSITIVES["author"]][:, j], sec, ctx.cfg.run.seed, ctx.device,
                                   ctx.progress, ctx.writer, ctx.log.debug, ctx.cfg.run.amp, validate, init=init,
                                   tag="graphcl" if last else f"graphcl_snapshot{j}")
            if initial is None:
                initial = result.initial
            # out-of-fold graphs all start from the same initial Θ: one warm-started from a graph holding fold k's
            # edges would carry them into fold k's Θ
            init = None if snaps.out_of_fold else result.model.theta.weight.detach().clone()
            thetas.append(result.theta())
            per_snapshot.append({"epochs_run": len(result.history), "best_epoch": result.best_epoch,
                                 "best_val_link_auc": max((h.get("val_link_auc", float("nan")) for h in result.history),
                                                          default=float("nan"))})
        quality = gifts.report(result.model.author_embeddings(), initial[ds.num_users:])
        entry = graphcl_entry(result.history, result.best_epoch, quality, "standalone",
                              snapshots=per_snapshot if len(snaps) > 1 else None)
        return {"theta": torch.stack(thetas, dim=1), "author_theta": result.model.author_embeddings().clone(),
                "metrics": json.dumps(entry, default=jsonable)}


# ----------------------------------------------------------------------------- foresight
class ForecasterStage(Stage):
    """A LiveForesighter forecaster's stage: trained (or read from the stage cache), its entry in the metrics, its
    checkpoint in the run folder (:data:`graphrec.reload.FORECASTER_CHECKPOINTS`) and, read back from that
    checkpoint, the model the ranker uses, so a trained and a cached forecaster are the same model."""

    state_key = ""                     # the artifact name graphrec.ranking.stage.build_ranker reads

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .reload import FORECASTER_CHECKPOINTS

        out = cached_stage_output(ctx, self.name, (self.section,), lambda: self.train(ctx))
        m = json.loads(out["metrics"])
        ctx.metrics[self.name] = m
        self.report(ctx, m)
        path = save_checkpoint(ctx.run_dir / FORECASTER_CHECKPOINTS[self.name], out["checkpoint"])
        ctx.state[self.state_key] = self.model_class().from_checkpoint(path)

    def train(self, ctx: RunContext) -> Dict[str, Any]:
        """``{"checkpoint": the trained model's checkpoint, "metrics": its entry as JSON}``."""
        raise NotImplementedError

    def report(self, ctx: RunContext, m: Dict[str, Any]) -> None:
        """The held-out result in TensorBoard and the log."""
        raise NotImplementedError

    def model_class(self):
        raise NotImplementedError


class StatForecastStage(ForecasterStage):
    name = "stat_forecast"
    section = "stat_forecast"
    state_key = "stat_forecaster"
    summary = "pre-train LiveForesighter's statistic forecaster (RevIN + iTransformer)"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        from .foresight import stat_forecast_shortage

        if not ctx.dataset.has("stats"):
            return "the dataset has no statistic sequences"
        return stat_forecast_shortage(ctx.dataset, ctx.cfg.stat_forecast, ctx.cfg.run.seed)

    def train(self, ctx: RunContext) -> Dict[str, Any]:
        from .foresight import train_stat_forecaster

        sec = ctx.cfg.stat_forecast
        result = train_stat_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, ctx.device, ctx.writer,
                                       ctx.log.debug, ctx.cfg.run.amp)
        features = ctx.dataset.meta.get("stats", {}).get("features", [])
        return {"checkpoint": result.model.checkpoint(sec, features), "metrics": json.dumps(result.metrics, default=jsonable)}

    def report(self, ctx: RunContext, m: Dict[str, Any]) -> None:
        summary_text(ctx.writer, "stat_forecast/summary", {f"held-out MSE, {k}": v for k, v in m["mse"].items()})
        ctx.log.info("statistic forecast MSE (%s) on %d held-out rooms: model %.4f, mean value %.4f, "
                     "latest value %.4f", m["space"], m["heldout_rooms"], m["mse"]["model"],
                     m["mse"]["mean_value"], m["mse"]["latest_value"])

    def model_class(self):
        from .models.stat_forecaster import StatForecaster

        return StatForecaster


class ProductForecastStage(ForecasterStage):
    name = "product_forecast"
    section = "product_forecast"
    state_key = "product_forecaster"
    summary = "pre-train LiveForesighter's product forecaster (causal Transformer, next fine category)"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        from .foresight import product_forecast_shortage

        if not ctx.dataset.has("products"):
            return "the dataset has no product sequences"
        return product_forecast_shortage(ctx.dataset, ctx.cfg.product_forecast, ctx.cfg.run.seed)

    def train(self, ctx: RunContext) -> Dict[str, Any]:
        from .foresight import train_product_forecaster

        sec = ctx.cfg.product_forecast
        result = train_product_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, ctx.device, ctx.writer,
                                          ctx.log.debug, ctx.cfg.run.amp)
        return {"checkpoint": result.model.checkpoint(sec, ctx.dataset.meta["products"]),
                "metrics": json.dumps(result.metrics, default=jsonable)}

    def report(self, ctx: RunContext, m: Dict[str, Any]) -> None:
        summary_text(ctx.writer, "product_forecast/summary",
                     {f"held-out hit rate, {k}": v for k, v in m["hit_rate"].items()})
        ctx.log.info("next-category hit rate on %d held-out shopping rooms: model %.4f, most frequent %.4f, "
                     "latest %.4f", m["heldout_rooms"], m["hit_rate"]["model"],
                     m["hit_rate"]["most_frequent_category"], m["hit_rate"]["latest_category"])

    def model_class(self):
        from .models.product_forecaster import ProductForecaster

        return ProductForecaster


# ----------------------------------------------------------------------------- baselines
class LightGCNStage(Stage):
    name = "lightgcn"
    section = "lightgcn"
    summary = "LightGCN baseline (BPR on training positives, early stopping on validation Recall@K)"

    def run(self, ctx: RunContext) -> None:
        from .evaluation import EmbeddingScorer, activity_buckets, evaluate, record, topk_metrics
        from .fit import FitSpec, fit
        from .gie.graph import gift_edges
        from .models.lightgcn import BPRTask, LightGCN, normalized_adjacency

        ds, sec, cfg = ctx.dataset, ctx.cfg.lightgcn, ctx.cfg
        train = ds.impressions["split"] == SPLITS["train"]
        u, a, _, _ = gift_edges(ds, ds.main_label, train)
        if len(u) == 0:
            ctx.log.info("lightgcn: no training positives of %s; nothing to learn", ds.main_label)
            return
        torch.manual_seed(cfg.run.seed)
        model = LightGCN(ds.num_users, ds.num_authors, normalized_adjacency(u, a, ds.num_users, ds.num_authors),
                         sec.dim, sec.layers)

        def scorer() -> EmbeddingScorer:
            with torch.no_grad():
                eu, ea = model.split()
            return EmbeddingScorer(eu, ea, ds)

        def validate(_model, epoch: int) -> Dict[str, float]:
            rep = topk_metrics(scorer(), ds, "val", cfg.eval.k) or {}
            return {k: float(v) for k, v in rep.items() if k not in ("label", "users", "k")}

        has_val = (ds.impressions["split"] == SPLITS["val"]).any()
        spec = FitSpec(epochs=sec.epochs, lr=sec.lr, seed=cfg.run.seed, patience=sec.patience if has_val else 0,
                       monitor=f"recall@{cfg.eval.k}" if has_val else None, amp=cfg.run.amp, tag="lightgcn")
        result = fit(model, BPRTask(u, a, ds.num_authors, sec.batch_size, sec.reg), spec, ctx.device,
                     writer=ctx.writer, log=ctx.log.debug, progress=ctx.progress,
                     validate=validate if has_val else None)
        model.cpu()
        ctx.log.info("lightgcn: %d epochs (best %d, val %s %.4f)", len(result.history), result.best_epoch,
                     spec.monitor, result.best)
        ctx.metrics["lightgcn"] = {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
                                   "best_val": result.best, "stopped_early": result.stopped_early}
        ctx.state["lightgcn"] = scorer()
        for split in ("val", "test"):
            if (ds.impressions["split"] == SPLITS[split]).any():
                record(ctx.metrics, split, "lightgcn", evaluate(ctx.state["lightgcn"], ds, split, cfg.eval.k,
                                                                cfg.eval.negatives, cfg.run.seed + 1,
                                                                topk=cfg.eval.topk,
                                                                buckets=activity_buckets(ds, cfg.eval.activity_buckets)),
                       ctx.writer, ctx.log.info)


# ----------------------------------------------------------------------------- evaluation
class EvaluationStage(Stage):
    name = "evaluation"
    summary = "the reference models on val and test: popularity and, on simulated data, the oracle"

    def run(self, ctx: RunContext) -> None:
        from .evaluation import Oracle, Popularity, activity_buckets, evaluate, record, split_mask

        ds, cfg = ctx.dataset, ctx.cfg
        pop = Popularity(ds, ds.main_label, split_mask(ds, "train"))
        buckets = activity_buckets(ds, cfg.eval.activity_buckets)
        for split in ("val", "test"):
            if not split_mask(ds, split).any():
                ctx.log.info("no %s impressions; %s metrics skipped", split, split)
                continue
            record(ctx.metrics, split, "popularity",
                   evaluate(pop, ds, split, cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1, topk=cfg.eval.topk,
                            buckets=buckets),
                   ctx.writer, ctx.log.info)
            if any(f"p_{l}" in ds.impressions for l in ds.labels):
                record(ctx.metrics, split, "oracle", evaluate(Oracle(ds), ds, split, topk=False, buckets=buckets),
                       ctx.writer, ctx.log.info)


# ----------------------------------------------------------------------------- report
class ReportStage(Stage):
    name = "report"
    summary = "write report.md (dataset, timings, metrics tables)"

    def run(self, ctx: RunContext) -> None:
        atomic_write_text(ctx.run_dir / "report.md", run_report(ctx.metrics, ctx.run_dir.name))
        ctx.log.info("report: %s", ctx.run_dir / "report.md")


STAGES: List[Stage] = [DataStage(), GraphStage(), ExpansionStage(), GraphCLStage(), StatForecastStage(),
                       ProductForecastStage(), LightGCNStage(), RankerStage(), EvaluationStage(), ReportStage()]


def stage_names() -> List[str]:
    return [s.name for s in STAGES]


def run_stages(ctx: RunContext, stages: Optional[List[Stage]] = None) -> None:
    stages = STAGES if stages is None else stages
    skip = set(ctx.cfg.run.skip_stages)
    rows = ctx.metrics.setdefault("stages", [])
    for i, stage in enumerate(stages, start=1):
        row = stage_row(stage.name)
        rows.append(row)  # before running, so the report stage lists itself
        reason = "skipped by run.skip_stages" if stage.name in skip else stage.skip_reason(ctx)
        if reason:
            row["status"] = f"skipped: {reason}"
            ctx.log.info("[%d/%d] %s: skipped (%s)", i, len(stages), stage.name, reason)
            continue
        ctx.log.info("[%d/%d] %s: %s", i, len(stages), stage.name, stage.summary)
        with timed(row):
            stage.run(ctx)
        ctx.log.info("[%d/%d] %s: done in %.1fs (peak RSS so far %.2f GiB)", i, len(stages), stage.name,
                     row["seconds"], row["peak_rss_gib"])
        ctx.save_metrics()
    summary_text(ctx.writer, "time/stages", {f"{r['name']} ({r['status']})": f"{r['seconds']:.1f} s" for r in rows})
