"""CUDA paths: the same results as on the CPU (``pytest -m gpu``; skipped without a GPU). No DGL needed.

Run on a GPU machine: ``PYTHONPATH=. python3 -m pytest -m gpu``.
"""
import numpy as np
import pytest
import torch

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
pytestmark = [pytest.mark.gpu, gpu]

# the toy gifting graph of test_gie, as edge lists: 5 users, 4 authors
U2A = (torch.tensor([0, 0, 1, 1, 2, 3, 4]), torch.tensor([0, 1, 1, 2, 0, 2, 1]))
A2A = (torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 2, 1]))


def toy_walker(device):
    from graphrec.gie.metapath import CSRWalker

    edges = {"u2a": U2A, "a2u": (U2A[1], U2A[0]), "a2a": A2A}
    return CSRWalker.from_edges(edges, {"u2a": 5, "a2u": 4, "a2a": 4}, device)


@pytest.mark.parametrize("name", ["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"])
def test_cuda_walker_samples_the_cpu_walkers_distribution(name):
    from scipy.stats import chi2_contingency

    from graphrec.schema import METAPATHS

    path = METAPATHS[name]
    seeds = torch.arange(5 if path.seed == "user" else 4)
    n = 20000
    ends = {}
    for dev in ("cpu", "cuda"):
        gen = torch.Generator(device=dev).manual_seed(0)
        ends[dev] = toy_walker(dev).walk(seeds.to(dev), path.etypes, n, gen).cpu()
    for s in range(len(seeds)):
        size = 6
        table = np.stack([np.bincount(ends[d][s].numpy() + 1, minlength=size) for d in ("cpu", "cuda")])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] > 1:
            assert chi2_contingency(table)[1] > 1e-4, (name, s, table)
        else:
            assert (table[0] > 0).tolist() == (table[1] > 0).tolist()


def _tiny_ranker():
    from data_prep.simulate import simulate
    from graphrec.config import load_config
    from graphrec.data.split import ensure_split
    from graphrec.ranking.stage import build_ranker, enabled_modules

    from .conftest import TINY_SIM

    cfg = load_config(None, TINY_SIM + ["simulate.num_impressions=2000", "ranker.mlp=[16]", "mfq.dim=16",
                                        "mfq.heads=2", "ranker.dropout=0.0"])
    ds = simulate(cfg.simulate, seed=0)
    ensure_split(ds, 0.1, 0.1)
    model, builder, spec = build_ranker(cfg, ds, enabled_modules(cfg, ds, {}), {})
    return model, builder, spec, ds


def test_typed_batch_moves_to_cuda_and_back():
    _, builder, _, _ = _tiny_ranker()
    b = builder.impressions(np.arange(64)).pin_memory()
    c = b.to("cuda")
    assert c.users.hist["gift"].is_cuda and c.rooms.tokens["frame"][0].is_cuda and c.labels.is_cuda
    back = c.to("cpu")
    assert torch.equal(back.users.hist["gift"], b.users.hist["gift"]) and torch.equal(back.cand, b.cand)


def test_one_ranker_step_on_cuda_matches_cpu():
    """The loss and every gradient of one training step on CUDA agree with the CPU's, judged against a
    float64 reference: CUDA's float32 error may not exceed a few times the CPU's own float32 error (MFQ's
    orthogonal projection solves small Gram systems, so float32 gradients differ in their third digit)."""
    import copy

    from graphrec.ranking.batch import _map
    from graphrec.ranking.train import RankerObjective

    model, builder, spec, ds = _tiny_ranker()
    objective = RankerObjective(spec.tasks, ds.labels, {t: 1.0 for t in ds.labels}, False, None)
    batch = builder.impressions(np.arange(256))
    out = {}
    for dev, dtype in (("cpu", torch.float64), ("cpu", torch.float32), ("cuda", torch.float32)):
        m = copy.deepcopy(model).to(dev, dtype)
        b = _map(batch.to(dev), lambda t: t.to(dtype) if t.is_floating_point() else t)
        loss = objective(m(b), b)
        loss.backward()
        out[dev, dtype] = (loss.item(), {k: p.grad.detach().cpu().double() for k, p in m.named_parameters()
                                         if p.grad is not None})
    ref_loss, ref = out["cpu", torch.float64]
    assert out["cpu", torch.float32][1].keys() == out["cuda", torch.float32][1].keys() == ref.keys() and len(ref) > 10
    assert out["cuda", torch.float32][0] == pytest.approx(ref_loss, rel=1e-4)
    for k, g in ref.items():
        cpu_err = (out["cpu", torch.float32][1][k] - g).abs().max().item()
        cuda_err = (out["cuda", torch.float32][1][k] - g).abs().max().item()
        assert cuda_err <= 10 * cpu_err + 1e-5 * g.abs().max().item() + 1e-7, (k, cuda_err, cpu_err)


