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
import torch

from .data.dataset import SPLITS, Dataset, atomic_write_text
from .ranking.stage import RankerStage, history_names
from .seeds import mean_sd
from .stage import RunContext, Stage, jsonable


# ----------------------------------------------------------------------------- data
class DataStage(Stage):
    name = "data"
    summary = "build or reuse the canonical dataset, validate it, split train/val/test"

    def run(self, ctx: RunContext) -> None:
        from .data.sources import load_data

        ds = load_data(ctx.cfg, progress=ctx.progress, log=ctx.log.info)
        if ctx.cfg.ranker.enabled and "ranker" not in ctx.cfg.run.skip_stages:
            history_names(ctx.cfg.ranker.histories, ds)    # names the data defines: fail now, not after pre-training
        path = ds.path
        imp = ds.impressions
        main = ds.main_label
        split_counts = {s: int((imp["split"] == code).sum()) for s, code in SPLITS.items()}
        split_positives = {s: int(((imp["split"] == code) & (imp[main] == 1)).sum()) for s, code in SPLITS.items()}
        counts = ds.counts()
        ctx.state["dataset"] = ds
        ctx.metrics["data"] = {"path": str(Path(path).resolve()), "name": ds.name, "main_label": main,
                               "feedback": "implicit" if ds.implicit else "explicit", "timed": ds.timed,
                               **counts, "split": split_counts, "split_positives": split_positives}
        if "oracle" in ds.meta:
            ctx.metrics["data"]["oracle"] = ds.meta["oracle"]
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


