"""``python -m graphrec.partition``: the command users type to partition a distributed run.

Only the command's name lives here: the code is :mod:`graphrec.dist.partition`, beside the processes it
prepares for (as DGL's distributed examples keep ``partition_graph.py`` beside ``train_dist.py``). The
README, docs/distributed.md, the tests and every script say ``graphrec.partition``, so this name stays.
"""
import sys

if __name__ == "__main__":
    from .dist.partition import main

    sys.exit(main())
