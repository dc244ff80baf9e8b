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
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .data.dataset import SPLITS, Dataset, atomic_write_text, load_dataset
from .data.split import time_split
from .data.validate import validate_dataset
from .ranking.stage import RankerStage
from .stage import RunContext, Stage, jsonable


# ----------------------------------------------------------------------------- data
class DataStage(Stage):
    name = "data"
    summary = "build or reuse the canonical dataset, validate it, split train/val/test"

    def run(self, ctx: RunContext) -> None:
        from .data.sources import dataset_dir

        path = dataset_dir(ctx.cfg, progress=ctx.progress, log=ctx.log.info)
        ds = load_dataset(path)
        validate_dataset(ds)
        imp = ds.impressions
        if "split" not in imp:
            imp["split"] = time_split(imp["time"], ctx.cfg.data.val_fraction, ctx.cfg.data.test_fraction)
            ctx.log.info("split by time: val_fraction=%s test_fraction=%s", ctx.cfg.data.val_fraction,
                         ctx.cfg.data.test_fraction)
        split_counts = {s: int((imp["split"] == code).sum()) for s, code in SPLITS.items()}
        counts = ds.counts()
        ctx.state["dataset"] = ds
        ctx.metrics["data"] = {"path": str(path), "name": ds.name, "main_label": ds.meta.get("main_label", ds.labels[0]),
                               **counts, "split": split_counts}
        if "oracle" in ds.meta:
            ctx.metrics["data"]["oracle"] = ds.meta["oracle"]
        ctx.log.info("dataset %s: %s", ds.name, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        ctx.log.info("split: %s", ", ".join(f"{k}={v:,}" for k, v in split_counts.items()))
        for k, v in counts.items():
            ctx.writer.add_scalar(f"data/{k}", v, 0)
        ctx.writer.add_text("data/manifest", "```\n" + json.dumps(ds.manifest(), indent=2, default=jsonable)[:20000]
                            + "\n```", 0)


# ----------------------------------------------------------------------------- GIE
def graph_label(ctx: RunContext) -> str:
    return ctx.cfg.graph.label or ctx.dataset.meta.get("main_label", ctx.dataset.labels[0])


class GraphStage(Stage):
    name = "graph"
    section = "graph"
    summary = "build the U2A/A2U/A2A gifting heterograph (Swing top-k) from training positives"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        label = graph_label(ctx)
        if label not in ctx.dataset.labels:
            return f"graph.label={label!r} is not a label of this dataset {ctx.dataset.labels}"
        return None

    def run(self, ctx: RunContext) -> None:
        from .gie.graph import build_gift_graph, graph_fingerprint

        sec = ctx.cfg.graph
        g = build_gift_graph(ctx.dataset, graph_label(ctx), {
            "alpha": sec.swing_alpha, "a2a_topk": sec.a2a_topk, "max_authors_per_user": sec.max_authors_per_user,
            "max_users_per_author": sec.max_users_per_author}, seed=ctx.cfg.run.seed)
        ctx.state["graph"] = g
        ctx.state["graph_fingerprint"] = graph_fingerprint(g)
        edges = {et: int(g.num_edges(et)) for _, et, _ in g.canonical_etypes}
        ctx.metrics["graph"] = {"label": graph_label(ctx), "fingerprint": ctx.state["graph_fingerprint"],
                                "nodes": {nt: int(g.num_nodes(nt)) for nt in g.ntypes}, "edges": edges,
                                "users_with_gifts": int((g.out_degrees(etype="u2a") > 0).sum())}
        for et, n in edges.items():
            ctx.writer.add_scalar(f"graph/edges_{et}", n, 0)
        ctx.log.info("graph: %s", ", ".join(f"{k}={v:,}" for k, v in edges.items()))


class ExpansionStage(Stage):
    name = "expansion"
    section = "expansion"
    summary = "offline metapath expansions (u2a2u, u2a2u2a, u2a2a, a2a, a2u2a), cached by graph fingerprint"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        if "graph" not in ctx.state:
            return "no graph (stage graph did not run)"
        return None

    def run(self, ctx: RunContext) -> None:
        from .gie.metapath import METAPATHS, load_expansions, offline_expansions, save_expansions

        sec = ctx.cfg.expansion
        ks = {name: sec[f"k_{name}"] for name in METAPATHS}
        params = {"ks": ks, "backend": sec.backend, "retries": sec.retries, "seed": ctx.cfg.run.seed}
        fp = ctx.state["graph_fingerprint"]
        cache = Path(ctx.cfg.data.cache_dir) / "expansions" / f"{fp}-{ctx.cfg.fingerprint('expansion')}-s{ctx.cfg.run.seed}.npz"
        exp = load_expansions(cache, fp, params)
        if exp is None:
            device = ctx.device if sec.backend == "torch" else "cpu"
            exp = offline_expansions(ctx.state["graph"], ks, sec.backend, device, ctx.cfg.run.seed, sec.retries,
                                     progress=ctx.progress)
            save_expansions(cache, exp, fp, params)
        else:
            ctx.log.info("using cached expansions %s", cache)
        save_expansions(ctx.run_dir / "expansions.npz", exp, fp, params)   # served with the run
        ctx.state["expansions"] = exp
        fill = {name: float((ids >= 0).mean()) for name, ids in exp.items()}
        ctx.metrics["expansion"] = {"k": ks, "backend": sec.backend, "filled": fill, "cache": str(cache)}
        for name, f in fill.items():
            ctx.writer.add_scalar(f"expansion/filled_{name}", f, 0)
        ctx.log.info("expansions filled (share of non-padding): %s",
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
    summary = "GraphCL pre-training of node embeddings Θ (L_CE + λ·L_NCE) and its link-prediction check"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        exp = ctx.state.get("expansions", {})
        missing = [m for m in ("u2a2u", "a2u2a") if m not in exp]
        if missing:
            return f"needs the {missing} expansions (positives of Algorithm 1)"
        return None

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .gie.graph import gift_edges
        from .gie.graphcl import link_prediction, train_graphcl

        ds, sec, exp = ctx.dataset, ctx.cfg.graphcl, ctx.state["expansions"]

        def on_epoch(epoch: int, h: Dict[str, float]) -> None:
            for k, v in h.items():
                ctx.writer.add_scalar(f"graphcl/{k}", v, epoch)
            ctx.log.debug("graphcl epoch %d: %s", epoch + 1, h)

        result = train_graphcl(ds.num_users, ds.num_authors, exp["u2a2u"], exp["a2u2a"], sec, ctx.cfg.run.seed,
                               ctx.device, ctx.progress, on_epoch)
        label = graph_label(ctx)
        train = ds.impressions["split"] == SPLITS["train"]
        tu, ta, _, _ = gift_edges(ds, label, train)
        hu, ha, _, _ = gift_edges(ds, label, ~train)
        quality = {"trained": link_prediction(result.model.author_embeddings(), tu, ta, hu, ha, sec.eval_negatives,
                                              ctx.cfg.run.seed),
                   "untrained": link_prediction(result.initial[ds.num_users:], tu, ta, hu, ha, sec.eval_negatives,
                                                ctx.cfg.run.seed)}
        ctx.metrics["graphcl"] = {"final_loss": result.history[-1], "link_prediction": quality}
        for which, q in quality.items():
            for k, v in q.items():
                ctx.writer.add_scalar(f"graphcl/link_{which}/{k}", v, 0)
        ctx.log.info("GraphCL link prediction on %d held-out gifts: trained AUC %.4f MRR %.4f, untrained AUC %.4f "
                     "MRR %.4f", quality["trained"]["pairs"], quality["trained"]["auc"], quality["trained"].get("mrr", float("nan")),
                     quality["untrained"]["auc"], quality["untrained"].get("mrr", float("nan")))
        theta = result.model.theta.weight.detach()
        ctx.state["theta"] = theta
        save_checkpoint(ctx.run_dir / "checkpoints" / "graphcl.pt",
                        {"theta": theta, "num_users": ds.num_users, "num_authors": ds.num_authors, "hparams": dict(sec)})
        ctx.writer.add_embedding(result.model.author_embeddings(), tag="author_theta", metadata=author_labels(ds))


# ----------------------------------------------------------------------------- foresight
class StatForecastStage(Stage):
    name = "stat_forecast"
    section = "stat_forecast"
    summary = "pre-train LiveForesighter's statistic forecaster (RevIN + iTransformer)"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        if not ctx.dataset.has("stats"):
            return "the dataset has no statistic sequences"
        steps = ctx.dataset.tables["stats"]["values"].shape[1]
        need = ctx.cfg.stat_forecast.input_steps + ctx.cfg.stat_forecast.horizon
        if steps < need:
            return f"rooms have {steps} steps, fewer than input_steps + horizon = {need}"
        return None

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .foresight import train_stat_forecaster

        sec = ctx.cfg.stat_forecast
        log_epoch = _epoch_logger(ctx, "stat_forecast/train_mse")
        result = train_stat_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, log_epoch)
        m = result.metrics
        ctx.metrics["stat_forecast"] = m
        for k, v in m["mse"].items():
            ctx.writer.add_scalar(f"stat_forecast/heldout_mse/{k}", v, 0)
        ctx.log.info("statistic forecast MSE (%s) on %d held-out rooms: model %.4f, mean value %.4f, "
                     "latest value %.4f", m["space"], m["heldout_rooms"], m["mse"]["model"],
                     m["mse"]["mean_value"], m["mse"]["latest_value"])
        features = ctx.dataset.meta.get("stats", {}).get("features", [])
        save_checkpoint(ctx.run_dir / "checkpoints" / "stat_forecast.pt", result.model.checkpoint(sec, features))
        ctx.state["stat_forecaster"] = result.model


class ProductForecastStage(Stage):
    name = "product_forecast"
    section = "product_forecast"
    summary = "pre-train LiveForesighter's product forecaster (causal Transformer, next fine category)"

    def missing_inputs(self, ctx: RunContext) -> Optional[str]:
        if not ctx.dataset.has("products"):
            return "the dataset has no product sequences"
        return None

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .foresight import train_product_forecaster

        sec = ctx.cfg.product_forecast
        log_epoch = _epoch_logger(ctx, "product_forecast/train_ce")
        result = train_product_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, log_epoch)
        m = result.metrics
        ctx.metrics["product_forecast"] = m
        for k, v in m["hit_rate"].items():
            ctx.writer.add_scalar(f"product_forecast/heldout_hit_rate/{k}", v, 0)
        ctx.log.info("next-category hit rate on %d held-out shopping rooms: model %.4f, most frequent %.4f, "
                     "latest %.4f", m["heldout_rooms"], m["hit_rate"]["model"],
                     m["hit_rate"]["most_frequent_category"], m["hit_rate"]["latest_category"])
        save_checkpoint(ctx.run_dir / "checkpoints" / "product_forecast.pt",
                        result.model.checkpoint(sec, ctx.dataset.meta["products"]))
        ctx.state["product_forecaster"] = result.model


