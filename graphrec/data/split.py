"""Train / validation / test split of impressions.

A dataset that carries its own split (the ``split`` column; e.g. TikTok's published split) keeps
it. Otherwise the split is by time: the latest ``test_fraction`` of impressions are test, the
``val_fraction`` before them validation, the rest training, so that no future interaction informs
the past. Impressions are stored sorted by time, so the split is a pair of cut points.
"""
from __future__ import annotations

import numpy as np

from ..config import check_split_fractions
from .dataset import SPLITS


def time_split(times: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) for time-sorted ``times``.

    Cut points are moved forward past ties, so impressions with the same timestamp always land in
    the same split.
    """
    check_split_fractions(val_fraction, test_fraction)
    n = len(times)
    if n and np.any(np.diff(times) < 0):
        raise ValueError("time_split needs impressions sorted by time")
    split = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return split
    val_start = int(round(n * (1.0 - val_fraction - test_fraction)))
    test_start = int(round(n * (1.0 - test_fraction)))

    def after_ties(i: int) -> int:
        # first index whose time differs from times[i-1]; keeps equal times together
        if i <= 0 or i >= n:
            return i
        return int(np.searchsorted(times, times[i - 1], side="right"))

    val_start = after_ties(val_start)
    test_start = max(after_ties(test_start), val_start)
    split[val_start:test_start] = SPLITS["val"]
    split[test_start:] = SPLITS["test"]
    return split


def ensure_split(ds, val_fraction: float, test_fraction: float) -> bool:
    """Give ``ds``'s impressions a ``split`` column by time unless the dataset carries its own;
    returns whether it was made here."""
    imp = ds.impressions
    if "split" in imp:
        return False
    imp["split"] = time_split(imp["time"], val_fraction, test_fraction)
    return True


class GraphSnapshots:
    """When the gifting graph is rebuilt, and which graph each impression reads (``graph.snapshots``,
    ``graph.past_fraction``).

    Snapshot ``j`` is built at time ``cuts[j]`` from the training positives strictly before it (``rows[j]``),
    as a production system rebuilds its graph on a schedule; an impression at time ``t`` reads the latest
    snapshot whose cut is at or before ``t`` (:meth:`index`), so no edge of its graph is as late as the
    impression itself, and ``-1`` (no graph yet) before the first cut. ``cuts is None`` is the one graph of
    every training positive, read by every row (``past_fraction`` 0 and one snapshot): a training row's
    own gift is then an edge of the graph its features come from.

    Untimed data has no past; there ``fold_of_row`` (``graph.folds`` K) gives out-of-fold graphs instead:
    snapshot ``k < K`` holds the training positives outside fold ``k`` and is read by the training rows of fold
    ``k``; the last holds every training positive and is read by every other row (validation, test, full
    ranking, serving). No training row's own positive is then an edge of the graph it reads, as for the rows
    it is evaluated on (out-of-fold target encoding)."""

    def __init__(self, cuts, rows, fold_of_row=None) -> None:
        self.cuts = None if cuts is None else np.asarray(cuts, dtype=np.int64)
        self.rows = list(rows)
        self.fold_of_row = None if fold_of_row is None else np.asarray(fold_of_row, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def leaky(self) -> bool:
        """Whether every row reads one graph of every training positive (no cut, no folds)."""
        return self.cuts is None and self.fold_of_row is None

    @property
    def out_of_fold(self) -> bool:
        """Whether the snapshots are out-of-fold graphs (untimed data, ``graph.folds``)."""
        return self.fold_of_row is not None

    def index(self, times, rows=None) -> np.ndarray:
        """``[n]`` int64: the snapshot each time reads, ``-1`` before the first cut. Out-of-fold graphs: the
        snapshot of each impression row ``rows`` (its fold's for a training row); without ``rows`` (full
        ranking, serving, sampled evaluation) the last, of every training positive."""
        times = np.asarray(times, dtype=np.int64)
        if self.fold_of_row is not None:
            if rows is None:
                return np.full(times.shape, len(self.rows) - 1, dtype=np.int64)
            return self.fold_of_row[np.asarray(rows, dtype=np.int64)]
        if self.cuts is None:
            return np.zeros(times.shape, dtype=np.int64)
        return np.searchsorted(self.cuts, times, side="right").astype(np.int64) - 1


def graph_snapshots_for(ds, cfg) -> GraphSnapshots:
    """:func:`graph_snapshots` as the run's ``graph`` section says (past fraction, snapshots, folds)."""
    g = cfg.graph
    return graph_snapshots(ds, g.past_fraction, g.snapshots, g.folds)


FOLD_SEED = 20_240_531   # the out-of-fold graphs' row assignment: fixed, so every stage and run agrees on it


def graph_snapshots(ds, past_fraction: float = 0.0, snapshots: int = 1, folds: int = 0) -> GraphSnapshots:
    """The :class:`GraphSnapshots` of ``ds``: with ``snapshots`` 1 and ``past_fraction`` 0, one graph of every
    training row (no cut); otherwise (timed data only) ``snapshots`` cuts spread evenly over the training
    period's rows from the ``past_fraction`` quantile of their times to its end (the last snapshot then holds
    every training positive; validation and test read it). One snapshot with ``past_fraction`` f is one graph
    of the earliest f of the training period, read by every later row. ``folds`` K > 0 (untimed data only):
    the K out-of-fold graphs and the graph of every training positive, the training rows dealt to the folds
    at random (a fixed generator, :data:`FOLD_SEED`)."""
    from ..errors import ConfigError

    train = ds.impressions["split"] == SPLITS["train"]
    if snapshots < 1:
        raise ConfigError(f"graph.snapshots={snapshots}: at least one graph is needed")
    if folds:
        if ds.timed:
            raise ConfigError(f"graph.folds={folds}: the dataset {ds.name} has timestamps, so its graph is cut by "
                              "time (graph.snapshots, graph.past_fraction); set graph.folds to 0")
        if folds < 2 or snapshots != 1 or past_fraction:
            raise ConfigError(f"graph.folds={folds} with graph.snapshots={snapshots}, graph.past_fraction="
                              f"{past_fraction}: out-of-fold graphs need at least 2 folds, one snapshot and no past "
                              "fraction")
        fold = np.full(len(train), folds, dtype=np.int64)
        fold[train] = np.random.default_rng(FOLD_SEED).integers(0, folds, int(train.sum()))
        return GraphSnapshots(None, [train & (fold != k) for k in range(folds)] + [train], fold)
    if snapshots == 1 and not past_fraction:
        return GraphSnapshots(None, [train])
    if not ds.timed:
        raise ConfigError(f"graph.past_fraction={past_fraction}, graph.snapshots={snapshots}: the dataset {ds.name} "
                          "has no timestamps (its rows carry only their split), so there is no past to build a graph "
                          "from; set graph.past_fraction to 0 and graph.snapshots to 1")
    times = ds.impressions["time"][train]
    fractions = [past_fraction] if snapshots == 1 else np.linspace(past_fraction, 1.0, snapshots)
    cuts = []
    for f in fractions:
        if not len(times):
            cuts.append(0)
        elif f >= 1.0:                                   # the end of training: every training row
            cuts.append(int(times.max()) + 1)
        else:
            cuts.append(int(np.quantile(times, f, method="lower")))
    all_times = ds.impressions["time"]
    return GraphSnapshots(cuts, [train & (all_times < c) for c in cuts])
