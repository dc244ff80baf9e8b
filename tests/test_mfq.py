import pytest
import torch

from graphrec.models.mfq import MFQ, orthogonal_projection


def make_tokens(B=5, spec=(("frame", 4, 16), ("asr", 3, 8), ("comment", 2, 12)), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, L, d in spec:
        x = torch.randn(B, L, d, generator=g)
        lens = torch.randint(1, L + 1, (B,), generator=g)
        mask = torch.arange(L)[None, :] < lens[:, None]
        out[m] = (x, mask)
    return out


def test_op_is_orthogonal_to_the_valid_span():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 16, generator=g, dtype=torch.float64)
    others = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    y = orthogonal_projection(x, others, mask)
    inner = y @ others.transpose(1, 2)                      # [3, 4, 5]
    assert inner[mask[:, None, :].expand_as(inner)].abs().max() < 1e-9
    # x - y lies in the span: projecting it again leaves nothing
    assert orthogonal_projection(x - y, others, mask).abs().max() < 1e-9
    # idempotent, and padded tokens are ignored whatever their values
    assert torch.allclose(orthogonal_projection(y, others, mask), y, atol=1e-9)
    junk = others.clone()
    junk[~mask] = 1e3
    assert torch.allclose(orthogonal_projection(x, junk, mask), y, atol=1e-9)


def test_op_hand_worked_and_degenerate_cases():
    x = torch.tensor([[[3.0, 4.0, 5.0]]])
    others = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 7.0, 0.0], [0.0, 14.0, 0.0]]])   # span = xy-plane (dependent rows)
    assert torch.allclose(orthogonal_projection(x, others), torch.tensor([[[0.0, 0.0, 5.0]]]), atol=1e-5)
    full = torch.eye(3).unsqueeze(0)                       # others span everything: nothing is left
    assert orthogonal_projection(x, full).abs().max() < 1e-5
    assert torch.equal(orthogonal_projection(x, torch.zeros(1, 0, 3)), x)   # no other modality


def test_mfq_shapes_and_padding_invariance():
    torch.manual_seed(0)
    tokens = make_tokens()
    model = MFQ({m: t[0].shape[-1] for m, t in tokens.items()}, num_authors=10, dim=32, heads=4).eval()
    author = torch.tensor([0, 1, 2, 3, 4])
    out, q = model(tokens, author, return_tokens=True)
    assert out.shape == (5, 32) and q.shape == (5, 4, 32)
    assert torch.isfinite(out).all()
    junk = {m: (torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 99.0)), mask) for m, (x, mask) in tokens.items()}
    assert torch.allclose(model(junk, author), out, atol=1e-5)
    # the author's learnable query matters: same content, other author -> other output
    assert not torch.allclose(model(tokens, author.flip(0)), out.flip(0)[[4, 3, 2, 1, 0]].flip(0), atol=1e-4)
    assert (model(tokens, torch.tensor([5, 5, 5, 5, 5])) - out).abs().max() > 1e-4


def test_mfq_row_with_an_empty_modality_and_single_token_modalities():
    tokens = make_tokens(B=3, spec=(("frame", 1, 128), ("asr", 1, 128)))     # the TikTok shape
    tokens["asr"][1][1] = False                                            # item 1 has no audio
    model = MFQ({"frame": 128, "asr": 128}, num_authors=4, dim=16, heads=2).eval()
    out = model(tokens, torch.tensor([0, 1, 2]))
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    text_only = MFQ({"comment": 384}, num_authors=4, dim=16, heads=2).eval()  # the MovieLens shape
    x = (torch.randn(2, 1, 384), torch.ones(2, 1, dtype=torch.bool))
    assert text_only({"comment": x}, torch.tensor([0, 3])).shape == (2, 16)


def test_mfq_gradients_reach_every_part():
    tokens = make_tokens()
    model = MFQ({m: t[0].shape[-1] for m, t in tokens.items()}, num_authors=10, dim=32, heads=4)
    model(tokens, torch.arange(5)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.author_query.weight.grad[:5].abs().sum() > 0 and model.author_query.weight.grad[5:].abs().sum() == 0


def test_mfq_errors():
    with pytest.raises(ValueError, match="divisible"):
        MFQ({"frame": 8}, 3, dim=30, heads=4)
    with pytest.raises(ValueError, match="at least one modality"):
        MFQ({}, 3)
    model = MFQ({"frame": 8, "asr": 8}, 3, dim=8, heads=2)
    with pytest.raises(KeyError, match=r"missing modality tokens \['asr'\]"):
        model({"frame": (torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))}, torch.tensor([0]))


def test_mfq_from_default_config():
    from graphrec.config import load_config

    model = MFQ.from_config(load_config(None, ["mfq.query_tokens=2"]).mfq, {"frame": 16, "asr": 8}, num_authors=3)
    assert model.dim == 32 and model.query_tokens == 2 and model.modalities == ["frame", "asr"]
    out = model(make_tokens(B=2, spec=(("frame", 4, 16), ("asr", 3, 8))), torch.tensor([0, 2]))
    assert out.shape == (2, 32)


def test_build_warns_when_the_other_modalities_span_mfq_dim():
    """Three modalities of 4 tokens: OP of one against the other 8 leaves nothing when mfq.dim <= 8."""
    import warnings

    from data_prep.simulate import simulate
    from graphrec.config import load_config
    from graphrec.data.split import ensure_split
    from graphrec.ranking.stage import build_ranker, enabled_modules

    from .conftest import TINY_SIM

    base = TINY_SIM + ["simulate.num_impressions=2000", "simulate.tokens_per_modality=4", "mfq.heads=2"]
    ds = simulate(load_config(None, base).simulate, seed=0)
    ensure_split(ds, 0.1, 0.1)
    for dim, warns in ((8, True), (16, False)):
        cfg = load_config(None, base + [f"mfq.dim={dim}"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_ranker(cfg, ds, enabled_modules(cfg, ds, {}), {})
        hits = [w for w in caught if "orthogonal projection" in str(w.message)]
        assert bool(hits) == warns, (dim, [str(w.message) for w in caught])
        if warns:
            assert "mfq.dim=8" in str(hits[0].message) and "above 8" in str(hits[0].message)


def _op_by_pinv(x, others, mask):
    o = others * mask.unsqueeze(-1).to(others.dtype)
    gram = o @ o.transpose(1, 2)
    return x - (x @ o.transpose(1, 2)) @ torch.linalg.pinv(gram, hermitian=True, rtol=1e-5) @ o


def test_op_cholesky_path_equals_the_pseudo_inverse_in_value_and_gradient():
    """Independent tokens take the Cholesky solve; rows with dependent tokens (the second: a duplicated
    token; the third: more tokens than dimensions) and padded ones must still equal the pseudo-inverse."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    others = torch.randn(4, 7, 6, generator=g, dtype=torch.float64)
    others[1, 4] = 2.0 * others[1, 0]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0], [1] * 7, [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    for op in (orthogonal_projection, _op_by_pinv):
        xs, os_ = x.clone().requires_grad_(), others.clone().requires_grad_()
        y = op(xs, os_, mask)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        if op is orthogonal_projection:
            got = (y.detach(), xs.grad, os_.grad)
        else:
            want = (y.detach(), xs.grad, os_.grad)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-8), (a - b).abs().max()
    # float32, realistic shape (8 other tokens in 32 dimensions): agrees to rounding
    x32, o32 = torch.randn(64, 4, 32, generator=g), torch.randn(64, 8, 32, generator=g)
    m32 = torch.rand(64, 8, generator=g) > 0.2
    assert (orthogonal_projection(x32, o32, m32) - _op_by_pinv(x32, o32, m32)).abs().max() < 1e-4


@pytest.mark.parametrize("self_attention", [False, True])
def test_attention_blocks_equal_torchs_multihead_attention(self_attention):
    """MFQ's attention (explicit softmax on a CPU) is nn.MultiheadAttention's, in value and gradient,
    with padded keys, rows whose keys are all padded, and attention on itself (one input projection)."""
    from graphrec.models.mfq import _Attend

    torch.manual_seed(0)
    block = _Attend(16, 4, 0.0).double()
    q = torch.randn(6, 3, 16, dtype=torch.float64)
    kv = q if self_attention else torch.randn(6, 5, 16, dtype=torch.float64)
    mask = torch.rand(6, kv.shape[1]) > 0.4
    mask[0] = False                                             # nothing to attend
    mask[1, 0] = True
    got = block.attention(q, kv, _pad(mask))
    want = block.attn(q, kv, kv, key_padding_mask=_pad(mask), need_weights=False)[0]
    assert torch.allclose(got, want, atol=1e-12)
    g1 = torch.autograd.grad(got.square().sum(), block.attn.in_proj_weight)[0]
    want = block.attn(q, kv, kv, key_padding_mask=_pad(mask), need_weights=False)[0]
    g2 = torch.autograd.grad(want.square().sum(), block.attn.in_proj_weight)[0]
    assert torch.allclose(g1, g2, atol=1e-10)
    out = block(q, kv, mask)                                    # the empty row's attention output is zeroed
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], block.norm2(block.norm1(q[0]) + block.ff(block.norm1(q[0]))), atol=1e-12)


def _pad(mask):
    pad = ~mask
    pad[~mask.any(1), 0] = False                                # as _Attend does for rows with no key
    return pad
