"""Training and evaluation of LiveForesighter's two forecasters on a canonical dataset.

No label leakage into the ranker: forecasters train only on *training rooms* and on windows whose
targets end before the first validation impression; their quality is measured on *held-out rooms*
(never trained on) against the naive baselines of the paper's Tables 5 and 6:

* statistics: MSE (on ``log1p`` counts) of the forecast vs "mean value" (the input window's mean)
  and "latest value" (the last observed step), over every window of the held-out rooms;
* products: next fine-category hit rate (top-1) vs "most frequent category" (in the history so far,
  ties to the most recent) and "latest category", over every prefix of the held-out rooms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .data.dataset import SPLITS, Dataset
from .errors import DataError
from .models.product_forecaster import ProductForecaster
from .models.stat_forecaster import StatForecaster


# ----------------------------------------------------------------------------- shared
def train_cutoff_time(ds: Dataset) -> float:
    """The first time that is not training data (the earliest validation/test impression)."""
    imp = ds.impressions
    later = imp["split"] != SPLITS["train"]
    return float(imp["time"][later].min()) if later.any() else float("inf")


def split_rooms(rooms: np.ndarray, holdout_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Random ``(train_rooms, heldout_rooms)`` (row indices); at least one of each when possible."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(rooms)
    n_hold = int(round(len(rooms) * holdout_fraction))
    if len(rooms) >= 2:
        n_hold = min(max(n_hold, 1), len(rooms) - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


class WindowTask:
    """A forecaster's training as a :class:`graphrec.fit.Task`: shuffled minibatches of example indices,
    ``step_loss(model, indices)`` per batch."""

    def __init__(self, n: int, batch_size: int, step_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        self.n, self.batch_size, self.step_loss = n, batch_size, step_loss

    def batches(self, epoch: int, rng: np.random.Generator) -> List[torch.Tensor]:
        idx = torch.from_numpy(rng.permutation(self.n))
        return [idx[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]

    def loss(self, model: nn.Module, idx: torch.Tensor):
        return self.step_loss(model, idx), len(idx)


def train_forecaster(model: nn.Module, n: int, step_loss, sec: Mapping[str, Any], seed: int, tag: str,
                     device: str = "cpu", progress: bool = False, writer: Any = None,
                     log: Callable[[str], None] = lambda s: None, amp: bool = False) -> List[float]:
    """Adam with gradient clipping over ``n`` examples for ``sec.epochs`` epochs (:func:`graphrec.fit.fit`)."""
    from .fit import FitSpec, fit

    spec = FitSpec(epochs=sec["epochs"], lr=sec["lr"], seed=seed, grad_clip=5.0, amp=amp, tag=tag)
    result = fit(model, WindowTask(n, sec["batch_size"], step_loss), spec, device, writer=writer, log=log,
                 progress=progress)
    return [h["train_loss"] for h in result.history]


# ----------------------------------------------------------------------------- statistics
def stat_windows(values: np.ndarray, input_steps: int, horizon: int,
                 last_target_step: Optional[np.ndarray] = None, max_windows: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows of ``values [R, T, F]``: inputs ``[n, input_steps, F]``, targets ``[n, horizon, F]``
    and the room of each window. With ``last_target_step[r]``, only windows whose targets end before
    that step (exclusive) are kept. With ``max_windows``, a sample of that many (drawn with ``rng``) is
    taken before any window is copied out: at 100k rooms all windows would take gigabytes."""
    R, T, F = values.shape
    w = input_steps + horizon
    if T < w:
        return (np.zeros((0, input_steps, F), np.float32), np.zeros((0, horizon, F), np.float32),
                np.zeros(0, np.int64))
    view = np.lib.stride_tricks.sliding_window_view(values, w, axis=1)   # [R, T-w+1, F, w]
    starts = np.arange(T - w + 1)
    keep = np.ones((R, len(starts)), dtype=bool)
    if last_target_step is not None:
        keep = (starts[None, :] + w) <= np.asarray(last_target_step)[:, None]
    rooms, pos = np.nonzero(keep)
    if max_windows is not None and len(rooms) > max_windows:
        pick = rng.choice(len(rooms), max_windows, replace=False)
        rooms, pos = rooms[pick], pos[pick]
    win = view[rooms, pos].transpose(0, 2, 1)                              # [n, w, F]
    return (np.ascontiguousarray(win[:, :input_steps], dtype=np.float32),
            np.ascontiguousarray(win[:, input_steps:], dtype=np.float32), rooms)


def _train_last_step(ds: Dataset) -> np.ndarray:
    """Per statistic room: the first step whose statistics are not training data (see train_cutoff_time)."""
    st = ds.tables["stats"]
    step = float(ds.meta.get("stats", {}).get("step_seconds", 30))
    cutoff = train_cutoff_time(ds)
    if not np.isfinite(cutoff):
        return np.full(len(st["values"]), st["values"].shape[1])
    return np.floor((cutoff - st["start"]) / step)


