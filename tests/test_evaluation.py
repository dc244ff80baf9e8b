import numpy as np
import pytest
import scipy.sparse as sp
import torch

from graphrec.evaluation import full_ranking


def test_hand_worked_full_ranking():
    # 3 users x 5 items. Scores prefer items 0 > 1 > 2 > 3 > 4 for everyone.
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0],     # user 0 trained on item 0 -> masked
                                    [0, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0, 1],      # top-2 for user 0 is [1, 2]: 1 hit of 2
                                   [0, 0, 0, 0, 0],      # no test items: skipped
                                   [0, 0, 1, 0, 0]], np.float32))  # top-2 [0, 1]: no hit
    rep = full_ranking(lambda u: scores.expand(len(u), -1).clone(), train, test, k=2)
    assert rep["users"] == 2
    assert rep["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert rep["precision@2"] == pytest.approx((0.5 + 0.0) / 2)
    # user 0: hit at rank 1 -> DCG 1, ideal for 2 relevant = 1 + 1/log2(3)
    assert rep["ndcg@2"] == pytest.approx((1 / (1 + 1 / np.log2(3)) + 0) / 2)


def test_batches_agree():
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.random((50, 30)).astype(np.float32))
    train = sp.random(50, 30, density=0.1, format="csr", random_state=1)
    test = sp.random(50, 30, density=0.1, format="csr", random_state=2)
    fn = lambda u: s[torch.from_numpy(u)]
    a = full_ranking(fn, train, test, k=5, batch_size=7)
    b = full_ranking(fn, train, test, k=5, batch_size=1000)
    assert a == pytest.approx(b)


def test_topk_of_disjoint_user_shares_merges_to_the_whole():
    """A distributed run's top-K: each trainer ranks its users, the entries are merged by user count."""
    from graphrec.evaluation import merge_topk

    g = torch.Generator().manual_seed(0)
    s = torch.randn(60, 25, generator=g)
    train = sp.random(60, 25, density=0.1, format="csr", random_state=1)
    test = sp.random(60, 25, density=0.1, format="csr", random_state=2)
    fn = lambda u: s[torch.from_numpy(u)].clone()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    whole = full_ranking(fn, train, test, k=5, users=users)
    shares = [users[users % 3 == r] for r in range(3)] + [users[:0]]          # one trainer with no user
    parts = [{"label": "gift", "k": 5, **full_ranking(fn, train, test, k=5, users=u)} for u in shares]
    merged = merge_topk(parts + [None])
    assert merged["users"] == whole["users"] == len(users) and merged["label"] == "gift"
    for key in ("recall@5", "precision@5", "ndcg@5"):
        assert merged[key] == pytest.approx(whole[key], abs=1e-12)
    assert merge_topk([None, None]) is None


def test_sharded_pair_scores_score_each_pair_once_and_equal_the_whole():
    """Implicit data's sampled-negative AUC in a distributed run: each trainer scores the pairs of its own
    users, and every trainer gets all scores back in the caller's order (two ranks, played in turn)."""
    from graphrec.evaluation import ShardedPairScores

    class Scorer:
        scored = 0

        def pair_scores(self, u, a, t):
            self.scored += len(u)
            return u * 1000.0 + a + 0.5 * t

    class Comm:                          # rank 0 of two, given what rank 1 sent; or rank 1 on its own
        def __init__(self, others):
            self.others, self.sent = others, None

        def gather(self, obj):
            self.sent = obj
            return [obj] + self.others

    rng = np.random.default_rng(0)
    users, authors, times = rng.integers(0, 50, 40), rng.integers(0, 9, 40), rng.integers(0, 5, 40)
    one, zero = Scorer(), Scorer()
    rank1 = Comm([])
    ShardedPairScores(one, lambda u: u % 2 == 1, rank1).pair_scores(users, authors, times)
    got = ShardedPairScores(zero, lambda u: u % 2 == 0, Comm([rank1.sent])).pair_scores(users, authors, times)
    assert np.array_equal(got, Scorer().pair_scores(users, authors, times))
    assert zero.scored + one.scored == len(users) and zero.scored > 0 and one.scored > 0


def test_distributed_evaluation_scores_each_impression_once():
    """A distributed trainer scores its share of the split's impressions and ranks its own users (rank 0
    re-scoring the whole split, or ranking every user, kept the other trainers waiting past the stall
    timeout at 1M users). The entry equals the standalone one on the same scores."""
    import numpy as np

    from graphrec.dist.comm import LocalComm
    from graphrec.dist.trainer import evaluate_distributed
    from graphrec.evaluation import activity_buckets, evaluate, split_mask
    from graphrec.ranking.stage import build_ranker, enabled_modules
    from graphrec.ranking.train import RankerScorer

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.use_mfq=false", "ranker.mlp=[16]", "eval.two_stage_candidates=0"])
    model, builder, _ = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
    model.eval()
    scorer = RankerScorer(model, builder)
    scored = []
    real = scorer.impression_scores
    scorer.impression_scores = lambda idx: (scored.append(len(idx)), real(idx))[1]
    share = np.flatnonzero(split_mask(ds, "val"))
    ranked = []
    real_rank = scorer.rank
    scorer.rank = lambda users, t: (ranked.append(len(users)), real_rank(users, t))[1]
    entry = evaluate_distributed(scorer, ds, "val", share, cfg, LocalComm(), lambda users: np.ones(len(users), bool))
    users_ranked = sum(ranked)
    assert sum(scored) == len(share) > 0                     # once, not again on rank 0
    alone = evaluate(scorer, ds, "val", cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1, topk=cfg.eval.topk,
                     buckets=activity_buckets(ds, cfg.eval.activity_buckets))
    assert set(entry) == set(alone) and "topk" in entry and "gift@0" in entry
    assert any(k.startswith("topk@") for k in entry)                     # per bucket too
    for label in [k for k in alone if not k.startswith("topk")]:          # per label, overall and per bucket
        assert entry[label] == pytest.approx(alone[label], rel=0, abs=0, nan_ok=True), label
    assert set(entry["topk"]) == set(alone["topk"]) and users_ranked == alone["topk"]["users"] > 0
    for top in [k for k in alone if k.startswith("topk")]:
        for key, value in alone[top].items():
            assert entry[top][key] == (pytest.approx(value) if isinstance(value, float) else value), (top, key)
