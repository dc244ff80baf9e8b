"""``python -m graphrec.serve --run runs/<dir> [--host H] [--port P]``: score live rooms for viewers over HTTP.

Loads a trained run from its folder: the ranker (``checkpoints/ranker.pt``), the node embeddings Θ
(``checkpoints/graphcl.pt``), the forecasters, the offline expansion cache (``expansions.npz``: the
paper's offline walk) and the run's dataset for side features, segment tokens and histories.
Checkpoints are read with ``torch.load(weights_only=True)``. The server (FastAPI on uvicorn) binds
to 127.0.0.1 unless ``--host`` says otherwise; ``--port 0`` takes any free port.

``POST /score`` with ``{"user": 12, "authors": [3, 7, 9], "time": 1700000000}`` (``time`` optional,
default: the end of the data) answers ``{"user": 12, "cold_start": false, "main_task": "gift",
"scores": [{"author": 7, "gift": 0.031, ...}, ...], "unknown_authors": []}``, sorted by the main
task. ``POST /score/batch`` with ``{"requests": [<score request>, ...]}`` answers ``{"results":
[...]}`` in order, scored in one pass. An unknown user is scored by the authors' training popularity
(``cold_start: true``); unknown authors are listed, not scored. A request that is not valid gets a
422 whose ``detail`` names each wrong field (``"field": "requests.3.time"``); a body over 1 MB a 413,
a body not sent as ``Content-Type: application/json`` a 415. ``GET /health`` answers
``{"status": "ok"}``; the schema is at ``/openapi.json``, the docs at ``/docs``.
"""
from __future__ import annotations

import argparse
import gc
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model

from .errors import command

MAX_BODY_BYTES = 1_000_000
MAX_CANDIDATES = 10_000          # authors in one request
MAX_BATCH = 256                  # requests in one batch
ID_BOUND = 2**62                 # ids and times must fit int64 arithmetic with room to spare

Id = Annotated[int, Field(gt=-ID_BOUND, lt=ID_BOUND)]


