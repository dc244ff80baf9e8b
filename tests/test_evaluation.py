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
