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


class SegmentCache:
    """MFQ's ``h_m`` per segment on air, computed once and kept across requests and viewers.

    Valid because a served model does not change and ``h_m`` depends on the segment (and its
    author) alone; a room that moves to its next segment is a new key. The oldest entries go first
    beyond ``max_entries``. Installed as the model's ``segment_cache``."""

    def __init__(self, max_entries: int = 200_000) -> None:
        from collections import OrderedDict

        self.max_entries = max_entries
        self.table: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        self.hits = self.misses = 0

    def vectors(self, mfq, tokens, seg_author: torch.Tensor, seg_key: torch.Tensor) -> torch.Tensor:
        keys = seg_key.tolist()
        got = {k: self.table[k] for k in keys if k in self.table}
        miss = [i for i, k in enumerate(keys) if k not in got]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        if miss:
            idx = torch.tensor(miss, dtype=torch.long)
            h = mfq({m: (x[idx], mask[idx]) for m, (x, mask) in tokens.items()}, seg_author[idx])
            for j, i in enumerate(miss):
                got[keys[i]] = self.table[keys[i]] = h[j]
                while len(self.table) > self.max_entries:
                    self.table.popitem(last=False)
        return torch.stack([got[k] for k in keys])


class Scorer:
    """A trained run, ready to score (user, candidate authors) requests."""

    def __init__(self, run_dir: Path) -> None:
        from .evaluation import Popularity, split_mask
        from .reload import load_run

        self.run = load_run(run_dir)
        self.model, self.builder = self.run.ranker, self.run.builder
        self.segment_cache = SegmentCache()
        self.model.segment_cache = self.segment_cache
        self.rank = self.run.scorer()
        ds = self.run.dataset
        self.tasks = ds.labels
        self.main = ds.main_label
        self.num_users, self.num_authors = ds.num_users, ds.num_authors
        self.default_time = int(ds.impressions["time"].max())
        self.popularity = Popularity(ds, self.main, split_mask(ds, "train"))
        self.lock = threading.Lock()          # torch modules are not meant to run concurrently

    def score(self, request: Dict[str, Any]) -> Dict[str, Any]:
        user, authors, time = parse_request(request)
        known = [a for a in authors if 0 <= a < self.num_authors]
        unknown = [a for a in authors if not 0 <= a < self.num_authors]
        cold = not 0 <= user < self.num_users
        if not known:
            scores: List[Dict[str, Any]] = []
        elif cold:
            rate = self.popularity.rates[known]
            scores = [{"author": a, **{t: float(rate[i, j]) for j, t in enumerate(self.tasks)}}
                      for i, a in enumerate(known)]
        else:
            a = np.array(known, dtype=np.int64)
            t = np.full(len(a), self.default_time if time is None else time, dtype=np.int64)
            with self.lock, torch.no_grad():
                logits = self.model(self.builder.pairs(np.full(len(a), user, dtype=np.int64), a, t))[:, 0]
                p = torch.sigmoid(logits[:, self.rank.label_heads]).numpy()
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
    if time is not None and (isinstance(time, bool) or not isinstance(time, int) or not 0 <= time < 2**62):
        raise UserError("'time' must be an integer number of seconds in [0, 2**62), as in the dataset")
    if not -2**62 < user < 2**62 or any(not -2**62 < a < 2**62 for a in authors):
        raise UserError("ids must be integers in (-2**62, 2**62)")
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
