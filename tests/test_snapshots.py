"""Graph snapshots (``graph.snapshots``): every impression reads the gifting graph — its expansions and Θ —
of the latest snapshot cut at or before its time, so nothing at or after an impression reaches its features.

The leak test changes the future and checks that the past does not move: gifts added after a cut change
the features of rows that read a later snapshot, and not one value of any earlier row's."""
import logging

import numpy as np
import pytest
import torch

from graphrec.config import load_config
from graphrec.data.dataset import SPLITS
from graphrec.data.split import ensure_split, graph_snapshots

from .conftest import FAST_MODELS, TINY_SIM

SNAPSHOT_SETS = ["graph.snapshots=3", "graph.past_fraction=0.3", "simulate.gift_rate=0.05", "graphcl.epochs=3",
                 "graphcl.patience=0", "stat_forecast.enabled=false", "product_forecast.enabled=false",
                 "ranker.use_mfq=false"]


class _Writer:
    def __getattr__(self, name):
        return lambda *a, **k: None


def _graph_features(cfg, ds, run_dir):
    """Run the graph, expansion and GraphCL stages on ``ds``; the ranker's batch builder over their output."""
    from graphrec.pipeline import ExpansionStage, GraphCLStage, GraphStage
    from graphrec.ranking.stage import build_ranker, enabled_modules
    from graphrec.stage import RunContext

    run_dir.mkdir(parents=True)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, log=logging.getLogger("test"), writer=_Writer(), device="cpu",
                     progress=False)
    ctx.state["dataset"] = ds
    for stage in (GraphStage(), ExpansionStage(), GraphCLStage()):
        stage.run(ctx)
    _, builder, _ = build_ranker(cfg, ds, enabled_modules(cfg, ds, ctx.state), ctx.state)
    return ctx, builder


