"""A distributed run lives and dies with its launcher (graphrec/dist/lifecycle.py).

Every graph server and trainer gets SIGKILL from the kernel when its launcher ends (``kill -9``
included); a launch into a run folder whose recorded processes still run is refused. The launcher tests
run real servers and trainers (helpers of test_dist.py), each bounded by a timeout.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphrec.dist.lifecycle import pid_alive, start_ticks

from .test_dist import _partition, loopback_ip_config, python, sets, two_machines  # noqa: F401 (fixture)

pytest.importorskip("dgl", reason="DGL's distributed engine (the DGL-free environment has none)")

ORPHANS_GONE_S = 5.0          # kill -9 of a launcher -> none of its servers or trainers remains
STALL_S = 20                  # dist.stall_timeout_s of these runs (also DDP's rendezvous timeout: keep room)


# ----------------------------------------------------------------------------- without servers
def test_children_die_with_the_launcher_even_by_kill_9(tmp_path):
    """die_with_launcher: a child of a process killed with SIGKILL gets SIGKILL from the kernel."""
    code = ("import subprocess, sys, time; from graphrec.dist.lifecycle import die_with_launcher; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
            "preexec_fn=die_with_launcher()); print(c.pid, flush=True); time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(launcher.stdout.readline())
        assert pid_alive(child)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + ORPHANS_GONE_S
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_alive(child)
    finally:
        launcher.kill()


@pytest.mark.parametrize("unread", [False, True])          # the peer's kernel sends a FIN, or a reset
def test_watchdog_names_the_peer_that_closed_its_connections(unread, capsys):
    from graphrec.dist.lifecycle import Watchdog

    with socket.create_server(("127.0.0.1", 0)) as srv:
        peer = subprocess.Popen([sys.executable, "-c", "import socket, time; c = socket.create_connection("
                                 f"('127.0.0.1', {srv.getsockname()[1]})); time.sleep(60)"])
        conn, _ = srv.accept()
        codes = []
        dog = Watchdog(100, exit=codes.append, poll_s=0.05, peers={"127.0.0.1": "machine 1 (127.0.0.1)"}).start()
        time.sleep(0.3)
        assert codes == []                                # an open connection is no reason to stop
        if unread:
            conn.sendall(b"x" * 1000)                     # the peer dies with unread data: a reset
        peer.kill()
        peer.wait()
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            time.sleep(0.05)
        dog.stop()
        conn.close()
    assert codes == [3]
    assert "machine 1 (127.0.0.1) closed its connections" in capsys.readouterr().err


def test_recorded_processes_are_told_from_reused_pids(tmp_path):
    from graphrec.dist import lifecycle
    from graphrec.dist.launch import RunInUse, refuse_if_running

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "processes-0.json"
    me = os.getpid()
    rec = lifecycle.record(me, [], [])
    assert rec["start_ticks"][str(me)] == start_ticks(me) and rec["boot_id"]
    path.write_text(json.dumps(rec))
    with pytest.raises(RunInUse, match=rf"--resume .*still running \(pids: launcher {me};"):
        refuse_if_running(run_dir, 0, resume=True)
    refuse_if_running(run_dir, 1, resume=True)                        # another machine's file: not read
    for stale in ({**rec, "start_ticks": {str(me): start_ticks(me) - 1}},     # the pid was reused
                  {**rec, "boot_id": "another-boot"}):                          # another host or boot
        path.write_text(json.dumps(stale))
        refuse_if_running(run_dir, 0, resume=True)
    # a file from before start times were recorded: the command line decides
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "graphrec.dist.trainer",
                                "--run-dir", str(run_dir)])
    try:
        path.write_text(json.dumps({"servers": [], "trainers": [sleeper.pid]}))
        with pytest.raises(RunInUse, match=rf"--run-dir .*trainer {sleeper.pid};.*kill {sleeper.pid}\)"):
            refuse_if_running(run_dir, 0, resume=False)
        path.write_text(json.dumps({"servers": [me], "trainers": []}))          # alive, but not a server
        refuse_if_running(run_dir, 0, resume=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    path.write_text(json.dumps({"servers": [], "trainers": [sleeper.pid]}))
    refuse_if_running(run_dir, 0, resume=False)


# ----------------------------------------------------------------------------- one machine, 2 trainers
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    _partition(tmp, 1)
    return tmp


def _start(tmp, run_dir, extra, ip, num_trainers=2):
    err = open(tmp / f"{run_dir.name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "graphrec.launch", *sets(tmp, extra), "--ip-config", str(ip),
                             "--num-trainers", str(num_trainers), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(check, procs, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not check():
        assert all(p.poll() is None for p in procs), f"a launcher ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def _children(rec):
    return rec["servers"] + rec["trainers"]


def _kill_and_time(launcher_pid, pids, timeout):
    """SIGKILL the launcher; seconds until none of ``pids`` runs (None after ``timeout``)."""
    killed = time.monotonic()
    os.kill(launcher_pid, signal.SIGKILL)
    while any(pid_alive(p) for p in pids):
        if time.monotonic() - killed > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - killed


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_9_of_the_launcher_ends_its_run_and_resume_matches_an_uninterrupted_run(world):
    # Both trainers take equal samples (6,000 impressions each, of shares of ~8k and ~16k), so neither joins
    # early: with uneven shares DDP's join leaves the early rank's Adam state behind the other's, and a resume
    # (every rank loads rank 0's optimizer state) cannot retrace that run. See the README.
    extra = ["ranker.epochs=2", "ranker.max_train_impressions=12000", f"dist.stall_timeout_s={STALL_S}"]
    ip = loopback_ip_config(world)
    ref = python("-m", "graphrec.launch", *sets(world, extra), "--ip-config", str(ip), "--num-trainers", "2",
                 "--run-dir", str(world / "runs" / "uninterrupted"), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ref.returncode == 0, ref.stderr[-4000:]
    expected = json.loads((world / "runs" / "uninterrupted" / "metrics.json").read_text())

    run_dir = world / "runs" / "killed"
    p = _start(world, run_dir, extra, ip)
    try:
        _wait_for((run_dir / "checkpoints" / "ranker_last.pt").exists, [p], "epoch checkpoint")
        rec = json.loads((run_dir / "processes-0.json").read_text())
        assert rec["launcher"] == p.pid and len(rec["trainers"]) == 2
        gone = _kill_and_time(p.pid, _children(rec), ORPHANS_GONE_S)
    finally:
        p.kill()
        p.wait()
    assert gone is not None, [x for x in _children(rec) if pid_alive(x)]
    print(f"1x2: servers and trainers gone {gone:.2f} s after kill -9 of the launcher")
    assert not (run_dir / "metrics.json").exists()

    r = python("-m", "graphrec.launch", "--resume", str(run_dir), "--ip-config", str(ip), "--num-trainers", "2",
               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["ranker"]["resumed_from_epoch"] >= 1 and [h["epoch"] for h in m["ranker"]["history"]] == [1, 2]
    assert m["eval"]["test"] == expected["eval"]["test"]
    assert m["eval"]["val"] == expected["eval"]["val"]


@pytest.mark.slow
def test_a_launch_into_a_running_run_is_refused_and_changes_nothing(world):
    extra = ["ranker.epochs=50", f"dist.stall_timeout_s={STALL_S}"]
    ip = loopback_ip_config(world)
    run_dir = world / "runs" / "busy"
    p = _start(world, run_dir, extra, ip)
    rec, stopped = {}, []
    try:
        def started():
            rec.update(json.loads((run_dir / "processes-0.json").read_text()) if
                       (run_dir / "processes-0.json").exists() else {})
            return len(rec.get("trainers", [])) == 2
        _wait_for(started, [p], "trainers")
        stopped = [p.pid] + _children(rec)
        for pid in stopped:                        # frozen, so that nothing else writes the run folder
            os.kill(pid, signal.SIGSTOP)
        before = _snapshot(run_dir)
        for args in (["--resume", str(run_dir)], [*sets(world, extra), "--run-dir", str(run_dir)]):
            r = python("-m", "graphrec.launch", *args, "--ip-config", str(ip), "--num-trainers", "2")
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
            assert "still running" in lines[0] and all(str(pid) in lines[0] for pid in stopped), lines[0]
        assert _snapshot(run_dir) == before
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        gone = _kill_and_time(p.pid, _children(rec), ORPHANS_GONE_S)
        assert gone is not None, [x for x in _children(rec) if pid_alive(x)]
    finally:
        for pid in stopped:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
        p.kill()
        p.wait()
    from graphrec.dist.launch import refuse_if_running

    refuse_if_running(run_dir, 0, resume=True)          # all gone: a resume may start


# ----------------------------------------------------------------------------- two simulated machines
@pytest.mark.slow
def test_kill_9_of_one_machines_launcher_stops_both_machines(tmp_path, two_machines):  # noqa: F811
    _partition(tmp_path, 2)
    ip = tmp_path / "ip2.txt"
    ip.write_text("".join(f"{m.ip} 30050\n" for m in two_machines))
    run_dir = tmp_path / "runs" / "two"
    args = sets(tmp_path, ["ranker.epochs=50", f"dist.stall_timeout_s={STALL_S}"])
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "gr0", "OMP_NUM_THREADS": "1"}
    errs = [tmp_path / f"machine{i}.err" for i in range(2)]
    procs = [subprocess.Popen(m.command([sys.executable, "-m", "graphrec.launch", *args, "--ip-config", str(ip),
                                         "--num-trainers", "1", "--machine-rank", str(i), "--run-dir", str(run_dir)]),
                              env=env, stdout=subprocess.DEVNULL, stderr=open(errs[i], "w"))
             for i, m in enumerate(two_machines)]
    try:
        _wait_for((run_dir / "checkpoints" / "ranker_last.pt").exists, procs, "epoch checkpoint")
        recs = [json.loads((run_dir / f"processes-{i}.json").read_text()) for i in range(2)]
        assert recs[1]["launcher"] == procs[1].pid          # netns exec, unshare and sh exec the launcher
        killed = time.monotonic()
        gone1 = _kill_and_time(procs[1].pid, _children(recs[1]), ORPHANS_GONE_S)
        assert gone1 is not None, [x for x in _children(recs[1]) if pid_alive(x)]
        deadline = killed + STALL_S
        while any(pid_alive(x) for x in recs[0]["trainers"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone0 = time.monotonic() - killed
        assert not any(pid_alive(x) for x in recs[0]["trainers"]), f"machine 0's trainers still run after {gone0:.1f} s"
        assert procs[0].wait(30) != 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    err0 = errs[0].read_text()
    print(f"2x1: machine 1's processes gone {gone1:.2f} s, machine 0's trainer {gone0:.2f} s after kill -9 of "
          f"machine 1's launcher")
    assert f"machine 1 ({two_machines[1].ip}" in err0, err0[-3000:]
    assert not any(pid_alive(x) for x in _children(recs[0]))


def test_trainer_device_puts_one_trainer_on_each_gpu_and_picks_its_backend():
    """``run.device`` + ``dist.backend`` → each trainer's device and the DDP backend: nccl with one GPU per
    ``LOCAL_RANK`` on GPU machines (``auto``), gloo on CPU; impossible combinations name the key."""
    from graphrec.dist.comm import trainer_device
    from graphrec.errors import ConfigError

    assert trainer_device("cpu", "auto", 3, 8) == ("cpu", "gloo")
    assert trainer_device("auto", "auto", 0, 0) == ("cpu", "gloo")
    assert trainer_device("auto", "auto", 1, 2) == ("cuda:1", "nccl")
    assert trainer_device("cuda", "gloo", 0, 1) == ("cuda:0", "gloo")
    with pytest.raises(ConfigError, match="--num-trainers"):
        trainer_device("cuda", "auto", 2, 2)                     # a third trainer on a two-GPU machine
    with pytest.raises(ConfigError, match="dist.backend=nccl"):
        trainer_device("cpu", "nccl", 0, 4)
    with pytest.raises(ConfigError, match="run.device=cuda"):
        trainer_device("cuda", "auto", 0, 0)
