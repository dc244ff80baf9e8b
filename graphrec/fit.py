"""One training loop for every trainable stage: the ranker, GraphCL, both forecasters and LightGCN.

FuxiCTR's ``BaseModel.fit`` is the model: a stage describes *what* to learn as a :class:`Task`
(its minibatches, its loss, optionally a validation metric) and :func:`fit` does the rest the same
way for all of them — device placement, optional bf16 autocast on CUDA, Adam, gradient clipping,
a progress bar, TensorBoard scalars, an atomic epoch checkpoint (every ``checkpoint_every_s``) with exact resumption,
early stopping on the validation metric with the best epoch's weights restored, and DDP through a
``comm`` (:mod:`graphrec.dist.comm`).

Determinism: every source of randomness of an epoch is derived from ``(seed, epoch, rank)`` at the
epoch's start (``torch.manual_seed`` for dropout and torch sampling, a fresh ``numpy`` generator handed
to :meth:`Task.batches`), so a run resumed from the checkpoint of epoch ``e`` continues exactly as the
uninterrupted run would have (on CPU with one intra-op thread; with several, float reductions
may add in another order and differ in the last bits). Plain PyTorch: importing this module does not import DGL.
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, Union

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint

Loss = Union[Tuple[torch.Tensor, int], Tuple[torch.Tensor, int, Dict[str, torch.Tensor]]]


class Task(Protocol):
    """What a stage asks :func:`fit` to learn."""

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Any]:
        """The epoch's training minibatches (tensors, or objects with ``.to(device)``)."""

    def loss(self, model: torch.nn.Module, batch: Any) -> Loss:
        """``(loss, examples)`` or ``(loss, examples, {name: extra scalar to log})`` of one batch;
        ``model`` is what to call (the DDP wrapper in a distributed run)."""


@dataclass
class FitSpec:
    """How to train; every trainable stage fills it from its config section."""

    epochs: int
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0               # max gradient norm; 0 = no clipping
    patience: int = 0                    # epochs without a better `monitor` before stopping; 0 = never
    monitor: Optional[str] = None        # key of Task.validate()'s result to select the best epoch on
    mode: str = "max"                    # "max" or "min": which direction of `monitor` is better
    amp: bool = False                    # bf16 autocast (CUDA only; ignored on CPU)
    tag: str = "train"                   # TensorBoard section and progress-bar label
    log_every: int = 50                  # steps between per-step loss points in TensorBoard
    checkpoint_every_s: float = 0.0      # write the epoch checkpoint once this many seconds have passed since the
                                         # last one (and always after the last epoch); 0 = after every epoch


