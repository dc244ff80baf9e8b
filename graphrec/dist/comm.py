"""What a trainer shares with its peers: one process (``LocalComm``) or PyTorch DDP (``DDPComm``).

The training loop is written once against this interface; with ``LocalComm`` every call is a no-op,
so the single-process ranker is the distributed one with a world of one.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, List, Optional, Sequence, Tuple

import torch


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
