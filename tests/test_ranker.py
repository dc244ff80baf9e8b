"""The ranker's pieces on hand-made and tiny simulated data: attention, the history rule, the typed
batch, work done once per room, full ranking, the sampled-softmax objective. Torch only (no DGL)."""
import numpy as np
import pytest
import torch

from graphrec.models.din import DotTargetAttention, TargetAttention
from graphrec.ranking.batches import side_features
from graphrec.ranking.features import PAD, Activity, History


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


def test_din_attention_split_equals_the_mlp_over_the_concatenation():
    """The grid computation is exact: each row's sequence against each of its candidates, the MLP seeing
    [t, h, t - h, t * h]; dot-product attention likewise."""
    torch.manual_seed(0)
    att = TargetAttention(6)
    target, seq = torch.randn(4, 6), torch.randn(3, 5, 6)
    cand = torch.tensor([[0, 3], [1, 1], [2, 0]])                           # [B=3, C=2] rows of target
    t = target[cand].unsqueeze(2).expand(-1, -1, 5, -1)                      # [3, 2, 5, 6]
    h = seq.unsqueeze(1).expand(-1, 2, -1, -1)
    direct = att.score(torch.cat([t, h, t - h, t * h], dim=-1)).squeeze(-1)
    assert torch.allclose(att.scores(target, seq, cand), direct, atol=1e-5)
    dot = DotTargetAttention(6, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    pair_mask = h[..., 0] > 0                                   # a per-candidate mask drops positions for it only
    out = dot.grid(target, seq, mask, cand, pair_mask)
    logits = (dot.query(target[cand]).unsqueeze(2) * dot.key(seq).unsqueeze(1)).sum(-1) / 2.0
    w = torch.softmax(logits.masked_fill(~pair_mask, -1e9), dim=-1) * pair_mask.any(-1, keepdim=True)
    assert torch.allclose(out, (w.unsqueeze(-1) * h).sum(2), atol=1e-5)


def test_history_with_timestamps_is_strictly_before_the_row():
    # user 0 gifted authors 5 (t=10), 6 (t=20), 7 (t=20), 8 (t=30); user 1 nothing; user 2 gifted 9 at t=5
    h = History(np.array([0, 0, 0, 0, 2]), np.array([5, 6, 7, 8, 9]), np.array([10, 20, 20, 30, 5]), 3)
    got = h.lookup(np.array([0, 0, 0, 0, 1, 2, 2]), np.array([5, 10, 21, 100, 50, 5, 6]), 2)
    assert got.tolist() == [[PAD, PAD], [PAD, PAD], [6, 7], [7, 8], [PAD, PAD], [PAD, PAD], [9, PAD]]


def test_history_without_timestamps_hides_the_rows_own_target_only():
    """Untimed data (TikTok): a training row sees the user's other training items, never its own
    target; an evaluation row sees all of them — the same amount of history in both."""
    train_u, train_a = np.array([0, 0, 0, 1]), np.array([3, 5, 7, 2])
    h = History(train_u, train_a, np.zeros(4, np.int64), num_users=3, timed=False)
    rows = h.lookup(np.array([0, 0, 0]), np.zeros(3), 4, exclude=np.array([3, 5, 7]))     # training rows
    for row, own in zip(rows.tolist(), (3, 5, 7)):
        assert own not in row and sorted(x for x in row if x != PAD) == sorted({3, 5, 7} - {own})
    evaluation = h.lookup(np.array([0, 1, 2]), np.array([2, 2, 2]), 4)                      # test rows
    assert evaluation.tolist() == [[3, 5, 7, PAD], [2, PAD, PAD, PAD], [PAD] * 4]
    filled = (rows != PAD).sum(1).mean(), (evaluation[:1] != PAD).sum(1).mean()
    assert filled == (2, 3)                                    # n-1 in training, n at evaluation


def test_author_activity_counts_only_the_past_and_leaves_the_row_out():
    # author 0: impressions at t=0 (pos), 10 (neg), 20 (pos); author 1: t=5 (neg)
    act = Activity(np.array([0, 0, 0, 1]), np.array([0, 10, 20, 5]), np.array([1, 0, 1, 0]), 2, timed=True,
                         windows=[15])
    f = act.features(np.array([0, 0, 0, 1]), np.array([0, 20, 21, 100]))
    # columns per window: log1p(impressions), log1p(positives), smoothed rate; then all time
    assert np.expm1(f[:, 0]).round().tolist() == [0, 1, 2, 0]          # [t-15, t)
    assert np.expm1(f[:, 3]).round().tolist() == [0, 2, 3, 1]          # all before t
    assert np.expm1(f[:, 4]).round().tolist() == [0, 1, 2, 0]
    untimed = Activity(np.array([0, 0, 1]), np.zeros(3), np.ones(3), 2, timed=False, implicit=True)
    g = untimed.features(np.array([0, 0, 1]), np.zeros(3), own=np.array([1.0, 0.0, 1.0]))
    assert np.expm1(g[:, 0]).round().tolist() == [1, 2, 0]             # a training row does not count itself


def test_side_features_skip_truth_and_ids():
    table = {"raw_id": np.arange(4), "region": np.array([0, 2, 1, 2]), "community": np.array([1, 1, 0, 0]),
             "genres": np.eye(4, 3, dtype=np.uint8), "age": np.array([20, 30, 40, 50])}
    cats, dense = side_features(table, skip=["community"])
    assert set(cats) == {"region", "age"} and cats["region"][1] == 3
    assert dense.shape == (4, 3)


# ----------------------------------------------------------------------------- on a tiny world
@pytest.fixture(scope="module")
def tiny():
    """A tiny simulated world with hand-made expansions and Θ (no DGL), and its built ranker."""
    from graphrec.models.stat_forecaster import StatForecaster
    from graphrec.ranking.stage import build_ranker, enabled_modules

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["mfq.dim=8", "mfq.heads=2", "mfq.query_tokens=2", "ranker.mlp=[16]",
                                 "stat_forecast.dim=8", "stat_forecast.heads=2", "ranker.dropout=0.0",
                                 "ranker.expansion_similarity=true"])   # the opt-in cosines exercised too
    art["stat_forecaster"] = StatForecaster.from_config(cfg.stat_forecast, 8)
    mods = enabled_modules(cfg, ds, art)
    model, builder, spec = build_ranker(cfg, ds, mods, art)
    return cfg, ds, model, builder


