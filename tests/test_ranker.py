import numpy as np
import pytest
import torch

from graphrec.gie.metapath import PAD
from graphrec.models.din import TargetAttention
from graphrec.models.ranker import Ranker, RankerSpec
from graphrec.ranking.batches import GiftHistory, side_features


def test_target_attention_gives_padding_exactly_zero_weight():
    torch.manual_seed(0)
    att = TargetAttention(8)
    target = torch.randn(3, 8)
    seq = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    w = att.weights(target, seq, mask)
    assert (w[~mask] == 0).all()
    assert torch.allclose(w[:2].sum(1), torch.ones(2))
    assert (w[2] == 0).all()                                   # nothing valid: zero weights, no NaN
    pooled = att(target, seq, mask)
    junk = seq.clone()
    junk[~mask] = 1e4                                          # padded values cannot leak into the output
    assert torch.allclose(att(target, junk, mask), pooled)
    assert torch.equal(pooled[2], torch.zeros(8))
    # the score MLP sees [t, h, t - h, t * h]
    assert att.score[0].in_features == 4 * 8


def test_gift_history_is_strictly_before_the_impression():
    # user 0 gifted authors 5 (t=10), 6 (t=20), 7 (t=20), 8 (t=30); user 1 nothing; user 2 gifted 9 at t=5
    h = GiftHistory(np.array([0, 0, 0, 0, 2]), np.array([5, 6, 7, 8, 9]), np.array([10, 20, 20, 30, 5]), 3)
    got = h.before(np.array([0, 0, 0, 0, 1, 2, 2]), np.array([5, 10, 21, 100, 50, 5, 6]), 2)
    assert got.tolist() == [[PAD, PAD], [PAD, PAD], [6, 7], [7, 8], [PAD, PAD], [PAD, PAD], [9, PAD]]


def test_side_features_skip_truth_and_ids():
    table = {"raw_id": np.arange(4), "region": np.array([0, 2, 1, 2]), "community": np.array([1, 1, 0, 0]),
             "genres": np.eye(4, 3, dtype=np.uint8), "age": np.array([20, 30, 40, 50])}
    cats, dense = side_features(table, skip=["community"])
    assert set(cats) == {"region", "age"} and cats["region"][1] == 3
    assert dense.shape == (4, 3)


def tiny_spec(**kw):
    base = dict(num_users=10, num_authors=6, tasks=["click", "gift"], user_cats={"region": 3}, author_dense=2,
                id_dim=8, theta_dim=4, mlp=[16], dropout=0.0)
    base.update(kw)
    return RankerSpec(**base)


def tiny_batch(B=5, with_gie=False, theta=False):
    g = torch.Generator().manual_seed(0)
    b = {"user": torch.randint(0, 10, (B,), generator=g), "author": torch.randint(0, 6, (B,), generator=g),
         "user_cat": {"region": torch.randint(0, 3, (B,), generator=g)}, "author_cat": {},
         "author_dense": torch.randn(B, 2, generator=g), "hist": torch.tensor([[1, 2, PAD]] * B),
         "labels": torch.randint(0, 2, (B, 2), generator=g).float()}
    if with_gie:
        b["exp"] = {"u2a2u": torch.tensor([[3, PAD]] * B), "a2a": torch.tensor([[PAD, PAD]] * B)}
        if theta:
            b["theta_user"], b["theta_author"] = torch.randn(B, 4), torch.randn(B, 4)
            b["exp_theta"] = {m: torch.randn(B, 2, 4) for m in b["exp"]}
    return b


def test_plain_din_ranker_and_loss():
    model = Ranker(tiny_spec())
    b = tiny_batch()
    logits = model(b)
    assert logits.shape == (5, 2)
    loss = model.loss(logits, b["labels"], torch.tensor([1.0, 2.0]))
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["labels"], reduction="none").mean(0)
    assert loss.item() == pytest.approx((per[0] + 2 * per[1]).item(), rel=1e-6)
    loss.backward()
    assert model.user_emb.weight.grad is not None
    assert not hasattr(model, "exp_att") and model.mfq is None


@pytest.mark.parametrize("pretrained", [True, False])
def test_gie_ranker_with_pretrained_or_learned_theta(pretrained):
    model = Ranker(tiny_spec(metapaths=["u2a2u", "a2a"], theta_pretrained=pretrained))
    b = tiny_batch(with_gie=True, theta=pretrained)
    out = model(b)
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    assert hasattr(model, "theta") == (not pretrained)      # −GraphCL: the ranker learns Θ itself
