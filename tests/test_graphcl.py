import numpy as np
import pytest
import torch

from data_prep.simulate import simulate
from graphrec.config import load_config
from graphrec.data.split import time_split
from graphrec.gie.graph import build_gift_graph, gift_edges
from graphrec.gie.graphcl import GraphCL, link_prediction, train_graphcl
from graphrec.gie.metapath import offline_expansions

from .conftest import FAST_MODELS, TINY_SIM


@pytest.fixture(scope="module")
def gifted_world():
    cfg = load_config(None, TINY_SIM + ["simulate.gift_rate=0.05", "simulate.gift_auc=0.9",
                                        "simulate.community_exposure=0.8"])
    ds = simulate(cfg.simulate, seed=0)
    ds.impressions["split"] = time_split(ds.impressions["time"], 0.1, 0.2)
    g = build_gift_graph(ds, "gift")
    exp = offline_expansions(g, {"u2a2u": 10, "a2u2a": 10})
    return cfg, ds, exp


def test_algorithm1_positives_from_expansions_and_same_type_negatives(gifted_world, monkeypatch):
    cfg, ds, exp = gifted_world
    seen = []
    real = GraphCL.forward

    def spy(self, anchor, positive, negatives):
        seen.append((anchor.clone(), positive.clone(), negatives.clone()))
        return real(self, anchor, positive, negatives)

    monkeypatch.setattr(GraphCL, "forward", spy)
    sec = dict(cfg.graphcl, epochs=1, batch_size=64)
    train_graphcl(ds.num_users, ds.num_authors, exp["u2a2u"], exp["a2u2a"], sec, seed=0)
    U = ds.num_users
    anchors = torch.cat([a for a, _, _ in seen])
    assert len(anchors) == len(set(anchors.tolist()))                 # each node once per epoch (shuffled)
    with_pos = set(np.flatnonzero((exp["u2a2u"] >= 0).any(1)).tolist()) | \
        {U + a for a in np.flatnonzero((exp["a2u2a"] >= 0).any(1)).tolist()}
    assert set(anchors.tolist()) == with_pos                          # nodes without positives sit out
    for a, p, n in seen:
        user = a < U
        for i in range(len(a)):
            if user[i]:
                assert p[i].item() in exp["u2a2u"][a[i]].tolist()
                assert (n[i] < U).all()
            else:
                assert p[i].item() - U in exp["a2u2a"][a[i] - U].tolist()
                assert (n[i] >= U).all()


@pytest.mark.parametrize("sparse", [False, True])
def test_loss_parts_and_training_improves_link_prediction(gifted_world, sparse):
    """Dense Adam and ``graphcl.sparse_updates`` (lazy Adam over the batch's rows) both learn the graph."""
    cfg, ds, exp = gifted_world
    r = train_graphcl(ds.num_users, ds.num_authors, exp["u2a2u"], exp["a2u2a"],
                      dict(cfg.graphcl, epochs=8, sparse_updates=sparse), seed=0)
    assert r.model.theta.sparse == sparse
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    h = r.history[0]
    assert h["train_loss"] == pytest.approx(h["ce"] + cfg.graphcl.nce_weight * h["nce"], rel=1e-5)
    train = ds.impressions["split"] == 0
    tu, ta, _, _ = gift_edges(ds, "gift", train)
    hu, ha, _, _ = gift_edges(ds, "gift", ~train)
    trained = link_prediction(r.model.author_embeddings(), tu, ta, hu, ha)
    untrained = link_prediction(r.initial[ds.num_users:], tu, ta, hu, ha)
    assert trained["pairs"] == untrained["pairs"] > 20
    assert trained["auc"] > untrained["auc"] + 0.1
    assert trained["mrr"] > untrained["mrr"]
    theta = r.theta()                                   # what the ranker reads
    cold = ~np.concatenate([(exp["u2a2u"] >= 0).any(1), (exp["a2u2a"] >= 0).any(1)])
    assert 0 < cold.sum() < len(cold)
    assert (theta[torch.from_numpy(cold)] == 0).all()   # no graph evidence: no random id to memorise
    assert torch.equal(theta[torch.from_numpy(~cold)], r.model.theta.weight[torch.from_numpy(~cold)])


def test_link_prediction_hand_worked():
    # 3 authors on orthogonal axes; user 0 gifted author 0 in training, held-out gift to author 0's twin (author 1)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = link_prediction(emb, np.array([0]), np.array([0]), np.array([0, 0]), np.array([1, 0]), negatives=5, seed=0)
    assert r["pairs"] == 1                          # (0, 0) was gifted in training: skipped
    # the positive scores 1; its 5 negatives are random authors scoring 1 (authors 0/1: ties count half) or 0
    # (author 2: below it)
    below = int((np.random.default_rng(0).integers(0, 3, (1, 5)) == 2).sum())
    assert 0 < below < 5                            # both kinds drawn: the values below tell ties from wins
    assert r["auc"] == pytest.approx((below + 0.5 * (5 - below)) / 5)
    assert r["mrr"] == pytest.approx(1 / (1 + 0.5 * (5 - below))) and r["hits@10"] == 1.0


