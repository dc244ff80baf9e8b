"""``python -m graphrec.bench dist``: the same world trained standalone, on one machine with several
trainers, and on two simulated machines (network namespaces, root only), side by side.

Reports per setup the ranker's training wall time, the trainers' whole wall time (connect, load,
train, evaluate), the main task's validation/test AUC and, for the distributed setups, the feature
store's pulls and the KB read from the other machine's server per batch (``metrics.json``'s
``dist.feature_reads``, over every trainer's training and validation batches), and GraphCL's seconds and
test link-prediction AUC: the standalone stage's, and for the distributed setups the trainers'
(``graphcl.distributed=true``, the default here) or, with ``--standalone-graphcl``, the partition
step's; "loop s" is GraphCL's epochs alone (the standalone stage's seconds also hold PyTorch's one-off
set-up of a process's first ``torch.optim`` optimizer, about 0.9 s here). Every setup uses the same data, seed and
hyper-parameters; the ranker's batch is global (each of ``world`` trainers takes ``batch_size / world``
rows per step and DDP averages their gradients), so every setup makes the same optimizer steps per epoch.

``--preset full`` (or ``small``) is the full-size rehearsal instead: the 1M-user world of ``bench scale
--preset full`` partitioned in two and trained on two simulated machines (GraphCL on the trainers, one
ranker epoch on a sample of ``--ranker-impressions``, scoring every validation and test impression),
with the wall time of every stage and the peak resident memory of each machine (the sum over its
processes, sampled every second). Compare with ``bench scale --preset full``.
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
    g = metrics.get("graphcl")
    if (not g or g.get("mode", "standalone") == "standalone") and "part_dir" in metrics.get("dist", {}):
        prepared = json.loads((Path(metrics["dist"]["part_dir"]) / "prepared.json").read_text())
        metrics = json.loads((Path(prepared["prepared_by"]) / "metrics.json").read_text())
        g = metrics.get("graphcl")
    if not g:
        return {"graphcl_seconds": None, "graphcl_loop_seconds": None, "graphcl_link_auc": None, "graphcl_mode": None}
    if g.get("mode") == "distributed":
        seconds = metrics.get("dist", {}).get("graphcl_seconds", g.get("seconds"))
    else:
        seconds = next((s["seconds"] for s in metrics.get("stages", []) if s["name"] == "graphcl"), None)
    # the loop alone (the epochs' steps and validation): like for like, where the standalone stage's seconds
    # also hold PyTorch's one-off set-up of the process's first torch.optim optimizer
    loop = sum(h["seconds"] for h in g["history"]) if g.get("history") else None
    return {"graphcl_seconds": seconds, "graphcl_loop_seconds": loop,
            "graphcl_link_auc": g["link_prediction"]["trained"]["auc"], "graphcl_mode": g.get("mode", "standalone")}


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

    from .netns import unavailable_reason

    reason = unavailable_reason()
    if reason:
        rows.append({"setup": "2 machines x 1", "skipped": reason})
    else:
        log("2 simulated machines x 1 trainer ...")
        _run([py, "-m", "graphrec.partition", "--num-parts", "2", *base])
        run_dir = workdir / "runs" / "two-machines"
        _launch_two_machines(base, workdir, run_dir)
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append(_row("2 machines x 1", "2 x (1 server + 1 trainer)", main, m, m["dist"]["train_seconds"],
                         m["dist"]["wall_seconds"]))
    return {"main_label": main, "rows": rows, "cpus": os.cpu_count()}


def _rss_by_root(roots: List[int]) -> List[int]:
    """Resident bytes of each root process together with all its descendants (from /proc)."""
    parent, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    out = []
    for root in roots:
        total = 0
        for pid in rss:
            p, hops = pid, 0
            while p not in (0, 1) and p != root and hops < 64:
                p, hops = parent.get(p, 0), hops + 1
            if p == root:
                total += rss[pid]
        out.append(total)
    return out


class _PeakRSS:
    """Samples :func:`_rss_by_root` every ``every`` seconds in a thread; ``peak`` per root."""

    def __init__(self, roots: List[int], every: float = 1.0) -> None:
        import threading

        self.roots, self.every, self.peak = roots, every, [0] * len(roots)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = [max(a, b) for a, b in zip(self.peak, _rss_by_root(self.roots))]
            self._stop.wait(self.every)

    def stop(self) -> List[int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def _launch_two_machines(base: List[str], workdir: Path, run_dir: Path, timeout: float = 3600) -> List[int]:
    """``graphrec.launch`` on two simulated machines (network namespaces), one server and one trainer
    each; returns each machine's peak resident bytes (its processes together, sampled every second)."""
    from .netns import simulated_machines

    py = sys.executable
    with simulated_machines(2) as machines:
        ip = workdir / "ip2.txt"
        ip.write_text("".join(f"{mm.ip} 30050\n" for mm in machines))
        # the simulated machines share this box's cores: each trainer gets its share of them, as the
        # launcher gives each of several trainers on one machine (else 2 x 2 threads on 2 cores
        # oversubscribe them, 3-6x slower epochs)
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "gr0",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))}
        procs = [subprocess.Popen(mm.command([py, "-m", "graphrec.launch", *base, "--ip-config", str(ip),
                                              "--num-trainers", "1", "--machine-rank", str(i), "--run-dir", str(run_dir)]),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, mm in enumerate(machines)]
        sampler = _PeakRSS([p.pid for p in procs])
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
        peaks = sampler.stop()
        if any(p.returncode for p in procs):
            raise RuntimeError("two-machine run failed:\n" + "\n".join(e[-2000:] for e in errs))
    return peaks


def rehearse(preset: str, cfg: Optional[str], overrides: List[str], ranker_impressions: int, workdir: Path,
             log=print) -> Dict:
    """The full-size rehearsal (module docstring): partition in two, then two simulated machines."""
    import resource

    from .netns import unavailable_reason
    from .scale import PRESETS

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"two simulated machines are not available here: {reason}")
    py = sys.executable
    base = ([] if cfg is None else ["--cfg", cfg]) + _sets(PRESETS[preset] + COMMON + [
        "graphcl.distributed=true", "ranker.epochs=1", f"ranker.max_train_impressions={ranker_impressions}",
        f"run.out_dir={workdir / 'runs'}", f"run.name=rehearsal-{preset}", f"dist.master_port={_free_port()}"]
        + list(overrides))
    log(f"partitioning the {preset} world in two (simulating it first unless cached) ...")
    t0 = time.perf_counter()
    r = _run([py, "-m", "graphrec.partition", "--num-parts", "2", *base], timeout=6 * 3600)
    partition_s = time.perf_counter() - t0
    part_dir = Path(r.stdout.rsplit("partitions: ", 1)[1].split()[0])
    prepared = json.loads((part_dir / "prepared.json").read_text())
    pm = json.loads((Path(prepared["prepared_by"]) / "metrics.json").read_text())
    partition_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    log("two simulated machines x 1 trainer ...")
    run_dir = workdir / "runs" / f"rehearsal-{preset}-two-machines"
    t1 = time.perf_counter()
    peaks = _launch_two_machines(base, workdir, run_dir, timeout=6 * 3600)
    launch_s = time.perf_counter() - t1
    m = json.loads((run_dir / "metrics.json").read_text())
    main = m["data"]["main_label"]
    stages = [{"stage": f"partition step: {st['name']}", "seconds": st["seconds"], "peak_rss_gib": st.get("peak_rss_gib")}
              for st in pm["stages"] if st["status"] == "ran"]
    stages.append({"stage": "partition step: partitioning (DGL) and the rest", "seconds":
                   partition_s - sum(st["seconds"] for st in stages), "peak_rss_gib": partition_peak})
    d = m["dist"]
    stages += [{"stage": "trainers: GraphCL (distributed)", "seconds": d.get("graphcl_seconds")},
               {"stage": "trainers: ranker training", "seconds": d["train_seconds"]},
               {"stage": "trainers: the rest (connect, load, evaluate)",
                "seconds": d["wall_seconds"] - d["train_seconds"] - (d.get("graphcl_seconds") or 0.0)}]
    ev = m["eval"]
    return {"preset": preset, "overrides": base, "partition_seconds": partition_s, "launch_seconds": launch_s,
            "stages": stages, "peak_rss_gib_per_machine": [b / 2**30 for b in peaks],
            "partition_peak_rss_gib": partition_peak, "main_label": main,
            "test_auc": ev["test"][m["ranker"]["model"]].get(main, {}).get("auc"),
            "graphcl_link_auc": (m.get("graphcl") or {}).get("link_prediction", {}).get("trained", {}).get("auc"),
            "feature_reads": {k: v for k, v in d.get("feature_reads", {}).items() if k != "per_rank"},
            "run_dir": str(run_dir)}


