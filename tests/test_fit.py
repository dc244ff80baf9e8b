"""The one training loop's pieces that need no model: the prefetching thread."""
import threading

import pytest

from graphrec.fit import Prefetched


class _Batches:
    def __init__(self, n, fail_at=None):
        self.n, self.fail_at, self.built = n, fail_at, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise ValueError(f"batch {i} is broken")
            self.built += 1
            yield i


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "graphrec-prefetch"]


def test_prefetched_keeps_order_and_length():
    src = _Batches(50)
    p = Prefetched(src, depth=3)
    assert len(p) == 50 and list(p) == list(range(50))
    assert not _prefetch_threads()


def test_prefetched_raises_the_builders_error_in_the_consumer():
    with pytest.raises(ValueError, match="batch 7 is broken"):
        list(Prefetched(_Batches(20, fail_at=7)))
    assert not _prefetch_threads()


def test_prefetched_stops_building_when_the_consumer_stops():
    src = _Batches(1000)
    it = iter(Prefetched(src, depth=2))
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()                                  # the loop broke off (early stop, an error in the step)
    assert not _prefetch_threads()
    assert src.built <= 5 + 2 + 1               # at most `depth` (+ the one being put) built ahead
