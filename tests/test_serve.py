"""Serving a trained run: the loaded model reproduces the run's metrics; the HTTP service's contract
(in process through FastAPI's TestClient, one test through the real CLI); the HTTP load test."""
import json
import socket
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrec.config import load_config
from graphrec.run import run

pytest.importorskip("fastapi", reason="the serving extra (FastAPI) is not installed")   # e.g. GPU machines
from graphrec.serve import MAX_BATCH, MAX_CANDIDATES, ScoreRequest, Scorer, main, make_app

from .conftest import FAST_MODELS, TINY_SIM

with warnings.catch_warnings():        # Starlette >= 1.x would rather have httpx2; httpx is what the test extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient

BOUND = 2**62                 # ids in (-BOUND, BOUND), times in [0, BOUND)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return run(load_config(None, TINY_SIM + FAST_MODELS + [
        "simulate.num_impressions=8000", f"run.out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
        "run.progress=false"]))


@pytest.fixture(scope="module")
def scorer(trained_run):
    return Scorer(trained_run.run_dir)


@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(make_app(scorer)) as c:
        yield c


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


def test_score_sorting_cold_start_and_unknown_authors(scorer):
    out = scorer.score(ScoreRequest(user=3, authors=[1, 2, 5, 999, -1]))
    assert out["cold_start"] is False and out["unknown_authors"] == [999, -1]
    gifts = [r["gift"] for r in out["scores"]]
    assert [r["author"] for r in out["scores"]] and gifts == sorted(gifts, reverse=True)
    assert set(out["scores"][0]) == {"author", "click", "long_view", "gift", "purchase"}
    cold = scorer.score(ScoreRequest(user=10**6, authors=[0, 1, 2]))
    assert cold["cold_start"] is True and len(cold["scores"]) == 3
    pops = [r["gift"] for r in cold["scores"]]
    assert pops == sorted(pops, reverse=True)
    assert scorer.score(ScoreRequest(user=3, authors=[999]))["scores"] == []


