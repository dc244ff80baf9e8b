"""``python -m graphrec.run --cfg yaml/<name>.yaml [--set section.key=value ...]``

Runs the pipeline (see :mod:`graphrec.pipeline`) and writes ``<run.out_dir>/<name>-<timestamp>/``:
``config.yaml`` (the resolved configuration), ``run.log``, ``metrics.json``, ``report.md`` and the
TensorBoard event files (``tensorboard --logdir runs``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .config import Config, describe_schema, load_config
from .errors import ConfigError, UserError


@dataclass
class RunResult:
    run_dir: Path
    metrics: Dict[str, Any]
    state: Optional[Dict[str, Any]] = None     # the stages' in-memory products (models, graph, dataset)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but torch.cuda.is_available() is False on this machine; "
                          "use run.device=auto or cpu")
    return requested


def make_run_dir(out_dir: Path, name: str) -> Path:
    """A fresh ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>[-n]`` folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        path = out_dir / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"run.out_dir={out_dir}: could not create a new run folder for '{name}'")


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"graphrec.run.{run_dir.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    fh = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO)
    sh.setFormatter(logging.Formatter("[graphrec] %(message)s"))
    log.addHandler(fh)
    log.addHandler(sh)
    return log


def run(cfg: Config, config_file: Optional[str] = None, run_dir: Optional[Path] = None,
        resume: bool = False) -> RunResult:
    """Run the whole pipeline for ``cfg``; returns the run folder and its metrics.

    With ``run_dir`` and ``resume``, an interrupted run continues in its own folder: the stages before
    the ranker are recomputed (deterministically, from the caches) and the ranker continues from its
    last checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    from .data.dataset import atomic_write_text
    from .pipeline import RunContext, run_stages, stage_names

    unknown = [s for s in cfg.run.skip_stages if s not in stage_names()]
    if unknown:
        raise ConfigError(f"run.skip_stages: unknown stage(s) {unknown}; stages are {stage_names()}")
    device = resolve_device(cfg.run.device)
    if run_dir is None:
        run_dir = make_run_dir(Path(cfg.run.out_dir), cfg.run.name)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    log = _logger(run_dir)
    writer = SummaryWriter(log_dir=str(run_dir))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, log=log, writer=writer, device=device,
                     progress=cfg.run.progress and sys.stderr.isatty())
    ctx.metrics["run"] = {"name": cfg.run.name, "dir": str(run_dir), "device": device, "seed": cfg.run.seed}
    ctx.metrics["config_file"] = config_file
    ctx.state["resume"] = resume
    writer.add_text("config", "```yaml\n" + cfg.to_yaml() + "```", 0)
    log.info("%s run folder %s (device %s)", "resuming in" if resume else "new", run_dir, device)
    try:
        run_stages(ctx)
        _write_hparams(writer, cfg, ctx.metrics)
    except BaseException as exc:
        log.error("run failed: %s", exc)
        ctx.metrics["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ctx.save_metrics()
        writer.close()
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)
    return RunResult(run_dir=run_dir, metrics=ctx.metrics, state=ctx.state)


def _write_hparams(writer, cfg: Config, metrics: Dict[str, Any]) -> None:
    """TensorBoard's hparams view: every scalar config value beside the final test metrics."""
    hparams = {f"{sec}.{k}": v for sec, keys in cfg.items() for k, v in keys.items()
               if isinstance(v, (int, float, str, bool))}
    final = {}
    for model, labels in metrics.get("eval", {}).get("test", {}).items():
        for label, rep in labels.items():
            for k, v in rep.items():
                if isinstance(v, float) and v == v:       # skip NaN
                    final[f"hparam/test/{model}/{label}/{k}"] = v
    if final:
        writer.add_hparams(hparams, final, run_name="hparams")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m graphrec.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Every key is documented in graphrec/defaults.yaml (--help-config).")
    ap.add_argument("--cfg", metavar="FILE", help="experiment YAML (e.g. yaml/live.yaml); defaults only if omitted")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one key, YAML syntax for the value (repeatable); wins over --cfg")
    ap.add_argument("--help-config", action="store_true", help="print every config key with type, default, meaning")
    ap.add_argument("--list-stages", action="store_true", help="print the pipeline stages in order")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in its folder (its config.yaml, "
                    "then any --set); the ranker restarts from its last epoch checkpoint")
    ap.add_argument("--ablate", action="store_true", help="run every ablation (full, -GIE, -MFQ, -statistic forecast, "
                    "-product forecast, -GraphCL, DIN) and write one report with a row each")
    return ap


