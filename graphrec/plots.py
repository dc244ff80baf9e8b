"""``python -m graphrec.plots --run RUN_DIR [--ablation ABLATE_DIR] [--abtest ABTEST_DIR] [--out DIR]``

Figures a reader would rather look at than read, as PNG files:

* ``ablation_auc.png`` (with ``--ablation``): test AUC/GAUC of every ablation variant of a
  ``--ablate`` folder beside popularity, LightGCN and the Bayes-optimal oracle;
* ``forecast_vs_truth.png``: the run's statistic forecaster on a held-out room: the input window,
  the true next steps and the forecast, per statistic (the LiveForesighter figure's shape);
* ``ranker_training.png``: the ranker's training loss and validation GAUC per epoch;
* ``abtest.png`` (with ``--abtest``): a simulated A/B test (:mod:`graphrec.abtest`): per online
  metric, every policy's value with its 95% CI and its lift over the control.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import DataError, command


def _metrics(run_dir: Path) -> Dict:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise DataError(f"{path}: not found; --run/--ablation take run folders written by graphrec.run")
    return json.loads(path.read_text())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")                 # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from .data.dataset import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return path


def _main_label(m: Dict) -> str:
    if "main_label" in m["data"]:
        return m["data"]["main_label"]
    from .data.dataset import load_dataset          # runs written before metrics carried it

    return load_dataset(Path(m["data"]["path"])).main_label


def ablation_rows(ablation_dir: Path) -> List[Dict]:
    """``[{variant, auc, gauc, auc_sd, gauc_sd}]`` in the order of :data:`graphrec.run.ABLATIONS`, then the
    baselines; a variant run with several seeds gives its mean and sd."""
    from .run import ABLATIONS
    from .report import mean_sd

    def row(variant: str, rep: Dict, **extra) -> Dict:
        (auc, auc_sd), (gauc, gauc_sd) = mean_sd(rep.get("auc")), mean_sd(rep.get("gauc"))
        return {"variant": variant, "auc": auc, "gauc": gauc, "auc_sd": auc_sd, "gauc_sd": gauc_sd, **extra}

    runs = {}
    for sub in sorted(Path(ablation_dir).iterdir()):
        if (sub / "metrics.json").exists():
            m = _metrics(sub)
            runs[m["run"]["name"] if "run" in m else sub.name] = m
    if not runs:
        raise DataError(f"{ablation_dir}: no run folders with metrics.json (expected a `graphrec.run --ablate` folder)")
    rows, baselines = [], {}
    for variant in ABLATIONS:
        m = runs.get(variant.strip("-").replace("_", "-"))
        if m is None:
            continue
        main = _main_label(m)
        test = m["eval"]["test"]
        rows.append(row(variant, test.get(m["ranker"]["model"], {}).get(main, {})))
        for base in ("popularity", "lightgcn", "oracle"):
            if base in test and main in test[base]:
                baselines.setdefault(base, test[base][main])
    for base in ("popularity", "lightgcn", "oracle"):
        if base in baselines:
            rows.append(row(base, baselines[base], baseline=True))
    return rows


def plot_ablation(ablation_dir: Path, out: Path) -> Path:
    plt = _pyplot()
    rows = ablation_rows(ablation_dir)
    oracle = next((r for r in rows if r["variant"] == "oracle"), None)
    bars = [r for r in rows if r["variant"] != "oracle"]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(bars))
    auc = [r["auc"] or 0 for r in bars]
    gauc = [r["gauc"] or 0 for r in bars]
    colors = ["#bbbbbb" if r.get("baseline") else "#3b6fb6" for r in bars]
    ax.bar(x - 0.2, auc, 0.4, color=colors, label="test AUC", yerr=[r["auc_sd"] or 0 for r in bars], capsize=2)
    ax.bar(x + 0.2, gauc, 0.4, color=colors, alpha=0.55, label="test GAUC", yerr=[r["gauc_sd"] or 0 for r in bars],
           capsize=2)
    for i, v in enumerate(auc):
        ax.text(i - 0.2, v + 0.004, f"{v:.3f}", ha="center", fontsize=7, rotation=90)
    if oracle is not None:
        ax.axhline(oracle["auc"], color="#c0392b", ls="--", lw=1)
        ax.text(len(bars) - 0.5, oracle["auc"] + 0.004, f"Bayes-optimal AUC {oracle['auc']:.3f}", color="#c0392b",
                ha="right", fontsize=8)
    low = min(v for v in auc + gauc if v > 0)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(auc + ([oracle["auc"]] if oracle else [])) + 0.04))
    ax.set_xticks(x, [r["variant"] for r in bars], rotation=30, ha="right")
    ax.set_ylabel("gift (main task)")
    ax.set_title(f"Ablations: {Path(ablation_dir).name}")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out / "ablation_auc.png")


def plot_forecast(run_dir: Path, out: Path, room: Optional[int] = None) -> Path:
    """The statistic forecaster of ``run_dir`` on one held-out room (the median-activity one by default)."""
    import torch

    from .config import load_config
    from .data.dataset import load_dataset
    from .foresight import split_rooms
    from .models.stat_forecaster import StatForecaster

    run_dir = Path(run_dir)
    m = _metrics(run_dir)
    ckpt = run_dir / "checkpoints" / "stat_forecast.pt"
    if not ckpt.exists():
        raise DataError(f"{ckpt}: not found (the run's stat_forecast stage did not run)")
    cfg = load_config(run_dir / "config.yaml")
    sec = cfg.stat_forecast
    ds = load_dataset(Path(m["data"]["path"]))
    values = ds.tables["stats"]["values"].astype(np.float32)
    if sec.log1p:
        values = np.log1p(np.maximum(values, 0.0))
    _, held = split_rooms(np.arange(len(values)), sec.holdout_fraction, cfg.run.seed)
    if room is None:
        activity = values[held].sum(axis=(1, 2))
        room = int(held[np.argsort(activity)[len(held) // 2]])
    I, H = sec.input_steps, sec.horizon
    series = values[room]                                             # [T, F]
    busiest = int(np.argmax([series[t:t + I + H].sum() for t in range(len(series) - I - H + 1)]))
    window = series[busiest:busiest + I]
    truth = series[busiest + I:busiest + I + H]
    model = StatForecaster.from_checkpoint(ckpt)
    with torch.no_grad():
        forecast = model(torch.from_numpy(window[None]))[0][0].numpy()
    names = ds.meta.get("stats", {}).get("features") or [f"statistic {i}" for i in range(series.shape[1])]
    plt = _pyplot()
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    t_in = np.arange(-I, 0)
    t_out = np.arange(0, H)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        ax.plot(t_in, window[:, i], color="#555555", label="input window")
        ax.plot(t_out, truth[:, i], "o-", color="#2e8b57", label="truth")
        ax.plot(t_out, forecast[:, i], "s--", color="#3b6fb6", label="forecast")
        ax.axvline(-0.5, color="#cccccc", lw=1)
        ax.set_title(name, fontsize=9)
        if i >= len(names) - cols:
            ax.set_xlabel("step (relative)")
        if i % cols == 0:
            ax.set_ylabel("log1p(count)" if sec.log1p else "count")
        if i == 0:
            ax.legend(fontsize=7)
    mse = m.get("stat_forecast", {}).get("mse", {})
    fig.suptitle(f"Held-out room {room}: statistic forecast (held-out MSE model {mse.get('model', float('nan')):.3f}, "
                 f"mean value {mse.get('mean_value', float('nan')):.3f}, latest {mse.get('latest_value', float('nan')):.3f})",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "forecast_vs_truth.png")


def plot_training(run_dir: Path, out: Path) -> Path:
    ranker = _metrics(run_dir).get("ranker", {})
    hist = ranker.get("history", [])
    monitor = ranker.get("monitor") or "gauc"
    if not hist:
        raise DataError(f"{run_dir}/metrics.json: no ranker history (the ranker stage did not run)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    epochs = [h["epoch"] for h in hist]
    ax.plot(epochs, [h["train_loss"] for h in hist], "o-", color="#555555", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.get(f"val_{monitor}") for h in hist], "s-", color="#3b6fb6", label=f"val {monitor}")
    ax2.set_ylabel(f"validation {monitor} (main task)")
    if ranker.get("best_epoch"):
        ax2.axvline(ranker["best_epoch"], color="#cccccc", lw=1, ls="--")
    fig.legend(loc="upper center", fontsize=8, ncol=2)
    return _save(fig, out / "ranker_training.png")


def plot_abtest(abtest_dir: Path, out: Path) -> Path:
    """One panel per metric of an A/B test folder's ``abtest.json``: a bar per policy with its 95% CI,
    the control hatched, each bar labelled with its lift over the control."""
    from .report import ABTEST_METRICS as METRICS

    path = Path(abtest_dir) / "abtest.json"
    if not path.exists():
        raise DataError(f"{path}: not found; --abtest takes a folder written by `python -m graphrec.abtest`")
    results = json.loads(path.read_text())
    setup_path = Path(abtest_dir) / "setup.json"
    setup = json.loads(setup_path.read_text()) if setup_path.exists() else {}
    control = setup.get("control")
    policies = list(results)
    metrics = [m for m in METRICS if all(m in results[p] for p in policies)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.6), squeeze=False)
    palette = {"oracle": "#c0392b", "random": "#bbbbbb", "popularity": "#999999"}
    x = np.arange(len(policies))
    for ax, m in zip(axes[0], metrics):
        rows = [results[p][m] for p in policies]
        mean = np.array([r["mean"] for r in rows], dtype=float)
        err = np.array([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]], dtype=float)
        bars = ax.bar(x, mean, yerr=np.clip(err, 0, None), capsize=3,
                      color=[palette.get(p, "#3b6fb6") for p in policies])
        for i, (p, r) in enumerate(zip(policies, rows)):
            if p == control:
                bars[i].set_hatch("//")
            elif r["lift"] == r["lift"]:
                ax.text(i, r["ci_high"], f"{100 * r['lift']:+.1f}%", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, policies, rotation=35, ha="right", fontsize=8)
        ax.set_title(METRICS[m], fontsize=9)
        ax.margins(y=0.15)
    n = f"{setup['requests']:,} requests, top {setup['k']}, " if "requests" in setup else ""
    fig.suptitle(f"Simulated A/B test ({n}95% CIs; lifts vs {control or 'control'}, control hatched)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out) / "abtest.png")


def plot_dose_response(results: Dict, out: Path) -> Path:
    """The full model's paired gains (mean ± sd over seeds) over −GIE and −GraphCL against the world's gift-only
    signal (``simulate.weight_patronage``), test AUC and GAUC, overall and per user-activity bucket
    (:mod:`graphrec.bench.dose`)."""
    plt = _pyplot()
    weights = sorted(results["weights"], key=float)
    x = [float(w) for w in weights]
    over = [v for v in ("-GIE", "-GraphCL", "DIN") if v in results["weights"][weights[0]]["gain_of_full_over"]]
    fig, axes = plt.subplots(len(over), 2, figsize=(10, 3.2 * len(over)), squeeze=False)
    for row, v in enumerate(over):
        for col, metric in enumerate(("auc", "gauc")):
            ax = axes[row][col]
            keys = [k for k in results["weights"][weights[0]]["gain_of_full_over"][v]
                    if k.startswith(f"test {metric}")]
            for key in keys:
                g = [results["weights"][w]["gain_of_full_over"][v][key] for w in weights]
                label = "overall" if "@" not in key else f"users with {key.split('@')[1]} gifts"
                ax.errorbar(x, [e["mean"] for e in g], yerr=[e["sd"] for e in g], marker="o", capsize=3, label=label)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_title(f"full − ({v}): test {metric.upper()}", fontsize=10)
            ax.set_xlabel("simulate.weight_patronage (gift-only signal)")
            ax.set_ylabel("gain (paired, mean ± sd over seeds)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(out))


def plot_learning_curve(results: Dict, out: Path) -> Path:
    """Test AUC and GAUC of each model against the training impressions it saw (one epoch each), with
    popularity and the oracle as reference lines (:func:`graphrec.bench.scale.learning_curve`)."""
    plt = _pyplot()
    c = results["counts"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("auc", "gauc")):
        for model in dict.fromkeys(p["model"] for p in results["curve"]):
            pts = sorted((p["train_impressions"], p["ranker"].get(metric)) for p in results["curve"]
                         if p["model"] == model and p["ranker"].get(metric) is not None)
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=model)
        for ref, style in (("popularity", ":"), ("oracle", "--")):
            vals = [p[ref].get(metric) for p in results["curve"] if p[ref].get(metric) is not None]
            if vals:
                ax.axhline(vals[-1], color="grey", ls=style, lw=1, label=ref)
        ax.set_xscale("log")
        ax.set_xlabel("training impressions seen (one epoch)")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.legend(fontsize=7)
    fig.suptitle(f"Learning curve: {c['users']:,} users, {c['authors']:,} streamers "
                 f"({results['all_train_impressions']:,} training impressions)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out))


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", metavar="RUN_DIR", help="a run folder (forecast and training figures)")
    ap.add_argument("--ablation", metavar="ABLATE_DIR", help="a `graphrec.run --ablate` folder (AUC per variant)")
    ap.add_argument("--abtest", metavar="ABTEST_DIR", help="a `graphrec.abtest` folder (online metrics with CIs)")
    ap.add_argument("--room", type=int, help="room (author id) of the forecast figure; default a held-out one")
    ap.add_argument("--out", default="docs/figures", help="folder for the PNG files (default docs/figures)")
    args = ap.parse_args(argv)
    if not args.run and not args.ablation and not args.abtest:
        ap.error("give --run, --ablation and/or --abtest")
    out = Path(args.out)
    written = []
    if args.ablation:
        written.append(plot_ablation(Path(args.ablation), out))
    if args.abtest:
        written.append(plot_abtest(Path(args.abtest), out))
    if args.run:
        written.append(plot_forecast(Path(args.run), out, args.room))
        written.append(plot_training(Path(args.run), out))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
