"""The ranker stage end to end on a tiny world: modules, baselines, resume, determinism, ablations."""
import json

import numpy as np
import pytest
import torch

from graphrec.config import load_config
from graphrec.run import main, run

from .conftest import FAST_MODELS, TINY_SIM

FAST = ["run.progress=false", "simulate.num_impressions=8000"] + FAST_MODELS


def sets(tmp_path, *extra):
    return TINY_SIM + FAST + [f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"] + list(extra)


def test_full_ranker_trains_and_reports(tmp_path):
    from graphrec.checkpoint import load_checkpoint
    from graphrec.models.ranker import Ranker, RankerSpec

    res = run(load_config(None, sets(tmp_path)))
    m = res.metrics
    assert m["ranker"]["model"] == "mmbee"
    mods = m["ranker"]["modules"]
    assert mods["metapaths"] == ["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"] and mods["theta_pretrained"]
    assert mods["modalities"] == ["frame", "asr", "comment"] and mods["stat_forecast"] and mods["product_forecast"]
    test = m["eval"]["test"]["mmbee"]
    overall = {"click", "long_view", "gift", "purchase", "topk", "topk_two_stage"}
    assert {k for k in test if "@" not in k} == overall
    buckets = {k for k in test if "@" in k}            # per bucket where the bucket has both classes
    assert {f"gift@{b}" for b in ("0", "1-2", "3+")} <= buckets <= {
        f"{key}@{b}" for key in overall - {"topk_two_stage"} for b in ("0", "1-2", "3+")}
    for task in ("click", "long_view", "gift", "purchase"):
        assert set(test[task]) == {"auc", "uauc", "gauc"}
    assert test["topk"]["label"] == "gift" and test["topk"]["users"] == m["eval"]["test"]["popularity"]["topk"]["users"]
    two = test["topk_two_stage"]                                 # LightGCN retrieves, the ranker reranks
    assert two["candidates"] == 20 and two["retriever"] == "lightgcn"
    assert "topk" in m["eval"]["test"]["lightgcn"]
    assert len(m["ranker"]["history"]) == 2 and m["ranker"]["monitor"] == "gauc"
    ck = load_checkpoint(res.run_dir / "checkpoints" / "ranker.pt")
    model = Ranker(RankerSpec(**ck["spec"]))
    model.load_state_dict(ck["state_dict"])
    assert "| mmbee | gift |" in (res.run_dir / "report.md").read_text()


def test_all_switches_off_is_the_din_baseline(tmp_path):
    res = run(load_config(None, sets(tmp_path, "ranker.use_gie=false", "ranker.use_mfq=false",
                                     "ranker.use_stat_forecast=false", "ranker.use_product_forecast=false")))
    assert res.metrics["ranker"]["model"] == "din"
    assert res.metrics["ranker"]["modules"]["metapaths"] == []
    full_params = run(load_config(None, sets(tmp_path))).metrics["ranker"]["parameters"]
    assert res.metrics["ranker"]["parameters"] < full_params
    assert "din" in res.metrics["eval"]["test"]


def test_single_metapath_switch_and_graphcl_off(tmp_path):
    res = run(load_config(None, sets(tmp_path, "ranker.use_a2a=false", "graphcl.enabled=false")))
    mods = res.metrics["ranker"]["modules"]
    assert "a2a" not in mods["metapaths"] and "u2a2u" in mods["metapaths"]
    assert mods["theta_pretrained"] is False                          # Θ learned by the ranker


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one intra-op thread: with several, float reductions may add in
    another order (this test failed once in ~5 suite runs with two threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_reaches_the_uninterrupted_result(tmp_path, monkeypatch, one_thread):
    from graphrec.ranking.train import RankerTask

    whole = run(load_config(None, sets(tmp_path / "a", "ranker.epochs=3", "run.checkpoint_every_s=0")))
    real = RankerTask.batches

    def interrupted(self, epoch, rng):
        if epoch == 2:                                  # killed after the checkpoint of epoch 2
            raise KeyboardInterrupt
        return real(self, epoch, rng)

    monkeypatch.setattr(RankerTask, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(None, sets(tmp_path / "b", "ranker.epochs=3", "run.checkpoint_every_s=0")))
    monkeypatch.setattr(RankerTask, "batches", real)
    run_dir = next((tmp_path / "b" / "runs").iterdir())
    assert main(["--resume", str(run_dir)]) == 0
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["ranker"]["resumed_from_epoch"] == 2
    assert [h["val_gauc"] for h in resumed["ranker"]["history"]] == \
        pytest.approx([h["val_gauc"] for h in whole.metrics["ranker"]["history"]], abs=1e-9)
    for key, rep in whole.metrics["eval"]["test"]["mmbee"].items():      # incl. both top-K rankings
        assert {k: v for k, v in resumed["eval"]["test"]["mmbee"][key].items() if not isinstance(v, str)} == \
            pytest.approx({k: v for k, v in rep.items() if not isinstance(v, str)}, abs=1e-9)


def test_same_seed_same_result_and_resume_errors(tmp_path, capsys, one_thread):
    a = run(load_config(None, sets(tmp_path, "ranker.epochs=1")))
    b = run(load_config(None, sets(tmp_path, "ranker.epochs=1")))
    assert a.metrics["eval"]["test"]["mmbee"] == b.metrics["eval"]["test"]["mmbee"]
    assert main(["--resume", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_implicit_feedback_uses_sampled_negatives(tmp_path):
    """A TikTok-shaped canonical dataset: positives only, one token per modality, published split."""
    from graphrec.data.dataset import Dataset, save_dataset

    rng = np.random.default_rng(0)
    U, A, n = 200, 50, 3000
    user = rng.integers(0, U, n).astype(np.int32)
    author = ((user % 5) * 10 + rng.integers(0, 10, n)).astype(np.int32)   # communities of authors
    split = np.repeat(np.array([0, 1, 2], np.uint8), [2400, 300, 300])
    ds = Dataset("implicit", "test", U, A, {
        "users": {"raw_id": np.arange(U, dtype=np.int32)}, "authors": {"raw_id": np.arange(A, dtype=np.int32)},
        "impressions": {"user": user, "author": author, "time": split.astype(np.int64), "click": np.ones(n, np.uint8),
                        "split": split},
        "segments": {"author": np.arange(A, dtype=np.int32), "start": np.zeros(A, np.int64),
                     "frame": rng.standard_normal((A, 1, 8)).astype(np.float32), "frame_len": np.ones(A, np.int16)}},
        meta={"feedback": "implicit", "main_label": "click", "timestamps": False})
    save_dataset(ds, tmp_path / "implicit")
    res = run(load_config(None, sets(tmp_path, "data.source=canonical", f"data.path={tmp_path / 'implicit'}",
                                     "ranker.epochs=10", "ranker.batch_size=128", "ranker.lr=1.0e-2",
                                     "ranker.negatives=16", "eval.k=10")))
    m = res.metrics
    test = m["eval"]["test"]
    assert test["mmbee"]["click"]["auc"] > 0.6                      # learns the community structure
    assert test["mmbee"]["topk"]["recall@10"] > test["popularity"]["topk"]["recall@10"] + 0.1
    assert m["ranker"]["modules"]["modalities"] == ["frame"] and m["ranker"]["monitor"] == "recall@10"
    assert m["data"]["timed"] is False


@pytest.mark.slow
def test_ablate_writes_one_row_per_variant(tmp_path, capsys):
    args = [a for s in sets(tmp_path, "ranker.epochs=1") for a in ("--set", s)]
    assert main(["--ablate"] + args) == 0
    parent = next((tmp_path / "runs").iterdir())
    report = (parent / "report.md").read_text()
    for variant in ("full", "-GIE", "-MFQ", "-stat_forecast", "-product_forecast", "-GraphCL", "DIN"):
        assert f"| {variant} |" in report
    assert "| oracle (Bayes-optimal) |" in report and "| LightGCN |" in report
    assert "Main task: `gift`" in report                          # the dataset's main label, not the first one
    assert len([p for p in parent.iterdir() if p.is_dir()]) == 7


def test_max_train_impressions_samples_a_fresh_subset_per_epoch(tmp_path, monkeypatch):
    from graphrec.ranking.train import RankerTask

    seen = []
    real = RankerTask.epoch_indices

    def recording(self, rng):
        seen.append(real(self, rng))
        return seen[-1]

    monkeypatch.setattr(RankerTask, "epoch_indices", recording)
    res = run(load_config(None, sets(tmp_path, "ranker.max_train_impressions=700", "eval.two_stage_candidates=0")))
    train = res.metrics["data"]["split"]["train"]
    assert train > 700 and len(seen) == 2 and all(len(s) == 700 for s in seen)
    assert len(np.unique(seen[0])) == 700 and not np.array_equal(seen[0], seen[1])   # fresh, no repeats
    assert all(s.max() < 8000 for s in seen)


def test_redrawn_expansions_train_and_the_offline_cache_serves(tmp_path, monkeypatch):
    from graphrec.ranking.features import TensorStore

    swaps = []
    real = TensorStore.swap

    def spy(self, tables):
        swaps.append({k: v.clone() for k, v in tables.items()})
        return real(self, tables)

    monkeypatch.setattr(TensorStore, "swap", spy)
    res = run(load_config(None, sets(tmp_path, "ranker.redraw_expansions=true")))
    assert len(swaps) == 2 and set(swaps[0]) == {f"exp_{m}" for m in res.metrics["ranker"]["modules"]["metapaths"]}
    assert not torch.equal(swaps[0]["exp_u2a2u"], swaps[1]["exp_u2a2u"])          # a fresh draw every epoch
    store = res.state["ranker_builder"].store
    with np.load(res.run_dir / "expansions.npz") as z:                               # restored: the offline cache
        assert np.array_equal(store.data["user"]["exp_u2a2u"].numpy(), z["u2a2u"])
