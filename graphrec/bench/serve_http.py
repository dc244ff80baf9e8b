"""``serve-http``: load test of the scoring server over HTTP, from a second process.

Starts ``python -m graphrec.serve --run RUN --port 0`` on 127.0.0.1, sends ``--requests`` requests of
1 user × ``--candidates`` authors (or ``--batch`` users per ``POST /score/batch``) from ``--clients``
concurrent clients with keep-alive connections, and reports requests/s, p50/p99 latency per HTTP
round trip, the rate and the p50 also per user (compare batches with single requests at the same
``--clients``: with several clients a round trip includes the wait for the others' turns), and the error
count, the server's start-up time (process start to listening) and its resident memory (Linux: ``VmRSS``
once listening, ``VmHWM`` at the end); then stops the server with SIGTERM (it must exit 0). Needs a trained
run: nothing is trained here.
Standard library clients only (``http.client``), so the bench needs no test extras.
"""
from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..errors import command
from . import write_results


def request_bodies(n: int, users: int, authors: int, candidates: int, batch: int = 0, seed: int = 0) -> List[bytes]:
    """``n`` random request bodies over the run's ids: single requests, or batches of ``batch`` users."""
    rng = np.random.default_rng(seed)

    def one() -> Dict:
        return {"user": int(rng.integers(0, users)),
                "authors": rng.choice(authors, candidates, replace=candidates > authors).tolist()}

    return [json.dumps({"requests": [one() for _ in range(batch)]} if batch else one()).encode() for _ in range(n)]


def load_test(url: str, bodies: Sequence[bytes], clients: int = 4, path: str = "/score",
              timeout: float = 60.0) -> Dict:
    """POST every body once from ``clients`` threads (one keep-alive connection each).

    Counts any answer but a 200, and any broken connection, as an error; latencies are the round
    trips of every request, failed ones included."""
    parts = urlsplit(url)
    lock, nxt = threading.Lock(), iter(range(len(bodies)))
    lat = np.zeros(len(bodies))
    status: List[object] = [None] * len(bodies)

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[i], headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    status[i] = r.status
                except (OSError, http.client.HTTPException) as exc:
                    status[i] = type(exc).__name__
                    conn.close()                      # reconnects on the next request
                lat[i] = (time.perf_counter() - t0) * 1000
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(max(1, clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    outcomes = Counter(str(s) for s in status)
    ok = outcomes.pop("200", 0)
    return {"requests": len(bodies), "ok": ok, "errors": len(bodies) - ok, "error_kinds": dict(outcomes),
            "clients": clients, "seconds": seconds, "requests_per_s": len(bodies) / seconds if seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0,
            "mean_ms": float(lat.mean()) if len(lat) else 0.0}


class ServerProcess:
    """``python -m graphrec.serve`` in a child process on a free port of 127.0.0.1; stopped by SIGTERM."""

    def __init__(self, run_dir: Path, startup_s: float = 300.0) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "graphrec.serve", "--run", str(run_dir), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        self.url: Optional[str] = None
        started = threading.Event()

        def drain() -> None:                        # read every line, or a chatty server blocks on its pipe
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if self.url is None and line.startswith("serving ") and " on http://" in line:
                    self.url = line.split(" on ", 1)[1].split()[0]
                    started.set()
            started.set()

        threading.Thread(target=drain, daemon=True).start()
        started.wait(startup_s)
        self.startup_s = time.perf_counter() - t0          # from the process's start until it listens
        if self.url is None:
            self.stop()
            tail = "\n".join(self.lines[-10:])
            raise RuntimeError(f"the server did not start within {startup_s:.0f} s (exit code "
                               f"{self.proc.returncode}); its last output:\n{tail}")

    def memory_gib(self, field: str) -> Optional[float]:
        """The server's ``VmRSS`` (resident now) or ``VmHWM`` (peak resident) in GiB; None off Linux."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20          # kB
        except OSError:
            pass
        return None

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """The server's exit code after SIGTERM (killed, and None, if it does not stop in ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def serve_http(run_dir: Path, requests: int = 300, clients: int = 4, candidates: int = 200, batch: int = 0,
               warmup: int = 10, seed: int = 0) -> Dict:
    """The load test against a server started here on ``run_dir``."""
    from ..errors import UserError

    try:
        data = json.loads((Path(run_dir) / "metrics.json").read_text())["data"]
        users, authors = int(data["users"]), int(data["authors"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{run_dir}: not a trained run folder (no user and author counts in metrics.json: "
                        f"{exc})") from None
    path = "/score/batch" if batch else "/score"
    server = ServerProcess(run_dir)
    try:
        rss_started = server.memory_gib("VmRSS")
        load_test(server.url, request_bodies(warmup, users, authors, candidates, batch, seed + 1), clients, path)
        res = load_test(server.url, request_bodies(requests, users, authors, candidates, batch, seed), clients, path)
        peak = server.memory_gib("VmHWM")
    finally:
        exit_code = server.stop()
    per = batch or 1
    res.update({"startup_s": server.startup_s, "server_rss_gib_started": rss_started, "server_peak_rss_gib": peak,
                "run": str(run_dir), "url": server.url, "path": path, "candidates": candidates,
                "users_per_request": per, "users_per_s": res["requests_per_s"] * per,
                # per user: the wall time of the run over the users scored (with several clients, requests
                # overlap), and one round trip's p50 over its users (with several clients it includes the
                # wait for the lock): compare batches with single requests at the same --clients
                "ms_per_user": 1000.0 / (res["requests_per_s"] * per) if res["requests_per_s"] else 0.0,
                "p50_ms_per_user": res["p50_ms"] / per, "server_exit_code": exit_code})
    return res


def _gib(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f} GiB"


@command
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.bench serve-http", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (runs/<name>-<time>)")
    ap.add_argument("--requests", type=int, default=300, help="timed requests (default 300)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--candidates", type=int, default=200, help="authors per user (default 200)")
    ap.add_argument("--batch", type=int, default=0, help="users per POST /score/batch (default 0: POST /score)")
    ap.add_argument("--out", help="JSON results (default runs/bench/serve_http.json)")
    args = ap.parse_args(argv)
    for name in ("requests", "clients", "candidates"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if not 0 <= args.batch <= 256 or not 1 <= args.candidates <= 10_000:
        ap.error("--batch must be in 0..256 and --candidates in 1..10000 (the server's limits)")
    res = serve_http(Path(args.run), args.requests, args.clients, args.candidates, args.batch)
    print(f"{res['requests']} requests of {res['users_per_request']} user(s) x {res['candidates']} candidates to "
          f"{res['path']}, {res['clients']} clients: {res['requests_per_s']:.1f} requests/s "
          f"({res['users_per_s']:.1f} users/s, {res['ms_per_user']:.2f} ms per user), p50 {res['p50_ms']:.1f} ms "
          f"({res['p50_ms_per_user']:.2f} ms per user), p99 {res['p99_ms']:.1f} ms, "
          f"{res['errors']} errors{' ' + str(res['error_kinds']) if res['errors'] else ''}; "
          f"server start-up {res['startup_s']:.1f} s, resident {_gib(res['server_rss_gib_started'])} once listening, "
          f"peak {_gib(res['server_peak_rss_gib'])}; server exit code {res['server_exit_code']}")
    write_results(res, args.out or "runs/bench/serve_http.json")
    return 0 if res["errors"] == 0 and res["server_exit_code"] == 0 else 1