def _epoch_logger(ctx: RunContext, tag: str):
    def log_epoch(epoch: int, loss: float) -> None:
        ctx.writer.add_scalar(tag, loss, epoch)
        ctx.log.debug("%s epoch %d: %.5f", tag, epoch + 1, loss)
    return log_epoch


# ----------------------------------------------------------------------------- baselines
class LightGCNStage(Stage):
    name = "lightgcn"
    section = "lightgcn"
    summary = "LightGCN baseline (BPR on training positives): full-ranking top-K and per-impression AUC"


    def run(self, ctx: RunContext) -> None:
        import torch

        from .gie.graph import gift_edges
        from .metrics import ranking_report
        from .models.lightgcn import train_lightgcn
        from .topk import full_ranking

        ds, sec = ctx.dataset, ctx.cfg.lightgcn
        imp = ds.impressions
        main = ds.meta.get("main_label", ds.labels[0])
        train = imp["split"] == SPLITS["train"]
        u, a, _, _ = gift_edges(ds, main, train)
        if len(u) == 0:
            ctx.log.info("lightgcn: no training positives of %s; nothing to learn", main)
            return
        model = train_lightgcn(u, a, ds.num_users, ds.num_authors, sec, ctx.cfg.run.seed,
                               lambda e, l: ctx.writer.add_scalar("lightgcn/bpr_loss", l, e))
        with torch.no_grad():
            eu, ea = model.split()
        ctx.state["lightgcn_scores"] = lambda users: eu[torch.as_tensor(users).long()] @ ea.T
        results = ctx.metrics.setdefault("eval", {})
        train_pos = positives_matrix(ds, main, train)
        for split in ("val", "test"):
            mask = imp["split"] == SPLITS[split]
            if not mask.any():
                continue
            test_pos = positives_matrix(ds, main, mask)
            rep = full_ranking(ctx.state["lightgcn_scores"], train_pos, test_pos, k=min(20, ds.num_authors - 1))
            out = results.setdefault(split, {}).setdefault("lightgcn", {})
            out[f"{main}_topk"] = rep
            y = imp[main][mask]
            if y.min() != y.max():
                scores = (eu[torch.from_numpy(imp["user"][mask]).long()] * ea[torch.from_numpy(imp["author"][mask]).long()]).sum(-1)
                out[main] = ranking_report(imp["user"][mask], y, scores.numpy())
            for name, r in out.items():
                for k, v in r.items():
                    ctx.writer.add_scalar(f"{split}/lightgcn/{name}/{k}", v, 0)
            ctx.log.info("%s lightgcn %s full ranking: %s", split, main,
                         ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items()))