def test_typed_batch_moves_as_a_whole(tiny):
    _, _, _, builder = tiny
    b = builder.impressions(np.arange(10))
    moved = b.to("cpu")
    assert moved.users.hist["gift"].dtype == torch.long and moved.rooms.tokens["frame"][0].shape[0] == len(b.rooms.seg_author)
    assert moved.labels.shape == (10, len(builder.cfg.tasks)) and moved.cand.shape == (10, 1)


@pytest.mark.parametrize("grad", [False, True])
def test_work_once_per_room_equals_work_per_impression(tiny, grad):
    """MFQ runs once per distinct segment and author pieces once per distinct author; doing the same work
    per impression gives the same logits and the same gradients."""
    _, ds, model, builder = tiny
    idx = np.arange(200)
    shared = builder.impressions(idx)
    assert len(shared.rooms.seg_author) < len(idx) and len(shared.rooms.uniq) < len(idx)
    per = builder.impressions(idx)
    rp = per.rooms
    order = rp.inv.clone()                            # one entry per impression: undo the dedup
    rp.uniq, rp.inv = rp.uniq[order], torch.arange(len(idx))
    rp.cats = {k: v[order] for k, v in rp.cats.items()}
    rp.theta = rp.theta[order]
    rp.exp = {k: v[order] for k, v in rp.exp.items()}
    rp.exp_theta = {k: v[order] for k, v in rp.exp_theta.items()}
    seg = rp.seg_inv.clone()
    rp.seg_author, rp.seg_inv, rp.seg_key = rp.seg_author[seg], torch.arange(len(idx)), rp.seg_key[seg]
    rp.tokens = {m: (x[seg], mk[seg]) for m, (x, mk) in rp.tokens.items()}
    model.eval()
    outs, grads = [], []
    for batch in (shared, per):
        model.zero_grad()
        out = model(batch)
        if grad:
            out.sum().backward()
            grads.append(model.mfq.author_query.weight.grad.clone())
        outs.append(out.detach())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    if grad:
        assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_full_ranking_equals_pairwise_scoring(tiny):
    from graphrec.ranking.train import RankerScorer

    _, ds, model, builder = tiny
    scorer = RankerScorer(model, builder, pair_chunk=97)          # odd chunks: rows split across chunks
    users, t = np.array([3, 17, 42]), int(ds.impressions["time"][-1])
    full = scorer.rank(users, t)
    A = ds.num_authors
    pairwise = scorer.pair_scores(np.repeat(users, A), np.tile(np.arange(A), len(users)), np.full(len(users) * A, t))
    assert full.shape == (3, A)
    assert np.allclose(full.numpy().ravel(), pairwise, atol=1e-4)


