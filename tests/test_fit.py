"""The one training loop: the prefetching thread, and when the epoch checkpoint is written."""
import threading

import pytest
import torch

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


class _Linear:
    """A task small enough for fit to run in milliseconds: regress y = 2x."""

    def batches(self, epoch, rng):
        x = torch.from_numpy(rng.normal(size=(4, 1)).astype("float32"))
        return [(x, 2 * x)]

    def loss(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), len(x)


def _saved_epochs(tmp_path, every_s, epochs=4, patience=0, validate=None):
    """The epochs (1-based) after which fit wrote its checkpoint, as seen from on_epoch_end."""
    from graphrec.checkpoint import load_checkpoint
    from graphrec.fit import FitSpec, fit

    ck = tmp_path / f"every{every_s}-{patience}.pt"
    seen = []

    def look(epoch, h):
        if ck.exists():
            seen.append(load_checkpoint(ck)["epoch"] + 1)
    torch.manual_seed(0)
    spec = FitSpec(epochs=epochs, lr=0.1, patience=patience, monitor="m" if validate else None,
                   checkpoint_every_s=every_s)
    fit(torch.nn.Linear(1, 1), _Linear(), spec, checkpoint=ck, validate=validate, on_epoch_end=look)
    return sorted(set(seen))


def test_checkpoint_every_epoch_or_by_time_and_always_after_the_last(tmp_path):
    assert _saved_epochs(tmp_path, 0.0) == [1, 2, 3, 4]
    assert _saved_epochs(tmp_path, 3600.0) == [4]                    # only the last epoch's
    # early stopping's last epoch too: the monitor never improves after epoch 1, patience 2 stops after 3
    assert _saved_epochs(tmp_path, 3600.0, epochs=10, patience=2, validate=lambda m, e: {"m": -float(e)}) == [3]
