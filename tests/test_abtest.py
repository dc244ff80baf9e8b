"""The simulated A/B test: the world's true response is the simulator's, outcomes are paired, the
bootstrap behaves (the CI narrows with traffic, identical policies tie), and runs from another world
are refused."""
import json

import numpy as np
import pytest

from data_prep.simulate import LABEL_NAMES, simulate_world, world_of
from graphrec.abtest import (OraclePolicy, PopularityPolicy, RandomPolicy, crn_uniform, main, make_traffic,
                             run_abtest)
from graphrec.config import load_config
from graphrec.data.dataset import load_dataset, save_dataset
from graphrec.data.split import ensure_split
from graphrec.errors import DataError
from graphrec.plots import main as plots_main
from graphrec.run import ABLATIONS, run

from .conftest import FAST_MODELS, TINY_SIM


@pytest.fixture(scope="module")
def tiny_world():
    cfg = load_config(None, TINY_SIM + ["simulate.gift_rate=0.05"])
    ds, world = simulate_world(cfg.simulate, seed=2)
    ensure_split(ds, cfg.data.val_fraction, cfg.data.test_fraction)
    return ds, world


def test_true_response_equals_the_stored_probabilities(tiny_world, tmp_path):
    ds, world = tiny_world
    imp = ds.impressions
    p = world.probabilities(imp["user"], imp["author"], imp["time"])
    for label in LABEL_NAMES:
        np.testing.assert_allclose(p[label], imp[f"p_{label}"], rtol=1e-5, atol=1e-7)
    # rebuilt from the saved dataset's simulator config and seed alone, and checked against it
    loaded = load_dataset(save_dataset(ds, tmp_path / "world"))
    again = world_of(loaded, check=0)
    np.testing.assert_array_equal(again.probabilities(imp["user"][:500], imp["author"][:500], imp["time"][:500])["gift"],
                                  p["gift"][:500])


def test_a_dataset_the_simulator_no_longer_makes_is_refused(tiny_world):
    ds, _ = tiny_world
    tampered = type(ds)(ds.name, ds.source, ds.num_users, ds.num_authors,
                        {**ds.tables, "impressions": {**ds.impressions, "author": ds.impressions["author"][::-1].copy()}},
                        ds.meta)
    with pytest.raises(DataError, match="another version"):
        world_of(tampered)


def test_common_random_numbers_are_uniform_and_keyed():
    a, b = np.arange(200_000) // 400, np.arange(200_000) % 400
    u = crn_uniform(3, 0, a, b)
    assert abs(u.mean() - 0.5) < 0.005 and u.min() >= 0 and u.max() < 1
    assert np.array_equal(u[::-1], crn_uniform(3, 0, a[::-1], b[::-1]))        # order-free
    assert abs(np.corrcoef(u, crn_uniform(3, 1, a, b))[0, 1]) < 0.01            # streams independent


def test_oracle_beats_random(tiny_world):
    ds, world = tiny_world
    res, setup = run_abtest(world, ds, [RandomPolicy(), OraclePolicy(world)], requests=600, k=3,
                            control="random", resamples=200)
    oracle = res["oracle"]["gifts_per_exposure"]
    assert oracle["mean"] > res["random"]["gifts_per_exposure"]["mean"]
    assert oracle["lift_ci_low"] > 0
    assert res["oracle"]["expected_gifts_per_exposure"]["mean"] > res["random"]["expected_gifts_per_exposure"]["mean"]
    assert setup["candidates"] == world.num_authors and setup["k"] == 3


def test_ci_narrows_as_requests_grow(tiny_world):
    """(Users are the bootstrap's unit: once most of the tiny world's 300 users are in, more requests per
    user narrow it little, so the sizes stay below that.)"""
    ds, world = tiny_world

    def width(n):
        r = run_abtest(world, ds, [RandomPolicy(), OraclePolicy(world)], requests=n, k=3, resamples=200)[0]
        g = r["oracle"]["gifts_per_exposure"]
        return g["ci_high"] - g["ci_low"]

    small, large = width(100), width(1000)
    assert large < 0.6 * small


def test_identical_policies_tie(tiny_world):
    ds, world = tiny_world
    a, b = PopularityPolicy(ds), PopularityPolicy(ds)
    b.name = "popularity-copy"
    res, _ = run_abtest(world, ds, [a, b, OraclePolicy(world)], requests=500, k=3, candidates=10,
                        control="popularity", resamples=200)
    for metric, r in res["popularity-copy"].items():
        assert r["lift_ci_low"] <= 0 <= r["lift_ci_high"], metric
        assert r["lift_ci_high"] - r["lift_ci_low"] < 1e-9, metric      # paired: the same outcomes exactly


def test_traffic_follows_the_world(tiny_world):
    ds, world = tiny_world
    t = make_traffic(world, ds, 2000, candidates=5, seed=1)
    steps = t.times // 30
    assert steps.min() >= t.first_step and steps.max() <= world.last_step
    assert t.first_step == ds.impressions["time"][ds.impressions["split"] == 2].min() // 30
    assert t.candidates.shape == (2000, 5) and all(len(set(r)) == 5 for r in t.candidates[:50])
    # the most active user asks most
    counts = np.bincount(t.users, minlength=world.num_users)
    assert counts[np.argmax(world.activity)] >= np.median(counts)


@pytest.fixture(scope="module")
def din_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abtest")
    sets = TINY_SIM + FAST_MODELS + ABLATIONS["DIN"] + [
        "simulate.num_impressions=8000", "ranker.epochs=1", "lightgcn.enabled=false", "run.progress=false",
        f"run.out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}"]
    return sets, run(load_config(None, sets)).run_dir


def test_cli_with_runs_writes_the_table_and_the_figure(din_run, tmp_path, capsys):
    sets, run_dir = din_run
    args = [a for s in sets for a in ("--set", s)]
    rc = main(args + ["--runs", f"a={run_dir}", f"b={run_dir}", "--requests", "150", "--k", "3",
                      "--bootstrap", "50", "--control", "a", "--set", f"run.out_dir={tmp_path}"])
    assert rc == 0
    folder = next(tmp_path.glob("*-abtest-*"))
    res = json.loads((folder / "abtest.json").read_text())
    assert set(res) == {"a", "b", "popularity", "random", "oracle"}
    assert res["b"]["gifts_per_exposure"]["lift"] == 0 and res["b"]["gifts_per_exposure"]["lift_ci_high"] == 0
    assert set(res["a"]["gifts_per_exposure"]) == {"mean", "ci_low", "ci_high", "lift", "lift_ci_low", "lift_ci_high"}
    assert (folder / "abtest.png").stat().st_size > 0 and "| oracle |" in (folder / "report.md").read_text()
    assert list(folder.glob("events.out.tfevents.*"))
    # the figure again through `python -m graphrec.plots --abtest`; a folder without abtest.json is refused
    import torch

    assert torch.is_grad_enabled()                  # scoring without autograd stays inside main()
    assert plots_main(["--abtest", str(folder), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "abtest.png").read_bytes()[:4] == b"\x89PNG"
    assert plots_main(["--abtest", str(tmp_path), "--out", str(tmp_path / "fig")]) == 2
    assert "abtest.json" in capsys.readouterr().err


def test_runs_from_another_world_are_refused(din_run, capsys):
    sets, run_dir = din_run
    args = [a for s in sets + ["simulate.seed=5"] for a in ("--set", s)]
    assert main(args + ["--runs", str(run_dir), "--requests", "10"]) == 2
    err = capsys.readouterr().err
    assert "was trained on the world" in err and "same world" in err
