"""``python -m graphrec.launch --cfg yaml/<x>.yaml --ip-config ip.txt --num-trainers T --num-servers 1``

Starts, on this machine, the DGL graph servers of its partition and ``T`` DDP trainer processes, then
watches them. Run it once per machine of the ip config (as DGL's ``tools/launch.py`` does over ssh),
after ``python -m graphrec.partition`` made ``dist.part_dir`` with one partition per machine.

ip config: one line per machine, ``<ip> [<port>]`` (port of its first graph server, default 30050;
server ``s`` listens on port + s). The first machine also hosts the DDP rendezvous
(``dist.master_port``). Without ``--ip-config``: one machine on 127.0.0.1.

With partitions made with ``graphcl.distributed: true`` the trainers first pre-train Θ on the
DistGraph (:mod:`graphrec.dist.graphcl`), then train the ranker on it; ``--stage graphcl`` stops after
the pre-training.

The launcher fails fast and never hangs: a graph server that exits while trainers run stops them,
a trainer that fails stops the others and the servers, and a trainer that cannot reach a server
fails after ``dist.connect_timeout_s``. The servers and trainers end when the launcher ends, however it
ends (``kill -9`` included: a parent-death signal, :mod:`graphrec.dist.lifecycle`), and trainers on
other machines then stop naming the machine that went away. ``--resume RUN_DIR`` restarts every trainer
from the run's last epoch checkpoint; it (and ``--run-dir`` into an existing run) is refused while the
processes recorded in ``processes-<machine>.json`` still run.
"""
# Users type ``python -m graphrec.launch``: graphrec/launch.py only runs this module, to keep that name.
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..config import load_config
from ..errors import ConfigError, UserError, command
from . import lifecycle
from .lifecycle import die_with_launcher

DEFAULT_PORT = 30050


