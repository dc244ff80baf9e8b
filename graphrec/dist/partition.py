"""``python -m graphrec.partition --cfg yaml/<x>.yaml --num-parts N``

Prepares a distributed run: the stages before the ranker, then the partitioned heterograph with
every ranker feature as node data, in ``dist.part_dir`` (see :mod:`graphrec.dist.prepare`).
Copy that folder to every machine (the same path), then start ``python -m graphrec.launch`` there.
"""
# Users type ``python -m graphrec.partition``: graphrec/partition.py only runs this module, to keep that name.
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..config import load_config
from ..errors import command


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m graphrec.partition", description='Partition the gifting graph and every ranker feature for a distributed run (graphrec.launch).')
    ap.add_argument("--cfg", metavar="FILE", help="experiment YAML (defaults only if omitted)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one key (repeatable)")
    ap.add_argument("--num-parts", type=int, help="partitions, one per machine (sets dist.num_parts)")
    ap.add_argument("--part-method", choices=["metis", "random"], help="sets dist.part_method")
    ap.add_argument("--out", metavar="DIR", help="sets dist.part_dir")
    return ap


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    extra = []
    if args.num_parts is not None:
        extra.append(f"dist.num_parts={args.num_parts}")
    if args.part_method:
        extra.append(f"dist.part_method={args.part_method}")
    if args.out:
        extra.append(f"dist.part_dir={args.out}")
    from .prepare import prepare

    cfg = load_config(args.cfg, list(args.overrides) + extra)
    part_dir = prepare(cfg, args.cfg, log=lambda m: print(f"[graphrec] {m}", file=sys.stderr))
    print(f"partitions: {part_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