def test_sampled_negatives_never_equal_the_positive_and_carry_logq(tiny):
    from graphrec.ranking.batches import PairSet
    from graphrec.ranking.train import RankerObjective

    cfg, ds, model, builder = tiny
    builder.cfg.negatives, builder.cfg.uniform_share = 30, 0.5
    imp = ds.impressions
    builder.known = PairSet(imp["user"], imp["author"], ds.num_authors)
    try:
        idx = np.arange(100)
        cand, valid, logq = builder.sample_negatives(idx, np.random.default_rng(0))
        assert (cand[:, 0] == imp["author"][idx]).all() and valid[:, 0].all()
        assert not (valid[:, 1:] & (cand[:, 1:] == cand[:, :1])).any()          # the positive itself: masked
        assert not (valid & builder.known.contains(imp["user"][idx][:, None], cand))[:, 1:].any()
        q = 0.5 / ds.num_authors + 0.5 * builder.positive_share[cand]
        assert np.allclose(logq, np.log(q), atol=1e-6)
        batch = builder.training(idx, np.random.default_rng(0))
        assert batch.cand.shape == (100, 31) and len(batch.rooms) == 100 * 31
        heads = model.spec.tasks
        logits = torch.randn(100, 31, len(heads))
        objective = RankerObjective(heads, ds.labels, {t: 0.0 for t in ds.labels}, True, "gift")
        corrected = objective(logits, batch)
        s = logits[:, :, heads.index("gift")] - batch.logq
        s = s.masked_fill(~batch.valid, float("-inf"))
        assert corrected.item() == pytest.approx(torch.nn.functional.cross_entropy(s, torch.zeros(100).long()).item())
        batch.logq = None
        assert objective(logits, batch).item() != pytest.approx(corrected.item())
    finally:
        builder.cfg.negatives, builder.known = 0, None


def test_the_candidate_is_never_evidence_for_itself(tiny):
    """A user-side author expansion that contains the candidate scores as if that position were padding."""
    _, ds, model, builder = tiny
    model.eval()
    u, a, t = np.array([5]), np.array([7]), np.array([int(ds.impressions["time"][-1])])
    batch = builder.pairs(u, a, t)
    for m in ("u2a2u2a", "u2a2a"):
        batch.users.exp[m][0, 0] = 7                          # the candidate shows up in its own user's expansion
        batch.users.exp_theta[m][0, 0] = builder.store.rows("author", torch.tensor([7]), ["theta"])["theta"][0]
    with torch.no_grad():
        with_target = model(batch)
        for m in ("u2a2u2a", "u2a2a"):
            batch.users.exp[m][0, 0] = PAD
        padded = model(batch)
    assert torch.allclose(with_target, padded, atol=1e-6)


def test_without_user_ids_there_is_no_user_table(tiny):
    """``ranker.user_id: false``: no per-user embedding is allocated and scoring does not need one."""
    import dataclasses

    from graphrec.models.ranker import Ranker

    _, _, model, builder = tiny
    spec = dataclasses.replace(model.spec, user_id=False)
    plain = Ranker(spec)
    assert plain.user_emb is None and model.user_emb is not None
    saved = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert saved >= spec.num_users * spec.id_dim                  # the table (and its input widths) are gone
    assert plain(builder.impressions(np.arange(8))).shape == (8, 1, len(spec.tasks))


