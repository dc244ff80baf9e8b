"""Simulated machines on one Linux host: a test and benchmark harness, not part of a distributed run.

The multi-machine tests (``tests/test_dist*.py``) and ``python -m graphrec.bench dist`` rehearse several
machines with it; a real run starts one ``python -m graphrec.launch`` per machine and never imports it.

A DGL trainer finds its machine by matching the ip config's addresses with its host's interfaces
and reads its partition through shared memory named after the graph, so two "machines" on one
host need their own addresses and their own ``/dev/shm``. Each simulated machine is a network
namespace holding one end of a veth pair (interface ``gr0``, address ``10.<a>.<b>.<i+1>/24``, which
exists only inside the namespaces); each process runs under
``ip netns exec <ns> unshare -m --propagation private`` with a fresh ``tmpfs`` on ``/dev/shm``.
Needs root (``CAP_SYS_ADMIN``/``CAP_NET_ADMIN``); :func:`unavailable_reason` says why not.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

INTERFACE = "gr0"


@dataclass
class Machine:
    namespace: str
    ip: str

    def command(self, argv: Sequence[str]) -> List[str]:
        """``argv`` run inside this machine: its network namespace and a private ``/dev/shm``."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "-m", "--propagation", "private",
                "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh", *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable_reason() -> Optional[str]:
    """Why simulated machines cannot be made here, or None when they can."""
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"grprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {getattr(exc, 'stderr', '') or exc}".strip()
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot mount a private /dev/shm: {r.stderr.strip()}"
    return None


@contextlib.contextmanager
def simulated_machines(count: int, subnet: Optional[str] = None) -> Iterator[List[Machine]]:
    """``count`` machines joined by a bridge-less veth mesh (2) or a bridge (more); removed on exit,
    also when the body fails."""
    tag = f"gr{os.getpid() % 100000}"
    subnet = subnet or f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    machines = [Machine(f"{tag}m{i}", f"{subnet}.{i + 1}") for i in range(count)]
    bridge = f"{tag}br"
    made_bridge = False
    try:
        for m in machines:
            _ip("netns", "add", m.namespace)
            _ip("-n", m.namespace, "link", "set", "lo", "up")
        if count == 2:
            a, b = machines
            _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
            for m, end in ((a, f"{tag}a"), (b, f"{tag}b")):
                _ip("link", "set", end, "netns", m.namespace)
                _ip("-n", m.namespace, "link", "set", end, "name", INTERFACE)
        else:
            _ip("link", "add", bridge, "type", "bridge")
            made_bridge = True
            _ip("link", "set", bridge, "up")
            for i, m in enumerate(machines):
                _ip("link", "add", f"{tag}v{i}", "type", "veth", "peer", "name", f"{tag}p{i}")
                _ip("link", "set", f"{tag}p{i}", "master", bridge)
                _ip("link", "set", f"{tag}p{i}", "up")
                _ip("link", "set", f"{tag}v{i}", "netns", m.namespace)
                _ip("-n", m.namespace, "link", "set", f"{tag}v{i}", "name", INTERFACE)
        for m in machines:
            _ip("-n", m.namespace, "addr", "add", f"{m.ip}/24", "dev", INTERFACE)
            _ip("-n", m.namespace, "link", "set", INTERFACE, "up")
        yield machines
    finally:
        for m in machines:
            subprocess.run(["ip", "netns", "del", m.namespace], capture_output=True)
        if made_bridge:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def list_namespaces() -> List[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
