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


def test_the_graph_takes_the_past_and_later_rows_see_it():
    """``graph.past_fraction``: the graph's rows precede its cutoff; every other row is at or after it."""
    from types import SimpleNamespace

    from graphrec.data.split import graph_period

    t = np.arange(100)
    ds = SimpleNamespace(impressions={"time": t, "split": time_split(t, 0.1, 0.1)}, timed=True, name="toy")
    train = ds.impressions["split"] == 0
    graph, cutoff = graph_period(ds, 0.0)
    assert (graph == train).all() and cutoff is None
    graph, cutoff = graph_period(ds, 0.5)
    assert graph.sum() == 39 and t[graph].max() < cutoff <= t[train & ~graph].min()
    assert (t[ds.impressions["split"] > 0] >= cutoff).all()         # validation and test see the whole graph
    ds.timed = False
    with pytest.raises(ConfigError, match="graph.past_fraction=0.5.*no timestamps"):
        graph_period(ds, 0.5)
