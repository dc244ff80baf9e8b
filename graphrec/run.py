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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import Config, describe_schema, load_config
from .errors import ConfigError, command


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
    the ranker are rebuilt from the caches (the dataset, the expansions and, with ``run.stage_cache``, the
    pre-training stages' outputs) and the ranker continues from its last checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    from .data.dataset import atomic_write_text
    from .metrics_schema import run_entry
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
    ctx.metrics["run"] = run_entry(cfg, run_dir, device)
    ctx.metrics["config_file"] = config_file
    ctx.metrics["stage_cache"] = {}         # filled by the stages that reuse an earlier run's output
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
    for model, entry in metrics.get("eval", {}).get("test", {}).items():
        for key, rep in entry.items():
            for k, v in rep.items():
                if isinstance(v, float) and v == v:       # skip NaN
                    final[f"hparam/test/{model}/{key}/{k}"] = v
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
    ap.add_argument("--ablate", nargs="?", const="all", metavar="VARIANTS",
                    help="run every ablation (full, -GIE, -MFQ, -stat_forecast, -product_forecast, -GraphCL, DIN), or "
                    "the comma-separated ones named (e.g. --ablate=full,-GIE,-GraphCL,DIN), and write one report with "
                    "a row each")
    ap.add_argument("--seeds", type=int, metavar="N", help="run N seeds (run.seed, run.seed+1, ...) and report mean ± sd "
                    "(sets run.seeds; with --ablate, every variant)")
    ap.add_argument("--jobs", type=int, metavar="N", help="with --seeds / --ablate: N runs at once, each in its own "
                    "process with an equal share of the cores (sets run.jobs)")
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


def _worker_init(parent: int, threads: int) -> None:
    """A :func:`run_many` worker: ``threads`` intra-op threads, and it ends when the process that started
    it ends, however that ends (``kill -9`` included), instead of training on as an orphan."""
    import os
    import threading

    import torch

    from .numerics import flush_denormals

    flush_denormals()                      # before the intra-op threads start: they inherit it
    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _run_child(cfg: Config, config_file: Optional[str], run_dir: str) -> Dict[str, Any]:
    """One run in a worker process of :func:`run_many`; its metrics go back to the parent."""
    return run(cfg, config_file=config_file, run_dir=Path(run_dir)).metrics


def run_many(tasks: Sequence[Tuple[Config, Optional[str], Path]], jobs: int = 1) -> List[Dict[str, Any]]:
    """Run ``(cfg, config_file, run_dir)`` tasks, ``jobs`` at a time, each in its own process with an
    equal share of the cores (one process per run keeps runs independent: logs, seeds, threads);
    returns their metrics in order. ``jobs=1`` runs them one after the other in this process."""
    if jobs <= 1 or len(tasks) <= 1:
        return [run(cfg, config_file=f, run_dir=d).metrics for cfg, f, d in tasks]
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from .data.sources import dataset_dir

    for key in dict.fromkeys(cfg.fingerprint("data", "simulate") for cfg, _, _ in tasks):
        cfg = next(c for c, _, _ in tasks if c.fingerprint("data", "simulate") == key)
        dataset_dir(cfg, log=lambda m: None)        # build the shared dataset cache once, before the workers
    workers = min(jobs, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(os.getpid(), threads)) as pool:
        futures = [pool.submit(_run_child, cfg, f, str(d)) for cfg, f, d in tasks]
        try:
            return [fut.result() for fut in futures]
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _seed_tasks(cfg: Config, config_file: Optional[str], parent: Path):
    """The seeds of ``cfg`` as :func:`run_many` tasks under ``parent`` (``seed<s>/`` each)."""
    from .config import Section

    seeds = [cfg.run.seed + i for i in range(cfg.run.seeds)]
    tasks = []
    for s in seeds:
        one = Config({k: Section(dict(v)) for k, v in cfg.items()})
        one.run["seed"], one.run["seeds"] = s, 1
        child = parent / f"seed{s}"
        child.mkdir(parents=True, exist_ok=True)
        tasks.append((one, config_file, child))
    return seeds, tasks


def _write_seeds_summary(parent: Path, seeds: Sequence[int], runs: Sequence[Dict[str, Any]],
                         config_file: Optional[str]) -> None:
    """The seeds folder's ``metrics.json`` (mean ± sd), ``report.md`` and TensorBoard scalars."""
    import json

    from torch.utils.tensorboard import SummaryWriter

    from .data.dataset import atomic_write_text
    from .report import seeds_report
    from .seeds import aggregate, write_tensorboard
    from .stage import jsonable

    agg = aggregate(runs, seeds, [f"seed{s}" for s in seeds])
    agg["config_file"] = config_file
    atomic_write_text(parent / "metrics.json", json.dumps(agg, indent=2, default=jsonable))
    atomic_write_text(parent / "report.md", seeds_report(parent.name, agg, config_file))
    with SummaryWriter(log_dir=str(parent)) as writer:
        write_tensorboard(writer, agg)


def run_seeds(cfg: Config, config_file: Optional[str] = None, parent: Optional[Path] = None) -> Path:
    """``cfg.run.seeds`` runs under one parent folder (``seed<s>/`` each), ``run.jobs`` at a time, and
    their mean ± sd there (:mod:`graphrec.seeds`)."""
    from .data.dataset import atomic_write_text

    if parent is None:
        parent = make_run_dir(Path(cfg.run.out_dir), f"{cfg.run.name}-seeds")
    atomic_write_text(parent / "config.yaml", cfg.to_yaml())
    seeds, tasks = _seed_tasks(cfg, config_file, parent)
    _write_seeds_summary(parent, seeds, run_many(tasks, cfg.run.jobs), config_file)
    return parent


# a variant that removes a module the dataset cannot have is the full model again: it is not run
NEEDS_TABLE = {"-stat_forecast": "stats", "-product_forecast": "products"}


def ablation_variants(spec: str = "all") -> List[str]:
    """The variants of ``--ablate``: ``all``, or comma-separated names of :data:`ABLATIONS` (any case)."""
    if spec == "all":
        return list(ABLATIONS)
    names = {v.lower(): v for v in ABLATIONS}
    picked = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in picked if s.lower() not in names]
    if unknown or not picked:
        raise ConfigError(f"--ablate {spec!r}: unknown variant(s) {unknown}; choose among {list(ABLATIONS)} "
                          "(comma-separated), or give no value for all of them")
    return [names[s.lower()] for s in dict.fromkeys(picked)]