@dataclass
class FitResult:
    history: List[Dict[str, float]]
    best_epoch: int                      # 1-based; 0 when nothing was validated
    best: float                          # best `monitor` value (NaN when nothing was validated)
    resumed_from: Optional[int] = None   # epochs already done when this run resumed
    stopped_early: bool = False
    seconds: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (an object with ``.to``, a tensor, or a tuple/list/dict of them) to ``device``."""
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Prefetched:
    """An epoch's batches built ``depth`` ahead in a background thread, in page-locked memory, so that on a
    GPU building batch ``i + 1`` on the host overlaps the kernels of batch ``i``. Only for tasks that
    declare ``prefetch = True``: their batches draw on the epoch's numpy generator alone (never on torch's
    global generator, which the model's dropout uses from the main thread), so the order, and the run, stay
    what they are without the thread. An error in the thread is raised in the consumer."""

    _END = object()

    def __init__(self, batches: Iterable[Any], depth: int = 2) -> None:
        self.batches, self.depth = batches, depth

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self):
        q: "queue.Queue" = queue.Queue(self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for b in self.batches:
                    if not put(b.pin_memory() if hasattr(b, "pin_memory") else b):
                        return
                put(self._END)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                put(e)

        worker = threading.Thread(target=produce, name="graphrec-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one trainer (what makes resumption exact)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


def _better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def fit(model: torch.nn.Module, task: Task, spec: FitSpec, device: Union[str, torch.device] = "cpu",
        checkpoint: Optional[Path] = None, resume: bool = False, writer: Any = None,
        log: Callable[[str], None] = lambda s: None, progress: bool = False, comm: Any = None,
        validate: Optional[Callable[[torch.nn.Module, int], Dict[str, float]]] = None,
        on_epoch_end: Callable[[int, Dict[str, float]], None] = lambda e, h: None,
        parameters: Optional[Iterable[torch.nn.Parameter]] = None, optimizer: Any = None) -> FitResult:
    """Train ``model`` on ``task`` as ``spec`` says; returns the history and the best epoch.

    ``validate(model, epoch)`` (default: ``task.validate`` when the task has one) returns metrics;
    with ``spec.monitor`` the best epoch on that metric is kept, restored at the end, and training
    stops after ``spec.patience`` epochs without improvement. ``checkpoint``: written after an epoch (rank 0
    only) once ``spec.checkpoint_every_s`` have passed since the last write, and after the last epoch (the
    budget's or early stopping's); with ``resume`` and an existing file, training continues after its epoch.
    ``parameters``: what the optimizer updates (default: every parameter of ``model``), or parameter groups
    (dicts, e.g. with their own ``weight_decay``). ``optimizer``: one built by the caller instead of Adam over
    ``parameters`` (DGL's sparse optimizer of a ``DistEmbedding``, :mod:`graphrec.dist.graphcl`), with torch's
    interface (``zero_grad``, ``step``, ``param_groups``, ``state_dict``, ``load_state_dict``); a model without
    dense trainable parameters is then not wrapped in DDP (its optimizer synchronises the trainers)."""
    from tqdm import tqdm

    from .dist.comm import LocalComm

    comm = comm or LocalComm()
    device = torch.device(device)
    model.to(device)
    groups = list(parameters) if parameters is not None else [{"params": list(model.parameters())}]
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    net = comm.wrap(model) if params or optimizer is None else model
    # On CUDA, Adam's fused kernel updates every parameter in a few launches instead of several per tensor.
    fused = device.type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params) or None
    opt = optimizer or torch.optim.Adam([g for g in groups if g["params"]], lr=spec.lr,
                                        weight_decay=spec.weight_decay, fused=fused)
    validate = validate or getattr(task, "validate", None)
    amp = spec.amp and device.type == "cuda"
    history: List[Dict[str, float]] = []
    best, best_epoch, bad = float("nan"), 0, 0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    start_epoch, resumed_from = 0, None
    if resume and checkpoint is not None and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        best_state, best, best_epoch, bad = ck["best_state"], ck["best"], ck["best_epoch"], ck["bad_epochs"]
        history = list(ck["history"])
        start_epoch = resumed_from = ck["epoch"] + 1
        log(f"{spec.tag}: resumed after epoch {start_epoch} from {checkpoint}")
    t_fit = last_saved = time.perf_counter()
    stopped = False
    for epoch in range(start_epoch, spec.epochs):
        if spec.patience and bad >= spec.patience:
            stopped = True
            break
        t0 = time.perf_counter()
        seed = epoch_seed(spec.seed, epoch, comm.rank)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        extras: Dict[str, torch.Tensor] = {}
        count = 0
        batches = task.batches(epoch, rng)
        if device.type == "cuda" and getattr(task, "prefetch", False):
            batches = Prefetched(batches)
        steps = len(batches) if hasattr(batches, "__len__") else None
        step = epoch * steps if steps is not None else None
        with comm.join(net) if net is not model else contextlib.nullcontext():
            for i, batch in enumerate(tqdm(batches, total=steps, desc=f"{spec.tag} {epoch + 1}/{spec.epochs}",
                                           disable=not progress, leave=False)):
                batch = to_device(batch, device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                    out = task.loss(net, batch)
                loss, n = out[0], out[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if spec.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
                opt.step()
                total += loss.detach().double() * n
                count += n
                for k, v in (out[2] if len(out) > 2 else {}).items():
                    extras[k] = extras.get(k, 0.0) + v.detach().double() * n
                if writer is not None and step is not None and (step + i) % spec.log_every == 0:
                    writer.add_scalar(f"{spec.tag}/train_loss_step", loss.item(), step + i)
        sums = [float(total), count] + [float(v) for v in extras.values()]
        sums = comm.sum(sums)
        h: Dict[str, float] = {"epoch": epoch + 1, "train_loss": sums[0] / max(sums[1], 1)}
        h.update({k: v / max(sums[1], 1) for k, v in zip(extras, sums[2:])})
        if validate is not None:
            model.eval()
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                h.update({f"val_{k}": float(v) for k, v in validate(model, epoch).items()})
        h["lr"] = float(opt.param_groups[0]["lr"])
        h["seconds"] = time.perf_counter() - t0
        history.append(h)
        improved = False
        if spec.monitor is not None:
            value = h.get(f"val_{spec.monitor}", float("nan"))
            if _better(value, best, spec.mode):
                best, best_epoch, bad, improved = value, epoch + 1, 0, True
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                bad += 1
        last = epoch + 1 == spec.epochs or bool(spec.patience and bad >= spec.patience)
        if checkpoint is not None and comm.is_main and (
                last or time.perf_counter() - last_saved >= spec.checkpoint_every_s):
            last_saved = time.perf_counter()
            save_checkpoint(checkpoint, {"epoch": epoch, "model": model.state_dict(), "optim": opt.state_dict(),
                                         "best_state": best_state, "best": best, "best_epoch": best_epoch,
                                         "bad_epochs": bad, "history": history})
        if writer is not None:
            for k, v in h.items():
                if k != "epoch":
                    writer.add_scalar(f"{spec.tag}/{k}", v, epoch + 1)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in h.items() if k not in ("epoch", "lr", "seconds"))
        log(f"{spec.tag} epoch {epoch + 1}/{spec.epochs}: {shown} ({h['seconds']:.1f} s)"
            f"{' (best)' if improved else ''}")
        on_epoch_end(epoch, h)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(history, best_epoch, best, resumed_from, stopped, time.perf_counter() - t_fit)