def test_user_activity_counts_the_users_past_impressions_and_gifts(tiny):
    """The user side carries the user's impressions and gifts strictly before the row (no future)."""
    _, ds, model, builder = tiny
    imp = ds.impressions
    idx = np.arange(len(imp["user"]))[::97]
    batch = builder.impressions(idx)
    assert model.spec.user_activity_dim == batch.users.activity.shape[1]
    n_all, g_all = np.expm1(batch.users.activity[:, -3:-1].numpy()).round().T      # all time before the row
    for i, r in enumerate(idx):
        before = (imp["user"] == imp["user"][r]) & (imp["time"] < imp["time"][r])
        assert n_all[i] == before.sum() and g_all[i] == imp["gift"][before].sum()
    assert n_all.max() > 0 and g_all.max() > 0                  # the check is not vacuous


def test_skipped_history_holds_the_users_earlier_impressions_without_a_gift():
    """``ranker.histories: [gift, skipped]``: the second sequence is what the viewer saw strictly before
    the row and did not gift (the latest ``hist_len``), so gifted and passed-over rooms are told apart."""
    from graphrec.errors import ConfigError
    from graphrec.ranking.stage import build_ranker, enabled_modules, history_names

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.histories=[main, skipped]", "ranker.hist_len=6", "ranker.use_mfq=false",
                                 "ranker.mlp=[16]"])
    model, builder, _ = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
    assert list(model.hist_att) == ["gift", "skipped"]
    imp = ds.impressions
    idx = np.arange(len(imp["user"]))[::37]
    hist = builder.impressions(idx).users.hist
    for i, r in enumerate(idx):
        before = (imp["user"] == imp["user"][r]) & (imp["time"] < imp["time"][r])
        for name, label in (("gift", 1), ("skipped", 0)):
            rows = np.flatnonzero(before & (imp["gift"] == label))
            rows = rows[np.lexsort((rows, imp["time"][rows]))][-6:]          # the latest six, oldest first
            got = hist[name][i].numpy()
            assert sorted(got[got != PAD].tolist()) == sorted(imp["author"][rows].tolist())
    assert (hist["skipped"] != PAD).sum() > (hist["gift"] != PAD).sum() > 0     # not vacuous
    implicit = type("D", (), {"main_label": "click", "labels": ["click"], "implicit": True})()
    with pytest.raises(ConfigError, match="skipped.*implicit"):
        history_names(["main", "skipped"], implicit)


def test_rows_before_the_first_snapshot_see_no_graph(tiny):
    """A row before the first graph snapshot's cut sees the user and the author side as nodes without gifts
    would (zero Θ, no expansions); a later row reads its snapshot's features."""
    from graphrec.data.split import GraphSnapshots

    _, ds, model, builder = tiny
    t = ds.impressions["time"]
    idx = np.arange(0, len(t), 50)
    cut = int(np.median(t[idx]))
    saved = builder.snapshots
    builder.snapshots = GraphSnapshots([cut], [np.zeros(len(t), bool)])
    try:
        cut_batch = builder.impressions(idx)
    finally:
        builder.snapshots = saved
    seen = builder.impressions(idx)
    hidden = torch.from_numpy(t[idx] < cut)
    assert hidden.any() and (~hidden).any()
    up, sup = cut_batch.users, seen.users
    assert (up.theta[hidden] == 0).all() and torch.equal(up.theta[~hidden], sup.theta[~hidden])
    for m in up.exp:
        assert (up.exp[m][hidden] == PAD).all() and torch.equal(up.exp[m][~hidden], sup.exp[m][~hidden])
        assert (up.exp_theta[m][hidden] == 0).all()
        assert (sup.exp[m][hidden] != PAD).any()              # there was something to hide
    rp, srp = cut_batch.rooms, seen.rooms                     # the room side, one candidate per row
    assert (rp.theta[rp.inv][hidden] == 0).all()
    assert torch.equal(rp.theta[rp.inv][~hidden], srp.theta[srp.inv][~hidden])
    for m in rp.exp:
        assert (rp.exp[m][rp.inv][hidden] == PAD).all() and (srp.exp[m][srp.inv][hidden] != PAD).any()


