"""Packed node data (graphrec.dist.packed): one byte table per node type, unpacked exactly; the feature
stores' ``rows`` (one read per node type); the batch builder's reads per batch (at most two per node
type, one for segments) and its batches, checked against the node data directly; old partition folders
refused."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from graphrec.dist.packed import layout_of, pack, unpack
from graphrec.ranking.features import PAD
from graphrec.schema import METAPATHS

pytest.importorskip("dgl", reason="DGL's distributed engine (the DGL-free environment has none)")

INT64_MAX = torch.iinfo(torch.int64).max


def every_dtype(n: int = 7):
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(n, 3, generator=g)
    f32[0, 0], f32[1, 1], f32[2, 2] = float("nan"), -0.0, float("inf")
    return {
        "theta": f32,
        "exp": torch.randint(-1, 1000, (n, 5), generator=g, dtype=torch.int32),
        "tokens": torch.randn(n, 2, 4, generator=g),                             # [N, T, D]
        "lengths": torch.randint(0, 3, (n,), generator=g),                        # int64, 1-D
        "prod_time": torch.tensor([[INT64_MAX, -5, 0]] * n),                        # int64 max padding
        "half": torch.randn(n, 2, generator=g).half(),
        "double": torch.randn(n, 1, generator=g, dtype=torch.float64),
        "flags": torch.rand(n, 3, generator=g) > 0.5,
        "small": torch.randint(-128, 127, (n, 3), generator=g, dtype=torch.int8),
    }


def test_packing_round_trips_every_dtype_exactly():
    feats = every_dtype()
    layout = layout_of(feats)
    assert json.loads(json.dumps(layout)) == layout                      # kept in prepared.json
    table = pack(feats)
    assert table.dtype == torch.uint8 and table.shape == (7, layout["row_bytes"])
    ids = torch.tensor([6, 0, 0, 3])
    back = unpack(table[ids], layout, list(feats))
    for name, t in feats.items():
        got = back[name]
        assert got.dtype == t.dtype and got.shape == t[ids].shape, name
        assert torch.equal(got.view(torch.uint8), t[ids].view(torch.uint8)), name   # bit for bit (NaN, -0.0 too)
    assert back["prod_time"][0, 0] == INT64_MAX
    assert list(unpack(table[:2], layout, ["lengths"])) == ["lengths"]
    with pytest.raises(ValueError, match="one row per node"):
        pack({"a": torch.zeros(3, 1), "b": torch.zeros(4, 1)})
    with pytest.raises(TypeError, match="complex64"):
        pack({"c": torch.zeros(3, 1, dtype=torch.complex64)})


# ----------------------------------------------------------------------------- a tiny world, both stores
def open_store(graph, num_users: int, num_authors: int, segment_author, node_data, workdir, graph_name: str):
    """Partition (one part) and open the standalone ``DistGraph`` feature store under ``workdir``."""
    from graphrec.dist.store import FeatureStore, partition_features

    workdir.mkdir(parents=True, exist_ok=True)
    orig, layouts = partition_features(graph, num_users, num_authors, segment_author, node_data, workdir, graph_name)
    return FeatureStore(workdir / f"{graph_name}.json", graph_name, orig, layouts)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny world with every module (hand-made Θ and expansions), its ranker built on the standalone
    TensorStore and again on a one-part DistGraph FeatureStore."""
    from graphrec.models.product_forecaster import ProductForecaster
    from graphrec.models.stat_forecaster import StatForecaster
    from graphrec.ranking.stage import build_ranker, enabled_modules, node_data

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["mfq.dim=16", "mfq.heads=2", "mfq.query_tokens=2", "ranker.mlp=[16]",
                                 "stat_forecast.dim=8", "stat_forecast.heads=2", "ranker.dropout=0.0",
                                 "product_forecast.dim=8", "product_forecast.heads=2", "graph.past_fraction=0.3",
                                 "graph.snapshots=3",
                                 "ranker.exposure_head=true", "ranker.negatives=8"])
    art["stat_forecaster"] = StatForecaster.from_config(cfg.stat_forecast, 8)
    art["product_forecaster"] = ProductForecaster.from_config(cfg.product_forecast, ds.meta["products"]).eval()
    mods = enabled_modules(cfg, ds, art)
    assert all(mods[k] for k in ("metapaths", "theta_pretrained", "modalities", "product_forecast"))
    data = node_data(ds, mods, art)
    model, local, _ = build_ranker(cfg, ds, mods, art)
    store = open_store(None, ds.num_users, ds.num_authors, ds.tables["segments"]["author"], data,
                       tmp_path_factory.mktemp("packed"), "packedtest")
    dist_model, remote, _ = build_ranker(cfg, ds, mods, art, store=store)
    return ds, data, (model, local), (dist_model, remote)


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if dataclasses.is_dataclass(obj):
        return {k: v for f in dataclasses.fields(obj) for k, v in _tensors(getattr(obj, f.name), f"{prefix}.{f.name}").items()}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}.{key}").items()}
    if isinstance(obj, (tuple, list)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}.{i}").items()}
    return {}


