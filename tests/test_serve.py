"""Serving a trained run: the loaded model reproduces the run's metrics; the HTTP server's contract."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from graphrec.config import load_config
from graphrec.errors import UserError
from graphrec.run import run
from graphrec.serve import Scorer, main, parse_request

from .conftest import FAST_MODELS, TINY_SIM


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return run(load_config(None, TINY_SIM + FAST_MODELS + [
        "simulate.num_impressions=8000", f"run.out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
        "run.progress=false"]))


def test_load_run_reproduces_every_test_metric(trained_run):
    """``graphrec.load_run`` rebuilds the run: the same test metrics, per impression and full ranking."""
    from graphrec import load_run
    from graphrec.evaluation import evaluate

    loaded = load_run(trained_run.run_dir)
    cfg = loaded.cfg
    entry = evaluate(loaded.scorer(), loaded.dataset, "test", cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1)
    expected = trained_run.metrics["eval"]["test"]["mmbee"]
    for key in ("gift", "click", "topk"):
        assert entry[key] == pytest.approx(expected[key], abs=1e-6)
    assert loaded.model_name == "mmbee" and not loaded.ranker.training


def test_segment_cache_gives_the_uncached_scores_and_is_reused(trained_run):
    scorer = Scorer(trained_run.run_dir)
    ds = scorer.builder.ds
    imp = ds.impressions
    rows = np.flatnonzero(ds.impressions["split"] == 2)[:300]
    u, a, t = imp["user"][rows].astype(np.int64), imp["author"][rows].astype(np.int64), imp["time"][rows]
    cache = scorer.segment_cache
    model = scorer.model
    with torch.no_grad():
        model.segment_cache = None
        plain = model(scorer.builder.pairs(u, a, t))
        model.segment_cache = cache
        first = model(scorer.builder.pairs(u, a, t))
        hits_before = cache.hits
        again = model(scorer.builder.pairs(u[::-1].copy(), a[::-1].copy(), t[::-1].copy()))
    torch.testing.assert_close(first, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, plain.flip(0), rtol=0, atol=1e-5)
    segments = scorer.builder.segments.rows(a, t)
    assert cache.misses == len(set(segments.tolist())) and cache.hits - hits_before == cache.misses   # all hits
    assert set(cache.table) == set(segments.tolist())                      # one h_m per segment on air
    small = type(cache)(max_entries=5)
    model.segment_cache = small
    with torch.no_grad():
        torch.testing.assert_close(model(scorer.builder.pairs(u, a, t)), plain, rtol=0, atol=1e-5)
    model.segment_cache = cache
    assert len(small.table) == 5                                           # bounded


def test_score_sorting_cold_start_and_unknown_authors(trained_run):
    scorer = Scorer(trained_run.run_dir)
    out = scorer.score({"user": 3, "authors": [1, 2, 5, 999, -1]})
    assert out["cold_start"] is False and out["unknown_authors"] == [999, -1]
    gifts = [r["gift"] for r in out["scores"]]
    assert [r["author"] for r in out["scores"]] and gifts == sorted(gifts, reverse=True)
    assert set(out["scores"][0]) == {"author", "click", "long_view", "gift", "purchase"}
    cold = scorer.score({"user": 10**6, "authors": [0, 1, 2]})
    assert cold["cold_start"] is True and len(cold["scores"]) == 3
    pops = [r["gift"] for r in cold["scores"]]
    assert pops == sorted(pops, reverse=True)
    assert scorer.score({"user": 3, "authors": [999]})["scores"] == []


@pytest.mark.parametrize("body, fragment", [
    ([1, 2], "JSON object"),
    ({"user": 1}, "'authors' must be a non-empty list"),
    ({"user": "1", "authors": [1]}, "'user' must be an integer"),
    ({"user": 1, "authors": [1, "x"]}, "integer author ids"),
    ({"user": 1, "authors": [1], "time": "now"}, "'time' must be an integer"),
    ({"user": 1, "authors": [1], "extra": 2}, "unknown field(s) ['extra']"),
    ({"user": 1, "authors": [1], "time": -99999999999999999999}, "'time' must be an integer number of seconds"),
    ({"user": 10**30, "authors": [1]}, "ids must be integers in"),
])
def test_request_validation(body, fragment):
    with pytest.raises(UserError) as e:
        parse_request(body)
    assert fragment in str(e.value)


def _post(port, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_server_contract_and_bounded_load(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "graphrec.serve", "--run", str(trained_run.run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            if "serving" in line:
                port = int(line.split("127.0.0.1:")[1].split()[0])
        assert port, "server did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        status, body = _post(port, {"user": 3, "authors": [1, 2, 5]})
        assert status == 200 and len(body["scores"]) == 3
        assert _post(port, None, raw=b"{not json")[0] == 400
        status, body = _post(port, {"user": 3})
        assert status == 400 and "authors" in body["error"]
        for path, code in (("/score", 405), ("/nope", 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert e.value.code == code
        # bounded load from this (second) process: 200 requests, none may fail, server stays up
        rng = np.random.default_rng(0)
        errors, t0 = 0, time.perf_counter()
        for _ in range(200):
            status, _ = _post(port, {"user": int(rng.integers(0, 300)), "authors": rng.integers(0, 40, 20).tolist()})
            errors += status != 200
        rate = 200 / (time.perf_counter() - t0)
        assert errors == 0 and rate > 1
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    assert "not a trained run folder" in capsys.readouterr().err