def test_popularity_offset_adds_the_authors_rate_logit_to_the_main_head_only(tiny):
    """``ranker.popularity_offset``: the main head's logit is the network's plus w·logit(the author's
    all-time smoothed positive rate before the row); the other heads are untouched; the full ranking
    still equals pairwise scoring."""
    import dataclasses

    from graphrec.models.ranker import Ranker
    from graphrec.ranking.train import RankerScorer

    _, ds, model, builder = tiny
    h = model.spec.tasks.index(ds.main_label)
    spec = dataclasses.replace(model.spec, popularity_offset_head=h)
    with_offset = Ranker(spec)
    missing = with_offset.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert missing == ["offset_weight"]
    with torch.no_grad():
        with_offset.offset_weight.fill_(0.7)
    model.eval(), with_offset.eval()
    idx = np.arange(50)
    batch = builder.impressions(idx)
    rate = torch.from_numpy(builder.activity.features(ds.impressions["author"][idx], ds.impressions["time"][idx]))[:, -1]
    diff = (with_offset(batch) - model(batch)).detach()[:, 0, :]
    expected = 0.7 * torch.logit(rate.clamp(1e-4, 1 - 1e-4))
    assert torch.allclose(diff[:, h], expected, atol=1e-5)
    assert diff[:, [i for i in range(diff.shape[1]) if i != h]].abs().max() < 1e-6
    assert expected.std() > 0.05                                   # the test has teeth: rates differ
    scorer = RankerScorer(with_offset, builder, pair_chunk=61)
    users, t = np.array([2, 9]), int(ds.impressions["time"][-1])
    A = ds.num_authors
    pairwise = scorer.pair_scores(np.repeat(users, A), np.tile(np.arange(A), 2), np.full(2 * A, t))
    assert np.allclose(scorer.rank(users, t).numpy().ravel(), pairwise, atol=1e-4)


def test_user_activity_as_a_bias_shifts_all_of_a_users_candidates_alike(tiny):
    """``ranker.user_activity_bias``: the user activity leaves the tower and becomes a per-head bias, so
    changing it moves every candidate of a user by the same logit (the per-user order cannot change),
    while in the tower it moves candidates differently; the full ranking still equals pairwise scoring."""
    import dataclasses

    from graphrec.models.ranker import Ranker
    from graphrec.ranking.train import RankerScorer

    _, ds, model, builder = tiny
    torch.manual_seed(0)
    biased = Ranker(dataclasses.replace(model.spec, user_activity_bias=True)).eval()
    model.eval()
    assert biased.user_activity is None and biased.user_bias is not None
    assert biased.widths[0] == model.widths[0] - model.spec.id_dim     # the activity left the tower's input
    users, t = np.array([2, 9]), int(ds.impressions["time"][-1])
    up, rooms = builder.rank_users(users, t), builder.all_rooms(t)
    other = dataclasses.replace(up, activity=up.activity + torch.rand(up.activity.shape, generator=torch.Generator().manual_seed(0)))

    def shift(m):                             # every author's logits: changed activity minus the real one
        with torch.no_grad():
            ar = m.author_side(rooms)
            return m.logits(m.user_side(other), ar, None) - m.logits(m.user_side(up), ar, None)

    d_b, d_t = shift(biased), shift(model)
    assert d_b.abs().max() > 1e-3                                     # the bias does move the logits
    assert (d_b - d_b[:, :1]).abs().max() < 1e-5                       # ... all of a user's authors alike
    assert (d_t - d_t[:, :1]).abs().max() > 1e-3                       # in the tower it reorders them
    scorer = RankerScorer(biased, builder, pair_chunk=61)
    A = ds.num_authors
    pairwise = scorer.pair_scores(np.repeat(users, A), np.tile(np.arange(A), 2), np.full(2 * A, t))
    assert np.allclose(scorer.rank(users, t).numpy().ravel(), pairwise, atol=1e-4)


