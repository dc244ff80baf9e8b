import numpy as np
import pytest
import scipy.sparse as sp
import torch

from graphrec.fit import FitSpec, fit
from graphrec.models.lightgcn import BPRTask, LightGCN, normalized_adjacency
from graphrec.evaluation import full_ranking


def test_normalized_adjacency_hand_worked():
    # user 0 - author 0, user 1 - authors 0 and 1: degrees u0=1, u1=2, a0=2, a1=1
    adj = normalized_adjacency(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 2).to_dense()
    assert adj[0, 2] == pytest.approx(1 / np.sqrt(1 * 2))
    assert adj[1, 2] == pytest.approx(1 / np.sqrt(2 * 2))
    assert adj[1, 3] == pytest.approx(1 / np.sqrt(2 * 1))
    assert torch.allclose(adj, adj.T) and adj[0, 1] == 0


def test_lightgcn_learns_communities_better_than_popularity():
    rng = np.random.default_rng(0)
    U, A = 300, 60
    users = np.repeat(np.arange(U), 6)
    authors = (users % 6) * 10 + rng.integers(0, 10, len(users))           # 6 communities of 10 authors
    held = rng.random(len(users)) < 0.2
    key = np.unique(users * A + authors)
    tr = sp.csr_matrix((np.ones(len(key)), (key // A, key % A)), shape=(U, A))
    torch.manual_seed(0)
    model = LightGCN(U, A, normalized_adjacency(users[~held], authors[~held], U, A), dim=16, layers=2)
    fit(model, BPRTask(users[~held], authors[~held], A, batch_size=256, reg=1e-4), FitSpec(epochs=40, lr=1e-2))
    with torch.no_grad():
        eu, ea = model.split()
    train = sp.csr_matrix((np.ones((~held).sum()), (users[~held], authors[~held])), shape=(U, A))
    train.data[:] = 1
    test = sp.csr_matrix((np.ones(held.sum()), (users[held], authors[held])), shape=(U, A))
    test = test - test.multiply(train)                                      # only new pairs
    test.eliminate_zeros()
    lg = full_ranking(lambda u: (eu[torch.from_numpy(u)] @ ea.T).detach(), train, test, k=10)
    pop = torch.from_numpy(np.asarray(train.sum(0)).ravel().astype(np.float32))
    base = full_ranking(lambda u: pop.expand(len(u), -1).clone(), train, test, k=10)
    assert lg["recall@10"] > base["recall@10"] + 0.2
    assert tr.nnz > 0
