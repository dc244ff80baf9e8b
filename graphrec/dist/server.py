"""One DGL graph server process (started by ``python -m graphrec.launch``, never by hand).

DGL's own entry point does the work: with ``DGL_ROLE=server`` (and ``DGL_SERVER_ID``,
``DGL_IP_CONFIG``, ``DGL_NUM_SERVER``, ``DGL_NUM_CLIENT``, ``DGL_CONF_PATH`` set by the launcher),
``dgl.distributed.initialize`` loads this machine's partition, serves it until every trainer has
disconnected, and exits.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    import dgl

    missing = [k for k in ("DGL_SERVER_ID", "DGL_IP_CONFIG", "DGL_NUM_SERVER", "DGL_NUM_CLIENT", "DGL_CONF_PATH")
               if k not in os.environ]
    if missing or os.environ.get("DGL_ROLE") != "server":
        print(f"error: graph server: started outside graphrec.launch (missing {missing or ['DGL_ROLE=server']})",
              file=sys.stderr)
        return 2
    try:
        dgl.distributed.initialize(os.environ["DGL_IP_CONFIG"])   # serves, then sys.exit()
    except Exception as exc:
        print(f"error: graph server {os.environ['DGL_SERVER_ID']}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