def test_popularity_offset_refuses_implicit_data_and_missing_activity():
    from types import SimpleNamespace

    from graphrec.errors import UserError
    from graphrec.ranking.stage import offset_head

    sec = SimpleNamespace(popularity_offset=True)
    with pytest.raises(UserError, match="implicit data"):
        offset_head(sec, SimpleNamespace(implicit=True), {"activity": True}, ["gift"])
    with pytest.raises(UserError, match="use_activity"):
        offset_head(sec, SimpleNamespace(implicit=False), {"activity": False}, ["gift"])
    assert offset_head(SimpleNamespace(popularity_offset=False), None, {}, []) == -1


def test_value_codes_one_per_rating_or_quantile_bins():
    from graphrec.ranking.features import ValueCodes

    ratings = ValueCodes(np.array([1, 2, 3, 4, 5, 4, 4, 3], dtype=np.float32))
    assert ratings.num_codes == 6                                   # five ratings and padding
    assert ratings(np.array([1, 2, 3, 4, 5])).tolist() == [1, 2, 3, 4, 5]
    gifts = np.random.default_rng(0).lognormal(size=5000)
    codes = ValueCodes(gifts, max_codes=8)
    counts = np.bincount(codes(gifts), minlength=codes.num_codes)
    assert counts[0] == 0 and len(counts) == 9 and counts[1:].min() > 0.8 * len(gifts) / 8
    mostly_none = np.where(np.arange(5000) % 10 == 0, gifts, 0.0)             # 90% impressions without a gift
    codes = ValueCodes(mostly_none, max_codes=8)
    counts = np.bincount(codes(mostly_none), minlength=codes.num_codes)
    assert codes(np.zeros(1))[0] == 1 and counts[1] == 4500 and len(counts) == 9 and counts[2:].min() > 0.8 * 500 / 7


def test_history_values_carry_what_the_viewer_made_of_each_entry():
    """``ranker.history_values``: each history entry comes with its impression's value code (the rating on
    MovieLens, the gift value here), aligned with the ids; the code's embedding moves the score; data
    without timestamps or values is refused."""
    from types import SimpleNamespace

    from graphrec.errors import UserError
    from graphrec.ranking.stage import build_ranker, enabled_modules, history_value_codes

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.histories=[main, impression]", "ranker.hist_len=6", "ranker.use_mfq=false",
                                 "ranker.mlp=[16]", "ranker.history_values=true"])
    model, builder, spec = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
    codes = history_value_codes(cfg.ranker, ds)
    assert spec.history_value_codes == codes.num_codes > 2
    imp = ds.impressions
    idx = np.arange(len(imp["user"]))[::41]
    up = builder.impressions(idx).users
    for i, r in enumerate(idx):
        before = (imp["user"] == imp["user"][r]) & (imp["time"] < imp["time"][r])
        for name, rows in (("gift", before & (imp["gift"] == 1)), ("impression", before)):
            rows = np.flatnonzero(rows)
            rows = rows[np.lexsort((rows, imp["time"][rows]))][-6:]
            ids, code = up.hist[name][i].numpy(), up.hist_code[name][i].numpy()
            assert (code[ids == PAD] == 0).all() and (code[ids != PAD] > 0).all()
            assert sorted(zip(ids[ids != PAD].tolist(), code[ids != PAD].tolist())) == \
                sorted(zip(imp["author"][rows].tolist(), codes(imp["value"][rows]).tolist()))
    assert len(np.unique(up.hist_code["impression"])) > 2                    # gifts and non-gifts differ
    model.eval()
    batch = builder.impressions(idx)
    with torch.no_grad():
        base = model(batch)
        row = int(np.flatnonzero((batch.users.hist_code["impression"] > 0).any(1).numpy())[0])
        col = int(np.flatnonzero(batch.users.hist_code["impression"][row].numpy() > 0)[0])
        batch.users.hist_code["impression"][row, col] = codes.num_codes - 1 if \
            batch.users.hist_code["impression"][row, col] != codes.num_codes - 1 else 1
        moved = model(batch)
    assert not torch.allclose(base[row], moved[row]) and torch.equal(base[row + 1:], moved[row + 1:])
    assert torch.equal(model.hist_value["gift"].weight[0], torch.zeros(spec.id_dim))
    sec = SimpleNamespace(history_values=True)
    with pytest.raises(UserError, match="history_values.*no timestamps"):
        history_value_codes(sec, SimpleNamespace(timed=False, impressions={"value": None}, name="tiktok"))
    with pytest.raises(UserError, match="no 'value'"):
        history_value_codes(sec, SimpleNamespace(timed=True, impressions={}, name="x"))


