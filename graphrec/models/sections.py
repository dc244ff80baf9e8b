"""Named parts of a training step, for ``bench train``'s "where the time goes" table.

A section is a ``torch.profiler.record_function`` range (so profilers and TensorBoard traces show it),
and, inside :func:`timed_sections`, also a wall-clock timer. GPU work is asynchronous, so a timed
section synchronises the device at both edges: its time is the time of its kernels, on any device.
Outside :func:`timed_sections` nothing is synchronised and a section costs one range marker.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch
from torch.profiler import record_function

_timings: Optional[Dict[str, float]] = None


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def section(name: str) -> Iterator[None]:
    with record_function(name):
        if _timings is None:
            yield
            return
        _sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            _timings[name] = _timings.get(name, 0.0) + time.perf_counter() - t


@contextmanager
def timed_sections() -> Iterator[Dict[str, float]]:
    """Collects ``{section name: seconds}`` (summed over calls) of the sections run inside it."""
    global _timings
    previous, _timings = _timings, {}
    try:
        yield _timings
    finally:
        _timings = previous