def counts_table(counts: Dict[str, int], split_counts: Dict[str, int], split_positives: Dict[str, int],
                 main: str) -> str:
    """The dataset's counts as one Markdown table (TensorBoard's text tab; the run's report has the same)."""
    rows = ["| what | count |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in counts.items()]
    rows += [f"| {s} split | {n:,} impressions, {split_positives[s]:,} {main} positives |"
             for s, n in split_counts.items()]
    return "\n".join(rows)


def summary_text(writer, tag: str, values: Dict[str, Any]) -> None:
    """A stage's one-off numbers as one Markdown table in TensorBoard's text tab: single-point scalar cards
    would sort before the training curves and say nothing a table does not."""
    rows = ["| what | value |", "|---|---|"]
    rows += [f"| {k} | {v:,.4f} |" if isinstance(v, float) else f"| {k} | {v:,} |" if isinstance(v, int)
             else f"| {k} | {v} |" for k, v in values.items()]
    writer.add_text(tag, "\n".join(rows), 0)


# ----------------------------------------------------------------------------- GIE
def graph_label(ctx: RunContext) -> str:
    return ctx.cfg.graph.label or ctx.dataset.main_label


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

        from .data.split import graph_period

        sec = ctx.cfg.graph
        rows, _ = graph_period(ctx.dataset, sec.past_fraction)
        g = build_gift_graph(ctx.dataset, graph_label(ctx), {
            "alpha": sec.swing_alpha, "a2a_topk": sec.a2a_topk, "max_authors_per_user": sec.max_authors_per_user,
            "max_users_per_author": sec.max_users_per_author}, seed=ctx.cfg.run.seed, rows=rows)
        ctx.state["graph"] = g
        ctx.state["graph_fingerprint"] = graph_fingerprint(g)
        edges = {et: int(g.num_edges(et)) for _, et, _ in g.canonical_etypes}
        ctx.metrics["graph"] = {"label": graph_label(ctx), "fingerprint": ctx.state["graph_fingerprint"],
                                "nodes": {nt: int(g.num_nodes(nt)) for nt in g.ntypes}, "edges": edges,
                                "users_with_gifts": int((g.out_degrees(etype="u2a") > 0).sum())}
        summary_text(ctx.writer, "graph/summary", {f"edges {et}": n for et, n in edges.items()})
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
        summary_text(ctx.writer, "expansion/summary", {f"{name} filled": f for name, f in fill.items()})
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
        from .gie.graphcl import HeldOutGifts, train_graphcl

        ds, sec, exp = ctx.dataset, ctx.cfg.graphcl, ctx.state["expansions"]
        gifts = HeldOutGifts(ds, graph_label(ctx), ctx.cfg.graph.past_fraction, sec.eval_negatives, ctx.cfg.run.seed)
        validate = None
        if len(gifts.val[0]):              # early stopping on link prediction of the validation gifts
            def validate(model, epoch: int) -> Dict[str, float]:
                return gifts.validation(model.author_embeddings())
        result = train_graphcl(ds.num_users, ds.num_authors, exp["u2a2u"], exp["a2u2a"], sec, ctx.cfg.run.seed,
                               ctx.device, ctx.progress, ctx.writer, ctx.log.debug, ctx.cfg.run.amp, validate)
        quality = gifts.report(result.model.author_embeddings(), result.initial[ds.num_users:])
        ctx.metrics["graphcl"] = {"final_loss": result.history[-1]["train_loss"], "history": result.history,
                                  "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                                  "link_prediction": quality}
        summary_text(ctx.writer, "graphcl/summary", {f"link prediction, {which} Θ: {k}": v
                                                       for which, q in quality.items() for k, v in q.items()})
        ctx.log.info("GraphCL (%d epochs, best %d) link prediction on %d test gifts: trained AUC %.4f MRR %.4f, "
                     "untrained AUC %.4f MRR %.4f", len(result.history), result.best_epoch, quality["trained"]["pairs"], quality["trained"]["auc"], quality["trained"].get("mrr", float("nan")),
                     quality["untrained"]["auc"], quality["untrained"].get("mrr", float("nan")))
        theta = result.theta()
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
        from .foresight import stat_forecast_shortage

        if not ctx.dataset.has("stats"):
            return "the dataset has no statistic sequences"
        return stat_forecast_shortage(ctx.dataset, ctx.cfg.stat_forecast, ctx.cfg.run.seed)

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .foresight import train_stat_forecaster

        sec = ctx.cfg.stat_forecast
        result = train_stat_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, ctx.device, ctx.writer,
                                       ctx.log.debug, ctx.cfg.run.amp)
        m = result.metrics
        ctx.metrics["stat_forecast"] = m
        summary_text(ctx.writer, "stat_forecast/summary", {f"held-out MSE, {k}": v for k, v in m["mse"].items()})
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
        from .foresight import product_forecast_shortage

        if not ctx.dataset.has("products"):
            return "the dataset has no product sequences"
        return product_forecast_shortage(ctx.dataset, ctx.cfg.product_forecast, ctx.cfg.run.seed)

    def run(self, ctx: RunContext) -> None:
        from .checkpoint import save_checkpoint
        from .foresight import train_product_forecaster

        sec = ctx.cfg.product_forecast
        result = train_product_forecaster(ctx.dataset, sec, ctx.cfg.run.seed, ctx.progress, ctx.device, ctx.writer,
                                          ctx.log.debug, ctx.cfg.run.amp)
        m = result.metrics
        ctx.metrics["product_forecast"] = m
        summary_text(ctx.writer, "product_forecast/summary",
                     {f"held-out hit rate, {k}": v for k, v in m["hit_rate"].items()})
        ctx.log.info("next-category hit rate on %d held-out shopping rooms: model %.4f, most frequent %.4f, "
                     "latest %.4f", m["heldout_rooms"], m["hit_rate"]["model"],
                     m["hit_rate"]["most_frequent_category"], m["hit_rate"]["latest_category"])
        save_checkpoint(ctx.run_dir / "checkpoints" / "product_forecast.pt",
                        result.model.checkpoint(sec, ctx.dataset.meta["products"]))
        ctx.state["product_forecaster"] = result.model


# ----------------------------------------------------------------------------- baselines
class LightGCNStage(Stage):
    name = "lightgcn"
    section = "lightgcn"
    summary = "LightGCN baseline (BPR on training positives, early stopping on validation Recall@K)"

    def run(self, ctx: RunContext) -> None:
        from .evaluation import EmbeddingScorer, evaluate, record, topk_metrics
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
                                                                topk=cfg.eval.topk),
                       ctx.writer, ctx.log.info)


# ----------------------------------------------------------------------------- evaluation
class EvaluationStage(Stage):
    name = "evaluation"
    summary = "the reference models on val and test: popularity and, on simulated data, the oracle"

    def run(self, ctx: RunContext) -> None:
        from .evaluation import Oracle, Popularity, evaluate, record, split_mask

        ds, cfg = ctx.dataset, ctx.cfg
        pop = Popularity(ds, ds.main_label, split_mask(ds, "train"))
        for split in ("val", "test"):
            if not split_mask(ds, split).any():
                ctx.log.info("no %s impressions; %s metrics skipped", split, split)
                continue
            record(ctx.metrics, split, "popularity",
                   evaluate(pop, ds, split, cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1, topk=cfg.eval.topk),
                   ctx.writer, ctx.log.info)
            if any(f"p_{l}" in ds.impressions for l in ds.labels):
                record(ctx.metrics, split, "oracle", evaluate(Oracle(ds), ds, split, topk=False), ctx.writer,
                       ctx.log.info)


