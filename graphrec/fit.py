"""One training loop for every trainable stage: the ranker, GraphCL, both forecasters and LightGCN.

FuxiCTR's ``BaseModel.fit`` is the model: a stage describes *what* to learn as a :class:`Task`
(its minibatches, its loss, optionally a validation metric) and :func:`fit` does the rest the same
way for all of them — device placement, optional bf16 autocast on CUDA, Adam, gradient clipping,
a progress bar, progress lines with time-left estimates for unattended runs, TensorBoard scalars, an atomic
checkpoint (every ``checkpoint_every_s``, inside an epoch too) with exact resumption, early stopping on the
validation metric with the best epoch's weights restored, and DDP through a ``comm`` (:mod:`graphrec.dist.comm`).

Determinism: every source of randomness of an epoch is derived from ``(seed, epoch, rank)`` at the
epoch's start (``torch.manual_seed`` for dropout and torch sampling, a fresh ``numpy`` generator handed
to :meth:`Task.batches`), so a run resumed from the checkpoint of epoch ``e`` continues exactly as the
uninterrupted run would have (on CPU with one intra-op thread; with several, float reductions
may add in another order and differ in the last bits). A checkpoint written inside an epoch, after step ``k``,
also holds where the epoch's generators stood after that step (numpy's bit generator as it was when batch ``k``
had been built, whatever a prefetching thread built after it; torch's, CPU and CUDA), the epoch's running sums
and ``k``; a resume rebuilds the epoch's batches from its seed, drops the first ``k`` without building them
(:func:`remaining_batches`), puts the generators back and continues with step ``k + 1``: the same weights,
optimizer state and history as without the interruption. Plain PyTorch: importing this module does not import DGL.
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
from .errors import DataError

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
    checkpoint_every_s: float = 0.0      # write the checkpoint after the step (inside an epoch too) or the epoch at
                                         # which this many seconds have passed since the last one, and always after
                                         # the last epoch; 0 = after every epoch and never inside one
    checkpoint_share: float = 0.05       # inside an epoch, the most of the time checkpoint writes may take: after
                                         # a write of w seconds the next waits w * (1 - share) / share at least
    progress_every_s: float = 60.0       # seconds between progress lines (step, rate, time left) inside an epoch;
                                         # the first comes this long after the epoch's start; 0 = none
    warmup_steps: int = 0                # the learning rate rises linearly from lr / warmup_steps to lr over the
                                         # run's first this-many optimizer steps; 0 = none
    lr_decay: float = 1.0                # the learning rate of epoch e (from 0) is lr * lr_decay ** e; 1 = constant


def lr_factor(spec: FitSpec, epoch: int, step: int) -> float:
    """The learning rate's multiplier at optimizer step ``step`` (counted over the run, from 0) of ``epoch``:
    ``spec.warmup_steps`` of linear warm-up, then ``spec.lr_decay`` per epoch. A function of where training is,
    not a scheduler's state, so a resumed run (after an epoch or inside one) takes the same rates."""
    warm = min(1.0, (step + 1) / spec.warmup_steps) if spec.warmup_steps > 0 else 1.0
    return warm * spec.lr_decay ** epoch


@dataclass
class FitResult:
    history: List[Dict[str, float]]
    best_epoch: int                      # 1-based; 0 when nothing was validated
    best: float                          # best `monitor` value (NaN when nothing was validated)
    resumed_from: Optional[int] = None   # epochs already done when this run resumed
    stopped_early: bool = False
    seconds: float = 0.0
    resumed_at_step: int = 0             # and the steps of the next epoch done (a checkpoint from inside an epoch)
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


SYNC_STEPS = 16   # distributed: steps between the trainers' agreement on whether to checkpoint inside an epoch


def _length(batches: Any) -> Optional[int]:
    try:
        return len(batches)
    except TypeError:
        return None


class _Built:
    """A batch with the state of the epoch's numpy generator right after it was built: what a checkpoint after
    its step must hold, however many batches a prefetching thread has built since."""

    __slots__ = ("batch", "rng_state")

    def __init__(self, batch: Any, rng_state: Dict[str, Any]) -> None:
        self.batch, self.rng_state = batch, rng_state

    def pin_memory(self) -> "_Built":
        b = self.batch
        return _Built(b.pin_memory() if hasattr(b, "pin_memory") else b, self.rng_state)


class _Tracked:
    """``batches`` as :class:`_Built` ones; the state is read in the thread that builds them."""

    def __init__(self, batches: Iterable[Any], rng: np.random.Generator) -> None:
        self.batches, self.rng = batches, rng

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self):
        for b in self.batches:
            yield _Built(b, self.rng.bit_generator.state)


