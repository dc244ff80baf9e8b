"""Implicit feedback end to end on DGL's distributed engine: a small split in TikTok's published layout
(every row a positive) partitioned, trained by one machine × two trainers with a real graph server, and
its metrics entry compared with the standalone evaluation of the same weights.

Implicit data is evaluated differently from an impression log: each validation/test positive is scored
against ``eval.negatives`` sampled authors (the sampled-negative AUC, which each trainer computes for its
own users, :class:`graphrec.evaluation.ShardedPairScores`) and the full-ranking top-K is ranked by every
trainer for its own users and merged. Both must give the numbers of one process.
"""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from .test_dist import loopback_ip_config, python, sets

pytest.importorskip("dgl", reason="DGL's distributed engine (the DGL-free environment has none)")


def implicit_split(d, users: int = 160, items: int = 48, seed: int = 0):
    """A TikTok-layout split (train/val/test user x item matrices and two item feature files) where each
    user likes items of one of four tastes more often, so a ranker has something to learn."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    taste = rng.integers(0, 4, users)
    item_taste = np.arange(items) % 4
    mats = {name: ([], []) for name in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")}
    for u in range(users):
        p = np.where(item_taste == taste[u], 9.0, 1.0)
        liked = rng.choice(items, size=10, replace=False, p=p / p.sum())
        for name, part in (("trnMat.pkl", liked[:8]), ("valMat.pkl", liked[8:9]), ("tstMat.pkl", liked[9:])):
            mats[name][0].extend([u] * len(part))
            mats[name][1].extend(part.tolist())
    for name, (rows, cols) in mats.items():
        m = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
        (d / name).write_bytes(pickle.dumps(m))
    onehot = np.eye(4, dtype=np.float16)[item_taste]
    np.save(d / "image_feat.npy", np.concatenate([onehot, rng.normal(size=(items, 4)).astype(np.float16)], 1))
    np.save(d / "audio_feat.npy", rng.normal(size=(items, 8)).astype(np.float16))
    return d


@pytest.mark.slow
def test_distributed_implicit_run_equals_the_standalone_evaluation(tmp_path):
    import graphrec
    from graphrec.evaluation import activity_buckets, evaluate, positives_matrix, split_mask

    data = implicit_split(tmp_path / "tiktok-small")
    extra = ["data.source=tiktok", f"data.path={data}", "eval.k=10", "eval.topk=true", "eval.negatives=10",
             "ranker.batch_size=64", "ranker.epochs=6"]
    r = python("-m", "graphrec.partition", "--num-parts", "1", *sets(tmp_path, extra))
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "runs" / "dist"
    r = python("-m", "graphrec.launch", *sets(tmp_path, extra), "--ip-config", str(loopback_ip_config(tmp_path)),
               "--num-trainers", "2", "--num-servers", "1", "--run-dir", str(run_dir),
               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["run"]["distributed"] and m["data"]["feedback"] == "implicit"
    name = m["ranker"]["model"]

    # the same weights in one process: the partition's preparing run plus the trainers' checkpoint
    prepared = json.loads((Path(m["dist"]["part_dir"]) / "prepared.json").read_text())
    alone = tmp_path / "runs" / "standalone"
    shutil.copytree(prepared["prepared_by"], alone)
    shutil.copy2(run_dir / "checkpoints" / "ranker.pt", alone / "checkpoints" / "ranker.pt")
    (alone / "metrics.json").write_text(json.dumps(m))
    run = graphrec.load_run(alone)
    ds, cfg = run.dataset, run.cfg
    assert ds.implicit
    for split in ("val", "test"):
        want = evaluate(run.scorer(), ds, split, cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1, topk=True,
                        buckets=activity_buckets(ds, cfg.eval.activity_buckets))
        got = m["eval"][split][name]
        users = np.diff(positives_matrix(ds, ds.main_label, split_mask(ds, split)).indptr) > 0
        assert got["topk"]["users"] == want["topk"]["users"] == users.sum() == 160, split   # each user once
        for metric in ("recall@10", "ndcg@10", "precision@10"):
            assert got["topk"][metric] == pytest.approx(want["topk"][metric], abs=1e-6), (split, metric)
        labels = [k for k in want if not k.startswith("topk")]
        assert labels and set(labels) <= set(got), (split, labels, sorted(got))
        for label in labels:                                   # the sampled-negative AUCs
            for key, v in want[label].items():
                assert got[label][key] == pytest.approx(v, abs=1e-5, nan_ok=True), (split, label, key)
        # learned something: a random ranking of the 40 items a user has not liked in training finds 10/40
        assert got["topk"]["recall@10"] > 10 / 40 + 0.1, split