# ----------------------------------------------------------------------------- report
class ReportStage(Stage):
    name = "report"
    summary = "write report.md (dataset, timings, metrics tables)"

    def run(self, ctx: RunContext) -> None:
        atomic_write_text(ctx.run_dir / "report.md", render_report(ctx))
        ctx.log.info("report: %s", ctx.run_dir / "report.md")


def _fmt(v: Any) -> str:
    from .seeds import fmt

    if isinstance(v, dict) or isinstance(v, float):
        return fmt(v)            # NaN (nothing to measure, e.g. a split without positives) is "n/a"
    return "–" if v is None else str(v)


def _count(v: Any) -> str:
    mean, _ = mean_sd(v)
    return "–" if mean is None else f"{mean:,.0f}"


def metrics_tables(evals: Dict[str, Any]) -> List[str]:
    """Markdown tables of ``metrics["eval"]`` (the schema of :mod:`graphrec.evaluation`)."""
    out: List[str] = []
    for split, models in evals.items():
        out += [f"## Metrics on {split}", "", "| model | label | AUC | UAUC | GAUC |", "|---|---|---|---|---|"]
        topk = []
        for model, entry in models.items():
            for key, rep in entry.items():
                if key.startswith("topk"):
                    topk.append((model, key, rep))
                else:
                    out.append(f"| {model} | {key} | {_fmt(rep.get('auc'))} | {_fmt(rep.get('uauc'))} | "
                               f"{_fmt(rep.get('gauc'))} |")
        out.append("")
        if topk:
            skip = {"users", "label", "k", "candidates", "retriever"}
            keys = list(dict.fromkeys(k for _, _, rep in topk for k in rep if k not in skip))   # union, in order
            out += ["| model | ranking | label | " + " | ".join(keys) + " | users |", "|---" * (len(keys) + 4) + "|"]
            for model, key, rep in topk:
                how = "full" if key == "topk" else f"two-stage ({rep.get('retriever')} top {_count(rep.get('candidates'))})"
                out.append(f"| {model} | {how} | {rep.get('label')} | " + " | ".join(_fmt(rep.get(k)) for k in keys)
                           + f" | {_count(rep.get('users'))} |")
            out.append("")
    return out


def render_report(ctx: RunContext) -> str:
    m = ctx.metrics
    out = [f"# graphrec run `{ctx.run_dir.name}`", "",
           f"Config: `{m.get('config_file') or '(defaults only)'}`; resolved copy in `config.yaml`.", ""]
    data = m.get("data")
    if data:
        out += ["## Dataset", "", "| what | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in data.items() if not isinstance(v, dict)]
        out += [f"| split | {', '.join(f'{k} {v:,}' for k, v in data['split'].items())} |"]
        if "split_positives" in data:
            pos = data["split_positives"]
            out.append(f"| {data['main_label']} positives per split | "
                       f"{', '.join(f'{k} {_count(v)}' for k, v in pos.items())} |")
            empty = [k for k, v in pos.items() if data["split"].get(k) and mean_sd(v)[0] == 0]
            if empty:
                out += ["", f"**No {data['main_label']} positives in the {' and '.join(empty)} split(s)**: their "
                        f"{data['main_label']} metrics are n/a (see run.log)."]
        out.append("")
        if "oracle" in data:
            out += ["Planted labels (simulator): rate and Bayes-optimal AUC over all impressions.", "",
                    "| label | planted rate | rate | expected oracle AUC | realized oracle AUC |", "|---|---|---|---|---|"]
            for label, o in data["oracle"].items():
                out.append(f"| {label} | {_fmt(o['planted_rate'])} | {_fmt(o['rate'])} | "
                           f"{_fmt(o['expected_auc'])} | {_fmt(o['realized_auc'])} |")
            out.append("")
    out += metrics_tables(m.get("eval", {}))
    if "ranker" in m:
        r = m["ranker"]
        if r.get("best_epoch"):
            best = (f"best validation {r.get('monitor', '')} {_fmt(r.get('best_val'))} at epoch {r.get('best_epoch')}, "
                    "whose weights are reported.")
        else:
            best = (f"no validation {r.get('monitor', '')} could be measured (n/a: no validation split, or no "
                    "positives in it), so the last epoch's weights are reported.")
        out += ["## Ranker training", "",
                f"`{r['model']}`: {r.get('epochs_run', len(r.get('history', [])))} epochs"
                f"{' (stopped early)' if r.get('stopped_early') else ''}; {best}", ""]
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
        ctx.log.info("[%d/%d] %s: done in %.1fs (peak RSS so far %.2f GiB)", i, len(stages), stage.name,
                     row["seconds"], row["peak_rss_gib"])
        ctx.save_metrics()
    summary_text(ctx.writer, "time/stages", {f"{r['name']} ({r['status']})": f"{r['seconds']:.1f} s" for r in rows})
