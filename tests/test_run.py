import json

import numpy as np
import pytest

from graphrec.config import load_config
from graphrec.run import main, run

from .conftest import FAST_MODELS, TINY_SIM


def tiny_args(tmp_path, *extra):
    sets = TINY_SIM + FAST_MODELS + ["simulate.num_impressions=8000",f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                       "run.name=tiny", "run.progress=false"] + list(extra)
    return [a for s in sets for a in ("--set", s)]


def only_run_dir(tmp_path):
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_end_to_end_run_folder(tmp_path, capsys):
    assert main(["--cfg", "yaml/live.yaml"] + tiny_args(tmp_path)) == 0
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("tiny-")
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "run.log", "metrics.json", "report.md"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    # the resolved config reproduces the run's settings and is itself a valid experiment file
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.simulate.num_users == 300 and cfg.run.name == "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["users"] == 300 and metrics["data"]["impressions"] == 8_000
    assert sum(metrics["data"]["split"].values()) == 8_000
    assert [s["name"] for s in metrics["stages"]] == ["data", "graph", "expansion", "graphcl", "stat_forecast",
                                                       "product_forecast", "lightgcn", "ranker", "evaluation", "report"]
    assert all(s["status"] == "ran" for s in metrics["stages"])
    test = metrics["eval"]["test"]
    # on simulated data the oracle (true probabilities) beats popularity on the main task
    assert test["oracle"]["gift"]["auc"] > test["popularity"]["gift"]["auc"]
    assert test["popularity"]["topk"]["label"] == "gift" and test["popularity"]["topk"]["users"] > 0
    report = (run_dir / "report.md").read_text()
    assert "| oracle | gift |" in report and "Bayes-optimal" in report
    log = (run_dir / "run.log").read_text()
    assert "[1/10] data" in log and "[10/10] report" in log
    assert str(run_dir) in capsys.readouterr().out