def _graph_part(batch):
    """The graph features of a batch, per row (the room side per candidate)."""
    up, rp = batch.users, batch.rooms
    out = {"user theta": up.theta, "room theta": rp.theta[rp.inv]}
    out.update({f"user {m}": up.exp[m] for m in up.exp})
    out.update({f"user {m} theta": up.exp_theta[m] for m in up.exp_theta})
    out.update({f"room {m}": rp.exp[m][rp.inv] for m in rp.exp})
    out.update({f"room {m} theta": rp.exp_theta[m][rp.inv] for m in rp.exp_theta})
    return out


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The tiny world and a copy with extra training gifts after the second cut, each through the graph stages."""
    from data_prep.simulate import simulate

    tmp = tmp_path_factory.mktemp("snapshots")
    cfg = load_config(None, TINY_SIM + FAST_MODELS + SNAPSHOT_SETS + [f"data.cache_dir={tmp / 'cache'}"])
    ds = simulate(cfg.simulate, seed=0)
    ensure_split(ds, 0.1, 0.1)
    snaps = graph_snapshots(ds, cfg.graph.past_fraction, cfg.graph.snapshots)
    imp = ds.impressions
    future = np.flatnonzero((imp["split"] == SPLITS["train"]) & (imp["time"] >= snaps.cuts[1]) & (imp["gift"] == 0))
    changed = np.random.default_rng(1).choice(future, 200, replace=False)
    other = simulate(cfg.simulate, seed=0)
    ensure_split(other, 0.1, 0.1)
    other.impressions["gift"][changed] = 1                       # 200 gifts that never happened, after cut 1
    return cfg, snaps, _graph_features(cfg, ds, tmp / "a"), _graph_features(cfg, other, tmp / "b")


def test_the_snapshots_are_built_and_read_by_time(worlds):
    cfg, snaps, (ctx, builder), _ = worlds
    ds = ctx.dataset
    U, A = ds.num_users, ds.num_authors
    assert ctx.state["theta"].shape == (U + A, 3, cfg.graphcl.dim)
    assert all(e.shape[1] == 3 for e in ctx.state["expansions"].values())
    edges = [s["u2a_edges"] for s in ctx.metrics["graph"]["snapshots"]]
    assert edges == sorted(edges) and edges[0] < edges[-1]                  # each later snapshot holds more
    assert [s["cut"] for s in ctx.metrics["graph"]["snapshots"]] == snaps.cuts.tolist()
    for j, g in enumerate(ctx.state["graphs"]):                             # snapshot j: the gifts before cut j
        u, a = (t.numpy() for t in g.edges("u2a"))
        imp = ds.impressions
        keep = snaps.rows[j] & (imp["gift"] == 1)
        assert set(zip(u.tolist(), a.tolist())) == set(zip(imp["user"][keep].tolist(), imp["author"][keep].tolist()))
    # every training row's own gift is an edge of the graph it reads only if the pair had gifted earlier
    imp = ds.impressions
    rows = np.flatnonzero((imp["split"] == SPLITS["train"]) & (imp["gift"] == 1))
    which = snaps.index(imp["time"][rows])
    for r, j in zip(rows, which):
        if j < 0:
            continue
        earlier = (imp["user"] == imp["user"][r]) & (imp["author"] == imp["author"][r]) & (imp["gift"] == 1) & (
            imp["time"] < snaps.cuts[j])
        u, a = ctx.state["graphs"][j].edges("u2a")
        is_edge = bool(((u == int(imp["user"][r])) & (a == int(imp["author"][r]))).any())
        assert is_edge == bool(earlier.any()), r


def test_future_gifts_do_not_reach_earlier_rows_graph_features(worlds):
    """Gifts added after cut 1 change snapshot 2 only: rows before cut 2 (which read snapshots 0 and 1, or
    none) keep every graph feature bit for bit; rows that read snapshot 2 see the change. Reading a later
    snapshot than the row's, or building a snapshot from rows at or after its cut, fails this test."""
    cfg, snaps, (ctx, builder), (_, other) = worlds
    imp = ctx.dataset.impressions
    idx = np.arange(len(imp["user"]))
    past = idx[imp["time"] < snaps.cuts[2]][::3]
    later = idx[imp["time"] >= snaps.cuts[2]][::3]
    assert (snaps.index(imp["time"][past]) < 2).all() and (snaps.index(imp["time"][past]) == 1).any()
    a, b = _graph_part(builder.impressions(past)), _graph_part(other.impressions(past))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    a, b = _graph_part(builder.impressions(later)), _graph_part(other.impressions(later))
    assert any(not torch.equal(a[name], b[name]) for name in a)           # the change reaches snapshot 2's readers
    # the full ranking at a past time reads the past too
    t = int(imp["time"][past[len(past) // 2]])
    ra, rb = _graph_part_rooms(builder.all_rooms(t)), _graph_part_rooms(other.all_rooms(t))
    for name in ra:
        assert torch.equal(ra[name], rb[name]), name


def _graph_part_rooms(rp):
    out = {"theta": rp.theta[rp.inv]}
    out.update({m: rp.exp[m][rp.inv] for m in rp.exp})
    return out


# ----------------------------------------------------------------------------- out-of-fold graphs (untimed data)
FOLD_SETS = [s for s in SNAPSHOT_SETS if not s.startswith(("graph.snapshots", "graph.past_fraction"))] + ["graph.folds=3"]


def _untimed(ds):
    """The world as TikTok is: rows carry only their split as time."""
    ds.meta["timestamps"] = False
    ds.impressions["time"] = ds.impressions["split"].astype(np.int64)
    return ds


@pytest.fixture(scope="module")
def fold_worlds(tmp_path_factory):
    """The tiny world made untimed, and a copy with 100 extra training gifts in fold 1, through the graph stages."""
    from data_prep.simulate import simulate

    tmp = tmp_path_factory.mktemp("folds")
    cfg = load_config(None, TINY_SIM + FAST_MODELS + FOLD_SETS + [f"data.cache_dir={tmp / 'cache'}"])

    def world():
        ds = simulate(cfg.simulate, seed=0)
        ensure_split(ds, 0.1, 0.1)
        return _untimed(ds)
    ds, other = world(), world()
    snaps = graph_snapshots(ds, 0.0, 1, 3)
    imp = ds.impressions
    fold1 = np.flatnonzero((snaps.fold_of_row == 1) & (imp["gift"] == 0))
    changed = np.random.default_rng(1).choice(fold1, 100, replace=False)
    other.impressions["gift"][changed] = 1
    return cfg, snaps, _graph_features(cfg, ds, tmp / "a"), _graph_features(cfg, other, tmp / "b")


def test_out_of_fold_graphs_hold_every_training_positive_but_their_folds(fold_worlds):
    cfg, snaps, (ctx, builder), _ = fold_worlds
    ds = ctx.dataset
    imp = ds.impressions
    train = imp["split"] == SPLITS["train"]
    assert len(snaps) == 4 and snaps.out_of_fold and not snaps.leaky
    assert set(np.unique(snaps.fold_of_row[train])) == {0, 1, 2} and (snaps.fold_of_row[~train] == 3).all()
    for k, g in enumerate(ctx.state["graphs"]):
        u, a = (t.numpy() for t in g.edges("u2a"))
        keep = train & (imp["gift"] == 1) & (snaps.fold_of_row != k)
        assert set(zip(u.tolist(), a.tolist())) == set(zip(imp["user"][keep].tolist(), imp["author"][keep].tolist()))
    # a training row reads its fold's graph; full ranking and sampled evaluation read the graph of all
    rows = np.flatnonzero(train)[:50]
    assert (builder.snapshot_of(imp["time"][rows], rows) == snaps.fold_of_row[rows]).all()
    assert (builder.snapshot_of(imp["time"][rows]) == 3).all()
    with pytest.raises(Exception, match="graph.folds=3: the dataset .* has timestamps"):
        from data_prep.simulate import simulate
        timed = simulate(cfg.simulate, seed=0)
        ensure_split(timed, 0.1, 0.1)
        graph_snapshots(timed, 0.0, 1, 3)


def test_a_folds_gifts_do_not_reach_its_own_rows_graph_features(fold_worlds):
    """Gifts added to fold 1's training rows change the graphs of folds 0 and 2 and of all, never fold 1's: the
    graph features (Θ included: each fold's GraphCL starts from the same Θ, not warm from a graph holding fold
    1) of fold 1's training rows stay bit for bit, those of other rows change. A row reading another fold's graph,
    a fold graph holding its own fold, or a warm start from one fails this test."""
    cfg, snaps, (ctx, builder), (_, other) = fold_worlds
    imp = ctx.dataset.impressions
    train = imp["split"] == SPLITS["train"]
    mine = np.flatnonzero(train & (snaps.fold_of_row == 1))[::4]
    rest = np.flatnonzero(train & (snaps.fold_of_row != 1))[::4]
    a, b = _graph_part(builder.impressions(mine)), _graph_part(other.impressions(mine))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    a, b = _graph_part(builder.impressions(rest)), _graph_part(other.impressions(rest))
    assert not torch.equal(a["user theta"], b["user theta"])
    rng = np.random.default_rng(0)
    ta, tb = builder.training(mine[:20], rng), other.training(mine[:20], np.random.default_rng(0))
    for name, x in _graph_part(ta).items():                   # the sampled negatives read the row's graph too
        assert torch.equal(x, _graph_part(tb)[name]), name
