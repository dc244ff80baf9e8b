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


def graph_period(ds, past_fraction: float = 0.0):
    """``(graph_rows, cutoff)``: the training rows the gifting graph is built from (``graph.past_fraction``)
    and the time from which a row may see features of that graph (``None``: every row).

    With ``past_fraction`` 0 the graph takes every training row. Otherwise (timed data only) it takes the
    earliest ``past_fraction`` of the training period, and a row before its end sees no user-side graph
    features — the graph holds that row's own gift and later ones, which validation and test rows never
    see in theirs. Rows after the cutoff (the rest of training, validation, test) see the graph of their
    past, as the history rule has them see their past behaviour."""
    from ..errors import ConfigError

    train = ds.impressions["split"] == SPLITS["train"]
    if not past_fraction:
        return train, None
    if not ds.timed:
        raise ConfigError(f"graph.past_fraction={past_fraction}: the dataset {ds.name} has no timestamps (its rows "
                          "carry only their split), so there is no past to build the graph from; set it to 0")
    times = ds.impressions["time"][train]
    cutoff = int(np.quantile(times, past_fraction, method="lower")) if len(times) else 0
    return train & (ds.impressions["time"] < cutoff), cutoff