def _batches(builder, ds):
    t = ds.impressions["time"]
    return {"impressions": builder.impressions(np.arange(0, 3000, 7)),
            "training": builder.training(np.arange(5, 2000, 3), np.random.default_rng(1)),
            "pairs": builder.pairs(np.arange(50), np.arange(50) % ds.num_authors, np.full(50, int(t[-1]))),
            "rank_users": builder.rank_users(np.arange(30), int(t[1500])),
            "all_rooms": builder.all_rooms(int(t[1500]))}


def test_batches_match_the_node_data_and_both_stores_agree(world):
    ds, data, (model, local), (dist_model, remote) = world
    mine, theirs = _batches(local, ds), _batches(remote, ds)
    for name, batch in mine.items():
        a, b = _tensors(batch), _tensors(theirs[name])
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (name, k)
    model.eval(), dist_model.eval()
    with torch.no_grad():
        for name in ("impressions", "training", "pairs"):
            assert torch.equal(model(mine[name]), dist_model(theirs[name]))

    # every feature against the node data, read directly (an independent reference)
    # Θ and the expansions of each row's graph snapshot: the latest cut at or before its time (none before the
    # first: zero Θ, no expansions), the endpoints' Θ of that snapshot too
    batch, idx = mine["impressions"], np.arange(0, 3000, 7)
    users, times, authors = (ds.impressions[k][idx] for k in ("user", "time", "author"))
    cuts = local.snapshots.cuts
    snap = torch.tensor([sum(int(c <= t) for c in cuts) - 1 for t in times])
    hide = snap < 0
    assert hide.any() and len(set(snap.tolist())) == 4 and data["user"]["theta"].shape[1] == 3
    theta = {"user": data["user"]["theta"], "author": data["author"]["theta"]}
    rows = torch.arange(len(idx))
    at = snap.clamp(min=0)
    up, rp = batch.users, batch.rooms
    assert torch.equal(up.theta, theta["user"][users, at].masked_fill(hide[:, None], 0.0))
    assert torch.equal(rp.theta[rp.inv], theta["author"][authors, at].masked_fill(hide[:, None], 0.0))
    for m, p in METAPATHS.items():
        ids = users if p.seed == "user" else authors
        e = data[p.seed][f"exp_{m}"][ids, at].long()
        want = theta[p.endpoint][e.clamp(min=0), at[:, None]]
        e, want = e.masked_fill(hide[:, None], PAD), want.masked_fill(hide[:, None, None], 0.0)
        got, got_theta = (up.exp[m], up.exp_theta[m]) if p.seed == "user" else (rp.exp[m][rp.inv], rp.exp_theta[m][rp.inv])
        assert torch.equal(got, e) and torch.equal(got_theta, want), m
    assert not torch.equal(theta["user"][users, 0], theta["user"][users, 2])   # the snapshots differ
    rows, on_air = rp.seg_key.clamp(min=0), rp.seg_key >= 0
    for m in ds.modalities():
        x, mask = rp.tokens[m]
        length = data["segment"][f"{m}_len"][rows].masked_fill(~on_air, 0)
        assert torch.equal(x, data["segment"][m][rows].float())
        assert torch.equal(mask, torch.arange(x.shape[1])[None, :] < length[:, None])
    ptime, pfeat = data["author"]["prod_time"], data["author"]["prod_feat"]
    authors = torch.from_numpy(ds.impressions["author"][idx])
    count = (ptime[authors] <= torch.from_numpy(times)[:, None]).sum(1)
    assert (ptime == INT64_MAX).any() and rp.prod_probs.shape[1] == local.cfg.product_cats > 0
    assert torch.equal(torch.cat([rp.prod_probs, rp.prod_enc], 1), pfeat[authors, count])


def test_a_batch_reads_at_most_two_pulls_per_node_type(world, monkeypatch):
    ds, _, _, (_, builder) = world
    store = builder.store
    pulled = []
    real = store._pull

    def spy(source, ntype, ids):
        pulled.append(ntype)
        return real(source, ntype, ids)

    monkeypatch.setattr(store, "_pull", spy)
    for name, make in [("impressions", lambda: builder.impressions(np.arange(256))),
                       ("training", lambda: builder.training(np.arange(256), np.random.default_rng(0))),
                       ("pairs", lambda: builder.pairs(np.arange(20), np.arange(20) % ds.num_authors,
                                                       np.full(20, int(ds.impressions["time"][-1]))))]:
        pulled.clear()
        pulls, built = store.pulls, builder.built_batches
        make()
        assert builder.built_batches == built + 1
        assert store.pulls - pulls == len(pulled) == 5, (name, pulled)      # was 20: one per feature name
        assert sorted(pulled) == ["author", "author", "segment", "user", "user"], name


def test_rows_reads_one_pull_and_counts_remote_bytes(world):
    _, data, _, (_, builder) = world
    store = builder.store
    ids = torch.tensor([3, 1, 3, 0])
    pulls, remote = store.pulls, store.remote_bytes
    got = store.rows("author", ids, ["prod_time", "exp_a2a", "theta"])
    assert list(got) == ["prod_time", "exp_a2a", "theta"]
    for name, t in got.items():
        assert torch.equal(t, data["author"][name][ids]), name
    assert store.pulls == pulls + 1 and store.remote_bytes == remote        # one part: everything is local
    snap = torch.tensor([2, 0, 1, -1])                                     # one snapshot each (-1: the first)
    got = store.rows("author", ids, ["prod_time", "exp_a2a", "theta"], snapshot=snap)
    assert torch.equal(got["prod_time"], data["author"]["prod_time"][ids])   # no snapshot axis: as it is
    for name in ("exp_a2a", "theta"):
        assert torch.equal(got[name], data["author"][name][ids, snap.clamp(min=0)]), name
    row_bytes = store.layouts["author"]["row_bytes"]
    here, store.here = store.here, 1                                      # as if this machine owned none of them
    try:
        store.rows("author", ids, ["prod_time"])
        assert store.remote_bytes - remote == 3 * row_bytes                 # the distinct rows, whole
        store.rows("author", ids, ["theta"])                                # Θ alone: its own, narrower tensor
        assert store.remote_bytes - remote == 3 * row_bytes + 3 * data["author"]["theta"][0].numel() * 4
    finally:
        store.here = here
    with pytest.raises(KeyError, match=r"no author feature\(s\) \['nope'\]"):
        store.rows("author", ids, ["nope"])