def stat_forecast_shortage(ds: Dataset, sec: Mapping[str, Any], seed: int) -> Optional[str]:
    """Why the statistic forecaster has nothing to train on or to measure on this dataset, or None.

    Cheap (no window is copied), so the stage can skip with this reason instead of failing."""
    values = ds.tables["stats"]["values"]
    R, T = values.shape[0], values.shape[1]
    I, H = sec["input_steps"], sec["horizon"]
    if T < I + H:
        return f"rooms have {T} steps, fewer than input_steps + horizon = {I + H}"
    train_rooms, held_rooms = split_rooms(np.arange(R), sec["holdout_fraction"], seed)
    if len(train_rooms) == 0 or len(held_rooms) == 0:
        return (f"{R} room(s) with statistics: too few for training rooms and held-out rooms "
                f"(stat_forecast.holdout_fraction={sec['holdout_fraction']})")
    if not (_train_last_step(ds)[train_rooms] >= I + H).any():
        return (f"no training window of input_steps + horizon = {I + H} steps ends before the first "
                f"validation impression")
    return None


@dataclass
class StatResult:
    model: StatForecaster
    metrics: Dict[str, Any]
    loss_history: List[float]


def train_stat_forecaster(ds: Dataset, sec: Mapping[str, Any], seed: int, progress: bool = False,
                          device: str = "cpu", writer: Any = None, log: Callable[[str], None] = lambda s: None,
                          amp: bool = False) -> StatResult:
    st = ds.tables["stats"]
    values = st["values"].astype(np.float32)
    if sec["log1p"]:
        values = np.log1p(np.maximum(values, 0.0))
    last_step = _train_last_step(ds)
    train_rooms, held_rooms = split_rooms(np.arange(len(values)), sec["holdout_fraction"], seed)
    I, H = sec["input_steps"], sec["horizon"]
    x_tr, y_tr, _ = stat_windows(values[train_rooms], I, H, last_step[train_rooms],
                                 max_windows=sec["max_train_windows"], rng=np.random.default_rng(seed))
    x_ho, y_ho, _ = stat_windows(values[held_rooms], I, H)
    if len(x_tr) == 0 or len(x_ho) == 0:
        raise DataError(f"no statistic windows of {I}+{H} steps (rooms have {values.shape[1]} steps; "
                         f"training windows {len(x_tr)}, held-out {len(x_ho)})")
    torch.manual_seed(seed)
    model = StatForecaster.from_config(sec, values.shape[2])
    xt, yt = torch.from_numpy(x_tr).to(device), torch.from_numpy(y_tr).to(device)
    mse = nn.MSELoss()
    hist = train_forecaster(model, len(xt), lambda m, idx: mse(m(xt[idx])[0], yt[idx]), sec, seed, "stat_forecast",
                            device, progress, writer, log, amp)
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x_ho[s:s + 4096]).to(device))[0].float().cpu()
                          for s in range(0, len(x_ho), 4096)]).numpy()
    model.cpu()
    mean_b = np.repeat(x_ho.mean(axis=1, keepdims=True), H, axis=1)
    latest_b = np.repeat(x_ho[:, -1:], H, axis=1)
    err = lambda p: float(np.mean((p - y_ho) ** 2))
    metrics = {
        "space": "log1p" if sec["log1p"] else "raw",
        "train_rooms": int(len(train_rooms)), "heldout_rooms": int(len(held_rooms)),
        "train_windows": int(len(xt)), "heldout_windows": int(len(x_ho)),
        "mse": {"model": err(pred), "mean_value": err(mean_b), "latest_value": err(latest_b)},
        "mse_per_step": [float(np.mean((pred[:, h] - y_ho[:, h]) ** 2)) for h in range(H)],
    }
    return StatResult(model, metrics, hist)


