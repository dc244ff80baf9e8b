import hashlib

import numpy as np
import pytest

from data_prep.simulate import calibrate, main as simulate_main, simulate
from graphrec.config import load_config
from graphrec.data.dataset import load_dataset
from graphrec.data.validate import find_violations
from graphrec.errors import ConfigError
from graphrec.metrics import auc, expected_auc

from .conftest import TINY_SIM


def digest(ds):
    h = hashlib.sha256()
    for t in sorted(ds.tables):
        for c in sorted(ds.tables[t]):
            h.update(f"{t}.{c}".encode())
            h.update(np.ascontiguousarray(ds.tables[t][c]).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world():
    """A mid-size world: enough gifts (about 1,500) to check planted rates and AUC tightly."""
    cfg = load_config(None, TINY_SIM + ["simulate.num_impressions=150000", "simulate.num_users=2000",
                                        "simulate.num_authors=120"])
    return cfg.simulate, simulate(cfg.simulate, seed=3)


def test_valid_and_shaped(world):
    sim, ds = world
    assert find_violations(ds) == []
    imp = ds.impressions
    assert len(imp["user"]) == sim["num_impressions"]
    assert ds.num_users == sim["num_users"] and ds.num_authors == sim["num_authors"]
    S = sim["room_steps"] // sim["segment_steps"]
    seg = ds.tables["segments"]
    assert seg["frame"].shape == (sim["num_authors"] * S, sim["tokens_per_modality"], sim["token_dim"])
    assert ds.tables["stats"]["values"].shape == (sim["num_authors"], sim["room_steps"], 8)
    # the segment of an impression is its author's segment live at impression time
    rows = imp["segment"]
    assert (seg["author"][rows] == imp["author"]).all()
    assert ((seg["start"][rows] <= imp["time"]) & (imp["time"] < seg["start"][rows] + sim["segment_steps"] * 30)).all()


def test_deterministic_per_seed(tiny_cfg):
    a = simulate(tiny_cfg.simulate, seed=7)
    b = simulate(tiny_cfg.simulate, seed=7)
    c = simulate(tiny_cfg.simulate, seed=8)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_planted_gift_rate_and_oracle_auc(world):
    sim, ds = world
    imp = ds.impressions
    n = len(imp["gift"])
    rate = sim["gift_rate"]
    # mean true probability is calibrated exactly; the realized rate is binomial around it
    assert imp["p_gift"].mean() == pytest.approx(rate, rel=1e-3)
    assert abs(imp["gift"].mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    oracle = ds.meta["oracle"]["gift"]
    assert oracle["expected_auc"] == pytest.approx(sim["gift_auc"], abs=2e-3)
    # realized AUC of the truth against the drawn labels: within sampling noise of the target
    assert auc(imp["gift"], imp["p_gift"]) == pytest.approx(sim["gift_auc"], abs=0.025)
    for label in ("click", "long_view"):
        assert imp[f"p_{label}"].mean() == pytest.approx(sim[f"{label}_rate"], rel=1e-3)


def test_other_planted_auc_is_hit(tiny_cfg):
    cfg = load_config(None, TINY_SIM + ["simulate.gift_auc=0.7", "simulate.gift_rate=0.05"])
    ds = simulate(cfg.simulate, seed=1)
    assert expected_auc(ds.impressions["p_gift"]) == pytest.approx(0.7, abs=2e-3)
    assert ds.impressions["p_gift"].mean() == pytest.approx(0.05, rel=1e-3)


def test_calibrate_hits_rate_and_auc():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(50_000).astype(np.float32)
    scale, bias = calibrate(z, 0.02, 0.8, rng)
    p = 1 / (1 + np.exp(-(bias + scale * z)))
    assert p.mean() == pytest.approx(0.02, rel=1e-3)
    assert expected_auc(p) == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ConfigError, match="unreachable"):
        calibrate(np.sign(z), 0.02, 0.95, rng)   # a binary signal cannot reach AUC 0.95


def test_planted_signals_are_present(world):
    sim, ds = world
    imp, users, authors = ds.impressions, ds.tables["users"], ds.tables["authors"]
    # collaborative: gifts are likelier within the user's own community
    same = users["community"][imp["user"]] == authors["cluster"][imp["author"]]
    assert imp["p_gift"][same].mean() > 1.3 * imp["p_gift"][~same].mean()
    # room heat: statistics at a step correlate with gift intent at that step
    step = (imp["time"] // 30).astype(int)
    audience = ds.tables["stats"]["values"][imp["author"], step, 1]
    assert np.corrcoef(np.log(audience), imp["p_gift"])[0, 1] > 0.05
    # highlights happen at heat peaks: audience is higher at highlight steps of the same room
    st = ds.tables["stats"]
    hot = st["highlight"] > 0
    rel = st["values"][..., 1] / st["values"][..., 1].mean(axis=1, keepdims=True)
    assert rel[hot].mean() > 1.2 * rel[~hot].mean()
    # category chain: consecutive fine categories follow one of two global successor maps
    pr = ds.tables["products"]
    same_room = pr["author"][1:] == pr["author"][:-1]
    pairs = set(zip(pr["cat3"][:-1][same_room].tolist(), pr["cat3"][1:][same_room].tolist()))
    transitions = np.array(list(zip(pr["cat3"][:-1][same_room], pr["cat3"][1:][same_room])))
    successors_per_cat = {}
    for a, b in transitions:
        successors_per_cat.setdefault(a, []).append(b)
    top2 = [sorted(np.bincount(v)[np.bincount(v) > 0])[-2:] for v in successors_per_cat.values()]
    share = sum(sum(t) for t in top2) / len(transitions)
    assert share > sim["chain_follow"] - 0.08
    assert len(pairs) > 10
    # modalities share a common part: the segment-mean tokens of two modalities are correlated
    seg = ds.tables["segments"]
    f, a = seg["frame"].mean(axis=1), seg["asr"].mean(axis=1)
    cross = np.abs(np.corrcoef(f.T, a.T)[: f.shape[1], f.shape[1]:]).max()
    assert cross > 0.3
    # purchases only in shopping rooms
    assert imp["purchase"][authors["shopping"][imp["author"]] == 0].sum() == 0


def test_bad_simulator_config():
    # checked at load (graphrec.config.check_simulate), and again by simulate() on any section it gets
    with pytest.raises(ConfigError, match=r"segment_steps=5 \(--set\) must divide"):
        load_config(None, TINY_SIM + ["simulate.segment_steps=5"])
    good = dict(load_config(None, TINY_SIM).simulate)
    with pytest.raises(ConfigError, match="segment_steps=5 must divide"):
        simulate(dict(good, segment_steps=5))
    zero = {w: 0.0 for w in ("weight_collaborative", "weight_content", "weight_heat", "weight_user_bias",
                             "weight_author_bias", "weight_patronage")}
    with pytest.raises(ConfigError, match="at least one gift signal weight"):
        load_config(None, TINY_SIM + [f"simulate.{w}=0" for w in zero])
    with pytest.raises(ConfigError, match="at least one gift signal weight"):
        simulate(dict(good, **zero))


def test_cli_writes_a_valid_dataset(tmp_path, capsys):
    args = ["--out", str(tmp_path / "w"), "--seed", "2"] + [a for s in TINY_SIM for a in ("--set", s)]
    assert simulate_main(args) == 0
    out = capsys.readouterr().out
    assert "users=300" in out and "authors=40" in out and "impressions=30,000" in out
    ds = load_dataset(tmp_path / "w")
    assert find_violations(ds) == [] and ds.meta["simulator"]["seed"] == 2
    assert simulate_main(["--out", str(tmp_path / "x"), "--set", "simulate.segment_steps=7"]) == 2
    assert "must divide" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# the impressions of the TINY_SIM world (seed 0) as data_prep/simulate.py made them before patronage existed
# (commit 0b0ad99): every column but the true probabilities byte for byte, and those probabilities' sums (they
# move by a float32 ulp or so between numpy releases: the DGL-free environment has numpy 2). weight_patronage 0
# must give that world.
WORLD_BEFORE_PATRONAGE = "9bf950c05368c1158bb4508522c5e4d8b477cdf0cf3d776cdc916e59730d9c6d"
PROBABILITY_SUMS = {"p_click": 2999.99985188141, "p_gift": 299.9999402266867, "p_long_view": 1200.0005201523227,
                    "p_purchase": 271.9598680905183}


def _digest(columns) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(c for c in columns if not c.startswith("p_")):
        h.update(k.encode())
        h.update(columns[k].tobytes())
    return h.hexdigest()


def test_without_patronage_the_world_is_the_one_before_it():
    cfg = load_config(None, TINY_SIM + ["simulate.weight_patronage=0"])
    for fan_clubs in (cfg.simulate.fan_clubs, 7):                      # the clubs' draws touch nothing else
        ds = simulate(dict(cfg.simulate, fan_clubs=fan_clubs), seed=0)
        assert _digest(ds.impressions) == WORLD_BEFORE_PATRONAGE
        for k, total in PROBABILITY_SUMS.items():     # float32 probabilities: numpy 1 and 2 round apart by ~1e-6
            assert float(ds.impressions[k].astype(np.float64).sum()) == pytest.approx(total, rel=1e-5), k
    assert "fan_club" not in ds.tables["users"] and "fan_club" not in ds.tables["authors"]


def test_patronage_drives_gifts_only():
    """Patronage changes who gifts, never who clicks, stays long or is shown: p_click and p_long_view are
    byte for byte those of the world without it; gifts concentrate on the viewer's own fan club; the
    planted gift rate and oracle AUC are still hit."""
    cfg = load_config(None, TINY_SIM + ["simulate.num_impressions=60000"])
    plain = simulate(dict(cfg.simulate, weight_patronage=0.0), seed=0).impressions
    ds = simulate(dict(cfg.simulate, weight_patronage=2.0), seed=0)
    imp = ds.impressions
    for col in ("user", "author", "time", "p_click", "p_long_view", "click", "long_view"):
        assert np.array_equal(imp[col], plain[col]), col
    own = ds.tables["users"]["fan_club"][imp["user"]] == ds.tables["authors"]["fan_club"][imp["author"]]
    same_community = ds.tables["users"]["community"][imp["user"]] == ds.tables["authors"]["cluster"][imp["author"]]
    inside = same_community & own
    others = same_community & ~own                                     # same taste, another club
    assert imp["p_gift"][inside].mean() > 2.0 * imp["p_gift"][others].mean()
    o = ds.meta["oracle"]["gift"]
    assert o["rate"] == pytest.approx(cfg.simulate.gift_rate, rel=0.15)
    assert o["expected_auc"] == pytest.approx(cfg.simulate.gift_auc, abs=0.01)
    g = ds.meta["gifting"]
    assert g["gifts"] == int(imp["gift"].sum()) and 0 < g["gifting_users_share"] < 1
    assert g["repeat_gift_share"] > simulate(dict(cfg.simulate, weight_patronage=0.0), seed=0).meta["gifting"][
        "repeat_gift_share"]                                           # fans come back to their club's rooms