def run_ablation(cfg_file: Optional[str], overrides: Sequence[str], variants: Sequence[str] = tuple(ABLATIONS)) -> Path:
    """One run (or one seeds folder, with ``run.seeds`` > 1) per ablation ``variants`` under
    ``<out_dir>/<name>-ablate-<time>/``, ``run.jobs`` runs at a time, and a combined ``report.md``."""
    from .data.dataset import atomic_write_text, read_manifest
    from .data.sources import dataset_dir
    from .report import ablation_report

    base = load_config(cfg_file, overrides)
    tables = read_manifest(dataset_dir(base))["tables"]
    parent = make_run_dir(Path(base.run.out_dir), f"{base.run.name}-ablate")
    plan = []          # (variant, skipped-row | None, folder, seeds, tasks)
    for variant in variants:
        extra = ABLATIONS[variant]
        if variant in NEEDS_TABLE and NEEDS_TABLE[variant] not in tables:
            plan.append((variant, {"skipped": f"the dataset has no {NEEDS_TABLE[variant]} table: same as full"},
                         None, None, []))
            continue
        name = variant.strip("-").replace("_", "-")
        cfg = load_config(cfg_file, list(overrides) + extra + [f"run.out_dir={parent}", f"run.name={name}"])
        if cfg.run.seeds > 1:
            folder = parent / name
            folder.mkdir()
            atomic_write_text(folder / "config.yaml", cfg.to_yaml())
            seeds, tasks = _seed_tasks(cfg, cfg_file, folder)
        else:
            folder, seeds = make_run_dir(parent, name), None
            tasks = [(cfg, cfg_file, folder)]
        plan.append((variant, None, folder, seeds, tasks))
    results = iter(run_many([t for *_, tasks in plan for t in tasks], base.run.jobs))
    rows = []
    for variant, skipped, folder, seeds, tasks in plan:
        if skipped is not None:
            rows.append((variant, skipped, None))
            continue
        runs = [next(results) for _ in tasks]
        if seeds is not None:
            _write_seeds_summary(folder, seeds, runs, cfg_file)
            import json
            rows.append((variant, json.loads((folder / "metrics.json").read_text()), folder))
        else:
            rows.append((variant, runs[0], folder))
    atomic_write_text(parent / "report.md", ablation_report(rows, base.eval.k))
    return parent


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.help_config:
        print(describe_schema())
        return 0
    if args.list_stages:
        from .pipeline import STAGES

        for s in STAGES:
            print(f"{s.name:12s} {s.summary}")
        return 0
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
        args.overrides = list(args.overrides) + [f"run.seeds={args.seeds}"]
    if args.jobs is not None:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        args.overrides = list(args.overrides) + [f"run.jobs={args.jobs}"]
    if args.ablate:
        parent = run_ablation(args.cfg, args.overrides, ablation_variants(args.ablate))
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
        if cfg.run.seeds > 1:
            parent = run_seeds(cfg, config_file=args.cfg)
            print(f"{cfg.run.seeds} seeds: {parent / 'report.md'}  (tensorboard --logdir {parent})")
            return 0
        result = run(cfg, config_file=args.cfg)
    print(f"run folder: {result.run_dir}  (tensorboard --logdir {result.run_dir.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
