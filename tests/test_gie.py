import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from graphrec.data.split import time_split
from graphrec.gie.graph import GiftGraph, build_gift_graph, build_graph, gift_edges, graph_fingerprint
from graphrec.gie.metapath import (METAPATHS, PAD, CSRWalker, DGLWalker, expand, load_expansions,
                                   offline_expansions, save_expansions)
from graphrec.gie.swing import swing, top_k_per_source


def brute_swing(users, authors, num_authors, alpha):
    I, U = {}, {}
    for u, a in zip(users, authors):
        I.setdefault(u, set()).add(a)
        U.setdefault(a, set()).add(u)
    out = {}
    for i, j in itertools.permutations(range(num_authors), 2):
        common = sorted(U.get(i, set()) & U.get(j, set()))
        s = sum(1.0 / (alpha + len(I[p] & I[q])) for p, q in itertools.combinations(common, 2))
        if s:
            out[(i, j)] = s
    return out


def test_swing_hand_worked():
    # users 0 and 1 both gifted authors 0, 1 and 2; user 2 gifted 0 and 1; user 3 only author 3.
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    authors = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3])
    s, d, score = swing(users, authors, 4, alpha=1.0)
    got = {(int(a), int(b)): float(c) for a, b, c in zip(s, d, score)}
    # pair (0,1): user pairs {0,1}: |I0∩I1| = 3 -> 1/4; {0,2}: 2 -> 1/3; {1,2}: 2 -> 1/3
    assert got[(0, 1)] == pytest.approx(1 / 4 + 1 / 3 + 1 / 3)
    assert got[(1, 0)] == got[(0, 1)]
    # pair (0,2): only users 0 and 1 share it -> 1/4
    assert got[(0, 2)] == pytest.approx(1 / 4)
    assert not any(3 in k for k in got)                       # author 3 has a single gifter
    assert got == pytest.approx(brute_swing(users, authors, 4, 1.0))


def test_swing_matches_formula_on_random_graph_and_caps():
    rng = np.random.default_rng(0)
    u, a = rng.integers(0, 40, 300), rng.integers(0, 15, 300)
    s, d, score = swing(u, a, 15, alpha=0.5, max_authors_per_user=10**6, max_users_per_author=10**6)
    assert {(int(x), int(y)): float(z) for x, y, z in zip(s, d, score)} == pytest.approx(brute_swing(u, a, 15, 0.5))
    # with caps, every user keeps at most 3 authors: scores equal the formula on that capped graph
    s2, d2, sc2 = swing(u, a, 15, max_authors_per_user=3, max_users_per_author=10**6, seed=1)
    assert len(s2) < len(s) and (sc2 > 0).all()


def test_top_k_per_source():
    src = np.array([0, 0, 0, 1, 1])
    dst = np.array([1, 2, 3, 0, 2])
    sc = np.array([0.5, 0.9, 0.5, 0.1, 0.2], np.float32)
    s, d, c = top_k_per_source(src, dst, sc, 2)
    assert list(zip(s.tolist(), d.tolist())) == [(0, 2), (0, 1), (1, 2), (1, 0)]


def test_graph_uses_training_edges_only(tiny_cfg):
    from data_prep.simulate import simulate

    ds = simulate(tiny_cfg.simulate, seed=0)
    imp = ds.impressions
    imp["split"] = time_split(imp["time"], 0.1, 0.2)
    g = build_gift_graph(ds, "gift", {"a2a_topk": 5})
    assert set(g.ntypes) == {"user", "author"}
    assert {et for _, et, _ in g.canonical_etypes} == {"u2a", "a2u", "a2a"}
    u, a = g.edges(etype="u2a")
    in_graph = set(zip(u.tolist(), a.tolist()))
    train = imp["split"] == 0
    gifts = imp["gift"] == 1
    train_pairs = set(zip(imp["user"][train & gifts].tolist(), imp["author"][train & gifts].tolist()))
    later_only = set(zip(imp["user"][~train & gifts].tolist(), imp["author"][~train & gifts].tolist())) - train_pairs
    assert in_graph == train_pairs and later_only and not (in_graph & later_only)
    # edge data: count of positive training impressions of the pair; reverse edges carry the same data
    eu, ea, count, value = gift_edges(ds, "gift", train)
    assert g.edge_data["u2a"]["count"].sum().item() == (train & gifts).sum()
    ru, ra = g.edges(etype="a2u")
    assert torch.equal(ru, a) and torch.equal(ra, u)
    # a2a degrees are counts of its edge list, with at most k per list; cut to k = 1, some author is on
    # several lists (in-degree != out-degree)
    top1 = build_gift_graph(ds, "gift", {"a2a_topk": 1})
    for k, graph in ((5, g), (1, top1)):
        s, d = (x.numpy() for x in graph.edges(etype="a2a"))
        assert graph.in_degrees(etype="a2a").tolist() == np.bincount(d, minlength=ds.num_authors).tolist()
        assert graph.out_degrees(etype="a2a").tolist() == np.bincount(s, minlength=ds.num_authors).tolist()
        assert graph.out_degrees(etype="a2a").max() <= k
    assert not torch.equal(top1.in_degrees(etype="a2a"), top1.out_degrees(etype="a2a"))
    # swing links two authors only through a pair of users who both gifted each of them in training
    gifters = {}
    for pu, pa in train_pairs:
        gifters.setdefault(pa, set()).add(pu)
    s, d = (x.tolist() for x in g.edges(etype="a2a"))
    assert s and all(i != j and len(gifters[i] & gifters[j]) >= 2 for i, j in zip(s, d))
    assert "score" in g.edge_data["a2a"]