# ----------------------------------------------------------------------------- evaluation
def popularity_scores(ds: Dataset, label: str, train: np.ndarray, prior_weight: float = 10.0) -> np.ndarray:
    """Per-author smoothed positive rate of ``label`` on training impressions (the popularity model)."""
    imp = ds.impressions
    a = imp["author"][train]
    y = imp[label][train].astype(np.float64)
    n = np.bincount(a, minlength=ds.num_authors)
    pos = np.bincount(a, weights=y, minlength=ds.num_authors)
    prior = y.mean() if len(y) else 0.0
    return (pos + prior_weight * prior) / (n + prior_weight)


def positives_matrix(ds: Dataset, label: str, mask: np.ndarray):
    import scipy.sparse as sp

    imp = ds.impressions
    keep = mask & (imp[label] == 1)
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (imp["user"][keep], imp["author"][keep])),
                      shape=(ds.num_users, ds.num_authors))
    m.data[:] = 1.0  # duplicates summed by the constructor count once
    return m


class EvaluationStage(Stage):
    name = "evaluation"
    summary = "AUC/UAUC/GAUC per label and full-ranking Recall/NDCG/Precision@20 on val and test"

    def run(self, ctx: RunContext) -> None:
        import torch

        from .metrics import ranking_report
        from .topk import full_ranking

        ds = ctx.dataset
        imp = ds.impressions
        train = imp["split"] == SPLITS["train"]
        results: Dict[str, Any] = ctx.metrics.setdefault("eval", {})
        main = ds.meta.get("main_label", ds.labels[0])
        for split in ("val", "test"):
            mask = imp["split"] == SPLITS[split]
            if not mask.any():
                ctx.log.info("no %s impressions; %s metrics skipped", split, split)
                continue
            for label in ds.labels:
                y = imp[label][mask]
                if y.min() == y.max():
                    ctx.log.info("%s/%s: one class only (%s feedback): AUC undefined, top-K below",
                                 split, label, ds.meta.get("feedback", "explicit"))
                    continue
                models = {"popularity": popularity_scores(ds, label, train)[imp["author"][mask]]}
                if f"p_{label}" in imp:
                    models["oracle"] = imp[f"p_{label}"][mask]
                for model, scores in models.items():
                    rep = ranking_report(imp["user"][mask], y, scores)
                    results.setdefault(split, {}).setdefault(model, {})[label] = rep
                    for m, v in rep.items():
                        ctx.writer.add_scalar(f"{split}/{model}/{label}/{m}", v, 0)
                    ctx.log.info("%s %-10s %-9s auc=%.4f uauc=%.4f gauc=%.4f", split, model, label,
                                 rep["auc"], rep["uauc"], rep["gauc"])
            # full ranking of the main label: popularity by training positives, training items masked
            train_pos = positives_matrix(ds, main, train)
            test_pos = positives_matrix(ds, main, mask)
            if test_pos.nnz:
                pop = torch.from_numpy(np.asarray(train_pos.sum(axis=0)).ravel().astype(np.float32))
                k = min(20, ds.num_authors - 1)
                rep = full_ranking(lambda users: pop.expand(len(users), -1).clone(), train_pos, test_pos, k=k)
                results.setdefault(split, {}).setdefault("popularity", {})[f"{main}_topk"] = rep
                for m, v in rep.items():
                    ctx.writer.add_scalar(f"{split}/popularity/{main}_topk/{m}", v, 0)
                ctx.log.info("%s popularity %s full ranking: %s", split, main,
                             ", ".join(f"{m}={v:.4f}" if isinstance(v, float) else f"{m}={v}" for m, v in rep.items()))