class ScoreRequest(BaseModel):
    """One viewer and the candidate authors to rank. Strict: ``true`` or ``1.0`` are not ids."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user: Id = Field(description="user id; an id the run does not know is scored by popularity")
    authors: List[Id] = Field(min_length=1, max_length=MAX_CANDIDATES,
                              description="candidate author ids; ids the run does not know are listed, not scored")
    time: Optional[Annotated[int, Field(ge=0, lt=ID_BOUND)]] = Field(
        None, description="seconds, as in the dataset; default: the end of the data")


class BatchRequest(BaseModel):
    """Many viewers at once; answered in order, in one pass through the model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests: List[ScoreRequest] = Field(min_length=1, max_length=MAX_BATCH)


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the wrong field: 'requests.3.time', 'body' or 'content-type'")
    loc: List[Union[str, int]]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every 413, 415 and 422 answer."""

    detail: List[FieldError]


ERRORS = {422: {"model": ErrorResponse, "description": "not a valid request (malformed JSON included)"},
          413: {"model": ErrorResponse, "description": f"body over {MAX_BODY_BYTES:,} bytes"},
          415: {"model": ErrorResponse, "description": "body not sent as Content-Type: application/json"}}


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
    """A trained run, ready to score (user, candidate authors) requests; knows nothing of HTTP.

    A batch of requests is scored with the work of each part done once for the whole batch: the user
    side once per distinct (user, time), the author side once per distinct (author, time) (MFQ's ``h_m``
    once per segment, through the :class:`SegmentCache`), and only the pair part (target attention and
    the MLP tower) per (request, candidate). A single request is a batch of one."""

    # Pairs per forward pass (padding included): a batch is cut into passes no larger than the largest
    # single request, so it needs no more memory than one.
    max_pairs_per_forward = MAX_CANDIDATES

    def __init__(self, run_dir: Path) -> None:
        from .evaluation import Popularity, split_mask
        from .reload import load_run

        self.run = load_run(run_dir)
        self.model, self.builder = self.run.ranker, self.run.builder
        self.segment_cache = SegmentCache()
        self.model.segment_cache = self.segment_cache
        self.rank = self.run.scorer()
        ds = self.run.dataset
        self.tasks = list(ds.labels)
        self.main = ds.main_label
        self.num_users, self.num_authors = ds.num_users, ds.num_authors
        self.default_time = int(ds.impressions["time"].max())
        self.popularity = Popularity(ds, self.main, split_mask(ds, "train"))
        self.lock = threading.Lock()          # torch modules are not meant to run concurrently

    def score(self, request: ScoreRequest) -> Dict[str, Any]:
        return self.score_batch([request])[0]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> List[Dict[str, Any]]:
        """One answer per request, in order; every known user's candidates go through the model together."""
        results, warm = [], []
        for r in requests:
            known = [a for a in r.authors if 0 <= a < self.num_authors]
            cold = not 0 <= r.user < self.num_users
            res = {"user": r.user, "cold_start": cold, "main_task": self.main, "scores": [],
                   "unknown_authors": [a for a in r.authors if not 0 <= a < self.num_authors]}
            results.append(res)
            if known and cold:
                res["scores"] = self._rows(known, self.popularity.rates[known])
            elif known:
                warm.append((res, r.user, known, self.default_time if r.time is None else r.time))
        if warm:
            blocks = self._probabilities(np.array([w[1] for w in warm], dtype=np.int64),
                                         [np.asarray(w[2], dtype=np.int64) for w in warm],
                                         np.array([w[3] for w in warm], dtype=np.int64))
            for (res, _, known, _), block in zip(warm, blocks):
                res["scores"] = self._rows(known, block)
        for res in results:
            res["scores"].sort(key=lambda s: -s[self.main])
        return results

    def _passes(self, sizes: Sequence[int]) -> List[List[Tuple[int, int, int]]]:
        """The batch cut into forward passes: lists of ``(request, start, stop)`` slices of the requests'
        candidates, each pass at most ``max_pairs_per_forward`` pairs once its slices are padded to its
        widest. A request wider than that is cut; slices go widest first, so like widths share a pass."""
        step = max(1, int(self.max_pairs_per_forward))
        pieces = [(r, s, min(s + step, int(n))) for r, n in enumerate(sizes) for s in range(0, int(n), step)]
        pieces.sort(key=lambda x: x[1] - x[2])                    # widest first (stable)
        passes: List[List[Tuple[int, int, int]]] = []
        for piece in pieces:                                      # a pass's first slice is its widest
            if passes and (len(passes[-1]) + 1) * (passes[-1][0][2] - passes[-1][0][1]) <= step:
                passes[-1].append(piece)
            else:
                passes.append([piece])
        return passes

    def _probabilities(self, users: np.ndarray, authors: List[np.ndarray], times: np.ndarray) -> List[np.ndarray]:
        """Label probabilities ``[len(authors[i]), labels]`` of each request ``i``: user ``users[i]`` at
        ``times[i]`` against ``authors[i]``. The user side is built and run once per distinct (user, time) of
        the batch, the author side once per pass and distinct (author, time) (MFQ through the segment cache);
        only the pair part (target attention, the tower) runs per (request, candidate)."""
        model, builder, heads = self.model, self.builder, self.rank.label_heads
        sizes = [len(a) for a in authors]
        tkeys, tidx = np.unique(times, return_inverse=True)
        nt, tidx = len(tkeys), tidx.reshape(-1)     # (id, time) keys: id * nt + time index (known ids are small)
        ukeys, urow = np.unique(users * nt + tidx, return_inverse=True)
        urow = urow.reshape(-1)
        out = [np.empty((n, len(heads)), dtype=np.float32) for n in sizes]
        with self.lock, torch.no_grad():
            ur = model.user_side(builder.user_part(ukeys // nt, tkeys[ukeys % nt]))
            for pieces in self._passes(sizes):
                keys = np.concatenate([authors[r][s:e] * nt + tidx[r] for r, s, e in pieces])
                ckeys, cinv = np.unique(keys, return_inverse=True)
                ar = model.author_side(builder.room_part(ckeys // nt, tkeys[ckeys % nt]))
                cand = np.zeros((len(pieces), pieces[0][2] - pieces[0][1]), dtype=np.int64)   # padding: candidate 0
                for i, chunk in enumerate(np.split(cinv.reshape(-1), np.cumsum([e - s for _, s, e in pieces])[:-1])):
                    cand[i, :len(chunk)] = chunk
                rows = torch.from_numpy(urow[[r for r, _, _ in pieces]])
                p = torch.sigmoid(model.logits(_user_rows(ur, rows), ar, torch.from_numpy(cand))[:, :, heads]).numpy()
                for i, (r, s, e) in enumerate(pieces):
                    out[r][s:e] = p[i, :e - s]                  # the padding is dropped
        return out

    def _rows(self, authors: List[int], p: np.ndarray) -> List[Dict[str, Any]]:
        return [{"author": int(a), **dict(zip(self.tasks, row))} for a, row in zip(authors, p.tolist())]


def _user_rows(ur, rows: torch.Tensor):
    """The rows ``rows`` of a user side (a ``UserRep``), each behaviour history cut to the longest of these
    rows (histories are left-aligned), so a pass's attention costs its own longest history, as the
    builder trims a batch's."""
    hist_ids, hist_emb = {}, {}
    for name, ids in ur.hist_ids.items():
        ids = ids[rows]
        valid = (ids >= 0).any(0).nonzero()
        n = int(valid[-1]) + 1 if len(valid) else 1
        hist_ids[name], hist_emb[name] = ids[:, :n], ur.hist_emb[name][rows, :n]
    return ur._replace(fields=ur.fields[rows], hist_emb=hist_emb, hist_ids=hist_ids,
                       seqs={k: v[rows] for k, v in ur.seqs.items()},
                       seq_ids={k: v[rows] for k, v in ur.seq_ids.items()},
                       bias=None if ur.bias is None else ur.bias[rows])


# ---------------------------------------------------------------- HTTP


def _error(field: str, msg: str, kind: str, loc: Sequence[Any] = ()) -> Dict[str, Any]:
    return {"field": field, "loc": list(loc) or [field], "msg": msg, "type": kind}


def _field_errors(exc: RequestValidationError, limit: int = 50) -> List[Dict[str, Any]]:
    """FastAPI's errors without their ``input`` (it may be 1 MB, or NaN, which is not JSON), each with
    the dotted path of the field (``requests.3.time``)."""
    out = []
    for e in exc.errors()[:limit]:
        loc = [p if isinstance(p, (int, str)) else str(p) for p in e.get("loc", ())]
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            out.append(_error("body", f"the body is not valid JSON: {reason}", "json_invalid", ["body"]))
            continue
        path = loc[1:] if loc[:1] == ["body"] else loc
        out.append(_error(".".join(map(str, path)) or "body", str(e.get("msg", "invalid")), str(e.get("type")), loc))
    return out


def _bounded_int(text: str) -> int:
    """JSON integers past 40 digits become 10**40 (out of every range: the field is named), instead of
    Python's ValueError past 4,300 digits, which names nothing."""
    return int(text) if len(text) <= 40 else (-1 if text.startswith("-") else 1) * 10**40


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, parse_int=_bounded_int, parse_constant=_no_constant)
            except json.JSONDecodeError:
                raise
            except (ValueError, RecursionError) as exc:   # bad UTF-8, NaN, nesting past the stack
                raise json.JSONDecodeError(str(exc) if not isinstance(exc, RecursionError) else "nested too deeply",
                                           "", 0) from None
        return self._json


class _JSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :class:`_JSONRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route_handler(request: Request):
            return await handler(_JSONRequest(request.scope, request.receive))

        return route_handler


class _BodyGuard:
    """413 for a body over ``max_bytes`` (by its Content-Length, or counted as it streams in) and 415 for
    one not sent as JSON, before FastAPI reads it: the limit must hold before the body is in memory."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get(b"content-length", "")
        if length.strip().isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": [self._too_large()]}, status_code=413)(scope, receive, send)
            return
        media = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if not (media == "application/json" or media.endswith("+json")):
            err = _error("content-type", f"send the body as JSON with the header 'Content-Type: application/json' "
                         f"(got {media or 'none'})", "unsupported_media_type", ["header", "content-type"])
            await JSONResponse({"detail": [err]}, status_code=415)(scope, receive, send)
            return
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, detail=[self._too_large()])
            return message

        await self.app(scope, bounded_receive, send)

    def _too_large(self) -> Dict[str, Any]:
        return _error("body", f"the body is over {self.max_bytes:,} bytes; send fewer requests or candidates "
                      f"per call", "too_large")


def make_app(scorer: Scorer) -> FastAPI:
    """The HTTP service around ``scorer``. Endpoints are sync, so FastAPI runs them in its thread pool;
    ``scorer`` serializes the model work with its lock."""
    score_fields = {t: (float, Field(description=f"P({t})")) for t in scorer.tasks}
    AuthorScore = create_model("AuthorScore", author=(int, Field(description="author id")), **score_fields)
    ScoreResponse = create_model(
        "ScoreResponse", user=(int, ...), cold_start=(bool, Field(description="unknown user: popularity scores")),
        main_task=(str, ...), scores=(List[AuthorScore], Field(description="sorted by the main task, best first")),
        unknown_authors=(List[int], Field(description="ids the run does not know, not scored")))
    BatchResponse = create_model("BatchResponse", results=(List[ScoreResponse], Field(description="in request order")))

    app = FastAPI(title="graphrec scoring", version="1",
                  description=f"Gift prediction for live rooms; main task: {scorer.main}. Invalid requests get "
                              f"a 422 naming each wrong field; bodies over {MAX_BODY_BYTES:,} bytes a 413.")
    app.router.route_class = _JSONRoute
    app.add_middleware(_BodyGuard, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)

    @app.get("/health")
    def health() -> Dict[str, str]:
        return {"status": "ok"}

    @app.post("/score", response_model=ScoreResponse, responses=ERRORS)
    def score(request: ScoreRequest):
        return scorer.score(request)

    @app.post("/score/batch", response_model=BatchResponse, responses=ERRORS)
    def score_batch(batch: BatchRequest):
        return {"results": scorer.score_batch(batch.requests)}

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket: created here so that ``--port 0`` can report the port it got. Its protocol is
    named (IPPROTO_TCP): asyncio sets TCP_NODELAY only on such sockets, and without it Nagle's algorithm
    and delayed ACKs add ~40 ms to every keep-alive request."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m graphrec.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder (runs/<name>-<time>)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0-65535)", file=sys.stderr)
        return 2
    scorer = Scorer(Path(args.run))
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn.Config(make_app(scorer), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=10))
    # The loaded run is some 10^5 objects that live as long as the server: kept out of the garbage
    # collector's full passes, which would otherwise walk them all every few requests (~0.1 s each).
    gc.collect()
    gc.freeze()
    # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal to the handler it found: this one
    # (not the default, which would kill the process) makes a signalled shutdown exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {args.run} on {url}  (POST /score, POST /score/batch, GET /health, docs at /docs)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
