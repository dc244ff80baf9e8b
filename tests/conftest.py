import os
from pathlib import Path

import pytest

# `make test` runs the suite on every core (pytest-xdist): each worker then computes on one thread, and the
# processes a test starts (distributed servers and trainers, seed workers) inherit that.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


@pytest.hookimpl(tryfirst=True)           # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests that start DGL servers and trainers run one after another on one worker: side by side they
    would each get a fraction of the cores their timeouts were set for."""
    for item in items:
        if item.fspath.basename.startswith(("test_dist", "test_packed_store")):
            item.add_marker(pytest.mark.xdist_group("dist"))


SHARED_DATA = Path(os.environ.get("GRAPHREC_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))

# A world small enough for tests: builds in well under a second.
TINY_SIM = ["simulate.num_users=300", "simulate.num_authors=40", "simulate.num_impressions=30000",
            "simulate.num_communities=4", "simulate.room_steps=48", "simulate.warmup_steps=6"]


# Small modules and few epochs: enough to exercise every stage in seconds.
FAST_MODELS = ["graphcl.epochs=2", "stat_forecast.epochs=1", "stat_forecast.dim=16", "product_forecast.epochs=2",
               "product_forecast.dim=16", "mfq.dim=16", "mfq.heads=2", "mfq.query_tokens=2", "ranker.epochs=2",
               "ranker.patience=5", "ranker.batch_size=1024", "ranker.mlp=[32]", "expansion.k_u2a2u=5",
               "expansion.k_u2a2u2a=5", "expansion.k_u2a2a=5", "expansion.k_a2a=5", "expansion.k_a2u2a=5",
               "lightgcn.epochs=3", "lightgcn.dim=16", "eval.two_stage_candidates=20"]


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"public data not found at {path} (set GRAPHREC_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def ml100k() -> Path:
    return _require(SHARED_DATA / "ml-100k")


@pytest.fixture
def tiktok_dir() -> Path:
    return _require(SHARED_DATA / "tiktok")


@pytest.fixture
def tiny_cfg():
    from graphrec.config import load_config

    return load_config(None, TINY_SIM)


@pytest.fixture(autouse=True)
def _autograd_stays_on():
    """A test (or the code it calls) that switches autograd off process-wide breaks every later test's
    training with an unrelated error; fail the test that did it instead."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left disabled (torch.set_grad_enabled(False) outside a `with` block)")


@pytest.fixture(autouse=True)
def _subnormals_back_after_a_command():
    """A command's ``main`` called in-process flushes subnormal floats to zero for the rest of the process, as
    graphrec's processes start (graphrec.numerics); hypothesis refuses to draw floats then. Each test starts
    with the IEEE default."""
    import torch

    yield
    torch.set_flush_denormal(False)


def ranker_world(overrides, seed: int = 0):
    """A tiny simulated world split 80/10/10, with random expansions (20% padding) and random Θ in place
    of the graph stages (no DGL): ``(cfg, ds, artifacts)`` for building a ranker on it. With
    ``graph.snapshots`` S > 1 the artifacts have S graph snapshots (``[N, S, ...]``); with one they have the
    layout written before snapshots existed (``[N, ...]``), which the ranker reads as one snapshot."""
    import numpy as np
    import torch

    from data_prep.simulate import simulate
    from graphrec.config import load_config
    from graphrec.data.split import ensure_split
    from graphrec.ranking.features import PAD
    from graphrec.schema import METAPATHS

    cfg = load_config(None, TINY_SIM + ["simulate.num_impressions=3000"] + list(overrides))
    ds = simulate(cfg.simulate, seed=seed)
    ensure_split(ds, 0.1, 0.1)
    rng = np.random.default_rng(seed)
    n = {"user": ds.num_users, "author": ds.num_authors}
    S = cfg.graph.snapshots
    shape = (lambda N, *rest: (N, S, *rest)) if S > 1 else (lambda N, *rest: (N, *rest))
    exp = {m: np.where(rng.random(shape(n[p.seed], 4)) < 0.8, rng.integers(0, n[p.endpoint], shape(n[p.seed], 4)), PAD)
           for m, p in METAPATHS.items()}
    torch.manual_seed(seed)
    art = {"expansions": exp, "theta": torch.randn(shape(ds.num_users + ds.num_authors, cfg.graphcl.dim))}
    return cfg, ds, art
