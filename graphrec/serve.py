"""``python -m graphrec.serve --run runs/<dir> [--port 8080]``: score live rooms for a viewer over HTTP.

Loads a trained run from its folder: the ranker (``checkpoints/ranker.pt``), the node embeddings Θ
(``checkpoints/graphcl.pt``), the forecasters, the offline expansion cache (``expansions.npz``: the
paper's offline walk) and the run's dataset for side features, segment tokens and histories.
Checkpoints are read with ``torch.load(weights_only=True)``. The server binds to 127.0.0.1.

``POST /score`` with ``{"user": 12, "authors": [3, 7, 9], "time": 1700000000}`` (``time`` optional,
default: the end of the data) answers ``{"user": 12, "cold_start": false, "scores": [{"author": 7,
"gift": 0.031, ...}, ...], "unknown_authors": []}``, sorted by the main task. An unknown user is
scored by the authors' training popularity (``cold_start: true``); unknown authors are listed, not
scored. Malformed requests get a 400 with a message; ``GET /health`` answers ``{"status": "ok"}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .errors import DataError, UserError


class AuthorSideCache:
    """What a score needs from the room alone, computed once and kept across requests and viewers:
    MFQ's ``h_m`` of the segment on air and the statistic forecaster's features of the current step.

    Valid because a served model does not change. Entries are keyed by (author, segment) and
    (author, step), so a room that moves to its next segment or step is recomputed; the oldest
    entries go first beyond ``max_entries`` per kind."""

    def __init__(self, model, builder, max_entries: int = 200_000) -> None:
        from collections import OrderedDict

        self.model, self.builder, self.max_entries = model, builder, max_entries
        self.mfq: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self.stat: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self.hits = self.misses = 0

    def _remember(self, table, key, value) -> None:
        table[key] = value
        while len(table) > self.max_entries:
            table.popitem(last=False)

    @torch.no_grad()
    def build(self, u: np.ndarray, a: np.ndarray, t: np.ndarray) -> Dict[str, Any]:
        """The batch ``builder.build(u, a, t)`` would give, with ``mfq_out`` in place of the tokens."""
        b = self.builder
        batch = b.build(u, a, t, author_side=False)
        at = torch.from_numpy(a)
        use_mfq = self.model.mfq is not None
        use_stat = bool(b.cfg.stat_input_steps) and b.stat_model is not None
        keys_m = list(zip(a.tolist(), b.segment_rows(a, t).tolist())) if use_mfq else []
        keys_s = list(zip(a.tolist(), b.stat_steps(at, t).tolist())) if use_stat else []
        got_m = {k: self.mfq[k] for k in keys_m if k in self.mfq}
        got_s = {k: self.stat[k] for k in keys_s if k in self.stat}
        miss = [i for i in range(len(a)) if (use_mfq and keys_m[i] not in got_m) or (use_stat and keys_s[i] not in got_s)]
        self.hits += len(a) - len(miss)
        self.misses += len(miss)
        if miss:
            idx = np.array(miss)
            full = b.room_features(a[idx], t[idx])             # the room parts only, for the misses
            h = self.model.mfq(full["tokens"], at[idx]) if use_mfq else None
            for j, i in enumerate(miss):
                if use_mfq:
                    got_m[keys_m[i]] = h[j]
                    self._remember(self.mfq, keys_m[i], h[j])
                if use_stat:
                    got_s[keys_s[i]] = full["stat_feat"][j]
                    self._remember(self.stat, keys_s[i], full["stat_feat"][j])
        if use_mfq:
            batch["mfq_out"] = torch.stack([got_m[k] for k in keys_m])
        if use_stat:
            batch["stat_feat"] = torch.stack([got_s[k] for k in keys_s])
        return batch


class Scorer:
    """A trained run, ready to score (user, candidate authors) requests."""

    def __init__(self, run_dir: Path) -> None:
        import logging

        from .checkpoint import load_checkpoint
        from .config import load_config
        from .data.dataset import SPLITS, load_dataset
        from .data.split import time_split
        from .gie.metapath import METAPATHS
        from .models.product_forecaster import ProductForecaster
        from .models.ranker import Ranker, RankerSpec
        from .models.stat_forecaster import StatForecaster
        from .ranking.stage import build_ranker
        from .stage import RunContext

        run_dir = Path(run_dir)
        for need in ("config.yaml", "metrics.json", "checkpoints/ranker.pt"):
            if not (run_dir / need).exists():
                raise DataError(f"{run_dir}: not a trained run folder ({need} missing)")
        cfg = load_config(run_dir / "config.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        ds = load_dataset(Path(metrics["data"]["path"]))
        if "split" not in ds.impressions:
            ds.impressions["split"] = time_split(ds.impressions["time"], cfg.data.val_fraction, cfg.data.test_fraction)
        mods = metrics["ranker"]["modules"]
        state: Dict[str, Any] = {}
        if mods["metapaths"]:
            with np.load(run_dir / "expansions.npz", allow_pickle=False) as npz:
                state["expansions"] = {m: npz[m] for m in METAPATHS if m in npz.files}
        if mods["theta_pretrained"]:
            state["theta"] = load_checkpoint(run_dir / "checkpoints" / "graphcl.pt")["theta"]
        if mods["stat_forecast"]:
            state["stat_forecaster"] = StatForecaster.from_checkpoint(run_dir / "checkpoints" / "stat_forecast.pt")
        if mods["product_forecast"]:
            state["product_forecaster"] = ProductForecaster.from_checkpoint(run_dir / "checkpoints" / "product_forecast.pt")
        self._tmp = tempfile.TemporaryDirectory(prefix="graphrec-serve-")
        ctx = RunContext(cfg=cfg, run_dir=Path(self._tmp.name), log=logging.getLogger("graphrec.serve"),
                         writer=None, device="cpu", progress=False, state={**state, "dataset": ds})
        _, self.builder, spec = build_ranker(ctx, mods)
        ck = load_checkpoint(run_dir / "checkpoints" / "ranker.pt")
        if RankerSpec(**ck["spec"]) != spec:
            raise DataError(f"{run_dir}: checkpoints/ranker.pt does not match the run's data and config")
        self.model = Ranker(spec)
        self.model.load_state_dict(ck["state_dict"])
        self.model.eval()
        self.author_cache = AuthorSideCache(self.model, self.builder)
        self.tasks = spec.tasks
        self.main = ds.meta.get("main_label", self.tasks[0])
        self.num_users, self.num_authors = ds.num_users, ds.num_authors
        self.default_time = int(ds.impressions["time"].max())
        train = ds.impressions["split"] == SPLITS["train"]
        self.popularity = np.bincount(ds.impressions["author"][train],
                                      weights=ds.impressions[self.main][train].astype(np.float64),
                                      minlength=ds.num_authors) / max(train.sum(), 1)
        self.lock = threading.Lock()          # torch modules are not meant to run concurrently

    def score(self, request: Dict[str, Any]) -> Dict[str, Any]:
        user, authors, time = parse_request(request)
        known = [a for a in authors if 0 <= a < self.num_authors]
        unknown = [a for a in authors if not 0 <= a < self.num_authors]
        cold = not 0 <= user < self.num_users
        if not known:
            scores: List[Dict[str, Any]] = []
        elif cold:
            scores = [{"author": a, self.main: float(self.popularity[a])} for a in known]
        else:
            a = np.array(known, dtype=np.int64)
            with self.lock, torch.no_grad():
                batch = self.author_cache.build(np.full(len(a), user, dtype=np.int64), a,
                                                np.full(len(a), self.default_time if time is None else time,
                                                        dtype=np.int64))
                p = torch.sigmoid(self.model(batch)).numpy()
            scores = [{"author": int(x), **{t: float(p[i, j]) for j, t in enumerate(self.tasks)}} for i, x in enumerate(a)]
        scores.sort(key=lambda r: -r[self.main])
        return {"user": user, "cold_start": cold, "main_task": self.main, "scores": scores, "unknown_authors": unknown}


def parse_request(request: Any):
    """``(user, authors, time)`` from a request body, or :class:`UserError` saying what is wrong."""
    if not isinstance(request, dict):
        raise UserError("the body must be a JSON object with 'user' and 'authors'")
    unknown_keys = set(request) - {"user", "authors", "time"}
    if unknown_keys:
        raise UserError(f"unknown field(s) {sorted(unknown_keys)}; expected 'user', 'authors' and optional 'time'")
    user = request.get("user")
    if isinstance(user, bool) or not isinstance(user, int):
        raise UserError("'user' must be an integer user id")
    authors = request.get("authors")
    if not isinstance(authors, list) or not authors or any(isinstance(a, bool) or not isinstance(a, int) for a in authors):
        raise UserError("'authors' must be a non-empty list of integer author ids")
    if len(authors) > 10_000:
        raise UserError("'authors' holds more than 10,000 candidates")
    time = request.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, int)):
        raise UserError("'time' must be an integer (seconds, as in the dataset)")
    return user, authors, time


def make_handler(scorer: Scorer):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._reply(200, {"status": "ok"})
            elif self.path == "/score":
                self._reply(405, {"error": "use POST /score with a JSON body"})
            else:
                self._reply(404, {"error": f"no such path {self.path!r}; use POST /score or GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                self._reply(404, {"error": f"no such path {self.path!r}; use POST /score"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self._reply(400, {"error": "invalid Content-Length"})
                return
            if length <= 0 or length > 1_000_000:
                self._reply(400 if length <= 0 else 413, {"error": "the body must be 1 byte to 1 MB of JSON"})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._reply(400, {"error": f"malformed JSON: {exc}"})
                return
            try:
                self._reply(200, scorer.score(request))
            except UserError as exc:
                self._reply(400, {"error": str(exc)})

        def log_message(self, fmt: str, *args) -> None:   # quiet by default
            pass

    return Handler


def make_server(scorer: Scorer, port: int = 8080) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(scorer))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (runs/<name>-<time>)")
    ap.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0 = any free port)")
    args = ap.parse_args(argv)
    try:
        scorer = Scorer(Path(args.run))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = make_server(scorer, args.port)
    print(f"serving {args.run} on http://127.0.0.1:{server.server_address[1]}  (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