def test_graphcl_and_forecaster_steps_on_cuda_match_cpu():
    from graphrec.gie.graphcl import GraphCL
    from graphrec.models.stat_forecaster import StatForecaster

    torch.manual_seed(0)
    g = GraphCL(10, 6, dim=8)
    f = StatForecaster(num_variates=3, input_steps=6, dim=8, heads=2, dropout=0.0)
    anchor, pos, neg = torch.tensor([0, 1, 10]), torch.tensor([2, 3, 11]), torch.tensor([[4, 5], [6, 7], [12, 13]])
    x = torch.rand(4, 6, 3)
    res = {}
    for dev in ("cpu", "cuda"):
        gl = GraphCL(10, 6, dim=8).to(dev)
        gl.load_state_dict(g.state_dict())
        fl = StatForecaster(num_variates=3, input_steps=6, dim=8, heads=2, dropout=0.0).to(dev)
        fl.load_state_dict(f.state_dict())
        res[dev] = (gl(anchor.to(dev), pos.to(dev), neg.to(dev))["loss"].item(), fl(x.to(dev))[0].detach().cpu())
    assert res["cpu"][0] == pytest.approx(res["cuda"][0], rel=1e-4)
    assert torch.allclose(res["cpu"][1], res["cuda"][1], atol=1e-4)


def test_nccl_trainer_step_equals_a_plain_cuda_step(monkeypatch):
    """A distributed GPU trainer (``run.device`` cuda, ``dist.backend: auto``): trainer ``LOCAL_RANK`` 0 on
    GPU 0 with nccl; one DDP-wrapped ranker step in a one-process nccl group gives the plain CUDA step's
    loss and gradients, and the trainers' object gather and sum work over nccl. (The launcher's trainers also need
    DGL, which GPU machines here lack: this runs the torch part of that path, GraphCL's gradient exchange included.)"""
    import copy
    import socket

    import torch.distributed as dist

    from graphrec.dist.comm import DDPComm, trainer_device
    from graphrec.ranking.train import RankerObjective

    model, builder, spec, ds = _tiny_ranker()
    objective = RankerObjective(spec.tasks, ds.labels, {t: 1.0 for t in ds.labels}, False, None)
    device, backend = trainer_device("cuda", "auto", 0, torch.cuda.device_count())
    assert (device, backend) == ("cuda:0", "nccl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    comm = DDPComm(backend, timeout_s=60, device=device)
    try:
        batch = builder.impressions(np.arange(256)).to(device)
        net, plain = comm.wrap(copy.deepcopy(model).to(device)), copy.deepcopy(model).to(device)
        losses = []
        for m in (net, plain):
            loss = objective(m(batch), batch)
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
        grads = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
        assert len(grads) > 10
        for k, p in net.module.named_parameters():
            if k in grads:
                assert torch.allclose(p.grad, grads[k], rtol=1e-5, atol=1e-7), k
        assert comm.gather({"rank": comm.rank}) == [{"rank": 0}]
        assert comm.sum([1.5, -2.0, 0.25]) == [1.5, -2.0, 0.25]      # fit's epoch sums: an all-to-all on nccl
        # distributed GraphCL's gradient exchange: over nccl on this trainer's GPU, rows back on the CPU
        from graphrec.dist.graphcl import exchange_rows

        rows, values = [torch.tensor([5, 1, 9]), torch.tensor([2])], [torch.randn(3, 4), torch.randn(1, 4)]
        got = exchange_rows(rows, values, [torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.long)], 1,
                            comm.device)
        for (ids, val), r, v in zip(got, rows, values):
            assert ids.device.type == val.device.type == "cpu" and torch.equal(ids, r) and torch.equal(val, v)
    finally:
        dist.destroy_process_group()


def test_prefetched_fused_training_on_cuda_equals_the_plain_loop():
    """On CUDA, :func:`graphrec.fit.fit` builds the ranker's batches ahead in a thread (``Prefetched``) and
    uses Adam's fused kernel: two epochs give the losses of the same loop without the thread and with the
    per-tensor Adam (float32 on the same device; only the order of float additions may differ)."""
    import copy

    from graphrec.fit import FitSpec, fit
    from graphrec.ranking.train import RankerObjective, RankerTask

    model, builder, spec, ds = _tiny_ranker()
    objective = RankerObjective(spec.tasks, ds.labels, {t: 1.0 for t in ds.labels}, False, None)
    train_idx = np.flatnonzero(ds.impressions["split"] == 0)
    losses = {}
    for name in ("prefetched", "plain"):
        task = RankerTask(builder, train_idx, 256, objective)
        m = copy.deepcopy(model).to("cuda")
        opt = None
        if name == "plain":
            task.prefetch = False
            opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=False)
        res = fit(m, task, FitSpec(epochs=2, lr=1e-3, seed=3), "cuda", optimizer=opt)
        losses[name] = [h["train_loss"] for h in res.history]
    assert losses["prefetched"] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["prefetched"][1] < losses["prefetched"][0]
