"""The full-ranking top-K of a distributed run equals the standalone one for the same ranker weights.

A real trainer process (``python -m graphrec.dist.trainer``, world of one, ``DGL_DIST_MODE=standalone`` so
no graph server is needed) trains on a one-part partition and writes ``metrics.json`` with rank 0's
full-ranking top-K, read through the ``DistGraph`` feature store. The partition is made with its node ids
shuffled (a one-part partition keeps them in order, and a forgotten or inverted original-to-partition
mapping would go unnoticed; METIS over several parts reorders them too). The checkpoint is then reloaded
with :func:`graphrec.load_run` (standalone ``TensorStore``) and scored beside a ranker on the partition's
``FeatureStore``: the same score matrices, the same top-K lists, and the same metrics entry as the
trainer's (one-stage and two-stage top-K, per-impression AUCs); a standalone run's ``metrics.json`` has the
same ``eval`` keys.
"""
import json
import os
import shutil
import sys
import subprocess

import numpy as np
import pytest
import torch

from .test_dist import free_port, sets

pytest.importorskip("dgl", reason="DGL's distributed engine (the DGL-free environment has none)")


def _shuffled_partition_graph(real, seed: int = 7):
    """``dgl.distributed.partition_graph`` on the graph with every node type's ids permuted; the mapping
    it returns is composed back to the caller's ids, so the partition is correct but not in id order."""
    import dgl

    def partition_graph(g, *args, **kwargs):
        gen = torch.Generator().manual_seed(seed)
        perm = {nt: torch.randperm(g.num_nodes(nt), generator=gen) for nt in g.ntypes}   # new node i = old perm[i]
        inv = {nt: torch.argsort(p) for nt, p in perm.items()}
        edges = {}
        for et in g.canonical_etypes:
            s, d = g.edges(etype=et)
            edges[et] = (inv[et[0]][s], inv[et[2]][d])
        h = dgl.heterograph(edges, num_nodes_dict={nt: g.num_nodes(nt) for nt in g.ntypes})
        for nt in g.ntypes:
            for name, value in g.nodes[nt].data.items():
                h.nodes[nt].data[name] = value[perm[nt]]
        orig, eids = real(h, *args, **kwargs)
        assert isinstance(orig, dict), "the heterograph's mapping is per node type"
        return {nt: perm[nt][o] for nt, o in orig.items()}, eids

    return partition_graph


def _keys(entry):
    """The key structure of a metrics entry (nested keys, no values)."""
    return {k: _keys(v) if isinstance(v, dict) else None for k, v in entry.items()}


