"""``python -m graphrec.bench scale [--preset full|small]``: the whole pipeline on a large simulated
world, wall time and peak resident memory per stage (DESIGN.md target: ≤ 12 GiB at full size).

Presets (``--set`` overrides anything):
* ``full``: 1,000,000 users, 100,000 streamers, 20,000,000 impressions;
* ``small``: 100,000 users, 10,000 streamers, 2,000,000 impressions;

both with ``graphcl.sparse_updates`` (lazy Adam: a GraphCL step updates only its batch's rows of Θ).

Full-ranking evaluations against every author (LightGCN, the top-K of every model) are off: at
100k authors they would dominate the run without saying anything about the pipeline's scaling.
By default one ranker epoch on a seeded sample of ``--ranker-impressions`` training impressions (a quick
check of time and memory); ``--ranker-impressions 0`` trains on every training impression each epoch, and
``--set ranker.epochs=N --set ranker.patience=P`` makes it a real training run (add
``--set ranker.validation_users=N`` so the per-epoch check does not score 2M validation impressions). The
pipeline runs in a child process; its peak RSS is read from the kernel (``ru_maxrss``), so it includes
everything the process ever held.

``--curve 125000,250000,500000,0 [--models full,DIN]``: a learning curve instead of one run. Each point is
one run of the model (an ``--ablate`` variant) trained for one epoch on a seeded sample of that many training
impressions (0 = every one), so each impression is seen once: test AUC/GAUC against impressions seen, beside
popularity and the oracle (which read every training impression). The pre-training stages are shared
through the stage cache (``run.stage_cache``), so the points after the first train the ranker only.
``--figure PATH`` draws it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

# GraphCL with lazy Adam over the batch's rows: dense Adam's every step updates all 1.1M rows of Θ (docs/gie.md)
SIZED = ["graphcl.sparse_updates=true"]
PRESETS = {
    "full": ["simulate.num_users=1000000", "simulate.num_authors=100000", "simulate.num_impressions=20000000"] + SIZED,
    "small": ["simulate.num_users=100000", "simulate.num_authors=10000", "simulate.num_impressions=2000000"] + SIZED,
}
FIXED = ["lightgcn.enabled=false", "eval.topk=false", "eval.two_stage_candidates=0", "ranker.epochs=1",
         "run.progress=false"]


def run(preset: str, overrides: List[str], ranker_impressions: int, workdir: Path, cfg: Optional[str] = None,
        log=print) -> Dict:
    sets = PRESETS[preset] + FIXED + [f"ranker.max_train_impressions={ranker_impressions}",
                                      f"run.out_dir={workdir / 'runs'}", f"run.name=scale-{preset}"] + list(overrides)
    argv = [sys.executable, "-m", "graphrec.run"] + (["--cfg", cfg] if cfg else [])
    for s in sets:
        argv += ["--set", s]
    log(f"running the pipeline ({preset}); its log: {workdir / 'runs'}/scale-{preset}-*/run.log")
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if r.returncode != 0:
        raise RuntimeError(f"pipeline failed ({r.returncode}):\n{r.stderr[-4000:]}")
    run_dir = Path(r.stdout.split("run folder: ", 1)[1].split()[0])
    m = json.loads((run_dir / "metrics.json").read_text())
    stages = [{"stage": s["name"], "status": s["status"], "seconds": s["seconds"], "peak_rss_gib": s.get("peak_rss_gib")}
              for s in m["stages"]]
    train = m["data"]["split"]["train"]
    ranker_s = next((s["seconds"] for s in m["stages"] if s["name"] == "ranker"), None)
    return {"preset": preset, "overrides": sets, "counts": {k: m["data"][k] for k in ("users", "authors", "impressions")},
            "train_impressions": train, "ranker_sample": min(ranker_impressions or train, train), "stages": stages,
            "wall_seconds": wall, "peak_rss_gib": peak_gib, "target_gib": 12.0, "run_dir": str(run_dir),
            "ranker_seconds": ranker_s, "ranker": ranker_summary(m)}


def ranker_summary(m: Dict) -> Dict:
    """The ranker's epochs (their history: loss, validation, seconds), its best epoch and the test AUC/GAUC of
    the main label of every model the run scored (the ranker, popularity, the oracle), from its metrics.json."""
    r = m.get("ranker", {})
    test = m.get("eval", {}).get("test", {})
    label = m["data"].get("main_label", "gift")
    return {"model": r.get("model"), "epochs_run": len(r.get("history", [])), "best_epoch": r.get("best_epoch"),
            "history": r.get("history", []),
            "test": {name: {k: e.get(label, {}).get(k) for k in ("auc", "gauc")} for name, e in test.items()}}


def learning_curve(preset: str, overrides: List[str], sizes: List[int], models: List[str], workdir: Path,
                   cfg: Optional[str] = None, log=print) -> Dict:
    """One :func:`run` per model (``--ablate`` variant) and sample size, one epoch each: ``{"curve": [point]}``,
    a point holding the model, its training impressions, the ranker's test AUC/GAUC and those of popularity and
    the oracle, the ranker stage's seconds and the run folder."""
    from ..run import ABLATIONS

    points = []
    for model in models:
        for n in sizes:
            log(f"learning curve: {model} on {'every training impression' if n == 0 else f'{n:,} training impressions'}")
            res = run(preset, list(overrides) + ABLATIONS[model] + ["ranker.epochs=1"], n, workdir, cfg, log)
            test = res["ranker"]["test"]
            points.append({"model": model, "train_impressions": res["ranker_sample"],
                           "ranker": test.get(res["ranker"]["model"], {}), "popularity": test.get("popularity", {}),
                           "oracle": test.get("oracle", {}), "ranker_seconds": res["ranker_seconds"],
                           "run_dir": res["run_dir"]})
    return {"preset": preset, "counts": res["counts"], "overrides": res["overrides"], "curve": points,
            "all_train_impressions": res["train_impressions"]}


