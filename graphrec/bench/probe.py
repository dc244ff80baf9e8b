"""``python -m graphrec.bench probe --run RUN_DIR``: how much of a trained ranker's score comes from each input.

Each probe blanks one input at evaluation time — no retraining — and scores the split again with the
dataset's headline metric (Recall@K of the ranker's own full ranking for implicit data, the main label's AUC
and GAUC for impression logs): the histories (empty), the graph features (zero Θ, no expansions: a user
without gifts), the room's content (no tokens on air: MFQ sees only the author's query), the user-id
embedding and the author-id embedding (zeroed; the author ids also embed the history entries), the room
statistics and activity features (zeroed). A large drop says the model leans on that input; none says it
ignores it. Selection stays on validation: probe ``--split val`` (the default). ``--weights last`` probes the
last epoch's weights (``checkpoints/ranker_last.pt``) instead of the best epoch's: what the model came to lean on
as it went on training.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from . import write_results

PAD = -1


def _blank_user(what: str, up):
    if what == "histories":
        up.hist = {k: torch.full_like(v, PAD) for k, v in up.hist.items()}
        up.hist_code = {k: torch.zeros_like(v) for k, v in up.hist_code.items()}
    elif what == "graph":
        if up.theta is not None:
            up.theta = torch.zeros_like(up.theta)
        up.exp = {k: torch.full_like(v, PAD) for k, v in up.exp.items()}
        up.exp_theta = {k: torch.zeros_like(v) for k, v in up.exp_theta.items()}
    elif what == "activity" and up.activity is not None:
        up.activity = torch.zeros_like(up.activity)
    return up


def _blank_room(what: str, rp):
    if what == "graph":
        if rp.theta is not None:
            rp.theta = torch.zeros_like(rp.theta)
        rp.exp = {k: torch.full_like(v, PAD) for k, v in rp.exp.items()}
        rp.exp_theta = {k: torch.zeros_like(v) for k, v in rp.exp_theta.items()}
    elif what == "content":
        rp.tokens = {k: (x, torch.zeros_like(mask)) for k, (x, mask) in rp.tokens.items()}
    elif what == "activity":
        for name in ("stat", "realtime", "popularity", "prod_probs", "prod_enc"):
            if getattr(rp, name) is not None:
                setattr(rp, name, torch.zeros_like(getattr(rp, name)))
    return rp


@contextlib.contextmanager
def blanked(model, builder, what: str):
    """Within the block, every batch ``builder`` makes (and ``model``'s id tables, for ``user id`` /
    ``author id``) have input ``what`` blanked."""
    saved: List[Callable[[], None]] = []
    if what in ("user id", "author id"):
        emb = model.user_emb if what == "user id" else model.author_emb
        if emb is not None:
            old = emb.weight.data.clone()
            emb.weight.data.zero_()
            saved.append(lambda: emb.weight.data.copy_(old))
    else:
        real_user, real_room, real_both = builder.user_part, builder.room_part, builder._both_sides

        def user_part(*a, **k):
            return _blank_user(what, real_user(*a, **k))

        def room_part(*a, **k):
            return _blank_room(what, real_room(*a, **k))

        def both(*a, **k):
            up, rp = real_both(*a, **k)
            return _blank_user(what, up), _blank_room(what, rp)

        builder.user_part, builder.room_part, builder._both_sides = user_part, room_part, both
        saved.append(lambda: [delattr(builder, n) for n in ("user_part", "room_part", "_both_sides")])
    try:
        yield
    finally:
        for undo in saved:
            undo()


PROBES = ("histories", "graph", "content", "activity", "user id", "author id")


def probe(run, split: str = "val", probes=PROBES) -> Dict[str, Dict[str, float]]:
    """``{probe: {metric: value}}`` with ``"none"`` the unblanked model; probes the run cannot have are left out."""
    from ..evaluation import impression_metrics, topk_metrics

    ds, cfg = run.dataset, run.cfg
    mods = run.modules

    def score() -> Dict[str, float]:
        scorer = run.scorer()
        if ds.implicit:
            rep = topk_metrics(scorer, ds, split, cfg.eval.k) or {}
            return {k: float(v) for k, v in rep.items() if "@" in k}
        rep = impression_metrics(scorer, ds, split, cfg.eval.negatives, cfg.run.seed + 1).get(ds.main_label, {})
        return {k: float(v) for k, v in rep.items()}

    has = {"graph": bool(mods.get("metapaths")), "content": bool(mods.get("modalities")),
           "user id": run.ranker.user_emb is not None}
    out = {"none": score()}
    for what in probes:
        if not has.get(what, True):
            continue
        with torch.no_grad(), blanked(run.ranker, run.builder, what):
            out[what] = score()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from ..reload import load_run

    ap = argparse.ArgumentParser(prog="python -m graphrec.bench probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--weights", default="best", choices=["best", "last"],
                    help="the best validation epoch's weights (the run's ranker) or the last epoch's")
    ap.add_argument("--out", help="JSON results (default runs/bench/probe.json)")
    args = ap.parse_args(argv)
    run = load_run(args.run)
    if args.weights == "last":
        from ..checkpoint import load_checkpoint

        last = load_checkpoint(Path(args.run) / "checkpoints" / "ranker_last.pt")
        run.ranker.load_state_dict(last["model"])
        print(f"{args.run}: the weights after epoch {last['epoch'] + 1} (the best was epoch {last['best_epoch']})")
    res = probe(run, args.split)
    keys = list(res["none"])
    print(f"{args.run}: {args.split} split, one input blanked at evaluation time")
    print(f"{'blanked':12s} " + " ".join(f"{k:>12s}" for k in keys))
    for what, rep in res.items():
        print(f"{what:12s} " + " ".join(f"{rep.get(k, float('nan')):12.4f}" for k in keys))
    write_results({"run": args.run, "split": args.split, "weights": args.weights, "probes": res},
                  args.out or "runs/bench/probe.json")
    return 0
