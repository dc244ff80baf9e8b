"""A distributed run lives and dies with its launcher.

* :func:`die_with_launcher`: the ``preexec_fn`` that makes every graph server and trainer a launcher
  starts receive ``SIGKILL`` from the kernel when the launcher ends, however it ends (``kill -9``
  included): Linux ``prctl(PR_SET_PDEATHSIG)``, set in the child between ``fork`` and ``exec``, before
  it runs anything else.
* :func:`record` / :func:`live_recorded`: ``processes-<machine>.json`` names each process with its
  pid *and* its start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot) and the host's
  boot id, so a later launch into the same run folder can tell "still running" from "pid reused".
* :class:`PeerSockets`: a trainer's watchdog notices, from ``/proc``, that another machine closed its
  connections (its launcher ended and took its processes with it), and can say which machine.
* :class:`Watchdog`: a trainer's thread that ends it, with a message naming the cause, when it stalls or
  when its graph servers, its launcher or another machine went away.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_PR_SET_PDEATHSIG = 1
WATCHDOG_EXIT = 3        # a trainer's watchdog stopped it: a consequence of another failure, not the cause


def die_with_launcher(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process ends.

    The kernel sends the signal when the *thread* that forked the child exits, so call ``Popen`` from
    the thread that lives as long as the launcher (its main thread: the launcher's ``signal`` handling
    already requires it). If the launcher died between ``fork`` and ``prctl`` the signal would never
    come; the child then sees another parent and exits at once."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl      # resolved here: the child only calls it
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
    except (OSError, AttributeError):                           # not Linux: the trainers' watchdog remains
        prctl = None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:                              # the launcher is already gone
            os._exit(1)

    return preexec


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def start_ticks(pid: int) -> Optional[int]:
    """When ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat`` field 22), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])   # fields 3.. follow the ')' of the name
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def record(launcher: int, servers: Sequence[int], trainers: Sequence[int]) -> Dict[str, Any]:
    """The content of ``processes-<machine>.json`` (``servers``/``trainers``: pid lists, as before)."""
    pids = [launcher, *servers, *trainers]
    return {"launcher": launcher, "servers": list(servers), "trainers": list(trainers),
            "host": socket.gethostname(), "boot_id": boot_id(),
            "start_ticks": {str(p): start_ticks(p) for p in pids}}


def _old_style_match(role: str, pid: int, run_dir: Path) -> bool:
    """A file written before start times were recorded: judge the pid by its command line."""
    args = cmdline(pid)
    if role == "server":
        return "graphrec.dist.server" in args
    if "graphrec.dist.trainer" not in args or "--run-dir" not in args:
        return False
    i = args.index("--run-dir")
    return i + 1 < len(args) and Path(args[i + 1]).resolve() == Path(run_dir).resolve()


def live_recorded(run_dir: Path, rec: Dict[str, Any]) -> List[Tuple[str, int]]:
    """``(role, pid)`` of the processes in ``rec`` (a ``processes-*.json``) that still run on this host.

    A pid counts only if its start time is the recorded one (pids are reused); a record from another
    boot or host cannot be checked here and names nothing."""
    if rec.get("boot_id") and rec["boot_id"] != boot_id():
        return []
    ticks = rec.get("start_ticks")
    roles = [("launcher", rec["launcher"])] if isinstance(rec.get("launcher"), int) else []
    roles += [("server", p) for p in rec.get("servers", [])] + [("trainer", p) for p in rec.get("trainers", [])]
    live = []
    for role, pid in roles:
        if not isinstance(pid, int) or not pid_alive(pid):
            continue
        if ticks is not None:
            want = ticks.get(str(pid))
            if want is not None and start_ticks(pid) == want:
                live.append((role, pid))
        elif _old_style_match(role, pid, run_dir):
            live.append((role, pid))
    return live


def describe(live: Sequence[Tuple[str, int]]) -> str:
    """``launcher 11, server 12, trainers 13 14``."""
    out = []
    for role in ("launcher", "server", "trainer"):
        pids = [str(p) for r, p in live if r == role]
        if pids:
            out.append(f"{role}{'s' if len(pids) > 1 else ''} {' '.join(pids)}")
    return ", ".join(out)


_ESTABLISHED, _CLOSE_WAIT = "01", "08"


