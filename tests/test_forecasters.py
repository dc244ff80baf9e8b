import numpy as np
import pytest
import torch

from data_prep.simulate import simulate
from graphrec.checkpoint import load_checkpoint, save_checkpoint
from graphrec.config import load_config
from graphrec.data.split import time_split
from graphrec.errors import DataError
from graphrec.foresight import (naive_category_baselines, product_sequences, stat_windows,
                                train_product_forecaster, train_stat_forecaster, train_cutoff_time)
from graphrec.models import ProductForecaster, RevIN, StatForecaster

from .conftest import TINY_SIM

# rooms matter for the forecasters, impressions hardly: many rooms, few impressions
FORESIGHT_WORLD = TINY_SIM + ["simulate.num_authors=160", "simulate.shopping_fraction=0.6",
                              "simulate.room_steps=96", "simulate.num_impressions=20000"]


@pytest.fixture(scope="module")
def world():
    cfg = load_config(None, FORESIGHT_WORLD)
    ds = simulate(cfg.simulate, seed=0)
    ds.impressions["split"] = time_split(ds.impressions["time"], 0.1, 0.1)
    return cfg, ds


def test_revin_round_trip_is_exact():
    torch.manual_seed(0)
    rev = RevIN(4, affine=True)
    with torch.no_grad():
        rev.weight.copy_(torch.tensor([0.5, 2.0, -1.5, 3.0]))
        rev.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 1.0]))
    x = torch.randn(8, 12, 4, dtype=torch.float64) * torch.tensor([1.0, 100.0, 0.1, 5.0]) + 7
    rev = rev.double()
    z, mean, std = rev.normalize(x)
    assert torch.allclose(rev.denormalize(z, mean, std), x, atol=1e-10)
    # without the affine map, normalised windows have zero mean and unit variance per variate
    z0, _, _ = RevIN(4, affine=False).double().normalize(x)
    assert torch.allclose(z0.mean(dim=1), torch.zeros(8, 4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z0.var(dim=1, unbiased=False), torch.ones(8, 4, dtype=torch.float64), atol=2e-3)  # eps=1e-5 in the variance


def test_stat_forecaster_shapes_and_stop_gradient():
    model = StatForecaster(num_variates=8, input_steps=12, horizon=3, dim=16, layers=1, heads=2)
    x = torch.rand(5, 12, 8) * 10
    forecast, enc = model(x)
    assert forecast.shape == (5, 3, 8) and enc.shape == (5, 8, 16)
    feats = model.ranker_features(x)
    assert feats.shape == (5, 8 * 3 + 8 * 16) and not feats.requires_grad
    with pytest.raises(ValueError, match=r"expects \[B, 12, 8\]"):
        model(torch.rand(5, 10, 8))
    # RevIN makes the forecast equivariant to a room's scale and offset per variate
    model.eval()
    f1, _ = model(x)
    f2, _ = model(x * 3 + 5)
    assert torch.allclose(f2, f1 * 3 + 5, atol=1e-3)


def test_stat_windows_hand_worked():
    values = np.arange(7, dtype=np.float32).reshape(1, 7, 1)
    x, y, rooms = stat_windows(values, input_steps=3, horizon=2)
    assert x[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert y[:, :, 0].tolist() == [[3, 4], [4, 5], [5, 6]]
    x, y, _ = stat_windows(values, 3, 2, last_target_step=np.array([6]))   # targets must end before step 6
    assert y[:, :, 0].tolist() == [[3, 4], [4, 5]]
    x, y, _ = stat_windows(values, 3, 2, max_windows=2, rng=np.random.default_rng(0))   # sampled, still aligned
    assert len(x) == 2 and len({tuple(r) for r in x[:, :, 0].tolist()}) == 2
    assert all(yy[0] == xx[-1] + 1 and yy[1] == xx[-1] + 2 for xx, yy in zip(x[:, :, 0], y[:, :, 0]))


def test_stat_forecaster_beats_naive_baselines(world):
    cfg, ds = world
    sec = dict(load_config(None, ["stat_forecast.epochs=6", "stat_forecast.dim=32"]).stat_forecast)
    r = train_stat_forecaster(ds, sec, seed=0)
    mse = r.metrics["mse"]
    assert mse["model"] < mse["latest_value"] < mse["mean_value"]
    assert mse["model"] < 0.8 * mse["latest_value"]
    assert r.loss_history[-1] < r.loss_history[0]
    assert r.metrics["heldout_rooms"] == 32 and r.metrics["train_rooms"] == 128


def test_forecaster_training_sees_no_post_cutoff_statistics(world):
    cfg, ds = world
    cutoff_step = int(train_cutoff_time(ds) // 30)
    values = np.log1p(ds.tables["stats"]["values"])
    sec = dict(cfg.stat_forecast)
    _, y, _ = stat_windows(values, sec["input_steps"], sec["horizon"], np.full(len(values), cutoff_step))
    assert len(y) == len(values) * (cutoff_step - sec["input_steps"] - sec["horizon"] + 1)


def test_product_forecaster_is_causal():
    torch.manual_seed(0)
    model = ProductForecaster(num_products=50, num_cat1=2, num_cat2=4, num_cat3=10, dim=16, layers=2,
                              heads=2, max_len=6, dropout=0.0).eval()
    items = torch.randint(0, 2, (2, 6, 4))
    lengths = torch.tensor([6, 4])
    logits, enc = model(items, lengths)
    assert logits.shape == (2, 6, 10) and enc.shape == (2, 6, 16)
    changed = items.clone()
    changed[:, 3] = 1 - changed[:, 3]             # change item 3: positions 0..2 must not move
    logits2, _ = model(changed, lengths)
    assert torch.allclose(logits[:, :3], logits2[:, :3], atol=1e-5)
    assert not torch.allclose(logits[0, 3:], logits2[0, 3:], atol=1e-5)
    probs, last = model.ranker_features(items, lengths)
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(last[1], enc[1, 3]) and not probs.requires_grad


def test_naive_category_baselines_hand_worked():
    cats = np.array([1, 2, 1, 3, 1])
    seq = np.zeros((1, 6, 4), np.int64)
    seq[0, :5, 3] = cats
    # latest: 1->2 miss, 2->1 miss, 1->3 miss, 3->1 miss. most frequent so far: 1, 2 (tie, most
    # recent), 1, 1 against next 2, 1, 3, 1 -> one hit
    hits = naive_category_baselines(seq, np.array([5]), num_cat3=4)
    assert hits == {"latest_category": 0.0, "most_frequent_category": 0.25}


def test_product_sequences_windows_cover_every_transition(world):
    _, ds = world
    pr = ds.tables["products"]
    author = pr["author"][0]
    n = int((pr["author"] == author).sum())
    seqs, lens = product_sequences(ds, np.array([author]), max_len=6)
    seen = set()
    for s, l in zip(seqs, lens):
        seen |= {(int(a), int(b)) for a, b in zip(s[:l - 1, 3], s[1:l, 3])}
    cats = pr["cat3"][pr["author"] == author]
    assert seen == {(int(a), int(b)) for a, b in zip(cats[:-1], cats[1:])}
    assert lens.max() == 6 and n == 16


def test_product_forecaster_beats_naive_baselines(world):
    cfg, ds = world
    sec = dict(load_config(None, ["product_forecast.epochs=40"]).product_forecast)
    r = train_product_forecaster(ds, sec, seed=0)
    hit = r.metrics["hit_rate"]
    assert hit["model"] > hit["latest_category"] + 0.1
    assert hit["model"] > hit["most_frequent_category"] + 0.1


class NotWeights:
    """An arbitrary class: a checkpoint holding one must not be unpickled."""


def test_checkpoint_round_trip_and_refusal(tmp_path):
    model = StatForecaster(3, 4, 2, dim=8, layers=1, heads=2).eval()
    path = save_checkpoint(tmp_path / "c" / "m.pt", {"state_dict": model.state_dict(), "hparams": {"dim": 8}})
    back = StatForecaster(3, 4, 2, dim=8, layers=1, heads=2).eval()
    back.load_state_dict(load_checkpoint(path)["state_dict"])
    x = torch.rand(2, 4, 3)
    assert torch.allclose(back(x)[0], model(x)[0])

    torch.save({"obj": NotWeights()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="not a loadable graphrec checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_product_prefix_table_matches_ranker_features():
    torch.manual_seed(0)
    model = ProductForecaster(num_products=40, num_cat1=2, num_cat2=4, num_cat3=8, dim=8, layers=1, heads=2,
                              max_len=4, dropout=0.0).eval()
    items = torch.randint(0, 2, (3, 7, 4))
    counts = torch.tensor([7, 3, 0])
    table = model.prefix_table(items, counts, batch_size=2)
    assert table.shape == (3, 8, 8 + 8)
    for r in range(3):
        for c in range(8):
            if c == 0 or c > counts[r]:
                assert (table[r, c] == 0).all()
                continue
            begin = max(0, c - 4)                        # the latest max_len products
            probs, enc = model.ranker_features(items[r:r + 1, begin:c], torch.tensor([c - begin]))
            assert torch.allclose(table[r, c, :8], probs[0], atol=1e-5)
            assert torch.allclose(table[r, c, 8:], enc[0], atol=1e-5)
