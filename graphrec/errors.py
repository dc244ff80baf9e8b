"""Exceptions for mistakes a user can fix (bad config, bad input data).

`graphrec.run` and the `data_prep` commands print these as one readable message and exit
with status 2 instead of showing a stack trace; anything else is a bug and keeps its trace.
"""


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
