"""The benchmark commands run and report consistent numbers (their speed is not asserted here)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graphrec.bench.__main__ import main
from graphrec.bench.sampler import format_table, power_law_graph, run


def test_power_law_graph_shape():
    g = power_law_graph(1000, 100, 5000, a2a_k=3)
    assert g.num_edges("u2a") == g.num_edges("a2u") == 5000
    assert g.num_edges("a2a") == 300 and (g.out_degrees(etype="a2a") == 3).all()
    deg = g.in_degrees(etype="u2a").sort(descending=True).values
    assert deg[:10].sum() > 5 * deg[-10:].sum()          # heavy-tailed author popularity


def test_sampler_benchmark_reports_every_metapath(tmp_path, capsys, monkeypatch):
    pytest.importorskip("dgl", reason="the benchmark compares DGL's walker with graphrec's")
    from graphrec.bench import sampler
    from graphrec.gie.metapath import METAPATHS

    timed, real = [], sampler.time_walks

    def scripted(walker, seeds, etypes, k, repeats):        # the walks run; their time is a known one per call
        real(walker, seeds, etypes, k, repeats)
        timed.append((type(walker).__name__, len(seeds), tuple(etypes), k))
        return 0.25 * len(timed)

    monkeypatch.setattr(sampler, "time_walks", scripted)
    res = run(2000, 200, 10_000, num_seeds=500, k=4, repeats=1)
    names = ["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"]
    assert [r["metapath"] for r in res["rows"]] == names
    # each metapath timed on DGL, then on the PyTorch sampler: 500 seeds x K = 4 walks of its edge types
    assert timed == [(w, 500, tuple(METAPATHS[m].etypes), 4) for m in names for w in ("DGLWalker", "CSRWalker")]
    seconds = iter(0.25 * (i + 1) for i in range(len(timed)))
    for r in res["rows"]:
        assert r["walks"] == 2000 and r["hops"] == len(METAPATHS[r["metapath"]].etypes)
        assert r["dgl_walks_per_s"] == 2000 / next(seconds) and r["torch_cpu_walks_per_s"] == 2000 / next(seconds)
    hops = sum(r["walks"] * r["hops"] for r in res["rows"])        # all five: total hops over total seconds
    assert res["overall"]["dgl_hops_per_s"] == pytest.approx(hops / sum(0.25 * i for i in range(1, 11, 2)))
    assert res["overall"]["torch_cpu_hops_per_s"] == pytest.approx(hops / sum(0.25 * i for i in range(2, 11, 2)))
    table = format_table(res)
    assert "all five" in table and f"ceiling: {res['gather_ceiling_per_s'] / 1e6:.1f} M random" in table
    out = tmp_path / "s.json"
    assert main(["sampler", "--users", "2000", "--authors", "200", "--edges", "10000", "--seeds", "300",
                 "--k", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert "ceiling" in capsys.readouterr().out and (saved["k"], saved["seeds"]) == (2, 300)
    assert [r["walks"] for r in saved["rows"]] == [600] * 5 and saved["graph"]["u2a_edges"] == 10_000


def test_gather_ceiling_is_gathers_over_the_fastest_pass(monkeypatch):
    from types import SimpleNamespace

    from graphrec.bench import sampler

    ticks = iter([0.0, 0.5, 1.0, 1.4, 2.0, 2.25, 3.0, 3.3])      # passes of 0.5, 0.4, 0.25 and 0.3 s
    monkeypatch.setattr(sampler, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert sampler.gather_ceiling(n=1000, repeats=3) == 1000 / 0.25


def test_swing_benchmark_and_usage(capsys):
    assert main(["swing", "--users", "2000", "--authors", "200", "--edges", "20000"]) == 0
    assert "a2a edges" in capsys.readouterr().out
    assert main(["nope"]) == 2


def test_train_and_serve_benchmarks_on_a_tiny_world(tmp_path, capsys):
    from .conftest import FAST_MODELS, TINY_SIM

    sets = [a for s in TINY_SIM + FAST_MODELS + ["simulate.num_impressions=6000", f"data.cache_dir={tmp_path / 'c'}"]
            for a in ("--set", s)]
    assert main(["train", "--impressions", "2000", "--batch-size", "256", "1024", "--out", str(tmp_path / "t.json")]
                + sets) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert [r["batch_size"] for r in res["by_batch_size"]] == [256, 1024] and res["batch_size"] == 256
    for by_size in res["by_batch_size"]:                        # the impressions of a pass over its fastest round
        assert by_size["impressions"] == 2000
        for name in ("mmbee", "din"):
            assert by_size[name]["impressions_per_s"] == 2000 / min(by_size[name]["epoch_seconds"])
    assert res["mmbee"]["parameters"] > res["din"]["parameters"]
    assert res["cost_ratio"] == res["din"]["impressions_per_s"] / res["mmbee"]["impressions_per_s"]
    assert len(res["mmbee"]["epoch_seconds"]) == len(res["din"]["epoch_seconds"]) == 3     # default --repeats
    assert res["cost_ratio_per_round"] == [a / b for a, b in zip(res["mmbee"]["epoch_seconds"], res["din"]["epoch_seconds"])]
    assert main(["serve", "--requests", "5", "--candidates", "20", "--out", str(tmp_path / "s.json")] + sets) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["room_cache"]["hits"] > 0
    for variant in ("offline cache", "offline cache + room cache", "online walk"):
        r = res[variant]
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert "p99" in capsys.readouterr().out


def test_online_expansions_walk_the_same_metapaths():
    from graphrec.bench.ranker import OnlineExpansions
    from graphrec.gie.graph import build_graph
    from graphrec.gie.metapath import PAD

    g = build_graph(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 2]), 3, 3)

    class Store:
        def rows(self, ntype, ids, names, snapshot=None):
            return {n: torch.zeros(len(ids)) for n in names}

    online = OnlineExpansions(Store(), g, {"u2a2u": 4, "a2u2a": 4})
    got = online.rows("user", torch.tensor([0, 0, 2]), ["theta", "exp_u2a2u"])
    sim = got["exp_u2a2u"]
    assert sim.shape == (3, 4)
    assert 1 in sim[0].tolist() and set(sim[0].tolist()) <= {1, PAD}   # never the seed itself
    assert set(sim[2].tolist()) == {PAD}                                 # user 2 shares no author
    assert torch.equal(got["theta"], torch.zeros(3))                      # other features from the store


def test_scale_benchmark_reports_time_and_memory_per_stage(tmp_path, capsys):
    from .conftest import FAST_MODELS, TINY_SIM

    sets = [a for s in TINY_SIM + FAST_MODELS + ["simulate.num_impressions=6000", f"data.cache_dir={tmp_path / 'c'}"]
            for a in ("--set", s)]
    out = tmp_path / "scale.json"
    assert main(["scale", "--preset", "small", "--ranker-impressions", "1500", "--workdir", str(tmp_path / "w"),
                 "--out", str(out)] + sets) == 0
    res = json.loads(out.read_text())
    assert res["counts"] == {"users": 300, "authors": 40, "impressions": 6000}        # --set wins over the preset
    ran = [s for s in res["stages"] if s["status"] == "ran"]
    assert [s["stage"] for s in ran][:2] == ["data", "graph"] and "ranker" in [s["stage"] for s in ran]
    rss = [s["peak_rss_gib"] for s in ran]
    assert all(r > 0 for r in rss) and rss == sorted(rss)                  # a running peak never decreases
    assert res["peak_rss_gib"] >= rss[-1] and res["ranker_sample"] == 1500
    m = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())       # the ranker's summary is the run's own
    assert res["ranker"]["epochs_run"] == len(m["ranker"]["history"]) and res["ranker"]["best_epoch"] == m["ranker"]["best_epoch"]
    assert res["ranker"]["test"]["mmbee"]["auc"] == m["eval"]["test"]["mmbee"]["gift"]["auc"]
    printed = capsys.readouterr().out
    assert "peak RSS" in printed and f"best epoch {m['ranker']['best_epoch']}" in printed


def test_scale_learning_curve_one_run_per_point_sharing_the_pretraining(tmp_path, capsys):
    from .conftest import FAST_MODELS, TINY_SIM

    sets = [a for s in TINY_SIM + FAST_MODELS + ["simulate.num_impressions=6000", f"data.cache_dir={tmp_path / 'c'}"]
            for a in ("--set", s)]
    out, fig = tmp_path / "curve.json", tmp_path / "curve.png"
    assert main(["scale", "--preset", "small", "--curve", "1500,0", "--models", "full,din", "--workdir",
                 str(tmp_path / "w"), "--out", str(out), "--figure", str(fig)] + sets) == 0
    res = json.loads(out.read_text())
    points = res["curve"]
    assert [(p["model"], p["train_impressions"]) for p in points] == [
        ("full", 1500), ("full", res["all_train_impressions"]), ("DIN", 1500), ("DIN", res["all_train_impressions"])]
    for p in points:                                   # each point is its own run, read from its metrics.json
        m = json.loads((Path(p["run_dir"]) / "metrics.json").read_text())
        assert len(m["ranker"]["history"]) == 1
        assert p["ranker"]["auc"] == m["eval"]["test"][m["ranker"]["model"]]["gift"]["auc"]
        assert p["popularity"]["gauc"] == m["eval"]["test"]["popularity"]["gift"]["gauc"]
    metrics = [json.loads((Path(p["run_dir"]) / "metrics.json").read_text()) for p in points]
    assert [m["ranker"]["model"] for m in metrics] == ["mmbee", "mmbee", "din", "din"]
    assert metrics[0]["stage_cache"] == {} and set(metrics[1]["stage_cache"]) == {"graphcl", "stat_forecast",
                                                                                   "product_forecast"}
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "learning curve, preset small: 300 users" in printed and f"{points[0]['ranker']['auc']:.4f}" in printed
    with pytest.raises(SystemExit):
        main(["scale", "--curve", "100,x"])
    assert "expected comma-separated whole numbers" in capsys.readouterr().err


def test_dist_benchmark_table_reads_the_one_metrics_schema():
    from graphrec.bench.dist import _row, format_table

    standalone = {"eval": {"val": {"mmbee": {"gift": {"auc": 0.71, "gauc": 0.70}}},
                           "test": {"mmbee": {"gift": {"auc": 0.72}}}},
                  "ranker": {"model": "mmbee", "history": [{}, {}]},
                  "graphcl": {"link_prediction": {"trained": {"auc": 0.81}}, "history": [{"seconds": 0.5}, {"seconds": 0.25}]},
                  "stages": [{"name": "graphcl", "seconds": 3.5}]}
    dist = {"dist": {"graphcl_seconds": 2.25}, "eval": {"val": {"mmbee": {"gift": {"auc": 0.69, "gauc": 0.68}}},
                                                       "test": {"mmbee": {"gift": {"auc": 0.70}}}},
            "ranker": {"model": "mmbee", "history": [{}, {}, {}]},
            "graphcl": {"mode": "distributed", "link_prediction": {"trained": {"auc": 0.79}}}}
    rows = [_row("standalone", "1 process", "gift", standalone, 10.0, 12.0),
            _row("1 machine x 2", "1 server + 2 trainers", "gift", dist, 8.0, 9.5),
            {"setup": "2 machines x 1", "skipped": "network namespaces need root"}]
    assert rows[0]["val_auc"] == 0.71 and rows[0]["epochs"] == 2 and rows[1]["test_auc"] == 0.70
    table = format_table({"main_label": "gift", "rows": rows, "cpus": 2})
    assert "0.6900" in table and "skipped: network namespaces need root" in table
    assert (rows[0]["graphcl_seconds"], rows[0]["graphcl_mode"], rows[1]["graphcl_seconds"]) == (3.5, "standalone", 2.25)
    assert "distributed" in table and "0.7900" in table and "3.5" in table
    assert rows[0]["graphcl_loop_seconds"] == 0.75 and rows[1]["graphcl_loop_seconds"] is None and "0.75" in table


def test_rss_of_a_process_tree_counts_its_children():
    """``bench dist --preset``'s per-machine memory: a root process and all its descendants."""
    import subprocess
    import sys

    from graphrec.bench.dist import _rss_by_root

    code = "import subprocess, sys; b = bytearray(80 << 20); subprocess.run([sys.executable, '-c', " \
           "'import time; b = bytearray(60 << 20); time.sleep(30)'])"
    root = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        import time

        deadline = time.time() + 20
        while time.time() < deadline and _rss_by_root([root.pid])[0] < 140 << 20:
            time.sleep(0.2)
        tree, alone = _rss_by_root([root.pid])[0], int(open(f"/proc/{root.pid}/statm").read().split()[1]) * 4096
        assert tree >= 140 << 20 and tree > alone + (50 << 20)          # the child's 60 MB counted too
    finally:
        import os
        import signal

        os.killpg(root.pid, signal.SIGKILL)                          # the child too
        root.wait()


def test_probe_blanks_one_input_and_restores_it():
    """``bench probe``: inside the block the batches (or the id table) have the input blanked; after it the
    builder and the model are what they were, bit for bit."""
    from graphrec.bench.probe import blanked
    from graphrec.ranking.stage import build_ranker, enabled_modules

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.use_mfq=false", "ranker.mlp=[16]", "ranker.histories=[gift, click]"])
    model, builder, _ = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
    idx = np.arange(0, 3000, 11)
    before = builder.impressions(idx)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with blanked(model, builder, "graph"):
        b = builder.impressions(idx)
        assert (b.users.theta == 0).all() and (b.rooms.theta == 0).all()
        assert all((e == -1).all() for e in list(b.users.exp.values()) + list(b.rooms.exp.values()))
        assert torch.equal(b.users.hist["click"], before.users.hist["click"])        # the rest untouched
    with blanked(model, builder, "histories"):
        b = builder.rank_users(np.arange(20), int(ds.impressions["time"][-1]))
        assert all((h == -1).all() for h in b.hist.values())
    with blanked(model, builder, "user id"):
        assert (model.user_emb.weight == 0).all()
    after = builder.impressions(idx)
    assert torch.equal(after.users.theta, before.users.theta) and (before.users.theta != 0).any()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