def toy_graph():
    # 5 users, 4 authors, uneven degrees, a dead end (author 3 has no gifters) and a2a lists
    u = np.array([0, 0, 1, 1, 1, 2, 3, 4])
    a = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    g = build_graph(u, a, 5, 4, swing_cfg={"a2a_topk": 3})
    return GiftGraph({"u2a": g.edges(etype="u2a"), "a2u": g.edges(etype="a2u"),
                      "a2a": (torch.tensor([0, 0, 1, 2, 2, 3]), torch.tensor([1, 2, 0, 0, 3, 2]))},
                     {"user": 5, "author": 4})


def exact_endpoint_distribution(g, seed_type, etypes, seed):
    """Row-stochastic transition products; an extra last column collects dead ends."""
    vec = np.zeros(g.num_nodes(seed_type) + 1)
    vec[seed] = 1.0
    for et in etypes:
        s, d = (x.numpy() for x in g.edges(etype=et))
        src_t, _, dst_t = g.to_canonical_etype(et)
        n_src, n_dst = g.num_nodes(src_t), g.num_nodes(dst_t)
        T = np.zeros((n_src + 1, n_dst + 1))
        np.add.at(T, (s, d), 1.0)
        deg = T[:n_src].sum(axis=1)
        T[:n_src][deg > 0] /= deg[deg > 0, None]
        T[np.flatnonzero(deg == 0), n_dst] = 1.0            # dead end
        T[n_src, n_dst] = 1.0                               # dead stays dead
        vec = vec @ T
    return vec


def walkers(g):
    """Both walk back ends where DGL is installed; the plain-PyTorch one alone on a DGL-free machine."""
    try:
        import dgl  # noqa: F401
    except ImportError:
        return [CSRWalker(g)]
    return [DGLWalker(g), CSRWalker(g)]


@pytest.mark.parametrize("name", list(METAPATHS))
def test_both_backends_sample_the_exact_endpoint_distribution(name):
    g = toy_graph()
    seed_type, etypes = METAPATHS[name].seed, METAPATHS[name].etypes
    n = 20000
    for walker in walkers(g):
        gen = torch.Generator().manual_seed(0)
        for seed in range(g.num_nodes(seed_type)):
            exact = exact_endpoint_distribution(g, seed_type, etypes, seed)
            ends = walker.walk(torch.tensor([seed]), etypes, n, gen).view(-1).numpy()
            counts = np.bincount(np.where(ends < 0, len(exact) - 1, ends), minlength=len(exact))
            support = exact > 0
            assert counts[~support].sum() == 0, (walker.name, name, seed)
            if support.sum() > 1:
                p = chisquare(counts[support], exact[support] * n).pvalue
                assert p > 1e-4, (walker.name, name, seed, counts, exact * n)


def test_expansion_exclusions_and_padding():
    g = toy_graph()
    gen = torch.Generator().manual_seed(0)
    for walker in walkers(g):
        users = torch.arange(5)
        sim_users = expand(walker, g, "u2a2u", users, 50, generator=gen)
        assert not (sim_users == users[:, None]).any()               # never the seed itself
        new = expand(walker, g, "u2a2u2a", users, 50, generator=gen)
        u, a = g.edges(etype="u2a")
        gifted = set(zip(u.tolist(), a.tolist()))
        for s in range(5):
            assert all((s, x) not in gifted for x in new[s].tolist() if x != PAD)
        # user 1 gifted authors 0, 1, 2 (all reachable authors): nothing new exists -> all padding
        assert (new[1] == PAD).all()
        a2u2a = expand(walker, g, "a2u2a", torch.arange(4), 30, generator=gen)
        assert (a2u2a[3] == PAD).all()                                # author 3 has no gifters
        assert not (a2u2a == torch.arange(4)[:, None]).any()
        for name, path in METAPATHS.items():        # the declared schema matches the built graph
            assert g.to_canonical_etype(path.etypes[0])[0] == path.seed
            assert g.to_canonical_etype(path.etypes[-1])[2] == path.endpoint, name


