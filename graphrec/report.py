"""Every table graphrec writes, in one module: a run's ``report.md``, the reports of several seeds, of an
ablation and of the simulated A/B test, and the one-table cards of TensorBoard's text tab.

Plain Python over the metrics dicts (the schema of :mod:`graphrec.evaluation`; aggregated numbers are
``{"mean", "sd", "n", "values"}`` from :mod:`graphrec.seeds`): nothing here computes a metric, so the
pipeline, the seeds, the ablation and the A/B test all render through it and import nothing of each other.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


# ----------------------------------------------------------------------------- numbers
def mean_sd(x: Any) -> Tuple[Optional[float], Optional[float]]:
    """``(mean, sd)`` of an aggregated number, or ``(value, None)`` of a single run's."""
    if isinstance(x, dict) and "mean" in x:
        return x["mean"], x["sd"]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x), None
    return None, None


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a report: ``mean ± sd``, ``–`` when absent, ``n/a`` when NaN (nothing to measure)."""
    mean, sd = mean_sd(x)
    if mean is None:
        return "–"
    if isinstance(mean, float) and math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def is_tie(a: Any, b: Any) -> bool:
    """Whether two aggregated numbers differ by less than the larger of their seed sds."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    if ma is None or mb is None or sa is None or sb is None:
        return False
    return abs(ma - mb) < max(sa, sb)


def _cell(v: Any) -> str:
    """A table cell: numbers by :func:`fmt` (NaN, nothing to measure, is ``n/a``), ``–`` for None."""
    if isinstance(v, dict) or isinstance(v, float):
        return fmt(v)
    return "–" if v is None else str(v)


def _count(v: Any) -> str:
    mean, _ = mean_sd(v)
    return "–" if mean is None else f"{mean:,.0f}"


# ----------------------------------------------------------------------------- TensorBoard text cards
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


# ----------------------------------------------------------------------------- one run
def metrics_tables(evals: Dict[str, Any]) -> List[str]:
    """Markdown tables of ``metrics["eval"]`` (the schema of :mod:`graphrec.evaluation`): per split the
    per-impression metrics, the top-K, and both per user-activity bucket."""
    out: List[str] = []
    for split, models in evals.items():
        out += [f"## Metrics on {split}", "", "| model | label | AUC | UAUC | GAUC |", "|---|---|---|---|---|"]
        topk = []
        for model, entry in models.items():
            for key, rep in entry.items():
                if "@" in key:                             # per bucket: the tables below
                    continue
                if key.startswith("topk"):
                    topk.append((model, key, rep))
                else:
                    out.append(f"| {model} | {key} | {_cell(rep.get('auc'))} | {_cell(rep.get('uauc'))} | "
                               f"{_cell(rep.get('gauc'))} |")
        out.append("")
        if topk:
            skip = {"users", "label", "k", "candidates", "retriever"}
            keys = list(dict.fromkeys(k for _, _, rep in topk for k in rep if k not in skip))   # union, in order
            out += ["| model | ranking | label | " + " | ".join(keys) + " | users |", "|---" * (len(keys) + 4) + "|"]
            for model, key, rep in topk:
                how = "full" if key == "topk" else f"two-stage ({rep.get('retriever')} top {_count(rep.get('candidates'))})"
                out.append(f"| {model} | {how} | {rep.get('label')} | " + " | ".join(_cell(rep.get(k)) for k in keys)
                           + f" | {_count(rep.get('users'))} |")
            out.append("")
        out += bucket_tables(split, models)
    return out


def bucket_tables(split: str, models: Mapping[str, Any]) -> List[str]:
    """The per-bucket entries (``<key>@<bucket>``) of one split as two tables: impression metrics, top-K."""
    rows, topk = [], []
    for model, entry in models.items():
        for key, rep in entry.items():
            if "@" not in key:
                continue
            what, bucket = key.split("@", 1)
            if what == "topk":
                topk.append((model, bucket, rep))
            else:
                rows.append(f"| {model} | {what} | {bucket} | {_cell(rep.get('auc'))} | {_cell(rep.get('uauc'))} | "
                            f"{_cell(rep.get('gauc'))} |")
    out: List[str] = []
    if rows:
        out += [f"### {split}: per user-activity bucket", "",
                "Users grouped by their number of training positives of the main label (`eval.activity_buckets`).", "",
                "| model | label | bucket | AUC | UAUC | GAUC |", "|---|---|---|---|---|---|"] + rows + [""]
    if topk:
        keys = [k for k in topk[0][2] if "@" in k]
        out += ["| model | bucket | " + " | ".join(keys) + " | users |", "|---" * (len(keys) + 3) + "|"]
        out += [f"| {model} | {bucket} | " + " | ".join(_cell(rep.get(k)) for k in keys) + f" | {_count(rep.get('users'))} |"
                for model, bucket, rep in topk] + [""]
    return out


