"""Do GIE's expansions find a viewer's fan club? (the diagnosis in docs/results.md, "Why the graph half does
not pay here").

For a simulated run with patronage (``simulate.weight_patronage`` > 0), per bucket of the viewer's training
gifts, the share of streamers in the viewer's own fan club among: the user-side author expansions of the
last graph snapshot (``u2a2u2a``, ``u2a2a``), the viewer's own training gifts, their test gifts, and the
rooms they were shown in test. A walk that recovers the club lands in it about as often as the gifts do;
one that follows popularity lands in it about as often as the shown rooms.

    python scripts/expansion_purity.py runs/<run folder>
"""
import argparse
from pathlib import Path

import numpy as np

from graphrec.reload import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder of the simulator (with expansions.npz)")
    args = ap.parse_args()
    run = load_run(args.run)                  # the dataset with its split, the expansions, from any directory
    ds = run.dataset
    if "fan_club" not in ds.tables["users"]:
        raise SystemExit(f"{ds.path}: a world without patronage (simulate.weight_patronage=0) has no fan clubs")
    if "expansions" not in run.artifacts:
        raise SystemExit(f"{args.run}: the run used no metapath expansion (ranker.use_gie=false)")
    exp = {k: run.artifacts["expansions"][k] for k in ("u2a2u2a", "u2a2a")}
    club_u, club_a = ds.tables["users"]["fan_club"], ds.tables["authors"]["fan_club"]
    imp = ds.impressions
    label = ds.main_label
    train_gift = (imp["split"] == 0) & (imp[label] > 0)
    test = imp["split"] == 2
    gifts = np.bincount(imp["user"][train_gift], minlength=len(club_u))

    def share(authors_of, users):
        s = [np.mean(club_a[a] == club_u[u]) for u in users for a in [authors_of(u)] if len(a)]
        return f"{np.mean(s):.3f} (n={len(s)})" if s else "–"

    by_user = {name: np.split(imp["author"][w][np.argsort(imp["user"][w], kind="stable")],
                              np.cumsum(np.bincount(imp["user"][w], minlength=len(club_u)))[:-1])
               for name, w in (("train gifts", train_gift), ("test gifts", test & (imp[label] > 0)), ("test shown", test))}
    print("share of streamers in the viewer's own fan club")
    for lo, hi, bucket in ((0, 0, "0"), (1, 2, "1-2"), (3, None, "3+")):
        users = np.flatnonzero((gifts >= lo) & (gifts <= (hi if hi is not None else gifts.max())))
        row = {name: share(lambda u, e=e: e[u, -1][e[u, -1] >= 0] if e.ndim == 3 else e[u][e[u] >= 0], users)
               for name, e in exp.items()}
        row.update({name: share(lambda u, a=a: a[u], users) for name, a in by_user.items()})
        print(f"viewers with {bucket} training gifts ({len(users)}): " + ", ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