def read_ip_config(path: Path) -> List[Tuple[str, int]]:
    """``[(ip, first server port)]`` per machine, with errors that name the file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--ip-config {path}: file not found")
    machines = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ConfigError(f"{path}:{n}: expected '<ip> [<port>]', got {line.strip()!r}")
        try:
            socket.inet_aton(fields[0])
        except OSError:
            raise ConfigError(f"{path}:{n}: '{fields[0]}' is not an IPv4 address") from None
        port = DEFAULT_PORT
        if len(fields) == 2:
            if not fields[1].isdigit() or not 0 < int(fields[1]) < 65536:
                raise ConfigError(f"{path}:{n}: port must be 1..65535, got {fields[1]!r}")
            port = int(fields[1])
        machines.append((fields[0], port))
    if not machines:
        raise ConfigError(f"{path}: no machines listed (one '<ip> [<port>]' line per machine)")
    return machines


def local_machine(machines: Sequence[Tuple[str, int]]) -> int:
    """This machine's line of the ip config: the one address this host can bind (DGL's own rule)."""
    local = []
    for i, (ip, _) in enumerate(machines):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, 0))
                local.append(i)
            except OSError:
                pass
    if len(local) != 1:
        raise ConfigError(f"cannot tell which machine of the ip config this is ({len(local)} of its addresses are "
                          f"local here); pass --machine-rank")
    return local[0]


def _write_ip_config(run_dir: Path, machines: Sequence[Tuple[str, int]]) -> Path:
    path = run_dir / "ip_config.txt"
    from ..data.dataset import atomic_write_text

    atomic_write_text(path, "".join(f"{ip} {port}\n" for ip, port in machines))
    return path


class Launch:
    """The processes of one machine and the rules for stopping them."""

    def __init__(self, log=lambda m: print(f"[graphrec launch] {m}", file=sys.stderr, flush=True)) -> None:
        self.servers: List[subprocess.Popen] = []
        self.trainers: List[subprocess.Popen] = []
        self.log = log

    def stop(self, procs: Sequence[subprocess.Popen], grace_s: float = 5.0, let_finish_s: float = 0.0) -> None:
        """Give ``procs`` ``let_finish_s`` to exit on their own, then SIGTERM, then SIGKILL after ``grace_s``."""
        deadline = time.monotonic() + let_finish_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def supervise(self, poll_s: float = 0.2, server_grace_s: float = 30.0) -> int:
        """Wait for the trainers; 0 when all succeed, 1 (after stopping everything) otherwise."""
        try:
            while True:
                # a server ends with 0 once every trainer disconnected (the trainers are finishing): only a
                # non-zero server exit is a failure, and only one of them is reported, the cause: a process
                # killed by a signal (the launcher has sent none yet), then one that failed by itself, then
                # trainers that saw a peer go (WATCHDOG_EXIT); servers first, as the trainers depend on them
                trainers_done = all(t.poll() == 0 for t in self.trainers)
                failed = [] if trainers_done else [("graph server", i, p) for i, p in enumerate(self.servers)
                                                   if p.poll() not in (None, 0)]
                failed += [("trainer", i, p) for i, p in enumerate(self.trainers) if p.poll() not in (None, 0)]
                if failed:
                    role, i, p = min(failed, key=lambda f: (0 if f[2].returncode < 0 else 2 if f[2].returncode ==
                                                            lifecycle.WATCHDOG_EXIT else 1, f[0] == "trainer", f[1]))
                    if role == "graph server":
                        self.log(f"graph server {i} (pid {p.pid}) exited with code {p.returncode} while trainers "
                                 f"were running; stopping the trainers")
                        self.stop(self.trainers, let_finish_s=3.0)     # their watchdogs say why, then exit
                    else:
                        self.log(f"trainer {i} (pid {p.pid}) failed with exit code {p.returncode}; stopping the others")
                        self.stop(self.trainers)
                    self.stop(self.servers)
                    return 1
                if trainers_done:
                    break
                time.sleep(poll_s)
            deadline = time.monotonic() + server_grace_s
            while any(s.poll() is None for s in self.servers) and time.monotonic() < deadline:
                time.sleep(poll_s)
            if any(s.poll() is None for s in self.servers):
                self.log("graph servers still up after the trainers finished; stopping them")
                self.stop(self.servers)
            return 0
        except KeyboardInterrupt:
            self.log("interrupted; stopping trainers and servers")
            self.stop(self.trainers)
            self.stop(self.servers)
            return 130


class RunInUse(UserError):
    """A launch into a run folder whose recorded processes still run."""


def refuse_if_running(run_dir: Path, machine_rank: int, resume: bool) -> None:
    """Refuse (one line, naming the pids) while processes an earlier launch of this machine recorded in
    ``processes-<machine_rank>.json`` still run: a second set would write the same checkpoints.

    Each machine checks its own file: the pids of another machine cannot be checked from here, and on
    one host (simulated machines) the other launchers of the same resume may already have written theirs."""
    path = run_dir / f"processes-{machine_rank}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):          # no earlier launch here, or a file no launcher finished writing
        return
    if isinstance(rec, dict):
        live = lifecycle.live_recorded(run_dir, rec)
        if live:
            raise RunInUse(f"{'--resume' if resume else '--run-dir'} {run_dir}: machine {machine_rank} of this run is "
                           f"still running (pids: {lifecycle.describe(live)}; from {path.name}); wait for it to end or "
                           f"stop it (kill {' '.join(str(p) for _, p in live)}), then launch again")


def launch(cfg_file: Optional[str], overrides: Sequence[str], ip_config: Optional[Path], num_trainers: int,
           num_servers: int = 1, machine_rank: Optional[int] = None, run_dir: Optional[Path] = None,
           resume: bool = False, stage: str = "all") -> Tuple[int, Path]:
    """Start this machine's servers and trainers and wait for them; returns ``(exit code, run folder)``."""
    from ..data.dataset import atomic_write_text
    from ..run import make_run_dir
    from .prepare import load_prepared, part_dir_of

    if num_trainers < 1 or num_servers < 1:
        raise ConfigError("--num-trainers and --num-servers must be at least 1")
    if resume:
        if run_dir is None or not (Path(run_dir) / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a distributed run folder (config.yaml missing)")
        cfg_file = str(Path(run_dir) / "config.yaml")
    cfg = load_config(cfg_file, overrides)
    machines = read_ip_config(ip_config) if ip_config is not None else [("127.0.0.1", DEFAULT_PORT)]
    part_dir = part_dir_of(cfg, len(machines)).resolve()
    prepared = load_prepared(part_dir, cfg)
    if prepared["num_parts"] != len(machines):
        raise ConfigError(f"{ip_config}: {len(machines)} machine(s), but {part_dir} holds {prepared['num_parts']} "
                          f"partition(s); every machine serves one partition")
    import torch

    from .comm import trainer_device

    # one GPU per trainer, and a bad run.device / dist.backend, refused before anything starts
    trainer_device(cfg.run.device, cfg.dist.backend, num_trainers - 1, torch.cuda.device_count())
    if machine_rank is None:
        machine_rank = 0 if len(machines) == 1 else local_machine(machines)
    if not 0 <= machine_rank < len(machines):
        raise ConfigError(f"--machine-rank {machine_rank}: the ip config lists {len(machines)} machine(s)")
    if run_dir is None:
        if len(machines) > 1:
            raise ConfigError("several machines need --run-dir: the same folder path on every machine "
                              "(shared storage, so that --resume finds rank 0's checkpoints)")
        run_dir = make_run_dir(Path(cfg.run.out_dir), f"{cfg.run.name}-dist")
    run_dir = Path(run_dir).resolve()
    refuse_if_running(run_dir, machine_rank, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if machine_rank == 0 and not resume:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    ipc = _write_ip_config(run_dir, machines) if ip_config is None else Path(ip_config).resolve()

    world = len(machines) * num_trainers
    base = {**os.environ, "DGLBACKEND": "pytorch", "DGL_DIST_MODE": "distributed", "DGL_IP_CONFIG": str(ipc),
            "DGL_NUM_SERVER": str(num_servers), "DGL_NUM_SAMPLER": "0", "PYTHONUNBUFFERED": "1"}
    # recorded before any child starts, so that a second launch into this folder already sees this one
    atomic_write_text(run_dir / f"processes-{machine_rank}.json", json.dumps(lifecycle.record(os.getpid(), [], [])))
    proc = Launch()
    proc.log(f"machine {machine_rank} of {len(machines)}: {num_servers} server(s), {num_trainers} trainer(s); "
             f"run folder {run_dir}")
    for s in range(num_servers):
        env = {**base, "DGL_ROLE": "server", "DGL_SERVER_ID": str(machine_rank * num_servers + s),
               "DGL_NUM_CLIENT": str(world), "DGL_CONF_PATH": str(part_dir / prepared["part_config"]),
               "DGL_GRAPH_FORMAT": "csc,csr"}
        proc.servers.append(subprocess.Popen([sys.executable, "-m", "graphrec.dist.server"], env=env,
                                             preexec_fn=die_with_launcher()))
    threads = max(1, (os.cpu_count() or 1) // num_trainers)
    for t in range(num_trainers):
        env = {**base, "DGL_ROLE": "default", "MASTER_ADDR": machines[0][0], "MASTER_PORT": str(cfg.dist.master_port),
               "WORLD_SIZE": str(world), "RANK": str(machine_rank * num_trainers + t), "LOCAL_RANK": str(t),
               "DGL_DIST_MAX_TRY_TIMES": str(max(1, cfg.dist.connect_timeout_s // 3)),
               "GRAPHREC_SERVER_PIDS": ",".join(str(p.pid) for p in proc.servers),
               "GRAPHREC_LAUNCHER_PID": str(os.getpid()),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
        args = [sys.executable, "-m", "graphrec.dist.trainer", "--part-dir", str(part_dir), "--run-dir", str(run_dir),
                "--ip-config", str(ipc)]
        args += ["--cfg", cfg_file] if cfg_file else []
        for o in overrides:
            args += ["--set", o]
        args += ["--resume"] if resume else []
        args += ["--stage", stage] if stage != "all" else []
        proc.trainers.append(subprocess.Popen(args, env=env, preexec_fn=die_with_launcher()))
    atomic_write_text(run_dir / f"processes-{machine_rank}.json", json.dumps(
        lifecycle.record(os.getpid(), [p.pid for p in proc.servers], [p.pid for p in proc.trainers])))
    previous = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        code = proc.supervise()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code, run_dir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m graphrec.launch", description="Start this machine's DGL graph servers and DDP trainers for a distributed ranker run, and watch them.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--cfg", metavar="FILE", help="experiment YAML (the one graphrec.partition used)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one key (repeatable)")
    ap.add_argument("--ip-config", metavar="FILE", help="one '<ip> [<port>]' line per machine (default: 127.0.0.1)")
    ap.add_argument("--num-trainers", type=int, default=1, help="trainer processes per machine")
    ap.add_argument("--num-servers", type=int, default=1, help="graph servers per machine")
    ap.add_argument("--machine-rank", type=int, help="this machine's line of the ip config (0-based); "
                    "default: the line whose address is local")
    ap.add_argument("--run-dir", metavar="DIR", help="run folder (default <run.out_dir>/<run.name>-dist-<time>; "
                    "required with several machines: the same shared path on each)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="restart every trainer from RUN_DIR's last epoch checkpoint")
    ap.add_argument("--stage", choices=["all", "graphcl"], default="all",
                    help="graphcl: stop after the distributed GraphCL pre-training (graphcl.distributed partitions), "
                         "before the ranker; all (default): GraphCL if the partitions leave it to the trainers, "
                         "then the ranker")
    return ap


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    code, run_dir = launch(args.cfg, args.overrides, Path(args.ip_config) if args.ip_config else None,
                           args.num_trainers, args.num_servers, args.machine_rank,
                           Path(args.resume or args.run_dir) if (args.resume or args.run_dir) else None,
                           resume=bool(args.resume), stage=args.stage)
    if code == 0:
        print(f"run folder: {run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