ABLATIONS = {
    "full": [],
    "-GIE": ["ranker.use_gie=false"],
    "-MFQ": ["ranker.use_mfq=false"],
    "-stat_forecast": ["ranker.use_stat_forecast=false", "stat_forecast.enabled=false"],
    "-product_forecast": ["ranker.use_product_forecast=false", "product_forecast.enabled=false"],
    "-GraphCL": ["graphcl.enabled=false"],
    "DIN": ["ranker.use_gie=false", "ranker.use_mfq=false", "ranker.use_stat_forecast=false",
            "ranker.use_product_forecast=false", "graphcl.enabled=false", "stat_forecast.enabled=false",
            "product_forecast.enabled=false"],
}


def run_ablation(cfg_file: Optional[str], overrides: Sequence[str]) -> Path:
    """One run per ablation under ``<out_dir>/<name>-ablate-<time>/`` and a combined ``report.md``."""
    from .data.dataset import atomic_write_text

    base = load_config(cfg_file, overrides)
    parent = make_run_dir(Path(base.run.out_dir), f"{base.run.name}-ablate")
    rows = []
    for variant, extra in ABLATIONS.items():
        cfg = load_config(cfg_file, list(overrides) + extra + [f"run.out_dir={parent}",
                                                               f"run.name={variant.strip('-').replace('_', '-')}"])
        result = run(cfg, config_file=cfg_file)
        rows.append((variant, result.metrics, result.run_dir))
    atomic_write_text(parent / "report.md", ablation_report(rows))
    return parent


def ablation_report(rows) -> str:
    """Markdown: one row per ``(variant, metrics, run_dir)``, then popularity, LightGCN and the oracle."""
    def fmt(x):
        return f"{x:.4f}" if isinstance(x, float) else "–"

    main_label = next((m["data"]["main_label"] for _, m, _ in rows if "main_label" in m.get("data", {})), None)
    head = ["| variant | model | test AUC | test UAUC | test GAUC | val GAUC | test Recall@20 | test NDCG@20 | run |",
            "|---|---|---|---|---|---|---|---|---|"]
    baselines = {}
    for variant, m, run_dir in rows:
        name = m.get("ranker", {}).get("model")
        test = m.get("eval", {}).get("test", {})
        r = test.get(name, {}).get(main_label, {})
        k = test.get(name, {}).get(f"{main_label}_topk", {})
        v = m.get("eval", {}).get("val", {}).get(name, {}).get(main_label, {})
        head.append(f"| {variant} | {name} | {fmt(r.get('auc'))} | {fmt(r.get('uauc'))} | {fmt(r.get('gauc'))} | "
                    f"{fmt(v.get('gauc'))} | {fmt(k.get('recall@20'))} | {fmt(k.get('ndcg@20'))} | `{Path(run_dir).name}` |")
        for base in ("popularity", "lightgcn", "oracle"):
            if base in test and base not in baselines:
                baselines[base] = test[base]
    for base, label in (("popularity", "popularity"), ("lightgcn", "LightGCN"), ("oracle", "oracle (Bayes-optimal)")):
        rep = baselines.get(base, {})
        r, k = rep.get(main_label, {}), rep.get(f"{main_label}_topk", {})
        if r or k:
            head.append(f"| {label} | – | {fmt(r.get('auc'))} | {fmt(r.get('uauc'))} | {fmt(r.get('gauc'))} | – | "
                        f"{fmt(k.get('recall@20'))} | {fmt(k.get('ndcg@20'))} | |")
    return "\n".join(["# Ablations", "", f"Main task: `{main_label}`. Every variant runs the same data, split and "
                      "seed; the ranker's top-K is two-stage (see README).", ""] + head + [""])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.help_config:
            print(describe_schema())
            return 0
        if args.list_stages:
            from .pipeline import STAGES

            for s in STAGES:
                print(f"{s.name:12s} {s.summary}")
            return 0
        if args.ablate:
            parent = run_ablation(args.cfg, args.overrides)
            print(f"ablation report: {parent / 'report.md'}  (tensorboard --logdir {parent})")
            return 0
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").exists():
                raise ConfigError(f"--resume {run_dir}: not a run folder (config.yaml missing)")
            cfg = load_config(run_dir / "config.yaml", args.overrides)
            result = run(cfg, config_file=str(run_dir / "config.yaml"), run_dir=run_dir, resume=True)
        else:
            cfg = load_config(args.cfg, args.overrides)
            result = run(cfg, config_file=args.cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"run folder: {result.run_dir}  (tensorboard --logdir {result.run_dir.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
