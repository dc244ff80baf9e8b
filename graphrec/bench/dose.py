"""``python -m graphrec.bench dose``: does MMBee's graph half pay, and for whom, as the world's gift-only signal
grows?

For each ``simulate.weight_patronage`` of ``--weights`` (the fan-club signal that drives gifts and nothing else,
so only the gifting graph reveals it) the ablation of ``--variants`` (full, −GIE, −GraphCL, DIN) runs with
``--seeds`` seeds (``python -m graphrec.run --ablate``, one folder per weight). Written: per weight and variant
the test AUC and GAUC of the main label, overall and per user-activity bucket (``eval.activity_buckets``), as
mean ± sd over the seeds; the **paired gains** of the full model over each other variant (seed by seed: the same
world, seed and split, only the module differs) with their sd; the validation GAUC each run was selected on; and
a figure of the gains against the weight. ``--reuse WEIGHT=ABLATE_DIR`` reads a finished ablation folder instead
of running it again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import write_results

VARIANTS = ("full", "-GIE", "-GraphCL", "DIN")


def _folder(variant: str) -> str:
    return variant.strip("-").replace("_", "-")          # graphrec.run.run_ablation's folder names


def seed_metrics(ablation_dir: Path, variant: str) -> List[Dict[str, Any]]:
    """The metrics.json of every seed of one variant of an ablation folder (seed order)."""
    base = Path(ablation_dir)
    seeds = sorted(base.glob(f"{_folder(variant)}/seed*/metrics.json"), key=lambda p: int(p.parent.name[4:]))
    if not seeds:                                         # one seed: <name>-<time>/metrics.json
        seeds = sorted(base.glob(f"{_folder(variant)}-*/metrics.json"))
    return [json.loads(p.read_text()) for p in seeds]


def run_numbers(m: Mapping[str, Any]) -> Dict[str, float]:
    """``{"<split> <metric>[@<bucket>]": value}`` of the ranker's main label in one run's metrics."""
    label = m["data"]["main_label"]
    model = m["ranker"]["model"]
    out = {}
    for split in ("val", "test"):
        for key, rep in m["eval"].get(split, {}).get(model, {}).items():
            what, _, bucket = key.partition("@")
            if what != label:
                continue
            for metric in ("auc", "gauc"):
                out[f"{split} {metric}" + (f"@{bucket}" if bucket else "")] = float(rep.get(metric, float("nan")))
    return out


def _summary(values: Sequence[float]) -> Dict[str, Any]:
    v = np.array([x for x in values if x == x], float)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v)), "values": v.tolist()}


def summarize(ablation_dir: Path, variants: Sequence[str] = VARIANTS) -> Dict[str, Any]:
    """Per variant the mean ± sd of every number, and per non-full variant the paired gains of full over it."""
    runs = {v: [run_numbers(m) for m in seed_metrics(ablation_dir, v)] for v in variants}
    missing = [v for v, r in runs.items() if not r]
    if missing:
        raise FileNotFoundError(f"{ablation_dir}: no finished runs of {missing}")
    keys = sorted(set.intersection(*(set(r) for rs in runs.values() for r in rs)))
    out: Dict[str, Any] = {"ablation": str(ablation_dir), "seeds": len(runs["full"]),
                           "variants": {v: {k: _summary([r[k] for r in rs]) for k in keys} for v, rs in runs.items()},
                           "gain_of_full_over": {}}
    for v, rs in runs.items():
        if v == "full":
            continue
        n = min(len(rs), len(runs["full"]))
        out["gain_of_full_over"][v] = {k: _summary([runs["full"][i][k] - rs[i][k] for i in range(n)]) for k in keys}
    return out


def _print(weight: float, s: Mapping[str, Any]) -> None:
    cols = [k for k in s["variants"]["full"] if k.startswith("test")]
    print(f"\nweight_patronage {weight}: {s['seeds']} seeds ({s['ablation']})")
    print(f"{'variant':10s} " + " ".join(f"{c:>17s}" for c in cols))
    for v, nums in s["variants"].items():
        print(f"{v:10s} " + " ".join(f"{nums[c]['mean']:8.4f}±{nums[c]['sd']:.4f}" for c in cols))
    for v, gains in s["gain_of_full_over"].items():
        print(f"{'full-' + v:10s} " + " ".join(f"{gains[c]['mean']:+8.4f}±{gains[c]['sd']:.4f}" for c in cols))


def main(argv: Optional[List[str]] = None) -> int:
    from ..config import load_config
    from ..run import ablation_variants, run_ablation

    ap = argparse.ArgumentParser(prog="python -m graphrec.bench dose", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default="yaml/live.yaml", help="experiment YAML of the simulated world")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="simulate.weight_patronage values (default: 0, the configured one and twice it)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated ablation variants")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (graphrec.run --jobs)")
    ap.add_argument("--reuse", nargs="*", default=[], metavar="WEIGHT=ABLATE_DIR",
                    help="finished ablation folders to read instead of running those weights again")
    ap.add_argument("--out", default="runs/bench/dose.json")
    ap.add_argument("--figure", default="docs/figures/graph_dose_response.png")
    args = ap.parse_args(argv)
    variants = ablation_variants(args.variants)
    if "full" not in variants:
        ap.error("--variants must include full (the gains are the full model's)")
    base = load_config(args.cfg, args.overrides)
    weights = args.weights or [0.0, base.simulate.weight_patronage, 2 * base.simulate.weight_patronage]
    reuse = {}
    for spec in args.reuse:
        w, _, d = spec.partition("=")
        reuse[float(w)] = Path(d)
    results: Dict[str, Any] = {"cfg": args.cfg, "overrides": list(args.overrides), "variants": variants, "weights": {}}
    for w in weights:
        folder = reuse.get(float(w))
        if folder is None:
            folder = run_ablation(args.cfg, list(args.overrides) + [f"simulate.weight_patronage={w}",
                                                                    f"run.seeds={args.seeds}", f"run.jobs={args.jobs}"],
                                  variants)
        results["weights"][str(w)] = summarize(folder, variants)
        _print(w, results["weights"][str(w)])
        write_results(results, args.out)                  # after each weight: a long run keeps what it has
    if args.figure:
        from ..plots import plot_dose_response

        print(f"figure: {plot_dose_response(results, Path(args.figure))}")
    return 0