# ----------------------------------------------------------------------------- products
def product_sequences(ds: Dataset, rooms: np.ndarray, max_len: int, before: float = float("inf"),
                      stride: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Left-aligned ``[n, max_len, 4]`` (product, cat1, cat2, cat3) windows of the given authors'
    sequences, using events strictly before ``before``; sequences longer than ``max_len`` are cut into
    overlapping windows (stride ``max_len // 2``) so every transition is seen."""
    pr = ds.tables["products"]
    keep = np.isin(pr["author"], rooms) & (pr["time"] < before)
    a = pr["author"][keep]
    items = np.stack([pr["product"][keep], pr["cat1"][keep], pr["cat2"][keep], pr["cat3"][keep]], axis=1)
    bounds = np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1], [True]]))
    stride = stride or max(1, max_len // 2)
    seqs, lens = [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        n = e - s
        if n < 2:
            continue                                    # nothing to predict
        starts = list(range(0, max(n - max_len, 0) + 1, stride))
        if starts[-1] != max(n - max_len, 0):
            starts.append(n - max_len)
        for st in starts:
            chunk = items[s + st:s + min(st + max_len, n)]
            pad = np.zeros((max_len, 4), np.int64)
            pad[:len(chunk)] = chunk
            seqs.append(pad)
            lens.append(len(chunk))
    if not seqs:
        return np.zeros((0, max_len, 4), np.int64), np.zeros(0, np.int64)
    return np.stack(seqs), np.array(lens, np.int64)


def product_forecast_shortage(ds: Dataset, sec: Mapping[str, Any], seed: int) -> Optional[str]:
    """Why the product forecaster has nothing to train on or to measure on this dataset, or None
    (no shopping room with 2+ products in training time, or none among the held-out rooms)."""
    pr = ds.tables["products"]
    rooms = np.unique(pr["author"])
    train_rooms, held_rooms = split_rooms(rooms, sec["holdout_fraction"], seed)

    def with_two(chosen: np.ndarray, before: float) -> int:
        keep = np.isin(pr["author"], chosen) & (pr["time"] < before)
        return int((np.bincount(np.asarray(pr["author"][keep], dtype=np.int64)) >= 2).sum())

    n_tr, n_ho = with_two(train_rooms, train_cutoff_time(ds)), with_two(held_rooms, float("inf"))
    if n_tr == 0 or n_ho == 0:
        return (f"no product sequences with 2+ items ({n_tr} training and {n_ho} held-out rooms have one, "
                f"of {len(rooms)} shopping rooms)")
    return None


def _next_targets(seqs: torch.Tensor, lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Target next-cat3 per position and a mask of positions that have a next item."""
    target = torch.roll(seqs[..., 3], shifts=-1, dims=1)
    valid = torch.arange(seqs.shape[1], device=seqs.device)[None, :] < (lens[:, None] - 1)
    return target, valid


def naive_category_baselines(seqs: np.ndarray, lens: np.ndarray, num_cat3: int) -> Dict[str, float]:
    """Hit rates of 'latest category' and 'most frequent category so far' (ties: most recent)."""
    hits = {"latest_category": 0, "most_frequent_category": 0}
    total = 0
    for seq, n in zip(seqs, lens):
        cats = seq[:n, 3]
        counts = np.zeros(num_cat3, np.int64)
        last_seen = np.full(num_cat3, -1)
        for i in range(n - 1):
            c = cats[i]
            counts[c] += 1
            last_seen[c] = i
            top = np.flatnonzero(counts == counts.max())
            mode = top[np.argmax(last_seen[top])]
            hits["latest_category"] += int(c == cats[i + 1])
            hits["most_frequent_category"] += int(mode == cats[i + 1])
            total += 1
    return {k: v / max(total, 1) for k, v in hits.items()}


@dataclass
class ProductResult:
    model: ProductForecaster
    metrics: Dict[str, Any]
    loss_history: List[float]


def train_product_forecaster(ds: Dataset, sec: Mapping[str, Any], seed: int, progress: bool = False,
                             device: str = "cpu", writer: Any = None, log: Callable[[str], None] = lambda s: None,
                             amp: bool = False) -> ProductResult:
    meta = ds.meta["products"]
    rooms = np.unique(ds.tables["products"]["author"])
    train_rooms, held_rooms = split_rooms(rooms, sec["holdout_fraction"], seed)
    L = sec["max_len"]
    x_tr, n_tr = product_sequences(ds, train_rooms, L, before=train_cutoff_time(ds))
    x_ho, n_ho = product_sequences(ds, held_rooms, L, stride=L)   # evaluation: each transition once
    if len(x_tr) == 0 or len(x_ho) == 0:
        raise DataError(f"no product sequences with 2+ items (training {len(x_tr)}, held-out {len(x_ho)})")
    torch.manual_seed(seed)
    model = ProductForecaster.from_config(sec, meta)
    xt, nt = torch.from_numpy(x_tr).to(device), torch.from_numpy(n_tr).to(device)
    ce = nn.CrossEntropyLoss()

    def step_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(device)
        logits, _ = m(xt[idx], nt[idx])
        target, valid = _next_targets(xt[idx], nt[idx])
        return ce(logits[valid].float(), target[valid])

    hist = train_forecaster(model, len(xt), step_loss, sec, seed, "product_forecast", device, progress, writer,
                            log, amp)
    model.cpu()
    xh, nh = torch.from_numpy(x_ho), torch.from_numpy(n_ho)
    with torch.no_grad():
        logits, _ = model(xh, nh)
    target, valid = _next_targets(xh, nh)
    hit = float((logits.argmax(-1)[valid] == target[valid]).float().mean())
    metrics = {"train_rooms": int(len(train_rooms)), "heldout_rooms": int(len(held_rooms)),
               "train_sequences": int(len(xt)), "heldout_predictions": int(valid.sum()),
               "hit_rate": {"model": hit, **naive_category_baselines(x_ho, n_ho, int(meta["num_cat3"]))}}
    return ProductResult(model, metrics, hist)