def _hex_ip(field: str) -> str:
    """The IPv4 address of a ``/proc/net/tcp[6]`` address field (IPv4-mapped for tcp6), else ""."""
    h = field.split(":")[0]
    if len(h) == 32:                                   # tcp6: four little-endian words; ::ffff:a.b.c.d only
        if h[:16] != "0" * 16 or h[16:24].upper() != "0000FFFF":
            return ""
        h = h[24:]
    try:
        return socket.inet_ntoa(bytes.fromhex(h)[::-1])
    except (ValueError, OSError):
        return ""


class PeerSockets:
    """Notices, without sending anything, that a peer closed a TCP connection this process holds: a
    process killed on another machine (or this one) closes its sockets, the kernel tells their other
    ends, and ours turn ``CLOSE_WAIT`` (after a FIN) or leave the connection table (after a reset)
    while our descriptor stays open. Linux ``/proc`` only; elsewhere it never reports anything.

    ``closed()`` returns the watched addresses that closed a connection seen established before."""

    def __init__(self, addresses) -> None:
        self.addresses = set(addresses)
        self.seen: Dict[str, str] = {}              # socket inode -> remote address, once established

    def _own_sockets(self) -> set:
        out = set()
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return out
        for fd in fds:
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
        return out

    def closed(self) -> List[str]:
        mine = self._own_sockets()
        table: Dict[str, Tuple[str, str]] = {}        # inode -> (state, remote address)
        for name in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            try:
                with open(name) as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[9] in mine:
                    table[fields[9]] = (fields[3], _hex_ip(fields[2]))
        gone = set()
        for inode, (state, ip) in table.items():
            if ip in self.addresses:
                if state == _ESTABLISHED:
                    self.seen[inode] = ip
                elif state == _CLOSE_WAIT:
                    gone.add(ip)
        for inode in list(self.seen):
            if inode not in mine:                   # we closed it ourselves
                del self.seen[inode]
            elif inode not in table:                # reset by the peer: still ours, no longer connected
                gone.add(self.seen[inode])
        return sorted(gone)


class Watchdog:
    """Ends the process with a message when ``kick`` has not been called for ``timeout_s`` seconds,
    when one of ``server_pids`` (the graph servers on this machine) is gone, when this process's
    parent is no longer ``launcher_pid`` (the launcher is gone; the kernel's parent-death signal,
    :func:`die_with_launcher`, normally ends the trainer first), or when a peer
    of ``peers`` (``{ip: "machine 1 (ip)"}``) closed a connection this process holds (its launcher
    ended and took its servers and trainers with it, or one of them died): then it says which.

    A DGL client whose server died can block forever on a remote pull, and a trainer that reads
    only its local partition (shared memory) never notices the death at all; both must fail."""

    def __init__(self, timeout_s: float, server_pids: Sequence[int] = (), what: str = "trainer",
                 exit: Callable[[int], None] = os._exit, poll_s: float = 0.5, launcher_pid: Optional[int] = None,
                 on_stall: Callable[[], str] = lambda: "", peers: Optional[Dict[str, str]] = None) -> None:
        self.timeout_s, self.server_pids, self.what, self._exit, self.poll_s = timeout_s, list(server_pids), what, exit, poll_s
        self.launcher_pid, self.on_stall, self.peers = launcher_pid, on_stall, dict(peers or {})
        self._sockets = PeerSockets(self.peers)
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graphrec-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def kick(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _fail(self, msg: str) -> None:
        if self._stop.is_set():            # stopped while checking: the run ended normally
            return
        print(f"error: {self.what}: {msg}", file=sys.stderr, flush=True)
        self._exit(WATCHDOG_EXIT)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.launcher_pid is not None and os.getppid() != self.launcher_pid:
                self._fail(f"the launcher on this machine (pid {self.launcher_pid}) is gone; stopping")
                return
            for i, pid in enumerate(self.server_pids):
                if not pid_alive(pid):
                    self._fail(f"graph server {i} on this machine (pid {pid}) is gone; stopping")
                    return
            closed = self._sockets.closed() if self.peers else []
            if closed:
                self._fail(f"{', '.join(self.peers[ip] for ip in closed)} closed its connections to this trainer: "
                           "its launcher, graph server or a trainer there went away; stopping")
                return
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                try:
                    why = self.on_stall()
                except Exception:                   # the message must come out whatever the probe does
                    why = ""
                self._fail(f"no progress for {idle:.0f} s (dist.stall_timeout_s={self.timeout_s:g}): "
                           f"{why or 'a graph server or another trainer is unreachable'}; stopping")
                return