def run_report(m: Mapping[str, Any], name: str) -> str:
    """A run's ``report.md`` from its metrics (``name``: the run folder's)."""
    out = [f"# graphrec run `{name}`", "",
           f"Config: `{m.get('config_file') or '(defaults only)'}`; resolved copy in `config.yaml`.", ""]
    data = m.get("data")
    if data:
        out += ["## Dataset", "", "| what | value |", "|---|---|"]
        out += [f"| {k} | {_cell(v)} |" for k, v in data.items() if not isinstance(v, dict)]
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
                out.append(f"| {label} | {_cell(o['planted_rate'])} | {_cell(o['rate'])} | "
                           f"{_cell(o['expected_auc'])} | {_cell(o['realized_auc'])} |")
            out.append("")
        if "gifting" in data:
            g = data["gifting"]
            out += ["How gifting is spread over the log (simulator):", "", "| what | value |", "|---|---|"]
            out += [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in g.items()] + [""]
    out += metrics_tables(m.get("eval", {}))
    if "ranker" in m:
        r = m["ranker"]
        if r.get("best_epoch"):
            best = (f"best validation {r.get('monitor', '')} {_cell(r.get('best_val'))} at epoch {r.get('best_epoch')}, "
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
        snaps = gm.get("snapshots", [])
        if len(snaps) > 1:
            out += [f"{len(snaps)} graph snapshots; each impression reads the latest cut at or before its time "
                    "(the last above):", "", "| snapshot | cut (s) | u2a edges | users with gifts |", "|---|---|---|---|"]
            out += [f"| {j} | {s['cut']:,} | {s['u2a_edges']:,} | {s['users_with_gifts']:,} |" for j, s in enumerate(snaps)]
            out.append("")
    if "expansion" in m:
        out += ["| metapath | K | filled |", "|---|---|---|"]
        out += [f"| {k} | {m['expansion']['k'][k]} | {_cell(v)} |" for k, v in m["expansion"]["filled"].items()]
        out.append("")
    if "graphcl" in m:
        lp = m["graphcl"]["link_prediction"]
        keys = [k for k in lp["trained"] if k != "pairs"]
        out += ["## GraphCL embeddings: link prediction of held-out gifts", "",
                f"{lp['trained']['pairs']:,} held-out gifts, each ranked against random authors.", "",
                "| Θ | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        out += [f"| {which} | " + " | ".join(_cell(lp[which][k]) for k in keys) + " |" for which in ("untrained", "trained")]
        out.append("")
    if "stat_forecast" in m:
        sf = m["stat_forecast"]
        out += ["## Statistic forecasting (LiveForesighter Table 5 shape)", "",
                f"MSE of the next {len(sf['mse_per_step'])} steps ({sf['space']} counts) on {sf['heldout_rooms']} "
                f"held-out rooms ({sf['heldout_windows']:,} windows).", "", "| technique | MSE |", "|---|---|",
                f"| mean value | {_cell(sf['mse']['mean_value'])} |", f"| latest value | {_cell(sf['mse']['latest_value'])} |",
                f"| LiveForesighter (graphrec) | {_cell(sf['mse']['model'])} |", ""]
    if "product_forecast" in m:
        pf = m["product_forecast"]
        out += ["## Product forecasting (LiveForesighter Table 6 shape)", "",
                f"Next fine-category hit rate over {pf['heldout_predictions']:,} predictions in "
                f"{pf['heldout_rooms']} held-out shopping rooms.", "", "| technique | hit rate |", "|---|---|",
                f"| most frequent category | {_cell(pf['hit_rate']['most_frequent_category'])} |",
                f"| latest category | {_cell(pf['hit_rate']['latest_category'])} |",
                f"| LiveForesighter (graphrec) | {_cell(pf['hit_rate']['model'])} |", ""]
    if "dist" in m:
        out += dist_section(m["dist"])
    if m.get("stages"):
        out += ["## Stages", "", "| stage | status | seconds | peak RSS so far (GiB) |", "|---|---|---|---|"]
        out += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {_cell(s.get('peak_rss_gib'))} |"
                for s in m["stages"]]
        out.append("")
    return "\n".join(out)


def dist_section(d: Mapping[str, Any]) -> List[str]:
    """The keys only a distributed run has (``metrics["dist"]``); its stages are its trainers' steps (rank 0's)."""
    reads = d.get("feature_reads") or {}
    rows = [("trainers", d.get("world_size")), ("partitions", f"{d.get('num_parts')} ({d.get('part_method', '–')})"),
            ("expansions", d.get("expansion")), ("GraphCL on the trainers (s)", d.get("graphcl_seconds")),
            ("ranker training (s)", d.get("train_seconds")), ("trainer wall time (s)", d.get("wall_seconds")),
            ("feature store pulls per batch", reads.get("pulls_per_batch")),
            ("KB per batch from other machines", reads.get("remote_kb_per_batch"))]
    return (["## Distributed run", "", f"Partitions `{d.get('part_dir')}`; the stages below are rank 0's steps.", "",
             "| what | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows if v is not None] + [""])


# ----------------------------------------------------------------------------- several seeds, ablations
def seeds_report(name: str, agg: Mapping[str, Any], config_file: Optional[str]) -> str:
    """Markdown: mean ± sd of every model's metrics over the seeds (:func:`graphrec.seeds.aggregate`)."""
    seeds = agg["seeds"]
    out = [f"# graphrec runs `{name}`: {len(seeds)} seeds", "",
           f"Config: `{config_file or '(defaults only)'}`; seeds {seeds} (`run.seed`), one folder each: "
           + ", ".join(f"`{d}`" for d in agg["runs"]) + ".", "",
           "Every number is the mean ± sample sd over the seeds; each run selects its ranker epoch on validation.", ""]
    out += metrics_tables(agg.get("eval", {}))
    r = agg.get("ranker")
    if r:
        out += ["## Ranker training", "", f"`{r['model']}`, selected on validation {r.get('monitor')}: "
                f"best epoch {fmt(r['best_epoch'], 1)}, epochs run {fmt(r['epochs_run'], 1)}, best validation "
                f"{fmt(r['best_val'])}.", ""]
    out += ["## Time", "", f"Wall time per seed: {fmt(agg['wall_seconds'], 1)} s.", "",
            "| stage | seconds |", "|---|---|"]
    out += [f"| {k} | {fmt(v, 1)} |" for k, v in agg["stage_seconds"].items()]
    return "\n".join(out + [""])


def ablation_report(rows, k: int = 20) -> str:
    """Markdown: one row per ``(variant, metrics, run_dir)``, then popularity, LightGCN and the oracle.
    With several seeds every number is mean ± sd and a variant within the seed sd of the full model is
    marked as a tie (≈)."""
    main_label = next((m["data"]["main_label"] for _, m, _ in rows if "main_label" in m.get("data", {})), None)
    seeds = next((len(m["seeds"]) for _, m, _ in rows if "seeds" in m), 1)
    cols = [("test", main_label, "auc", "test AUC"), ("test", main_label, "uauc", "test UAUC"),
            ("test", main_label, "gauc", "test GAUC"), ("val", main_label, "gauc", "val GAUC"),
            ("test", "topk", f"recall@{k}", f"test Recall@{k}"), ("test", "topk", f"ndcg@{k}", f"test NDCG@{k}"),
            ("test", "topk_two_stage", f"recall@{k}", f"two-stage Recall@{k}")]
    head = ["| variant | model | " + " | ".join(c[3] for c in cols) + " | run |", "|---" * (len(cols) + 3) + "|"]
    full = None
    baselines = {}
    for variant, m, run_dir in rows:
        if "skipped" in m:
            head.append(f"| {variant} | – | {m['skipped']} |" + " |" * (len(cols) - 1) + " |")
            continue
        name = m.get("ranker", {}).get("model")
        ev = m.get("eval", {})
        vals = [ev.get(split, {}).get(name, {}).get(key, {}).get(metric) for split, key, metric, _ in cols]
        if variant == "full":
            full = vals
        cells = []
        for i, v in enumerate(vals):
            tie = full is not None and variant != "full" and is_tie(v, full[i])
            cells.append(fmt(v) + (" ≈" if tie else ""))
        head.append(f"| {variant} | {name} | " + " | ".join(cells) + f" | `{Path(run_dir).name}` |")
        for base in ("popularity", "lightgcn", "oracle"):
            if base in ev.get("test", {}) and base not in baselines:
                baselines[base] = ev
    for base, label in (("popularity", "popularity"), ("lightgcn", "LightGCN"), ("oracle", "oracle (Bayes-optimal)")):
        ev = baselines.get(base)
        if ev is not None:
            vals = [ev.get(split, {}).get(base, {}).get(key, {}).get(metric) for split, key, metric, _ in cols]
            head.append(f"| {label} | – | " + " | ".join(fmt(v) for v in vals) + " | |")
    note = (f"Every number is the mean ± sd over {seeds} seeds; ≈ marks a variant whose gap to the full model is "
            "smaller than the larger seed sd (a tie)." if seeds > 1 else "One seed.")
    return "\n".join(["# Ablations", "", f"Main task: `{main_label}`. Every variant runs the same data and split; "
                      f"each run keeps its best validation epoch. {note} Top-K: the ranker's own full ranking; "
                      "two-stage: LightGCN's top candidates reranked (see README).", ""] + head + [""]
                     + ablation_bucket_table(rows, main_label))


def ablation_bucket_table(rows, label: Optional[str]) -> List[str]:
    """Test AUC and GAUC of the main label per user-activity bucket, one row per variant (≈: a tie with full)."""
    buckets = list(dict.fromkeys(key.split("@", 1)[1] for _, m, _ in rows if "skipped" not in m
                                 for key in m.get("eval", {}).get("test", {}).get(m.get("ranker", {}).get("model"), {})
                                 if key.startswith(f"{label}@")))
    if not buckets:
        return []
    cols = [(b, metric) for b in buckets for metric in ("auc", "gauc")]
    out = ["## Per user-activity bucket (test)", "",
           "Users by their number of training positives of the main label (`eval.activity_buckets`).", "",
           "| variant | " + " | ".join(f"{metric.upper()} {b}" for b, metric in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    full = None
    for variant, m, _ in rows:
        if "skipped" in m:
            continue
        entry = m.get("eval", {}).get("test", {}).get(m.get("ranker", {}).get("model"), {})
        vals = [entry.get(f"{label}@{b}", {}).get(metric) for b, metric in cols]
        full = vals if variant == "full" else full
        cells = [fmt(v) + (" ≈" if full is not None and variant != "full" and is_tie(v, full[i]) else "")
                 for i, v in enumerate(vals)]
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    return out + [""]


# ----------------------------------------------------------------------------- the simulated A/B test
ABTEST_METRICS = {                                     # key -> title (per-user sums: per_user)
    "gifting_users": "share of gifting users",
    "gifts_per_exposure": "gifts / exposure",
    "value_per_exposure": "gift value / exposure",
    "clicks_per_exposure": "clicks / exposure",
    "expected_gifts_per_exposure": "true P(gift) / exposure",
}



def _abtest_cell(v: float, metric: str) -> str:
    if v != v:
        return "–"
    return f"{100 * v:.2f}%" if metric == "gifting_users" else f"{v:.4f}"


def abtest_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], control: str,
                   metrics: Sequence[str] = tuple(ABTEST_METRICS)) -> str:
    """Policies as rows; per metric the value [95% CI] and the lift over the control [95% CI]."""
    head = ["| policy | " + " | ".join(f"{ABTEST_METRICS[m]} | lift vs {control}" for m in metrics) + " |",
            "|---" * (1 + 2 * len(metrics)) + "|"]
    for p, ms in results.items():
        cells = []
        for m in metrics:
            r = ms[m]
            cells.append(f"{_abtest_cell(r['mean'], m)} [{_abtest_cell(r['ci_low'], m)}, {_abtest_cell(r['ci_high'], m)}]")
            if p == control:
                cells.append("(control)")
            elif r["lift"] == r["lift"]:
                cells.append(f"{100 * r['lift']:+.1f}% [{100 * r['lift_ci_low']:+.1f}, {100 * r['lift_ci_high']:+.1f}]")
            else:
                cells.append("–")
        head.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(head)


def abtest_report(results, setup, runs: Mapping[str, str]) -> str:
    """The simulated A/B test's ``report.md`` (:mod:`graphrec.abtest`)."""
    s = setup
    widths = {p: results[p]["gifts_per_exposure"]["ci_high"] - results[p]["gifts_per_exposure"]["ci_low"]
              for p in results}
    runs_md = "\n".join(f"- `{n}`: `{d}`" for n, d in runs.items()) or "- (none)"
    return "\n".join([
        "# Simulated A/B test", "",
        f"World `{s['world']['dataset']}` (simulator seed {s['world']['simulator_seed']}); "
        f"{s['requests']:,} requests from {s['users']:,} users, drawn by activity over the test period "
        f"(steps {s['test_steps'][0]}–{s['test_steps'][1]}); "
        f"{'every room on air' if s['all_candidates'] else str(s['candidates']) + ' random rooms'} as candidates, "
        f"top {s['k']} shown. Outcomes from the true response with common random numbers (paired); "
        f"95% CIs and lifts over `{s['control']}` by a paired bootstrap over users "
        f"({s['bootstrap_resamples']} resamples). Gifts/exposure CI width: "
        + ", ".join(f"{p} {w:.4f}" for p, w in widths.items()) + ".", "",
        abtest_table(results, s["control"]), "",
        "Policies from runs:", runs_md, "",
        f"Seed {s['seed']}; {s['seconds']}s.", ""])