class _Rest:
    """An iterator's remaining batches after the first ones were built and dropped."""

    def __init__(self, it: Any, n: Optional[int]) -> None:
        self.it, self.n = it, n

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("unsized batches")
        return self.n

    def __iter__(self):
        return self.it


def remaining_batches(batches: Iterable[Any], k: int) -> Iterable[Any]:
    """An epoch's batches without its first ``k`` (those a resumed epoch already trained on), built as little as
    the object allows: ``batches.skip(k)`` where it has that method (the ranker's lazy batches,
    :class:`graphrec.ranking.train._Batches`, never build the skipped ones); a slice of a list or tuple (built
    already); anything else is iterated and its first ``k`` dropped (built here: their draws on the epoch's
    generators are undone by the restore of the checkpoint's generator states that follows)."""
    if k == 0:
        return batches
    if callable(getattr(batches, "skip", None)):
        return batches.skip(k)  # type: ignore[attr-defined]
    if isinstance(batches, (list, tuple)):
        return batches[k:]
    n = _length(batches)
    it = iter(batches)
    end = object()
    for i in range(k):
        if next(it, end) is end:
            raise DataError(f"the epoch has {i} batches, fewer than the {k} its checkpoint says were done")
    return _Rest(it, None if n is None else n - k)


def _prefetching(device: torch.device, task: Any) -> bool:
    """Whether the epoch's batches are built ahead in a thread (:class:`Prefetched`)."""
    return device.type == "cuda" and bool(getattr(task, "prefetch", False))


