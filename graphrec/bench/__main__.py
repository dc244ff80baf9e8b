"""``python -m graphrec.bench <what> [options]``; ``<what>``: sampler, swing, train, epochs, dose, probe,
serve, serve-http, dist, scale."""
from __future__ import annotations

import sys

from ..errors import command
from . import dist, dose, probe, ranker, sampler, scale, serve_http

COMMANDS = {"sampler": sampler.main, "swing": sampler.swing_main, "train": ranker.train_main,
            "epochs": ranker.epochs_main, "dose": dose.main, "probe": probe.main,
            "serve": ranker.serve_main, "serve-http": serve_http.main,
            "dist": dist.main, "scale": scale.main}


@command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m graphrec.bench {{{','.join(COMMANDS)}}} [options]  (--help per command)",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
