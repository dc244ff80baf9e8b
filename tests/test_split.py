import numpy as np
import pytest

from graphrec.data.split import time_split
from graphrec.errors import ConfigError


def test_fractions_and_order():
    t = np.arange(100)
    s = time_split(t, 0.1, 0.2)
    tr, va, te = s == 0, s == 1, s == 2
    assert (tr.sum(), va.sum(), te.sum()) == (70, 10, 20)
    assert t[tr].max() < t[va].min() and t[va].max() < t[te].min()


def test_equal_times_stay_together():
    t = np.array([0, 1, 2, 3, 4, 5, 5, 5, 5, 9])
    s = time_split(t, 0.0, 0.4)          # cut at index 6 falls inside the run of 5s
    assert len(set(s[t == 5])) == 1
    assert s[-1] == 2 and s[0] == 0


def test_errors():
    with pytest.raises(ConfigError, match="val_fraction"):
        time_split(np.arange(5), 0.6, 0.5)
    with pytest.raises(ValueError, match="sorted"):
        time_split(np.array([3, 1, 2]), 0.1, 0.1)
    assert len(time_split(np.array([], dtype=np.int64), 0.1, 0.1)) == 0


def _toy(t):
    from types import SimpleNamespace

    return SimpleNamespace(impressions={"time": t, "split": time_split(t, 0.1, 0.1)}, timed=True, name="toy")


def test_one_graph_takes_the_past_and_later_rows_see_it():
    """``graph.past_fraction`` with one snapshot: the graph's rows precede its cut; every later row reads it."""
    from graphrec.data.split import graph_snapshots

    t = np.arange(100)
    ds = _toy(t)
    train = ds.impressions["split"] == 0
    snaps = graph_snapshots(ds, 0.0)
    assert snaps.leaky and len(snaps) == 1 and (snaps.rows[0] == train).all()
    assert (snaps.index(t) == 0).all()                                  # every row reads the one graph
    snaps = graph_snapshots(ds, 0.5)
    graph, cut = snaps.rows[0], snaps.cuts[0]
    assert graph.sum() == 39 and t[graph].max() < cut <= t[train & ~graph].min()
    assert (snaps.index(t[t < cut]) == -1).all() and (snaps.index(t[t >= cut]) == 0).all()
    ds.timed = False
    with pytest.raises(ConfigError, match="graph.past_fraction=0.5.*no timestamps"):
        graph_snapshots(ds, 0.5)
    with pytest.raises(ConfigError, match="graph.snapshots=3.*no timestamps"):
        graph_snapshots(ds, 0.0, 3)


def test_snapshots_are_cut_over_training_and_each_row_reads_the_latest_before_it():
    """``graph.snapshots``: cuts from the past_fraction quantile to the end of training; snapshot j holds the
    training rows strictly before cut j; a row reads the latest cut at or before its time, so no edge of its
    graph is as late as the row; validation and test read the last, which is every training row."""
    from graphrec.data.split import graph_snapshots

    t = np.repeat(np.arange(50), 2)                        # ties: two rows per time
    ds = _toy(t)
    split = ds.impressions["split"]
    train = split == 0
    snaps = graph_snapshots(ds, 0.25, 4)
    assert len(snaps) == 4 and list(snaps.cuts) == sorted(snaps.cuts)
    assert snaps.cuts[0] == int(np.quantile(t[train], 0.25, method="lower"))
    assert (snaps.rows[-1] == train).all()                  # the last snapshot: every training row
    for j, rows in enumerate(snaps.rows):
        assert (rows == (train & (t < snaps.cuts[j]))).all()
    which = snaps.index(t)
    for i in range(len(t)):                                 # pair by pair, against the definition
        read = [j for j, c in enumerate(snaps.cuts) if c <= t[i]]
        assert which[i] == (read[-1] if read else -1)
        if which[i] >= 0:
            assert t[snaps.rows[which[i]]].max() < t[i]     # strictly before the row: never its own gift
    assert (which[split > 0] == 3).all() and (which == -1).any()