def test_tensorboard_events_hold_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(load_config("yaml/live.yaml", [s for s in tiny_args(tmp_path)[1::2]]))
    acc = EventAccumulator(str(result.run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "test/oracle/gift/auc" in tags
    summaries = [t for t in tags if t.startswith(("data/", "graph/", "expansion/", "time/")) or "heldout" in t
                 or "/link_" in t]
    assert not summaries                        # stage summaries are text tables, the curves come first
    assert "ranker/val_gauc" in tags and "ranker/lr" in tags and "graphcl/train_loss" in tags
    assert "ranker/train_loss_step" in tags and "lightgcn/val_recall@20" in tags and "stat_forecast/train_loss" in tags
    # the dataset counts are one text table, not one-point scalar cards shown before the training curves
    assert {"test/mmbee/gift_pr", "config/text_summary", "data/manifest/text_summary",
            "data/counts/text_summary", "graph/summary/text_summary", "time/stages/text_summary"} <= set(acc.Tags()["tensors"])
    assert "| ranker (ran) |" in acc.Tensors("time/stages/text_summary")[0].tensor_proto.string_val[0].decode()
    table = acc.Tensors("data/counts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| users | 300 |" in table and "| impressions | 8,000 |" in table and "gift positives |" in table
    hp = EventAccumulator(str(result.run_dir / "hparams"))           # the hparams view: config + final metrics
    hp.Reload()
    assert any(t.startswith("hparam/test/mmbee/gift/") for t in hp.Tags()["scalars"])
    value = acc.Scalars("test/oracle/gift/auc")[0].value
    assert value == pytest.approx(result.metrics["eval"]["test"]["oracle"]["gift"]["auc"], abs=1e-6)


def test_dataset_is_cached_and_refreshed_on_change(tmp_path):
    cfg = load_config(None, tiny_args(tmp_path)[1::2])
    first = run(cfg)
    second = run(cfg)
    assert first.metrics["data"]["path"] == second.metrics["data"]["path"]
    log2 = (second.run_dir / "run.log").read_text()
    assert "using cached dataset" in log2
    other = run(load_config(None, tiny_args(tmp_path, "simulate.num_users=301")[1::2]))
    assert other.metrics["data"]["path"] != first.metrics["data"]["path"]
    assert len(list((tmp_path / "cache").glob("simulate-*"))) == 2


def test_forecaster_stages_write_checkpoints_metrics_and_report(tmp_path):
    import torch

    from graphrec.checkpoint import load_checkpoint
    from graphrec.models import ProductForecaster, StatForecaster

    result = run(load_config(None, tiny_args(tmp_path, "stat_forecast.epochs=2", "product_forecast.epochs=2")[1::2]))
    m = result.metrics
    assert set(m["stat_forecast"]["mse"]) == {"model", "mean_value", "latest_value"}
    assert set(m["product_forecast"]["hit_rate"]) == {"model", "latest_category", "most_frequent_category"}
    assert load_checkpoint(result.run_dir / "checkpoints" / "stat_forecast.pt")["features"][1] == "audience"
    stat = StatForecaster.from_checkpoint(result.run_dir / "checkpoints" / "stat_forecast.pt")
    assert not stat.training and stat.horizon == 3
    x = torch.rand(2, stat.input_steps, stat.num_variates)
    assert stat.ranker_features(x).shape == (2, stat.num_variates * (3 + stat.dim))
    prod = ProductForecaster.from_checkpoint(result.run_dir / "checkpoints" / "product_forecast.pt")
    probs, enc = prod.ranker_features(torch.zeros(2, 3, 4, dtype=torch.long), torch.tensor([3, 1]))
    assert probs.shape == (2, prod.num_cat3) and enc.shape == (2, prod.dim)
    report = (result.run_dir / "report.md").read_text()
    assert "Table 5 shape" in report and "| latest value |" in report and "| latest category |" in report


def test_pretraining_stages_reuse_an_earlier_runs_output(tmp_path):
    import torch

    from graphrec.checkpoint import load_checkpoint

    def once(*extra):
        sets = tiny_args(tmp_path, "run.skip_stages=[lightgcn, ranker, evaluation]", *extra)[1::2]
        return run(load_config(None, sets))

    stages = ("graphcl", "stat_forecast", "product_forecast")
    first = once()
    assert first.metrics["stage_cache"] == {}
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "stages").iterdir())
    assert cached == sorted(stages)
    second = once()
    assert set(second.metrics["stage_cache"]) == set(stages)
    assert "graphcl: reusing" in (second.run_dir / "run.log").read_text()
    for name in stages:        # the same outputs, and the same metrics entries, as if trained again
        assert second.metrics[name] == json.loads(json.dumps(first.metrics[name]))
    assert torch.equal(second.state["theta"], first.state["theta"])
    for ck in ("graphcl.pt", "stat_forecast.pt", "product_forecast.pt"):
        a, b = (load_checkpoint(r.run_dir / "checkpoints" / ck) for r in (first, second))
        weights = (lambda c: [c["theta"]]) if ck == "graphcl.pt" else (lambda c: list(c["state_dict"].values()))
        assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    sd_first = load_checkpoint(first.run_dir / "checkpoints" / "stat_forecast.pt")["state_dict"]
    assert all(torch.equal(v, second.state["stat_forecaster"].state_dict()[k]) for k, v in sd_first.items())
    # another GraphCL setting trains GraphCL again and reuses the forecasters; another seed retrains all three
    third = once("graphcl.dim=8")
    assert set(third.metrics["stage_cache"]) == {"stat_forecast", "product_forecast"}
    assert third.state["theta"].shape[-1] == 8
    assert once("run.seed=1").metrics["stage_cache"] == {}
    # a damaged cache file is trained again and replaced; run.stage_cache false neither reads nor writes
    for p in (tmp_path / "cache" / "stages").glob("stat_forecast-*.pt"):
        p.write_bytes(b"not a checkpoint")
    fourth = once()
    assert set(fourth.metrics["stage_cache"]) == {"graphcl", "product_forecast"}
    assert "not a loadable graphrec checkpoint" in (fourth.run_dir / "run.log").read_text()
    assert set(once().metrics["stage_cache"]) == set(stages)
    before = sorted((tmp_path / "cache" / "stages").iterdir())
    assert once("run.stage_cache=false", "run.seed=2").metrics["stage_cache"] == {}
    assert sorted((tmp_path / "cache" / "stages").iterdir()) == before


def test_forecaster_stages_skip_with_reasons(tmp_path):
    result = run(load_config(None, tiny_args(tmp_path, "stat_forecast.enabled=false",
                                             "stat_forecast.input_steps=40")[1::2]))
    status = {s["name"]: s["status"] for s in result.metrics["stages"]}
    assert status["stat_forecast"] == "skipped: stat_forecast.enabled is false"
    assert status["product_forecast"] == "ran"
    result = run(load_config(None, tiny_args(tmp_path, "stat_forecast.input_steps=60",
                                             "product_forecast.enabled=false")[1::2]))
    status = {s["name"]: s["status"] for s in result.metrics["stages"]}
    assert status["stat_forecast"] == "skipped: rooms have 48 steps, fewer than input_steps + horizon = 63"
    assert status["product_forecast"] == "skipped: product_forecast.enabled is false"


def test_skip_stages(tmp_path):
    assert main(tiny_args(tmp_path, "run.skip_stages=[evaluation, graph, stat_forecast, product_forecast, ranker, lightgcn]")) == 0
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    status = {s["name"]: s["status"] for s in metrics["stages"]}
    assert status["evaluation"].startswith("skipped") and status["report"] == "ran"
    assert "eval" not in metrics


def test_user_errors_exit_2_without_run_folder(tmp_path, capsys):
    assert main(tiny_args(tmp_path, "run.skip_stages=[evaluate]")) == 2
    assert "unknown stage(s) ['evaluate']" in capsys.readouterr().err
    assert main(tiny_args(tmp_path, "data.source=kuailive")) == 2      # movielens without a path downloads
    err = capsys.readouterr().err
    assert "data.path must point at the kuailive input" in err and "Traceback" not in err
    assert main(tiny_args(tmp_path, "data.source=movielens", f"data.path={tmp_path / 'none'}")) == 2
    assert "data.path does not exist" in capsys.readouterr().err


def test_bad_data_is_reported_with_run_folder_kept(tmp_path, capsys):
    # a canonical dataset that fails validation: the error lists the violation
    from .test_validate import small_dataset
    from graphrec.data.dataset import save_dataset

    ds = small_dataset()
    ds.tables["impressions"]["gift"][0] = 7
    save_dataset(ds, tmp_path / "bad")
    assert main(tiny_args(tmp_path, "data.source=canonical", f"data.path={tmp_path / 'bad'}")) == 2
    err = capsys.readouterr().err
    assert "impressions.gift: label must be 0 or 1 at rows 0" in err
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert "DataError" in metrics["error"]


@pytest.mark.slow
def test_movielens_end_to_end(ml100k, tmp_path):
    result = run(load_config("yaml/movielens.yaml", FAST_MODELS + [
        f"data.path={ml100k}", f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.text_encoder=tfidf"]))
    m = result.metrics
    assert (m["data"]["users"], m["data"]["authors"], m["data"]["impressions"]) == (943, 1682, 100_000)
    assert 0.5 < m["eval"]["test"]["popularity"]["gift"]["auc"] < 1.0
    assert 0.5 < m["eval"]["test"]["mmbee"]["gift"]["auc"] < 1.0        # the ranker ran on text + statistics
    # weekly rating counts are MovieLens' statistic sequences; there are no product sequences
    assert m["stat_forecast"]["heldout_rooms"] > 0
    assert {s["name"]: s["status"] for s in m["stages"]}["product_forecast"].startswith("skipped")


@pytest.mark.slow
def test_tiktok_end_to_end(tiktok_dir, tmp_path):
    result = run(load_config("yaml/tiktok.yaml", FAST_MODELS + [
        f"data.path={tiktok_dir}", f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
        "ranker.epochs=1"]))
    m = result.metrics
    assert m["data"]["split"] == {"train": 59_541, "val": 3_051, "test": 6_130}
    status = {s["name"]: s["status"] for s in m["stages"]}
    assert status["stat_forecast"] == "skipped: the dataset has no statistic sequences"
    assert status["product_forecast"] == "skipped: the dataset has no product sequences"
    assert m["ranker"]["modules"]["modalities"] == ["frame", "asr"]
    test = m["eval"]["test"]
    assert {k for k in test["mmbee"] if "@" not in k} == {"click", "topk", "topk_two_stage"}   # sampled AUC, top-Ks
    assert {k for k in test["mmbee"] if "@" in k} <= {f"{key}@{b}" for key in ("click", "topk") for b in ("0", "1-2", "3+")}
    assert test["mmbee"]["topk"]["users"] == test["popularity"]["topk"]["users"] == test["lightgcn"]["topk"]["users"]
    assert m["ranker"]["monitor"] == "recall@20" and m["data"]["timed"] is False
    # the history rule without timestamps: training rows see as much history as evaluation rows
    builder, imp = result.state["ranker_builder"], result.state["dataset"].impressions
    train, testi = np.flatnonzero(imp["split"] == 0)[:5000], np.flatnonzero(imp["split"] == 2)[:5000]
    fill = {name: float((builder.impressions(i).users.hist["click"] >= 0).float().mean()) for name, i in
            (("train", train), ("test", testi))}
    assert fill["train"] > 0.2 and fill["train"] > 0.7 * fill["test"]


def test_degenerate_world_runs_to_the_end(tmp_path, capsys):
    """Regression: 10 users, 4 authors and 100 impressions died with an IndexError in expected_auc (no
    shopping impression), then with a ValueError in the product forecaster (no product sequence). Now
    the run finishes: stages without data are skipped with their reason, splits without positives are
    reported, and metrics with nothing to measure are n/a."""
    sets = ["simulate.num_users=10", "simulate.num_authors=4", "simulate.num_impressions=100",
            f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "run.progress=false",
            "graphcl.epochs=3", "lightgcn.epochs=3", "ranker.epochs=2"]
    assert main([a for s in sets for a in ("--set", s)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    status = {s["name"]: s["status"] for s in metrics["stages"]}
    assert status["product_forecast"].startswith("skipped: no product sequences with 2+ items")
    assert status["report"] == "ran" and "error" not in metrics
    data = metrics["data"]
    assert sum(data["split_positives"].values()) == data["positives_gift"]
    empty = [s for s, n in data["split_positives"].items() if n == 0]
    assert empty                                        # this world has a split without gifts
    report = (run_dir / "report.md").read_text()
    assert "n/a" in report and "| nan" not in report and "gift positives per split" in report
    log = (run_dir / "run.log").read_text()
    assert f"the {empty[0]} split has no gift positives" in log


def test_unknown_history_fails_at_the_data_stage(tmp_path, capsys):
    """ranker.histories names labels of the data: checked as soon as the data is loaded, not after the
    pre-training stages."""
    assert main(tiny_args(tmp_path, "ranker.histories=[gfit]")) == 2
    err = capsys.readouterr().err
    assert "'gfit' is not a behaviour of this dataset" in err and "Traceback" not in err
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["data"]


def test_metrics_record_the_commit_and_the_library_versions(tmp_path, monkeypatch):
    """``run.software``: the checkout's commit (and whether tracked files differ from it) and the versions of
    Python, PyTorch, NumPy and DGL, so a number can be traced to the code and the release that made it."""
    import platform
    import subprocess
    from pathlib import Path

    import numpy
    import torch

    from graphrec import metrics_schema
    from graphrec.config import load_config

    sw = metrics_schema.run_entry(load_config(None, []), tmp_path, "cpu")["software"]
    assert sw["torch"].split("+")[0] == torch.__version__.split("+")[0] and sw["numpy"] == numpy.__version__
    assert sw["python"] == platform.python_version()
    repo = Path(metrics_schema.__file__).resolve().parents[1]
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert sw["commit"] == head.strip() and len(sw["commit"]) == 40 and isinstance(sw["dirty"], bool)
    # a tracked file that differs from the commit makes the run "dirty"; outside a checkout both are None
    monkeypatch.setattr(metrics_schema, "_git", lambda repo, *a: "c0ffee" if a[0] == "rev-parse" else " M x.py")
    assert metrics_schema.software_entry()["dirty"] is True or not (repo / ".git").exists()
    monkeypatch.setattr(metrics_schema, "_git", lambda repo, *a: None)
    assert (metrics_schema.software_entry()["commit"], metrics_schema.software_entry()["dirty"]) == (None, None)