def test_rows_from_other_machines_are_cached_up_to_the_budget(world):
    """``dist.remote_cache_mb``: rows owned by another partition are pulled once and then read from memory
    (no pull, no remote bytes), identical to the node data; the budget caps what is held; a write drops
    the written rows from the cache."""
    _, data, _, (_, builder) = world
    store = builder.store
    row_bytes = store.layouts["author"]["row_bytes"]
    ids = torch.tensor([3, 1, 3, 0])
    here, store.here = store.here, 1                                      # as if every row lived elsewhere
    try:
        store.cache_remote(2 * row_bytes)                                 # room for two packed rows
        pulls, remote, hits = store.pulls, store.remote_bytes, store.cache_hits
        first = store.rows("author", ids, ["prod_time", "exp_a2a"])
        assert store.pulls == pulls + 1 and store.remote_bytes - remote == 3 * row_bytes
        assert store.cached_bytes == 2 * row_bytes                          # two of the three distinct rows
        again = store.rows("author", ids, ["prod_time", "exp_a2a"])
        assert store.pulls == pulls + 2 and store.remote_bytes - remote == 4 * row_bytes     # the third, again
        assert store.cache_hits - hits == 2
        store.cache_remote(1 << 20)
        store.rows("author", ids, ["prod_time", "exp_a2a"])
        pulls, remote = store.pulls, store.remote_bytes
        cached = store.rows("author", ids, ["prod_time", "exp_a2a"])
        assert store.pulls == pulls and store.remote_bytes == remote        # all from memory
        for got in (first, again, cached):
            for name, t in got.items():
                assert torch.equal(t, data["author"][name][ids]), name
        old = data["author"]["exp_a2a"][torch.tensor([1])]
        store.write("author", torch.tensor([1]), {"exp_a2a": old + 1})
        after = store.rows("author", ids, ["exp_a2a"])
        assert store.pulls == pulls + 2                                     # the write's pull, then row 1 again
        assert torch.equal(after["exp_a2a"][1], (old + 1)[0]) and torch.equal(after["exp_a2a"][0], cached["exp_a2a"][0])
        store.write("author", torch.tensor([1]), {"exp_a2a": old})
    finally:
        store.here = here
        store.cache_remote(0)


def test_prefetch_caches_whole_remote_tables_that_fit(world):
    """``prefetch_remote``: every remote row of each table that fits whole in the budget, smallest first;
    the batches' reads then make no pull for those tables."""
    _, data, _, (_, builder) = world
    store = builder.store
    here, store.here = store.here, 1                                      # as if every row lived elsewhere
    try:
        sizes = {(nt, n): len(store.orig_of_new[nt]) * (layout["row_bytes"] if n == "packed" else
                                                        data[nt][n][0].numel() * data[nt][n].element_size())
                 for nt, layout in store.layouts.items() for n in ["packed"] + layout["alone"]}
        small = sorted(sizes.values())
        store.cache_remote(small[0] + small[1])                             # room for the two smallest tables
        assert store.prefetch_remote() == small[0] + small[1]
        store.cache_remote(sum(small))
        assert store.prefetch_remote() == sum(small)
        pulls, remote = store.pulls, store.remote_bytes
        batch = builder.impressions(np.arange(64))
        assert store.pulls == pulls and store.remote_bytes == remote        # every read from memory
        store.cache_remote(0)
        assert torch.equal(builder.impressions(np.arange(64)).users.exp_theta["u2a2u"], batch.users.exp_theta["u2a2u"])
    finally:
        store.here = here
        store.cache_remote(0)


def test_an_old_partition_folder_is_refused(tmp_path):
    from graphrec.dist.prepare import PREPARED, load_prepared
    from graphrec.errors import DataError

    (tmp_path / PREPARED).write_text(json.dumps({"graph_name": "g", "names": {"user": ["theta"]}, "signature": {}}))
    with pytest.raises(DataError, match=r"format 1.*re-run `python -m graphrec.partition"):
        load_prepared(tmp_path)