def format_rehearsal(res: Dict) -> str:
    lines = [f"rehearsal, {res['preset']} world on 2 simulated machines x 1 trainer (this box's cores shared)",
             f"{'stage':50s} {'seconds':>9s} {'peak RSS':>10s}"]
    for st in res["stages"]:
        rss = f"{st['peak_rss_gib']:.2f} GiB" if st.get("peak_rss_gib") is not None else "-"
        sec = f"{st['seconds']:9.1f}" if st.get("seconds") is not None else f"{'-':>9s}"
        lines.append(f"{st['stage']:50s} {sec} {rss:>10s}")
    lines.append(f"partition step {res['partition_seconds']:.0f} s (one process, peak {res['partition_peak_rss_gib']:.2f} GiB); "
                 f"launch {res['launch_seconds']:.0f} s; peak RSS per machine (server + trainer + launcher): "
                 + ", ".join(f"{g:.2f} GiB" for g in res["peak_rss_gib_per_machine"]))
    lines.append(f"test {res['main_label']} AUC {res['test_auc']}, GraphCL test link AUC {res['graphcl_link_auc']}, "
                 f"feature reads {res['feature_reads']}")
    return "\n".join(lines)


def format_table(res: Dict) -> str:
    lines = [f"main task: {res['main_label']}   ({res['cpus']} CPU cores)",
             f"{'setup':18s} {'processes':28s} {'epochs':>6s} {'train s':>8s} {'wall s':>8s} {'val AUC':>8s} "
             f"{'val GAUC':>8s} {'test AUC':>8s} {'pulls/batch':>11s} {'remote KB/batch':>15s} "
             f"{'GraphCL':>11s} {'GraphCL s':>9s} {'loop s':>7s} {'link AUC':>8s}"]

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
                     f"{num(r.get('graphcl_loop_seconds'), 7, '.2f')} {num(r.get('graphcl_link_auc'), 8, '.4f')}")
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
    ap.add_argument("--out", help="JSON results (default runs/bench/dist.json, or dist-<preset>.json)")
    ap.add_argument("--preset", choices=["small", "full"],
                    help="the rehearsal on a large world instead (see above): two simulated machines only")
    ap.add_argument("--ranker-impressions", type=int, default=1_000_000,
                    help="with --preset: training impressions sampled for the one ranker epoch (default 1,000,000)")
    args = ap.parse_args(argv)
    if args.preset:
        from . import write_results

        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(args.workdir or tmp).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            res = rehearse(args.preset, args.cfg, args.overrides, args.ranker_impressions, workdir,
                           log=lambda m: print(f"[bench dist] {m}", file=sys.stderr, flush=True))
        print(format_rehearsal(res))
        write_results(res, args.out or f"runs/bench/dist-{args.preset}.json")
        return 0
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