# ----------------------------------------------------------------------------- report
class ReportStage(Stage):
    name = "report"
    summary = "write report.md (dataset, timings, metrics tables)"

    def run(self, ctx: RunContext) -> None:
        atomic_write_text(ctx.run_dir / "report.md", render_report(ctx))
        ctx.log.info("report: %s", ctx.run_dir / "report.md")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def render_report(ctx: RunContext) -> str:
    m = ctx.metrics
    out = [f"# graphrec run `{ctx.run_dir.name}`", "",
           f"Config: `{m.get('config_file') or '(defaults only)'}`; resolved copy in `config.yaml`.", ""]
    data = m.get("data")
    if data:
        out += ["## Dataset", "", "| what | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in data.items() if not isinstance(v, dict)]
        out += [f"| split | {', '.join(f'{k} {v:,}' for k, v in data['split'].items())} |", ""]
        if "oracle" in data:
            out += ["Planted labels (simulator): rate and Bayes-optimal AUC over all impressions.", "",
                    "| label | planted rate | rate | expected oracle AUC | realized oracle AUC |", "|---|---|---|---|---|"]
            for label, o in data["oracle"].items():
                out.append(f"| {label} | {_fmt(o['planted_rate'])} | {_fmt(o['rate'])} | "
                           f"{_fmt(o['expected_auc'])} | {_fmt(o['realized_auc'])} |")
            out.append("")
    for split, models in m.get("eval", {}).items():
        out += [f"## Metrics on {split}", "", "| model | label | AUC | UAUC | GAUC |", "|---|---|---|---|---|"]
        topk = []
        for model, labels in models.items():
            for label, rep in labels.items():
                if label.endswith("_topk"):
                    topk.append((model, label[:-5], rep))
                else:
                    out.append(f"| {model} | {label} | {_fmt(rep['auc'])} | {_fmt(rep['uauc'])} | {_fmt(rep['gauc'])} |")
        out.append("")
        if topk:
            keys = list(dict.fromkeys(k for _, _, rep in topk for k in rep if k != "users"))   # union, in order
            out += ["| model | label | " + " | ".join(keys) + " | users |", "|---" * (len(keys) + 3) + "|"]
            for model, label, rep in topk:
                out.append(f"| {model} | {label} | " + " | ".join(_fmt(rep.get(k)) for k in keys) + f" | {rep['users']} |")
            out.append("")
    if "graph" in m:
        gm = m["graph"]
        out += ["## Gifting graph", "", f"Built from training `{gm['label']}` positives: "
                + ", ".join(f"{k} {v:,} edges" for k, v in gm["edges"].items())
                + f"; {gm['users_with_gifts']:,} users with gifts.", ""]
    if "expansion" in m:
        out += ["| metapath | K | filled |", "|---|---|---|"]
        out += [f"| {k} | {m['expansion']['k'][k]} | {_fmt(v)} |" for k, v in m["expansion"]["filled"].items()]
        out.append("")
    if "graphcl" in m:
        lp = m["graphcl"]["link_prediction"]
        keys = [k for k in lp["trained"] if k != "pairs"]
        out += ["## GraphCL embeddings: link prediction of held-out gifts", "",
                f"{lp['trained']['pairs']:,} held-out gifts, each ranked against random authors.", "",
                "| Θ | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        out += [f"| {which} | " + " | ".join(_fmt(lp[which][k]) for k in keys) + " |" for which in ("untrained", "trained")]
        out.append("")
    if "stat_forecast" in m:
        sf = m["stat_forecast"]
        out += ["## Statistic forecasting (LiveForesighter Table 5 shape)", "",
                f"MSE of the next {len(sf['mse_per_step'])} steps ({sf['space']} counts) on {sf['heldout_rooms']} "
                f"held-out rooms ({sf['heldout_windows']:,} windows).", "", "| technique | MSE |", "|---|---|",
                f"| mean value | {_fmt(sf['mse']['mean_value'])} |", f"| latest value | {_fmt(sf['mse']['latest_value'])} |",
                f"| LiveForesighter (graphrec) | {_fmt(sf['mse']['model'])} |", ""]
    if "product_forecast" in m:
        pf = m["product_forecast"]
        out += ["## Product forecasting (LiveForesighter Table 6 shape)", "",
                f"Next fine-category hit rate over {pf['heldout_predictions']:,} predictions in "
                f"{pf['heldout_rooms']} held-out shopping rooms.", "", "| technique | hit rate |", "|---|---|",
                f"| most frequent category | {_fmt(pf['hit_rate']['most_frequent_category'])} |",
                f"| latest category | {_fmt(pf['hit_rate']['latest_category'])} |",
                f"| LiveForesighter (graphrec) | {_fmt(pf['hit_rate']['model'])} |", ""]
    if m.get("stages"):
        out += ["## Stages", "", "| stage | status | seconds | peak RSS so far (GiB) |", "|---|---|---|---|"]
        out += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {_fmt(s.get('peak_rss_gib'))} |"
                for s in m["stages"]]
        out.append("")
    return "\n".join(out)


STAGES: List[Stage] = [DataStage(), GraphStage(), ExpansionStage(), GraphCLStage(), StatForecastStage(),
                       ProductForecastStage(), LightGCNStage(), RankerStage(), EvaluationStage(), ReportStage()]


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stage_names() -> List[str]:
    return [s.name for s in STAGES]


def run_stages(ctx: RunContext, stages: Optional[List[Stage]] = None) -> None:
    stages = STAGES if stages is None else stages
    skip = set(ctx.cfg.run.skip_stages)
    rows = ctx.metrics.setdefault("stages", [])
    for i, stage in enumerate(stages, start=1):
        row = {"name": stage.name, "status": "ran", "seconds": 0.0}
        rows.append(row)  # before running, so the report stage lists itself
        reason = "skipped by run.skip_stages" if stage.name in skip else stage.skip_reason(ctx)
        if reason:
            row["status"] = f"skipped: {reason}"
            ctx.log.info("[%d/%d] %s: skipped (%s)", i, len(stages), stage.name, reason)
            continue
        ctx.log.info("[%d/%d] %s: %s", i, len(stages), stage.name, stage.summary)
        t0 = time.perf_counter()
        stage.run(ctx)
        row["seconds"] = time.perf_counter() - t0
        row["peak_rss_gib"] = peak_rss_gib()
        ctx.writer.add_scalar(f"time/{stage.name}_seconds", row["seconds"], 0)
        ctx.log.info("[%d/%d] %s: done in %.1fs (peak RSS so far %.2f GiB)", i, len(stages), stage.name,
                     row["seconds"], row["peak_rss_gib"])
        ctx.save_metrics()
