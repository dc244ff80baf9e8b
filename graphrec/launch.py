"""``python -m graphrec.launch``: the command users type to start one machine's graph servers and trainers.

Only the command's name lives here: the code is :mod:`graphrec.dist.launch`, beside the server and trainer
processes it starts (:mod:`graphrec.dist.server`, :mod:`graphrec.dist.trainer`). The README,
docs/distributed.md, the tests and every script say ``graphrec.launch``, so this name stays.
"""
import sys

if __name__ == "__main__":
    from .dist.launch import main

    sys.exit(main())
