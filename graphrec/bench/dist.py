"""``python -m graphrec.bench dist``: the same world trained standalone, on one machine with several
trainers, and on two simulated machines (network namespaces, root only), side by side.

Reports per setup the ranker's training wall time, the trainers' whole wall time (connect, load,
train, evaluate), the main task's validation/test AUC and, for the distributed setups, the feature
store's pulls and the KB read from the other machine's server per batch (``metrics.json``'s
``dist.feature_reads``, over every trainer's training and validation batches), and GraphCL's seconds and
test link-prediction AUC: the standalone stage's, and for the distributed setups the trainers'
(``graphcl.distributed=true``, the default here) or, with ``--standalone-graphcl``, the partition
step's. Every setup uses the same data, seed and
hyper-parameters; DDP averages the gradients of ``world`` batches per step, so a distributed epoch
takes ``world`` times fewer optimizer steps than a standalone one.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

COMMON = ["eval.topk=false", "eval.two_stage_candidates=0", "lightgcn.enabled=false", "run.progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sets(overrides: List[str]) -> List[str]:
    return [a for o in overrides for a in ("--set", o)]


def _run(argv: List[str], env=None, timeout: float = 3600) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def _graphcl(metrics: Dict) -> Dict:
    """GraphCL's seconds and test link AUC of a run: the trainers' (``graphcl.distributed``), else the stage's
    of the run itself (standalone) or of the partition step's run (distributed with a standalone Θ)."""
    if "graphcl" not in metrics and "part_dir" in metrics.get("dist", {}):
        prepared = json.loads((Path(metrics["dist"]["part_dir"]) / "prepared.json").read_text())
        metrics = json.loads((Path(prepared["prepared_by"]) / "metrics.json").read_text())
        metrics.setdefault("dist", {})
    g = metrics.get("graphcl")
    if not g:
        return {"graphcl_seconds": None, "graphcl_link_auc": None, "graphcl_mode": None}
    seconds = g.get("seconds", next((s["seconds"] for s in metrics.get("stages", []) if s["name"] == "graphcl"), None))
    return {"graphcl_seconds": seconds, "graphcl_link_auc": g["link_prediction"]["trained"]["auc"],
            "graphcl_mode": g.get("mode", "standalone")}


def _row(setup: str, processes: str, main: str, metrics: Dict, train_s: float, wall_s: float) -> Dict:
    ev, model = metrics["eval"], metrics["ranker"]["model"]
    reads = metrics.get("dist", {}).get("feature_reads", {})

    def pick(split: str) -> Dict:
        return ev[split][model].get(main, {})
    return {"setup": setup, "processes": processes, "train_seconds": train_s, "wall_seconds": wall_s,
            "val_auc": pick("val").get("auc"), "val_gauc": pick("val").get("gauc"), "test_auc": pick("test").get("auc"),
            "epochs": len(metrics["ranker"]["history"]), "pulls_per_batch": reads.get("pulls_per_batch"),
            "remote_kb_per_batch": reads.get("remote_kb_per_batch"), **_graphcl(metrics)}


def run(cfg: Optional[str], overrides: List[str], trainers: int, workdir: Path, log=print,
        dist_graphcl: bool = True) -> Dict:
    py = sys.executable
    base = ([] if cfg is None else ["--cfg", cfg]) + _sets(COMMON + [f"graphcl.distributed={str(dist_graphcl).lower()}"]
                                                           + list(overrides) + [
        f"run.out_dir={workdir / 'runs'}", f"dist.master_port={_free_port()}"])
    rows = []
    log("standalone ...")
    t0 = time.perf_counter()
    r = _run([py, "-m", "graphrec.run", *base])
    run_dir = Path(r.stdout.split("run folder: ", 1)[1].split()[0])
    m = json.loads((run_dir / "metrics.json").read_text())
    main = m["data"]["main_label"]
    ranker_s = next(s["seconds"] for s in m["stages"] if s["name"] == "ranker")
    rows.append(_row("standalone", "1 process", main, m, ranker_s, time.perf_counter() - t0))

    log(f"1 machine x {trainers} trainers ...")
    _run([py, "-m", "graphrec.partition", "--num-parts", "1", *base])
    ip = workdir / "ip1.txt"
    ip.write_text(f"127.0.0.1 {_free_port()}\n")
    _run([py, "-m", "graphrec.launch", *base, "--ip-config", str(ip), "--num-trainers", str(trainers),
          "--run-dir", str(workdir / "runs" / "one-machine")])
    m = json.loads((workdir / "runs" / "one-machine" / "metrics.json").read_text())
    rows.append(_row(f"1 machine x {trainers}", f"1 server + {trainers} trainers", main, m,
                     m["dist"]["train_seconds"], m["dist"]["wall_seconds"]))

    from ..dist.netns import simulated_machines, unavailable_reason

    reason = unavailable_reason()
    if reason:
        rows.append({"setup": "2 machines x 1", "skipped": reason})
    else:
        log("2 simulated machines x 1 trainer ...")
        _run([py, "-m", "graphrec.partition", "--num-parts", "2", *base])
        with simulated_machines(2) as machines:
            ip = workdir / "ip2.txt"
            ip.write_text("".join(f"{mm.ip} 30050\n" for mm in machines))
            env = {**os.environ, "GLOO_SOCKET_IFNAME": "gr0"}
            run_dir = workdir / "runs" / "two-machines"
            procs = [subprocess.Popen(mm.command([py, "-m", "graphrec.launch", *base, "--ip-config", str(ip),
                                                  "--num-trainers", "1", "--machine-rank", str(i),
                                                  "--run-dir", str(run_dir)]),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for i, mm in enumerate(machines)]
            errs = [p.communicate(timeout=3600)[1] for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError("two-machine run failed:\n" + "\n".join(e[-2000:] for e in errs))
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append(_row("2 machines x 1", "2 x (1 server + 1 trainer)", main, m, m["dist"]["train_seconds"],
                         m["dist"]["wall_seconds"]))
    return {"main_label": main, "rows": rows, "cpus": os.cpu_count()}


def format_table(res: Dict) -> str:
    lines = [f"main task: {res['main_label']}   ({res['cpus']} CPU cores)",
             f"{'setup':18s} {'processes':28s} {'epochs':>6s} {'train s':>8s} {'wall s':>8s} {'val AUC':>8s} "
             f"{'val GAUC':>8s} {'test AUC':>8s} {'pulls/batch':>11s} {'remote KB/batch':>15s} "
             f"{'GraphCL':>11s} {'GraphCL s':>9s} {'link AUC':>8s}"]

    def num(x, width: int, fmt: str) -> str:
        return f"{'-':>{width}s}" if x is None else f"{x:{width}{fmt}}"
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['setup']:18s} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['setup']:18s} {r['processes']:28s} {r['epochs']:6d} {r['train_seconds']:8.1f} "
                     f"{r['wall_seconds']:8.1f} {r['val_auc']:8.4f} {r['val_gauc']:8.4f} {r['test_auc']:8.4f} "
                     f"{num(r.get('pulls_per_batch'), 11, '.2f')} {num(r.get('remote_kb_per_batch'), 15, '.1f')} "
                     f"{r.get('graphcl_mode') or '-':>11s} {num(r.get('graphcl_seconds'), 9, '.1f')} "
                     f"{num(r.get('graphcl_link_auc'), 8, '.4f')}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.bench dist", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default=None, help="experiment YAML (default: the built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--trainers", type=int, default=2, help="trainers of the one-machine setup")
    ap.add_argument("--standalone-graphcl", action="store_true",
                    help="distributed setups take Θ from the partition step (graphcl.distributed=false) instead of "
                         "training it on their trainers")
    ap.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--out", help="JSON results (default runs/bench/dist.json)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        res = run(args.cfg, args.overrides, args.trainers, workdir,
                  log=lambda m: print(f"[bench dist] {m}", file=sys.stderr, flush=True),
                  dist_graphcl=not args.standalone_graphcl)
    print(format_table(res))
    from . import write_results

    write_results(res, args.out or "runs/bench/dist.json")
    return 0