def test_weight_decay_leaves_the_target_attentions_alive():
    """The target attentions' scorers (DIN's MLP over the histories, GIE's query/key over the expansions) carry
    no weight decay: under Adam's coupled L2 their tiny early gradients lose to the decay term and they shrink
    to zero, leaving plain means (a trained default-world ranker had every attention weight below 1e-29). The
    control shows the collapse with them decayed; the ranker's own groups keep them."""
    import numpy as np

    from graphrec.fit import FitSpec, fit
    from graphrec.models.din import attention_parameters
    from graphrec.ranking.stage import build_ranker, enabled_modules, parameter_groups
    from graphrec.ranking.train import RankerObjective, RankerTask

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.use_mfq=false", "ranker.mlp=[16]", "ranker.histories=[gift, click]",
                                 "ranker.weight_decay=1.0e-2", "ranker.embedding_decay=1.0e-2"])
    train = np.flatnonzero(ds.impressions["split"] == 0)
    norms = {}
    for name in ("control", "ranker"):
        model, builder, spec = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
        att = attention_parameters(model)
        assert {n for n, p in model.named_parameters() if any(p is a for a in att)} >= {
            "hist_att.gift.score.0.weight", "exp_att.u2a2u2a.query.weight", "exp_att.a2u2a.key.weight"}
        before = torch.cat([p.detach().flatten() for p in att]).norm()
        groups = parameter_groups(model, cfg.ranker)
        if name == "control":                              # the attentions in the decayed group, as before
            groups = [groups[0], {"params": groups[1]["params"] + groups[2]["params"]}]
        task = RankerTask(builder, train, 64, RankerObjective(spec.tasks, ds.labels, {t: 1.0 for t in ds.labels},
                                                             False, None))
        fit(model, task, FitSpec(epochs=5, lr=5.0e-3, weight_decay=cfg.ranker.weight_decay), parameters=groups)
        norms[name] = float(torch.cat([p.detach().flatten() for p in att]).norm() / before)
    assert norms["control"] < 0.15, norms                  # the failure mode: shrinking towards zero
    assert norms["ranker"] > 0.5, norms


def test_expansion_cosines_compare_the_candidate_with_each_user_side_expansion(tiny):
    """``ranker.expansion_similarity``: per user-side author expansion, the cosine of the candidate's Θ with the
    expansion's mean direction (its own positions left out) and with the attention pooling, as pair inputs."""
    import torch.nn.functional as F

    from graphrec.models.ranker import expansion_cosines

    torch.manual_seed(0)
    seq, target = torch.randn(2, 4, 8), torch.randn(1, 3, 8)
    ids = torch.tensor([[5, 6, 9, -1], [-1, -1, -1, -1]])
    target_ids = torch.tensor([[9, 1, 2]])
    seq[0, 2] = target[0, 0]                                  # candidate 9 is the expansion's third entry
    pooled = torch.randn(2, 3, 8)
    got = expansion_cosines(target, target_ids, seq, ids, pooled)
    assert got.shape == (2, 3, 2)
    for c in range(3):
        keep = [k for k in range(3) if ids[0, k] != target_ids[0, c]]
        direction = F.normalize(F.normalize(seq[0, keep], dim=-1).sum(0), dim=0)
        want = float(F.normalize(target[0, c], dim=0) @ direction)
        assert got[0, c, 0].item() == pytest.approx(want, abs=1e-5)
        assert got[0, c, 1].item() == pytest.approx(float(F.cosine_similarity(target[0, c], pooled[0, c], dim=0)), abs=1e-5)
    assert (got[1, :, 0] == 0).all()                          # an empty expansion: no direction
    _, ds, model, builder = tiny
    assert model.spec.expansion_similarity and model.pair_seqs == ["u2a2u2a", "u2a2a"]
    d, td, H = model.spec.id_dim, model.spec.theta_dim, len(model.spec.histories)
    assert model.widths[2] == d * H + (td + 2) * len(model.pair_seqs)    # two cosines each, into the tower


def test_reinit_ids_draws_every_id_table_afresh_from_the_epochs_seed_and_nothing_else(tiny):
    """``ranker.reinit_ids`` (MEDA): the user and author ids, MFQ's per-author queries (and a −GraphCL ranker's
    own Θ) are drawn again, the same for the same seed and epoch; the tower and attentions keep their weights."""
    import copy
    import dataclasses

    from graphrec.models.ranker import Ranker
    from graphrec.ranking.stage import id_reinit

    _, _, model, _ = tiny
    net = copy.deepcopy(model)
    tables = {id(w) for w, _ in net.id_tables()}
    assert {id(net.user_emb.weight), id(net.author_emb.weight), id(net.mfq.author_query.weight)} <= tables
    before = {k: v.clone() for k, v in net.state_dict().items()}
    returned = id_reinit(net, seed=3)(2)
    assert {id(p) for p in returned} == tables
    again = copy.deepcopy(model)
    id_reinit(again, seed=3)(2)
    for name, p in net.named_parameters():
        if id(p) in tables:
            assert not torch.equal(p, before[name]) and torch.equal(p, dict(again.named_parameters())[name])
        else:
            assert torch.equal(p, before[name]), name
    other = copy.deepcopy(model)
    id_reinit(other, seed=3)(3)                                   # another epoch: another draw
    assert not torch.equal(other.author_emb.weight, net.author_emb.weight)
    own = Ranker(dataclasses.replace(model.spec, theta_pretrained=False))
    assert any(w is own.theta.weight for w, _ in own.id_tables())


def test_validation_users_scores_a_fixed_sample_of_whole_users():
    """``ranker.validation_users``: the per-epoch check scores every validation impression of a fixed seeded
    sample of users and nothing else (whole users, so GAUC stays a per-user AUC), the same sample each time."""
    from graphrec.evaluation import impression_metrics, split_mask
    from graphrec.ranking.stage import build_ranker, enabled_modules
    from graphrec.ranking.train import RankerScorer, validation, validation_sample

    from .conftest import ranker_world

    cfg, ds, art = ranker_world(["ranker.use_mfq=false", "ranker.mlp=[16]", "simulate.gift_rate=0.2"])
    model, builder, _ = build_ranker(cfg, ds, enabled_modules(cfg, ds, art), art)
    val = split_mask(ds, "val")
    users = np.unique(ds.impressions["user"][val])
    sample = validation_sample(ds, len(users) // 3, seed=5)
    assert np.array_equal(sample, validation_sample(ds, len(users) // 3, seed=5))
    assert len(sample) == len(users) // 3 and np.isin(sample, users).all()
    assert validation_sample(ds, 0, 5) is None and validation_sample(ds, len(users), 5) is None

    class Counting(RankerScorer):
        scored = []

        def impression_scores(self, idx):
            Counting.scored.append(np.asarray(idx))
            return super().impression_scores(idx)

    validate = validation(lambda: Counting(model, builder), ds, np.flatnonzero(val), cfg.eval.k, cfg.eval.negatives,
                          1, users=sample)
    got = validate(model, 0)
    rows = np.flatnonzero(val & np.isin(ds.impressions["user"], sample))
    assert np.array_equal(np.sort(np.concatenate(Counting.scored)), rows)
    want = impression_metrics(RankerScorer(model, builder), ds, "val", cfg.eval.negatives, 1, idx=rows)[ds.main_label]
    assert got["gauc"] == pytest.approx(want["gauc"]) and got["auc"] == pytest.approx(want["auc"])
    everyone = validation(lambda: RankerScorer(model, builder), ds, np.flatnonzero(val), cfg.eval.k,
                          cfg.eval.negatives, 1)(model, 0)
    assert everyone["auc"] != pytest.approx(got["auc"])