@pytest.mark.slow
def test_distributed_topk_equals_the_standalone_topk(tmp_path, monkeypatch):
    import dgl

    import graphrec
    from graphrec.config import load_config
    from graphrec.dist.prepare import load_orig_ids, load_prepared, prepare
    from graphrec.dist.store import FeatureStore
    from graphrec.evaluation import activity_buckets, evaluate, positives_matrix, ranking_time, split_mask
    from graphrec.ranking.stage import build_ranker, two_stage
    from graphrec.ranking.train import RankerScorer
    from graphrec.run import run as run_pipeline

    # two-stage on (DIST_SETS turns it off): a standalone run reports it for the ranker, so must a distributed one
    extra = ["dist.num_parts=1", "dist.part_method=random", "ranker.epochs=2", "eval.two_stage_candidates=20"]
    overrides = sets(tmp_path, extra)
    cfg = load_config(None, [x for x in overrides if x != "--set"])
    monkeypatch.setattr(dgl.distributed, "partition_graph", _shuffled_partition_graph(dgl.distributed.partition_graph))
    part_dir = prepare(cfg, log=lambda m: None)
    monkeypatch.undo()
    prepared = load_prepared(part_dir, cfg)
    orig = load_orig_ids(part_dir)
    for nt in ("user", "author"):                 # the mapping matters: partition ids are not original ids
        assert sorted(orig[nt].tolist()) == list(range(len(orig[nt])))
        assert (orig[nt] != torch.arange(len(orig[nt]))).float().mean() > 0.9, nt

    # the distributed trainer itself: rank 0 of a world of one, reading the partition through the DistGraph
    run_dir = tmp_path / "runs" / "dist"
    ip = tmp_path / "ip.txt"
    ip.write_text("127.0.0.1\n")
    env = {**os.environ, "DGLBACKEND": "pytorch", "DGL_DIST_MODE": "standalone", "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "graphrec.dist.trainer", *overrides, "--part-dir", str(part_dir),
                        "--run-dir", str(run_dir), "--ip-config", str(ip)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    dist_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert dist_metrics["run"]["distributed"] and dist_metrics["dist"]["num_parts"] == 1
    standalone = run_pipeline(cfg).metrics              # its own weights: compared for the schema only
    name = dist_metrics["ranker"]["model"]
    for split in ("val", "test"):                       # one metrics schema, topk entries included
        assert _keys(dist_metrics["eval"][split][name]) == _keys(standalone["eval"][split][name]), split
        assert {"topk", "topk_two_stage"} <= set(dist_metrics["eval"][split][name]), split

    # the same weights, standalone: the partition's preparing run plus the trainer's checkpoint, reloaded
    alone = tmp_path / "runs" / "standalone"
    shutil.copytree(prepared["prepared_by"], alone)
    shutil.copy2(run_dir / "checkpoints" / "ranker.pt", alone / "checkpoints" / "ranker.pt")
    (alone / "metrics.json").write_text(json.dumps(dist_metrics))
    run = graphrec.load_run(alone)
    ds = run.dataset
    local = run.scorer()

    # and on the partition's feature store, as the trainer builds it
    store = FeatureStore(part_dir / prepared["part_config"], prepared["graph_name"], orig, prepared["features"])
    art = {k: v for k, v in run.artifacts.items() if k in ("stat_forecaster", "product_forecaster")}
    model, builder, _ = build_ranker(run.cfg, ds, prepared["modules"], art, store=store)
    model.load_state_dict(run.ranker.state_dict())
    remote = RankerScorer(model, builder)

    k = cfg.eval.k
    train_pos = positives_matrix(ds, ds.main_label, split_mask(ds, "train"))
    for split in ("val", "test"):
        test_pos = positives_matrix(ds, ds.main_label, split_mask(ds, split))
        users = np.flatnonzero(np.diff(test_pos.indptr) > 0)
        assert len(users) > 20, split
        t = ranking_time(ds, split)
        a, b = local.rank(users, t), remote.rank(users, t)
        assert a.shape == b.shape == (len(users), ds.num_authors)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        seen = train_pos[users].tocoo()
        for s in (a, b):
            s[torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long()] = -float("inf")
        top_a, top_b = torch.topk(a, k, dim=1), torch.topk(b, k, dim=1)
        assert torch.equal(top_a.indices, top_b.indices), split

        # the trainer's metrics entry (rank 0's top-K through the DistGraph) is the standalone evaluation's
        want = evaluate(local, ds, split, k, cfg.eval.negatives, cfg.run.seed + 1, two_stage=two_stage(cfg, ds, local),
                        topk=cfg.eval.topk, buckets=activity_buckets(ds, cfg.eval.activity_buckets))
        got = dist_metrics["eval"][split][name]
        assert _keys(got) == _keys(want), (split, _keys(got), _keys(want))
        for key in ("topk", "topk_two_stage"):
            assert got[key]["users"] == want[key]["users"] == len(users)
            for field in ("label", "k", "candidates", "retriever"):
                assert got[key].get(field) == want[key].get(field), (split, key, field)
            for metric in (f"recall@{k}", f"ndcg@{k}", f"precision@{k}"):
                assert got[key][metric] == pytest.approx(want[key][metric], abs=1e-6), (split, key, metric)
        for key in [key for key in want if key.startswith("topk@")]:            # per user-activity bucket
            assert got[key]["users"] == want[key]["users"] > 0
            for metric in (f"recall@{k}", f"ndcg@{k}", f"precision@{k}"):
                assert got[key][metric] == pytest.approx(want[key][metric], abs=1e-6), (split, key, metric)
        for label, rep in want.items():
            if not label.startswith("topk"):
                for m, v in rep.items():
                    assert got[label][m] == pytest.approx(v, abs=1e-5, nan_ok=True), (split, label, m)