def test_prepared_link_prediction_matches_a_direct_reading():
    """The per-epoch scorer (pairs and negatives prepared once) against the protocol written out pair by pair:
    users without training gifts and pairs gifted in training skipped, duplicates kept, OGB ranks."""
    from graphrec.gie.graphcl import LinkPrediction
    from graphrec.metrics import auc

    rng = np.random.default_rng(3)
    A, negatives = 400, 7                             # rare negative == positive (float ties)
    tu, ta = rng.integers(0, 20, 400), rng.integers(0, A, 400)
    hu, ha = rng.integers(0, 25, 40), rng.integers(0, A, 40)          # users 20..24 have no training gift
    hu, ha = np.concatenate([hu, tu[:3], hu[:2]]), np.concatenate([ha, ta[:3], ha[:2]])   # seen pairs, duplicates
    scorer = LinkPrediction(A, tu, ta, hu, ha, negatives, seed=5)
    for _ in range(2):                                # the prepared parts are reused, Θ changes every call
        emb = torch.randn(A, 4)
        got = scorer(emb)
        e = torch.nn.functional.normalize(emb, dim=-1)
        seen = set(zip(tu.tolist(), ta.tolist()))
        pairs = [(u, a) for u, a in zip(hu.tolist(), ha.tolist()) if u in set(tu.tolist()) and (u, a) not in seen]
        neg = np.random.default_rng(5).integers(0, A, (len(pairs), negatives))
        pos_s, neg_s = [], []
        for (u, a), na in zip(pairs, neg):
            prof = torch.nn.functional.normalize(e[torch.from_numpy(ta[tu == u])].sum(0), dim=0)
            pos_s.append(float(prof @ e[a]))
            neg_s.append((e[torch.from_numpy(na)] @ prof).numpy())
        pos_s, neg_s = np.array(pos_s), np.array(neg_s)
        assert got["pairs"] == len(pairs) > 20
        labels = np.concatenate([np.ones(len(pairs)), np.zeros(neg_s.size)])
        # AUC orders scores across pairs, where float rounding may swap two nearly equal ones: one swap is 1e-4
        assert got["auc"] == pytest.approx(auc(labels, np.concatenate([pos_s, neg_s.ravel()])), abs=5e-4)
        rank = 1 + (neg_s > pos_s[:, None] + 1e-6).sum(1) + 0.5 * (np.abs(neg_s - pos_s[:, None]) <= 1e-6).sum(1)
        assert got["mrr"] == pytest.approx(float((1 / rank).mean()), abs=1e-6)
        assert got == link_prediction(emb, tu, ta, hu, ha, negatives, seed=5)
    with pytest.raises(ValueError, match="author rows"):
        scorer(torch.randn(A + 1, 4))


def test_gie_stages_in_the_pipeline(tmp_path):
    from graphrec.checkpoint import load_checkpoint
    from graphrec.run import run

    sets = TINY_SIM + FAST_MODELS + [f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                                     "run.progress=false", "simulate.gift_rate=0.05", "stat_forecast.enabled=false",
                                     "product_forecast.enabled=false", "ranker.enabled=false"]
    first = run(load_config(None, sets))
    m = first.metrics
    assert m["graph"]["edges"]["u2a"] == m["graph"]["edges"]["a2u"] > 0
    assert set(m["expansion"]["filled"]) == {"u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"}
    assert set(m["graphcl"]["link_prediction"]) == {"trained", "untrained"}
    ck = load_checkpoint(first.run_dir / "checkpoints" / "graphcl.pt")
    assert ck["theta"].shape == (300 + 40, 1, 32)                   # one graph snapshot; graphcl.dim default
    assert (first.run_dir / "expansions.npz").exists()
    second = run(load_config(None, sets))
    assert "using cached expansions" in (second.run_dir / "run.log").read_text()
    off = run(load_config(None, sets + ["expansion.k_u2a2u=0"]))
    status = {s["name"]: s["status"] for s in off.metrics["stages"]}
    assert status["graphcl"] == "skipped: needs the ['u2a2u'] expansions (positives of Algorithm 1)"
    off = run(load_config(None, sets + ["graph.enabled=false"]))
    status = {s["name"]: s["status"] for s in off.metrics["stages"]}
    assert status["expansion"] == "skipped: no graph (stage graph did not run)"


def test_importing_graphrec_dgl_and_ogb_starts_no_version_check_thread():
    pytest.importorskip("dgl")
    pytest.importorskip("ogb")
    import subprocess
    import sys

    code = ("import threading, sys, graphrec, dgl; from ogb.linkproppred import Evaluator; "
            "e = Evaluator(name='ogbl-citation2'); "
            "print(len([t for t in threading.enumerate() if t is not threading.main_thread()]), "
            "'outdated' in sys.modules and sys.modules['outdated'] is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]


def test_projector_labels_use_the_best_available_author_attribute():
    from graphrec.data.dataset import Dataset
    from graphrec.pipeline import author_labels

    def ds(authors, meta=None):
        return Dataset("x", "t", 1, 3, {"authors": authors}, meta=meta or {})

    assert author_labels(ds({"cluster": np.array([2, 0, 1])})) == ["cluster 2", "cluster 0", "cluster 1"]
    genres = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]], np.uint8)
    assert author_labels(ds({"genres": genres}, {"genre_names": ["a", "b", "c"]})) == ["b", "a", "none"]
    assert author_labels(ds({"shopping": np.array([1, 0, 0])})) == ["shopping", "talent", "talent"]
    assert author_labels(ds({"raw_id": np.arange(3)})) == ["0", "1", "2"]
