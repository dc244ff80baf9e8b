"""What a trainer shares with its peers: one process (``LocalComm``) or PyTorch DDP (``DDPComm``).

The training loop is written once against this interface; with ``LocalComm`` every call is a no-op,
so the single-process ranker is the distributed one with a world of one.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .lifecycle import WATCHDOG_EXIT, pid_alive


def trainer_device(run_device: str, backend: str, local_rank: int, cuda_count: int) -> Tuple[str, str]:
    """``(device, backend)`` of one distributed trainer: with ``run.device`` cuda (or auto on a machine with
    GPUs) trainer ``LOCAL_RANK`` trains on GPU ``local_rank`` and ``dist.backend: auto`` means nccl; on CPU,
    gloo. Errors name the key at fault."""
    from ..errors import ConfigError

    use_cuda = run_device == "cuda" or (run_device == "auto" and cuda_count > 0)
    if run_device == "cuda" and cuda_count == 0:
        raise ConfigError("run.device=cuda but this machine has no CUDA device; use run.device=auto or cpu")
    if not use_cuda:
        if backend == "nccl":
            raise ConfigError("dist.backend=nccl needs the trainers on GPUs (run.device=cuda); use auto or gloo")
        return "cpu", "gloo"
    if local_rank >= cuda_count:
        raise ConfigError(f"trainer {local_rank} of this machine has no GPU of its own ({cuda_count} visible): "
                          f"start at most {cuda_count} trainers per machine (--num-trainers) or set run.device=cpu")
    return f"cuda:{local_rank}", ("nccl" if backend == "auto" else backend)


class LocalComm:
    rank, world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def join(self, net: torch.nn.Module):
        return contextlib.nullcontext()

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def sum(self, values: Sequence[float]) -> List[float]:
        """The element-wise sum of every rank's ``values`` (same length everywhere), on every rank."""
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass


class DDPComm(LocalComm):
    """``torch.distributed`` from the launcher's environment (``MASTER_ADDR``/``PORT``, ``RANK``,
    ``WORLD_SIZE``). Must be created after ``dgl.distributed.initialize`` (DGL's rule)."""

    def __init__(self, backend: str = "gloo", timeout_s: float = 300.0, device: Optional[str] = None) -> None:
        import torch.distributed as dist

        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.backend = backend
        self.device = torch.device(device) if device is not None and torch.device(device).type == "cuda" else None
        if self.device is not None:
            torch.cuda.set_device(self.device)         # nccl's collectives run on the current device
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device is not None else None
        # the forecaster heads see no gradient on batches whose authors have no products on sale
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def join(self, net: torch.nn.Module):
        """Trainers own different numbers of batches; DDP's join shadows the finished ones."""
        from torch.distributed.algorithms.join import Join

        return Join([net])

    def gather(self, obj: Any) -> List[Any]:
        import torch.distributed as dist

        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: Sequence[float]) -> List[float]:
        import torch.distributed as dist

        # every rank sends its vector to every rank, each adds them in rank order (the same sum everywhere):
        # one all-to-all, which on gloo takes a third of a small all_reduce and half of all_gather_object
        mine = torch.tensor([list(values)] * self.world, dtype=torch.float64, device=self.device)
        every = torch.empty_like(mine)
        dist.all_to_all_single(every, mine)
        return every.sum(0).tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class Watchdog:
    """Ends the process with a message when ``kick`` has not been called for ``timeout_s`` seconds,
    when one of ``server_pids`` (the graph servers on this machine) is gone, when this process's
    parent is no longer ``launcher_pid`` (the launcher is gone; the kernel's parent-death signal,
    :func:`graphrec.dist.lifecycle.die_with_launcher`, normally ends the trainer first), or when a peer
    of ``peers`` (``{ip: "machine 1 (ip)"}``) closed a connection this process holds (its launcher
    ended and took its servers and trainers with it, or one of them died): then it says which.

    A DGL client whose server died can block forever on a remote pull, and a trainer that reads
    only its local partition (shared memory) never notices the death at all; both must fail."""

    def __init__(self, timeout_s: float, server_pids: Sequence[int] = (), what: str = "trainer",
                 exit: Callable[[int], None] = os._exit, poll_s: float = 0.5, launcher_pid: Optional[int] = None,
                 on_stall: Callable[[], str] = lambda: "", peers: Optional[Dict[str, str]] = None) -> None:
        from .lifecycle import PeerSockets

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