def _same_answers(got, want):
    """Equal answers: every field, and each author's scores to float32 rounding (a batch's matrix products
    have other shapes than one request's, and BLAS may round them differently: a few units in the last place)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "scores"} == {k: v for k, v in w.items() if k != "scores"}
        assert sorted(r["author"] for r in g["scores"]) == sorted(r["author"] for r in w["scores"])
        by_author = {r["author"]: r for r in w["scores"]}
        for r in g["scores"]:
            assert r == pytest.approx(by_author[r["author"]], rel=1e-5, abs=1e-12)


def _spy(monkeypatch, obj, name, calls, record):
    real = getattr(obj, name)

    def spy(*args, **kwargs):
        calls.setdefault(name, []).append(record(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)


def test_a_batch_does_each_part_once_and_answers_as_single_requests(scorer, monkeypatch):
    end = scorer.default_time
    reqs = [ScoreRequest(user=u, authors=list(range(-1, 42, k)), time=t)
            for u, k, t in ((3, 1, None), (17, 3, 0), (250, 2, 900), (3, 5, 10**15),
                            (17, 4, 0),                      # user 17 again at the same time, other authors
                            (3, 2, end))]                    # user 3 a third time: `end` is what None means
    reqs += [ScoreRequest(user=10**6, authors=[0, 1, 2]),             # cold: popularity
             ScoreRequest(user=5, authors=[999, -3]),                  # nothing known to score
             ScoreRequest(user=8, authors=[4, 4, 7]),                  # duplicates are scored as sent
             ScoreRequest(user=250, authors=[5, 6, 7], time=901)]      # user 250 a second later
    singles = [scorer.score(r) for r in reqs]
    calls = {}
    _spy(monkeypatch, scorer.builder, "user_part", calls, lambda users, times: len(users))
    _spy(monkeypatch, scorer.builder, "room_part", calls, lambda authors, times: len(authors))
    _spy(monkeypatch, scorer.builder, "pairs", calls, lambda *a: len(a[0]))
    _spy(monkeypatch, scorer.model, "logits", calls, lambda ur, ar, cand: tuple(cand.shape))
    batch = scorer.score_batch(reqs)
    known = [[a for a in r.authors if 0 <= a < 40] for r in reqs]
    warm = [(r, k, end if r.time is None else r.time) for r, k in zip(reqs, known) if 0 <= r.user < 300 and k]
    assert len(warm) == 8
    # one user side per distinct (user, time), one author side per distinct (author, time), one forward pass
    assert calls["user_part"] == [len({(r.user, t) for r, _, t in warm})] == [6]
    assert calls["room_part"] == [len({(a, t) for _, k, t in warm for a in k})]
    assert calls["logits"] == [(len(warm), max(len(k) for _, k, _ in warm))] and "pairs" not in calls
    _same_answers(batch, singles)
    # ... and the scores are the ranker's own: one row per (user, author, time), as the run's evaluation scores
    for r, k, out in zip(reqs, known, batch):
        if out["cold_start"] or not k:
            continue
        n, t = len(k), end if r.time is None else r.time
        with torch.no_grad():
            logits = scorer.model(scorer.builder.pairs(np.full(n, r.user), np.array(k), np.full(n, t)))[:, 0]
        p = torch.sigmoid(logits[:, scorer.rank.label_heads]).numpy()
        ref = [{"author": a, **dict(zip(scorer.tasks, row))} for a, row in zip(k, p.tolist())]
        _same_answers([out], [{**out, "scores": ref}])
    for out in batch:
        mains = [r[out["main_task"]] for r in out["scores"]]
        assert mains == sorted(mains, reverse=True)
    assert batch[6]["cold_start"] and batch[7]["scores"] == [] and batch[7]["unknown_authors"] == [999, -3]
    assert [r["author"] for r in batch[8]["scores"]].count(4) == 2
    monkeypatch.setattr(scorer, "max_pairs_per_forward", 7)        # passes, and requests cut across them
    calls.clear()
    _same_answers(scorer.score_batch(reqs), singles)
    assert len(calls["logits"]) > 1 and max(b * c for b, c in calls["logits"]) <= 7
    assert sum(b * c for b, c in calls["logits"]) >= sum(len(k) for _, k, _ in warm) and calls["user_part"] == [6]


def test_batch_passes_cover_every_candidate_once_within_the_bound(scorer, monkeypatch):
    for step, sizes, count in ((7, [10, 8, 3, 1, 7], 5), (10_000, [200] * 16, 1), (5, [1] * 12, 3),
                               (3, [2, 3, 1, 3], 4)):
        monkeypatch.setattr(scorer, "max_pairs_per_forward", step)
        passes = scorer._passes(np.array(sizes))
        assert len(passes) == count
        covered = sorted((r, i) for ps in passes for r, s, e in ps for i in range(s, e))
        assert covered == [(r, i) for r, n in enumerate(sizes) for i in range(n)]
        for ps in passes:
            widths = [e - s for _, s, e in ps]
            assert widths[0] == max(widths) and len(ps) * widths[0] <= step


def test_http_contract(client, scorer):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.post("/score", json={"user": 3, "authors": [1, 2, 5, 999]})
    assert r.status_code == 200
    assert r.json() == json.loads(json.dumps(scorer.score(ScoreRequest(user=3, authors=[1, 2, 5, 999]))))
    body = [{"user": 3, "authors": [1, 2]}, {"user": 10**6, "authors": [0, 3], "time": 5}, {"user": 7, "authors": [99]}]
    r = client.post("/score/batch", json={"requests": body})
    assert r.status_code == 200
    got = r.json()["results"]
    assert [g["user"] for g in got] == [3, 10**6, 7] and [g["cold_start"] for g in got] == [False, True, False]
    _same_answers(got, [client.post("/score", json=b).json() for b in body])
    schema = client.get("/openapi.json").json()
    assert {"/health", "/score", "/score/batch"} <= set(schema["paths"])
    assert {"author", "gift", "click"} <= set(schema["components"]["schemas"]["AuthorScore"]["properties"])
    assert client.get("/docs").status_code == 200
    assert client.get("/score").status_code == 405 and client.get("/nope").status_code == 404


def _raw(client, path, content, content_type="application/json"):
    return client.post(path, content=content, headers={"Content-Type": content_type} if content_type else {})


@pytest.mark.parametrize("path, body, code, field", [
    ("/score", {"user": 1, "authors": [1], "time": -99999999999999999999}, 422, "time"),
    ("/score", {"user": 1, "authors": [1], "time": BOUND}, 422, "time"),
    ("/score", {"user": 1, "authors": [1], "time": "now"}, 422, "time"),
    ("/score", {"user": True, "authors": [1]}, 422, "user"),               # bools are not ints
    ("/score", {"user": 1.0, "authors": [1]}, 422, "user"),
    ("/score", {"user": "1", "authors": [1]}, 422, "user"),
    ("/score", {"user": 10**30, "authors": [1]}, 422, "user"),
    ("/score", {"user": 1, "authors": [1, "x"]}, 422, "authors.1"),
    ("/score", {"user": 1, "authors": [1, -BOUND]}, 422, "authors.1"),
    ("/score", {"user": 1, "authors": []}, 422, "authors"),
    ("/score", {"user": 1, "authors": list(range(MAX_CANDIDATES + 1))}, 422, "authors"),
    ("/score", {"user": 1}, 422, "authors"),
    ("/score", {"user": 1, "authors": [1], "extra": 2}, 422, "extra"),
    ("/score", [1, 2], 422, "body"),
    ("/score/batch", {"requests": [{"user": 1, "authors": [1]}] * 3 + [{"user": 1, "authors": [1], "time": -1}]},
     422, "requests.3.time"),
    ("/score/batch", {"requests": [{"user": 1, "authors": [1]}] * (MAX_BATCH + 1)}, 422, "requests"),
    ("/score/batch", {"requests": []}, 422, "requests"),
    ("/score/batch", {"user": 1, "authors": [1]}, 422, "requests"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, path, body, code, field):
    r = client.post(path, json=body)
    assert r.status_code == code
    assert field in [e["field"] for e in r.json()["detail"]]


@pytest.mark.parametrize("content, content_type, code, field", [
    ('{"user": 1, "authors": [1], "time": 1' + "0" * 5000 + "}", "application/json", 422, "time"),   # past 4,300 digits
    ('{"user": NaN, "authors": [1]}', "application/json", 422, "body"),
    ('{"user": 1e400, "authors": [1]}', "application/json", 422, "user"),
    ("{not json", "application/json", 422, "body"),
    ("[" * 100_000 + "]" * 100_000, "application/json", 422, "body"),
    (b"\xff\xfe{", "application/json", 422, "body"),
    ("", "application/json", 422, "body"),
    ('{"user": 1, "authors": [1]}', "text/plain", 415, "content-type"),
    ('{"user": 1, "authors": [1]}', None, 415, "content-type"),
    ('{"user": 1, "authors": [' + "1," * 600_000 + "1]}", "application/json", 413, "body"),
])
def test_malformed_bodies_get_a_4xx_naming_the_field(client, content, content_type, code, field):
    r = _raw(client, "/score", content, content_type)
    assert r.status_code == code and [e["field"] for e in r.json()["detail"]] == [field]


def test_a_streamed_body_is_cut_at_1_mb(client):
    def chunks():
        yield b'{"user": 1, "authors": ['
        for _ in range(100):
            yield b"1," * 10_000
        yield b"1]}"

    r = _raw(client, "/score", chunks())                      # no Content-Length: counted as it comes
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"


# ---------------------------------------------------------------- property-based: the request models

IN_RANGE = st.integers(-BOUND + 1, BOUND - 1)
ids = st.one_of(st.integers(-3, 320), IN_RANGE)
valid_request = st.fixed_dictionaries({"user": ids, "authors": st.lists(ids, min_size=1, max_size=20)},
                                      optional={"time": st.one_of(st.none(), st.integers(0, 2000), st.integers(0, BOUND - 1))})
json_junk = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                                   st.integers(), st.integers(BOUND - 2, 10**40), st.text(max_size=4)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                 st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                         max_leaves=8)


def _is_id(v, lo=-BOUND + 1):
    return type(v) is int and lo <= v < BOUND


WRONG = {"user": json_junk.filter(lambda v: not _is_id(v)),
         "time": json_junk.filter(lambda v: v is not None and not _is_id(v, 0)),
         "authors": json_junk.filter(lambda v: not (isinstance(v, list) and 0 < len(v) and all(map(_is_id, v))))}


@st.composite
def broken_request(draw):
    """A valid request with one thing wrong, and the field an error must name."""
    req = draw(valid_request)
    how = draw(st.sampled_from(["wrong", "wrong_author", "missing", "extra"]))
    if how == "wrong":
        key = draw(st.sampled_from(sorted(WRONG)))
        req[key] = draw(WRONG[key])
        return req, key
    if how == "wrong_author":
        i = draw(st.integers(0, len(req["authors"]) - 1))
        req["authors"][i] = draw(WRONG["user"])
        return req, f"authors.{i}"
    if how == "missing":
        key = draw(st.sampled_from(["user", "authors"]))
        del req[key]
        return req, key
    key = draw(st.text(min_size=1, max_size=5).filter(lambda k: k not in ("user", "authors", "time")))
    req[key] = draw(json_junk)
    return req, key


def _assert_names(r, field):
    assert 400 <= r.status_code < 500, r.text
    fields = [e["field"] for e in r.json()["detail"]]
    assert all(fields) and any(f == field or f.startswith(field + ".") for f in fields), (field, fields)


FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(req=valid_request)
def test_valid_random_requests_are_answered(client, req):
    r = client.post("/score", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user"] == req["user"] and len(out["scores"]) + len(out["unknown_authors"]) == len(req["authors"])


@FEW
@given(reqs=st.lists(valid_request, min_size=1, max_size=6))
def test_valid_random_batches_are_answered_in_order(client, reqs):
    r = client.post("/score/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    assert [o["user"] for o in r.json()["results"]] == [q["user"] for q in reqs]


@FEW
@given(case=broken_request())
def test_broken_requests_name_the_field(client, case):
    req, field = case
    _assert_names(client.post("/score", json=req), field)


@FEW
@given(case=broken_request(), before=st.lists(valid_request, max_size=3))
def test_broken_batch_requests_name_the_field(client, case, before):
    req, field = case
    _assert_names(client.post("/score/batch", json={"requests": before + [req]}), f"requests.{len(before)}.{field}")


@FEW
@given(body=json_junk, path=st.sampled_from(["/score", "/score/batch"]))
def test_any_json_body_that_is_not_a_request_gets_a_4xx(client, body, path):
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500 and all(e["field"] for e in r.json()["detail"])


# ---------------------------------------------------------------- the real CLI, and the load test


def test_cli_serves_on_a_free_port_and_exits_0_on_sigterm(trained_run):
    from graphrec.bench.serve_http import ServerProcess, load_test

    server = ServerProcess(trained_run.run_dir, startup_s=120)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        good = json.dumps({"user": 3, "authors": [1, 2, 5]}).encode()
        res = load_test(server.url, [good] * 6 + [b'{"user": 3}'] * 2, clients=3)
        assert (res["requests"], res["ok"], res["errors"], res["error_kinds"]) == (8, 6, 2, {"422": 2})
        import urllib.request

        with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        req = urllib.request.Request(server.url + "/score", data=good, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.loads(r.read())["scores"]) == 3
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.lines)


def test_http_load_test_counts_requests_and_errors(trained_run, tmp_path, capsys):
    from graphrec.bench.__main__ import main as bench

    out = tmp_path / "serve_http.json"
    assert bench(["serve-http", "--run", str(trained_run.run_dir), "--requests", "12", "--clients", "3",
                  "--candidates", "15", "--batch", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["requests"], res["ok"], res["errors"], res["server_exit_code"]) == (12, 12, 0, 0)
    assert res["path"] == "/score/batch" and res["users_per_s"] == pytest.approx(2 * res["requests_per_s"])
    # the rate is the requests over the measured wall time, in which each client's round trips follow one another
    assert res["requests_per_s"] == res["requests"] / res["seconds"] and 0 < res["p50_ms"] <= res["p99_ms"]
    assert res["mean_ms"] * res["requests"] <= res["clients"] * res["seconds"] * 1000
    assert res["ms_per_user"] == pytest.approx(res["seconds"] * 1000 / (2 * res["requests"]))
    assert res["p50_ms_per_user"] == res["p50_ms"] / 2
    printed = capsys.readouterr().out
    assert "12 requests of 2 user(s) x 15 candidates" in printed and f"server start-up {res['startup_s']:.1f} s" in printed
    # the server holds the ranker's weights: its memory is at least their checkpoint's size, and peaks after start-up
    weights = (trained_run.run_dir / "checkpoints" / "ranker.pt").stat().st_size / 2**30
    assert weights < res["server_rss_gib_started"] <= res["server_peak_rss_gib"]


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    assert "not a trained run folder" in capsys.readouterr().err


def test_the_listening_socket_names_tcp_so_asyncio_turns_nagle_off():
    from graphrec.serve import _listen

    with _listen("127.0.0.1", 0) as sock:       # proto 0 would leave Nagle on: +40 ms per keep-alive request
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0


def test_cli_refuses_a_bad_port_and_a_port_in_use(trained_run, capsys):
    assert main(["--run", str(trained_run.run_dir), "--port", "70000"]) == 2
    assert "not a port number" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--run", str(trained_run.run_dir), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