def format_curve(res: Dict) -> str:
    c = res["counts"]
    lines = [f"learning curve, preset {res['preset']}: {c['users']:,} users, {c['authors']:,} authors, "
             f"{res['all_train_impressions']:,} training impressions; one epoch per point, test AUC / GAUC",
             f"{'model':8s} {'impressions':>12s} {'AUC':>7s} {'GAUC':>7s} {'pop AUC':>8s} {'pop GAUC':>9s} "
             f"{'oracle AUC':>11s} {'ranker s':>9s}"]

    def f(x):
        return float("nan") if x is None else x
    for p in res["curve"]:
        lines.append(f"{p['model']:8s} {p['train_impressions']:12,d} {f(p['ranker'].get('auc')):7.4f} "
                     f"{f(p['ranker'].get('gauc')):7.4f} {f(p['popularity'].get('auc')):8.4f} "
                     f"{f(p['popularity'].get('gauc')):9.4f} {f(p['oracle'].get('auc')):11.4f} "
                     f"{f(p['ranker_seconds']):9.1f}")
    return "\n".join(lines)


def format_table(res: Dict) -> str:
    c = res["counts"]
    lines = [f"preset {res['preset']}: {c['users']:,} users, {c['authors']:,} authors, {c['impressions']:,} impressions",
             f"{'stage':18s} {'status':44s} {'seconds':>9s} {'peak RSS so far':>16s}"]
    for s in res["stages"]:
        rss = f"{s['peak_rss_gib']:.2f} GiB" if s["peak_rss_gib"] is not None else "–"
        lines.append(f"{s['stage']:18s} {s['status'][:44]:44s} {s['seconds']:9.1f} {rss:>16s}")
    lines.append(f"whole run: {res['wall_seconds']:.0f} s wall, peak RSS {res['peak_rss_gib']:.2f} GiB "
                 f"(target ≤ {res['target_gib']:.0f} GiB: {'met' if res['peak_rss_gib'] <= res['target_gib'] else 'NOT met'})")
    r = res["ranker"]
    lines.append(f"ranker: {r['epochs_run']} epoch(s) of {res['ranker_sample']:,} of {res['train_impressions']:,} training "
                 f"impressions each, best epoch {r['best_epoch']} (seconds include validation and test scoring)")
    for name, t in r["test"].items():
        lines.append(f"test {name:12s} AUC {t['auc'] if t['auc'] is not None else float('nan'):.4f}  "
                     f"GAUC {t['gauc'] if t['gauc'] is not None else float('nan'):.4f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.bench scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--cfg", help="experiment YAML under the preset (default: the built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--ranker-impressions", type=int, default=1_000_000,
                    help="training impressions of each ranker epoch (a fresh seeded sample); 0 = every one")
    ap.add_argument("--curve", type=sizes_arg, metavar="N,N,...",
                    help="a learning curve: one run per model and training-sample size (0 = every impression)")
    ap.add_argument("--models", type=models_arg, default=["full", "DIN"], metavar="VARIANT,...",
                    help="with --curve: the --ablate variants to train (default full,DIN)")
    ap.add_argument("--figure", help="with --curve: draw it into this PNG")
    ap.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    ap.add_argument("--out", help="JSON results (default runs/bench/scale-<preset>.json, curve-<preset>.json)")
    args = ap.parse_args(argv)
    if args.figure and not args.curve:
        ap.error("--figure draws a learning curve: give --curve too")
    log = lambda m: print(f"[bench scale] {m}", file=sys.stderr, flush=True)   # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        if args.curve:
            res = learning_curve(args.preset, args.overrides, args.curve, args.models, workdir, args.cfg, log)
        else:
            res = run(args.preset, args.overrides, args.ranker_impressions, workdir, args.cfg, log)
    print(format_curve(res) if args.curve else format_table(res))
    from . import write_results

    write_results(res, args.out or f"runs/bench/{'curve' if args.curve else 'scale'}-{args.preset}.json")
    if args.figure:
        from ..plots import plot_learning_curve

        print(f"figure: {plot_learning_curve(res, Path(args.figure))}")
    return 0


def sizes_arg(text: str) -> List[int]:
    """``--curve``'s comma-separated sample sizes (0 = every training impression)."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 250000,1000000,0")
    if not sizes or any(n < 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more sizes ≥ 0 (0 = every training impression)")
    return sizes


def models_arg(text: str) -> List[str]:
    """``--models``: ``--ablate`` variants (any case)."""
    from ..errors import ConfigError
    from ..run import ablation_variants

    try:
        return ablation_variants(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc))
