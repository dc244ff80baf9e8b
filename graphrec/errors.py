"""Exceptions for mistakes a user can fix (bad config, bad input data).

Every command line (``graphrec.run``, the ``data_prep`` converters, ``launch``, ``serve``, ...) wraps its
``main`` in :func:`command`, which prints these as one readable line and exits with status 2 instead
of showing a stack trace; anything else is a bug and keeps its trace.
"""
import functools
import sys
from typing import Callable


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ConfigError(UserError):
    """A configuration file or override is missing, malformed or invalid."""


class DataError(UserError):
    """An input data file is missing, truncated, malformed or inconsistent."""


class DownloadError(DataError):
    """A download failed (no network, HTTP error, checksum mismatch); nothing half-written is left."""


class DataWarning(UserWarning):
    """Input data that differs from the known published copy but can still be used (e.g. a checksum)."""


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main(argv) -> exit status``: it starts with graphrec's process settings
    (:func:`graphrec.numerics.flush_denormals`); a :class:`UserError` becomes ``error: <message>`` on stderr and
    status 2, Ctrl-C becomes ``interrupted`` and status 130."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        from .numerics import flush_denormals

        flush_denormals()
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapped
