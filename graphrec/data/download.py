"""Checked downloads with the standard library only (``urllib``).

:func:`fetch_file` reuses a cached copy whose SHA-256 matches, or downloads into a temporary file in
the destination folder (with a tqdm progress bar), checks the digest while writing and renames the
file into place only when the digest matches: a failed, mismatched or interrupted (Ctrl-C) download
leaves nothing behind. Network failures (DNS, refused connection, timeout, HTTP errors) become one
line: a :class:`graphrec.errors.DownloadError` naming the URL and the caller's ``hint``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DownloadError

CHUNK = 1 << 16
TIMEOUT_S = 60.0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    """A short, one-line account of a network failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return _reason(inner)
        return str(inner)
    if isinstance(exc, socket.gaierror):
        return f"host name not resolved: {exc.strerror or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def fetch_file(url: str, dest: Path, sha256: str, hint: str = "", progress: bool = False,
               log: Callable[[str], None] = print, timeout: float = TIMEOUT_S) -> Path:
    """``dest``, downloaded from ``url`` unless a copy with SHA-256 ``sha256`` is already there.

    Raises :class:`DownloadError` (one line) when the download fails or its digest is not ``sha256``;
    in both cases no file is left at ``dest`` or beside it."""
    dest = Path(dest)
    expected = sha256.strip().lower()
    if dest.is_file():
        got = sha256_file(dest)
        if got == expected:
            return dest
        log(f"{dest}: cached copy has SHA-256 {got}, expected {expected}; downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tail = f"; {hint}" if hint else ""
    try:
        from tqdm import tqdm

        h = hashlib.sha256()
        log(f"downloading {url} -> {dest}")
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:   # noqa: S310 - http(s) from config
                    total = resp.headers.get("Content-Length")
                    with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                              unit_divisor=1024, desc=dest.name, disable=not progress, leave=False) as bar:
                        for block in iter(lambda: resp.read(CHUNK), b""):
                            out.write(block)
                            h.update(block)
                            bar.update(len(block))
                    if total and total.isdigit() and out.tell() != int(total):
                        raise DownloadError(f"cannot download {url}: connection closed after {out.tell():,} of "
                                            f"{int(total):,} bytes{tail}")
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise DownloadError(f"cannot download {url} ({_reason(exc)}){tail}") from None
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected:
            raise DownloadError(f"{url}: SHA-256 mismatch: expected {expected}, got {got}; the download was "
                                f"removed{tail}")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