def test_most_visited_keeps_the_k_most_frequent_distinct_endpoints():
    from graphrec.gie.metapath import most_visited

    ends = torch.tensor([[5, 2, 5, PAD, 2, 5, 7, PAD],
                         [PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
                         [3, 3, 1, 1, 4, PAD, PAD, PAD]])
    top = most_visited(ends, 3)
    assert top.tolist() == [[5, 2, 7], [PAD, PAD, PAD], [1, 3, 4]]   # by visits; ties: smaller id first
    assert most_visited(ends, 10).shape == (3, 10) and most_visited(ends, 10)[0, 3:].eq(PAD).all()


def test_oversampled_expansion_ranks_a_seeds_neighbourhood():
    g = toy_graph()
    for walker in walkers(g):
        gen = torch.Generator().manual_seed(0)
        users = torch.arange(5)
        sampled = expand(walker, g, "u2a2u", users, 3, generator=gen)
        ranked = expand(walker, g, "u2a2u", users, 3, generator=gen, oversample=50)
        for s in range(5):
            got = [x for x in ranked[s].tolist() if x != PAD]
            assert len(got) == len(set(got)) and s not in got               # distinct, never the seed
            # 150 walks reach every similar user the 3 samples could: the ranked set covers them
            assert set(x for x in sampled[s].tolist() if x != PAD) <= set(got) or len(got) == 3
        new = expand(walker, g, "u2a2u2a", users, 2, generator=gen, oversample=20)
        u, a = g.edges(etype="u2a")
        gifted = set(zip(u.tolist(), a.tolist()))
        assert all((s, x) not in gifted for s in range(5) for x in new[s].tolist() if x != PAD)
        assert (new[1] == PAD).all()                                      # nothing new for user 1


def test_offline_cache_is_tied_to_graph_and_params(tmp_path):
    g = toy_graph()
    ks = {"u2a2u": 4, "u2a2u2a": 3, "u2a2a": 2, "a2a": 2, "a2u2a": 5}
    exp = offline_expansions(g, ks, backend="torch", seed=0)
    assert exp["u2a2u"].shape == (5, 4) and exp["a2u2a"].shape == (4, 5) and exp["a2a"].dtype == np.int32
    again = offline_expansions(g, ks, backend="torch", seed=0)
    assert all(np.array_equal(exp[k], again[k]) for k in ks)           # seeded
    fp = graph_fingerprint(g)
    path = tmp_path / "exp.npz"
    save_expansions(path, exp, fp, {"ks": ks, "seed": 0})
    back = load_expansions(path, fp, {"ks": ks, "seed": 0})
    assert back is not None and all(np.array_equal(back[k], exp[k]) for k in ks)
    other = build_graph(np.array([0, 1]), np.array([1, 1]), 5, 4)
    assert graph_fingerprint(other) != fp
    assert load_expansions(path, graph_fingerprint(other), {"ks": ks, "seed": 0}) is None   # stale graph
    assert load_expansions(path, fp, {"ks": {**ks, "a2a": 3}, "seed": 0}) is None          # other params
    assert load_expansions(tmp_path / "missing.npz", fp, {}) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_csr_walker_on_cuda_matches_distribution():
    g = toy_graph()
    walker = CSRWalker(g, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    etypes = METAPATHS["a2u2a"][1]
    exact = exact_endpoint_distribution(g, "author", etypes, 0)
    ends = walker.walk(torch.tensor([0], device="cuda"), etypes, 50000, gen).view(-1).cpu().numpy()
    counts = np.bincount(np.where(ends < 0, len(exact) - 1, ends), minlength=len(exact))
    support = exact > 0
    assert chisquare(counts[support], exact[support] * 50000).pvalue > 1e-4


def test_walks_over_an_edge_type_without_edges_end_in_padding():
    g = build_graph(np.array([0, 1]), np.array([0, 1]), 3, 2)      # no co-gifters: Swing gives no a2a edge
    assert g.num_edges("a2a") == 0
    for walker in walkers(g):
        assert (walker.walk(torch.arange(2), ("a2a",), 3) == PAD).all()
        assert (walker.walk(torch.arange(2), ("u2a", "a2a"), 3) == PAD).all()
        assert (expand(walker, g, "a2u2a", torch.arange(2), 3) == PAD).all()   # only self: excluded
