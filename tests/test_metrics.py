import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from graphrec.metrics import auc, expected_auc, gauc, per_user_auc, ranking_report, uauc


def test_auc_hand_worked_with_ties():
    # positives scored 0.8 and 0.4; negatives 0.4 and 0.1:
    # pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5 / 4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert auc([1, 0], [0.2, 0.9]) == 0.0
    assert np.isnan(auc([1, 1], [0.2, 0.9]))


def test_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    s = np.round(rng.random(5000) + 0.3 * y, 2)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_uauc_gauc_hand_worked():
    users = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 1, 0, 1, 0, 1, 1])   # user 2 has one class only: excluded
    scores = np.array([0.9, 0.5, 0.95, 0.2, 0.3, 0.8, 0.1, 0.5, 0.4])
    # user 0: pos 0.9 vs negs 0.5, 0.95 -> 1/2 ; user 1: pos 0.2, 0.8 vs negs 0.3, 0.1 -> 3/4
    ids, aucs, n = per_user_auc(users, labels, scores)
    assert ids.tolist() == [0, 1] and aucs.tolist() == pytest.approx([0.5, 0.75]) and n.tolist() == [3, 4]
    assert uauc(users, labels, scores) == pytest.approx((0.5 + 0.75) / 2)
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 4 * 0.75) / 7)


def test_per_user_auc_matches_sklearn_per_user_with_ties_and_shuffle():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 50, 3000)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.random(3000), 1)
    ids, aucs, n = per_user_auc(users, labels, scores)
    for u, a, k in zip(ids, aucs, n):
        m = users == u
        assert a == pytest.approx(roc_auc_score(labels[m], scores[m]), abs=1e-12)
        assert k == m.sum()
    rep = ranking_report(users, labels, scores)
    assert rep["uauc"] == pytest.approx(aucs.mean()) and rep["gauc"] == pytest.approx((aucs * n).sum() / n.sum())


def test_expected_auc_equals_pairwise_definition():
    p = np.array([0.1, 0.5, 0.5, 0.9, 0.3])
    num = den = 0.0
    for i, j in itertools.permutations(range(len(p)), 2):
        w = p[i] * (1 - p[j])
        den += w
        num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auc(p) == pytest.approx(num / den, abs=1e-12)
    assert expected_auc(np.full(10, 0.3)) == pytest.approx(0.5)


def test_expected_auc_matches_simulated_labels():
    rng = np.random.default_rng(2)
    p = 1 / (1 + np.exp(-(rng.standard_normal(200_000) * 1.5 - 2)))
    realized = np.mean([auc(rng.random(len(p)) < p, p) for _ in range(5)])
    assert realized == pytest.approx(expected_auc(p), abs=0.004)


def test_expected_auc_without_a_pair_is_nan():
    """Regression: a world without shopping impressions died with an IndexError here."""
    assert np.isnan(expected_auc(np.array([])))
    assert np.isnan(expected_auc(np.array([0.3])))
    assert np.isnan(expected_auc(np.zeros(5)))                 # nobody positive: no pos/neg pair expected
    assert expected_auc(np.array([0.2, 0.8])) == pytest.approx(0.8 * 0.8 / (0.2 * 0.2 + 0.8 * 0.8))


def test_ranks_against_negatives_hand_worked_and_matches_ogb():
    from graphrec.metrics import ranks_against_negatives

    pos = np.array([0.9, 0.5, 0.1])
    neg = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, 0.4], [0.2, 0.3, 0.4]])
    r = ranks_against_negatives(pos, neg)
    ranks = np.array([1.0, 2.5, 4.0])             # a tie counts half
    assert r["mrr"] == pytest.approx((1 / ranks).mean())
    assert (r["hits@1"], r["hits@3"], r["hits@10"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0)
    ogb = pytest.importorskip("ogb.linkproppred")
    import torch

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 200).astype(float), rng.integers(0, 5, (200, 20)).astype(float)   # many ties
    ref = ogb.Evaluator(name="ogbl-citation2").eval({"y_pred_pos": torch.from_numpy(pos), "y_pred_neg": torch.from_numpy(neg)})
    mine = ranks_against_negatives(pos, neg)
    assert mine["mrr"] == pytest.approx(float(ref["mrr_list"].mean()))
    for k in (1, 3, 10):
        assert mine[f"hits@{k}"] == pytest.approx(float(ref[f"hits@{k}_list"].float().mean()))