def _torch_rng(device: torch.device) -> Dict[str, Any]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_torch_rng(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


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
        parameters: Optional[Iterable[torch.nn.Parameter]] = None, optimizer: Any = None,
        reinit: Optional[Callable[[int], List[torch.nn.Parameter]]] = None) -> FitResult:
    """Train ``model`` on ``task`` as ``spec`` says; returns the history and the best epoch.

    ``validate(model, epoch)`` (default: ``task.validate`` when the task has one) returns metrics;
    with ``spec.monitor`` the best epoch on that metric is kept, restored at the end, and training
    stops after ``spec.patience`` epochs without improvement. ``checkpoint``: written (rank 0 only) after the step
    or the epoch at which ``spec.checkpoint_every_s`` have passed since the last write (not after an epoch's last
    step: the epoch's end, after validation, looks at the clock instead; and inside an epoch at most
    ``spec.checkpoint_share`` of the time writing), and after the last epoch (the budget's or early stopping's);
    ``checkpoint_every_s`` 0: after every epoch and never inside one. With ``resume`` and an
    existing file, training continues after its epoch, or after its step of the epoch it was written in (exactly
    where the task's batches come from the epoch's generators; the distributed GraphCL's ``DistDataLoader``
    shuffles on its own, so its resumed epoch goes on with the remaining steps of another order).
    In a distributed run the trainers agree every :data:`SYNC_STEPS` steps, on rank 0's clock, whether to write one
    inside the epoch (only while every trainer still has batches of the epoch), gather their generator states and
    running sums into it, and all resume at its step, each with its own states (the same number of trainers only).
    Inside an epoch, every ``spec.progress_every_s`` from the epoch's start, a line gives the step, the rate and
    the time left of the epoch and of the run (``<tag>/steps_per_s`` and ``<tag>/eta_epoch_s`` in TensorBoard).
    ``parameters``: what the optimizer updates (default: every parameter of ``model``), or parameter groups
    (dicts, e.g. with their own ``weight_decay``). ``optimizer``: one built by the caller instead of Adam over
    ``parameters`` (DGL's sparse optimizer of a ``DistEmbedding``, :mod:`graphrec.dist.graphcl`), with torch's
    interface (``zero_grad``, ``step``, ``param_groups``, ``state_dict``, ``load_state_dict``); a model without
    dense trainable parameters is then not wrapped in DDP (its optimizer synchronises the trainers).
    ``reinit(epoch)``: called at the start of every epoch after the first (not of one resumed inside), draws some
    parameters afresh and returns them; their optimizer state is dropped (MEDA's per-epoch re-initialisation of
    the embedding layer, Liu et al. 2023, arXiv 2305.19531). The learning rate follows :func:`lr_factor`."""
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
    base_lr = [g["lr"] for g in opt.param_groups]
    scheduled = spec.warmup_steps > 0 or spec.lr_decay != 1.0
    validate = validate or getattr(task, "validate", None)
    amp = spec.amp and device.type == "cuda"
    unit = getattr(task, "unit", "examples")
    history: List[Dict[str, float]] = []
    best, best_epoch, bad = float("nan"), 0, 0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    start_epoch, resumed_from, partial = 0, None, None
    if resume and checkpoint is not None and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        best_state, best, best_epoch, bad = ck["best_state"], ck["best"], ck["best_epoch"], ck["bad_epochs"]
        history = list(ck["history"])
        start_epoch = resumed_from = ck["epoch"] + 1
        partial = ck.get("partial")            # written inside epoch `start_epoch`; None: at an epoch's end
        if partial is None:
            log(f"{spec.tag}: resumed after epoch {start_epoch} from {checkpoint}")
        else:
            if partial["world"] != comm.world:
                raise DataError(f"{checkpoint} was written inside epoch {partial['epoch'] + 1} by {partial['world']} "
                                f"trainer(s); it resumes with as many, not {comm.world}")
            log(f"{spec.tag}: resumed in epoch {partial['epoch'] + 1} after step {partial['step']:,}"
                f"{'' if partial['steps'] is None else '/' + format(partial['steps'], ',')} from {checkpoint}")
    resumed_at_step = partial["step"] if partial is not None else 0
    every = spec.checkpoint_every_s
    inside = checkpoint is not None and every > 0      # checkpoints inside an epoch (all ranks agree on this)
    share = min(max(spec.checkpoint_share, 1e-6), 1.0)
    gap = every                                        # the interval inside epochs: longer while writes are slow

    def wrote(t_write: float) -> None:
        nonlocal gap
        took = time.perf_counter() - t_write
        slow = max(every, took * (1.0 - share) / share)
        if slow > every and gap <= every:
            log(f"{spec.tag}: a checkpoint takes {took:.1f} s to write: inside an epoch, one every {slow:.0f} s "
                f"at most (checkpoint writes at most {share:.0%} of the time)")
        gap = slow
    t_fit = last_saved = time.perf_counter()
    val_seconds = 0.0                                  # the last validation's, for the run's time left
    stopped = False
    for epoch in range(start_epoch, spec.epochs):
        if spec.patience and bad >= spec.patience:
            stopped = True
            break
        t0 = time.perf_counter()
        seed = epoch_seed(spec.seed, epoch, comm.rank)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        if reinit is not None and epoch > 0 and partial is None:
            for p in reinit(epoch):
                opt.state.pop(p, None)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        extras: Dict[str, torch.Tensor] = {}
        count, done, before = 0, 0, 0.0
        batches = task.batches(epoch, rng)
        steps = _length(batches)
        if partial is not None:                        # the resumed epoch: its place, generators and sums
            if partial["epoch"] != epoch or (partial["steps"] is not None and partial["steps"] != steps):
                raise DataError(f"{checkpoint} was written after step {partial['step']} of {partial['steps']} of "
                                f"epoch {partial['epoch'] + 1}; this run's epoch {epoch + 1} has {steps} steps")
            mine = partial["ranks"][comm.rank]
            done, before = partial["step"], partial["seconds"]
            batches = remaining_batches(batches, done)
            rng.bit_generator.state = mine["numpy"]
            _set_torch_rng(mine["torch"], device)
            total = mine["loss_sum"].to(device)
            count = mine["count"]
            extras = {k: v.to(device) for k, v in mine["extras"].items()}
            partial = None
        if inside:
            batches = _Tracked(batches, rng)
        if _prefetching(device, task):
            batches = Prefetched(batches)
        step = epoch * steps if steps is not None else None
        if scheduled and steps is None:
            raise DataError(f"{spec.tag}: a learning-rate schedule (warm-up, decay) needs batches of known length")
        # the last step after which a checkpoint may be written inside the epoch (the epoch's end writes its own);
        # distributed: while every trainer still has batches, so that all of them take part
        limit = math.inf if steps is None else steps - 1
        if inside and comm.world > 1:
            lengths = comm.gather(-1 if steps is None else steps)
            limit = 0 if min(lengths) < 0 else min(lengths) - 1
        t_loop = t_shown = time.perf_counter()
        count0 = count
        with comm.join(net) if net is not model else contextlib.nullcontext():
            for i, batch in enumerate(tqdm(batches, total=steps, initial=done, leave=False, disable=not progress,
                                           desc=f"{spec.tag} {epoch + 1}/{spec.epochs}"), start=done):
                built = batch if inside else None
                if built is not None:
                    batch = built.batch
                batch = to_device(batch, device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                    out = task.loss(net, batch)
                loss, n = out[0], out[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if scheduled:
                    f = lr_factor(spec, epoch, step + i)
                    for g, lr in zip(opt.param_groups, base_lr):
                        g["lr"] = lr * f
                if spec.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
                opt.step()
                total += loss.detach().double() * n
                count += n
                for k, v in (out[2] if len(out) > 2 else {}).items():
                    extras[k] = extras.get(k, 0.0) + v.detach().double() * n
                if writer is not None and step is not None and (step + i) % spec.log_every == 0:
                    writer.add_scalar(f"{spec.tag}/train_loss_step", loss.item(), step + i)
                if built is not None and i < limit:
                    if comm.world == 1:
                        due = time.perf_counter() - last_saved >= gap
                    elif (i + 1) % SYNC_STEPS == 0:    # rank 0's clock decides for all
                        due = comm.sum([float(comm.is_main and time.perf_counter() - last_saved >= gap)])[0] > 0
                    else:
                        due = False
                    if due:
                        t_write = time.perf_counter()
                        mine = {"numpy": built.rng_state, "torch": _torch_rng(device), "loss_sum": total.cpu(),
                                "count": count, "extras": {k: v.cpu() for k, v in extras.items()}}
                        ranks = comm.gather(mine)
                        if comm.is_main:
                            save_checkpoint(checkpoint, {
                                "epoch": epoch - 1, "model": model.state_dict(), "optim": opt.state_dict(),
                                "best_state": best_state, "best": best, "best_epoch": best_epoch, "bad_epochs": bad,
                                "history": history,
                                "partial": {"epoch": epoch, "step": i + 1, "steps": steps, "world": comm.world,
                                            "seconds": before + time.perf_counter() - t0, "ranks": ranks}})
                            wrote(t_write)
                        last_saved = time.perf_counter()
                if spec.progress_every_s > 0:
                    now = time.perf_counter()
                    if now - t_shown >= spec.progress_every_s:
                        t_shown = now
                        _show_progress(spec, log, writer, epoch, i + 1, done, steps, step, now - t_loop,
                                       count - count0, unit, t_loop - t0, val_seconds, bad)
        sums = [float(total), count] + [float(v) for v in extras.values()]
        sums = comm.sum(sums)
        h: Dict[str, float] = {"epoch": epoch + 1, "train_loss": sums[0] / max(sums[1], 1)}
        h.update({k: v / max(sums[1], 1) for k, v in zip(extras, sums[2:])})
        if validate is not None:
            t_val = time.perf_counter()
            model.eval()
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                h.update({f"val_{k}": float(v) for k, v in validate(model, epoch).items()})
            val_seconds = time.perf_counter() - t_val
        h["lr"] = float(opt.param_groups[0]["lr"])
        h["seconds"] = before + time.perf_counter() - t0
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
            wrote(last_saved)
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
    return FitResult(history, best_epoch, best, resumed_from, stopped, time.perf_counter() - t_fit,
                     resumed_at_step=resumed_at_step)


def _show_progress(spec: FitSpec, log: Callable[[str], None], writer: Any, epoch: int, at: int, done: int,
                   steps: Optional[int], step: Optional[int], seconds: float, examples: float, unit: str,
                   setup_s: float, val_s: float, bad: int) -> None:
    """One progress line inside epoch ``epoch`` after step ``at`` (``done`` of them before this process's
    ``seconds`` of it), and its TensorBoard points: the rate, and the time left of the epoch and of the run, at
    the epoch budget and, with patience, if no later epoch improves (each later epoch taken to be as long as
    this one at the current rate, with its batches' setup and the last validation)."""
    rate = (at - done) / max(seconds, 1e-9)
    line = f"{spec.tag} epoch {epoch + 1}/{spec.epochs}, step {at:,}"
    if steps is not None:
        line += f"/{steps:,} ({100.0 * at / max(steps, 1):.0f}%)"
    line += f", {rate:.2f} steps/s, {float(examples) / max(seconds, 1e-9):,.0f} {unit}/s"
    if writer is not None and step is not None:
        writer.add_scalar(f"{spec.tag}/steps_per_s", rate, step + at - 1)
    if steps is not None:
        eta = (steps - at) / rate if rate > 0 else math.inf
        if writer is not None:
            writer.add_scalar(f"{spec.tag}/eta_epoch_s", eta, step + at - 1)
        per_epoch = setup_s + steps / rate + val_s if rate > 0 else math.inf
        later = spec.epochs - epoch - 1
        line += f", ETA epoch {clock(eta)}, ETA run {clock(eta + val_s + later * per_epoch)}"
        if spec.patience and spec.monitor is not None:
            # without an improvement the run stops after the epoch that makes `patience` epochs without one
            stop = min(later, max(spec.patience - bad - 1, 0))
            if stop < later:
                line += (f" at the epoch budget ({later} more epoch{'s' * (later != 1)}), "
                         f"{clock(eta + val_s + stop * per_epoch)} if patience {spec.patience} stops it ({stop} more)")
    log(line)
