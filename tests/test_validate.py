import numpy as np
import pytest

from graphrec.data.dataset import Dataset
from graphrec.data.validate import find_violations, validate_dataset
from graphrec.errors import DataError


def small_dataset() -> Dataset:
    """A hand-made valid dataset: 3 users, 2 authors, 5 impressions, segments, stats, products."""
    imp = {
        "user": np.array([0, 1, 2, 0, 1], np.int32),
        "author": np.array([0, 1, 1, 0, 1], np.int32),
        "time": np.array([10, 10, 20, 30, 40], np.int64),
        "gift": np.array([0, 1, 0, 0, 1], np.uint8),
        "p_gift": np.array([0.1, 0.9, 0.2, 0.3, 0.5], np.float32),
        "split": np.array([0, 0, 0, 1, 2], np.uint8),
        "segment": np.array([0, 2, 3, -1, 3], np.int32),
    }
    seg = {"author": np.array([0, 0, 1, 1], np.int32), "start": np.array([0, 60, 0, 60], np.int64),
           "frame": np.zeros((4, 2, 3), np.float32), "frame_len": np.array([2, 1, 2, 0], np.int16)}
    stats = {"author": np.array([0, 1], np.int32), "start": np.array([0, 0], np.int64),
             "values": np.ones((2, 5, 3), np.float32)}
    prod = {"author": np.array([0, 0, 1], np.int32), "time": np.array([0, 30, 0], np.int64),
            "product": np.array([3, 1, 2], np.int32), "cat1": np.array([0, 1, 0], np.int32),
            "cat2": np.array([0, 2, 1], np.int32), "cat3": np.array([1, 4, 2], np.int32)}
    return Dataset(name="toy", source="test", num_users=3, num_authors=2,
                   tables={"users": {"age": np.array([20, 30, 40], np.int16)},
                           "authors": {"shopping": np.array([1, 0], np.uint8)},
                           "impressions": imp, "segments": seg, "stats": stats, "products": prod},
                   meta={"products": {"num_products": 4, "num_cat1": 2, "num_cat2": 3, "num_cat3": 5}})


def kinds(ds):
    return {(v.table, v.column, v.kind) for v in find_violations(ds)}


def test_valid_dataset_has_no_violations():
    ds = small_dataset()
    assert find_violations(ds) == []
    validate_dataset(ds)  # does not raise


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t["impressions"]["user"].__setitem__(2, 3), ("impressions", "user", "range")),
    (lambda t: t["impressions"]["author"].__setitem__(0, -1), ("impressions", "author", "range")),
    (lambda t: t["impressions"]["time"].__setitem__(3, 5), ("impressions", "time", "order")),
    (lambda t: t["impressions"]["gift"].__setitem__(1, 2), ("impressions", "gift", "value")),
    (lambda t: t["impressions"]["p_gift"].__setitem__(1, np.nan), ("impressions", "p_gift", "nonfinite")),
    (lambda t: t["impressions"]["p_gift"].__setitem__(1, 1.5), ("impressions", "p_gift", "range")),
    (lambda t: t["impressions"]["split"].__setitem__(0, 3), ("impressions", "split", "value")),
    (lambda t: t["impressions"]["segment"].__setitem__(0, 4), ("impressions", "segment", "range")),
    (lambda t: t["segments"]["frame"].__setitem__((1, 0, 2), np.inf), ("segments", "frame", "nonfinite")),
    (lambda t: t["segments"]["start"].__setitem__(1, 0), ("segments", "start", "order")),
    (lambda t: t["segments"]["frame_len"].__setitem__(0, 3), ("segments", "frame_len", "range")),
    (lambda t: t["stats"]["values"].__setitem__((1, 2, 0), -np.inf), ("stats", "values", "nonfinite")),
    (lambda t: t["stats"]["author"].__setitem__(1, 2), ("stats", "author", "range")),
    (lambda t: t["products"]["time"].__setitem__(1, -5), ("products", "time", "order")),
    (lambda t: t["products"]["cat3"].__setitem__(0, 5), ("products", "cat3", "range")),
    (lambda t: t["products"]["product"].__setitem__(2, 4), ("products", "product", "range")),
])
def test_each_violation_is_found_with_its_location(mutate, expected):
    ds = small_dataset()
    mutate(ds.tables)
    assert expected in kinds(ds)


def test_violation_message_lists_rows_and_every_problem():
    ds = small_dataset()
    ds.tables["impressions"]["user"][[1, 4]] = 7
    ds.tables["impressions"]["gift"][0] = 9
    with pytest.raises(DataError) as e:
        validate_dataset(ds)
    msg = str(e.value)
    assert "2 violation(s)" in msg
    assert "impressions.user: user id outside [0, 3) at rows 1, 4" in msg
    assert "impressions.gift: label must be 0 or 1 at rows 0" in msg


def test_structural_violations():
    ds = small_dataset()
    del ds.tables["impressions"]["time"]
    assert ("impressions", "time", "missing") in kinds(ds)

    ds = small_dataset()
    ds.tables["impressions"]["gift"] = ds.tables["impressions"]["gift"][:4]
    assert ("impressions", "", "length") in kinds(ds)

    ds = small_dataset()
    del ds.tables["impressions"]["gift"], ds.tables["impressions"]["p_gift"]
    assert ("impressions", "", "missing") in kinds(ds)            # no label at all

    ds = small_dataset()
    ds.num_users = 4
    assert ("users", "", "count") in kinds(ds)

    ds = small_dataset()
    del ds.tables["authors"]
    assert kinds(ds) == {("authors", "", "missing")}

    ds = small_dataset()
    ds.meta = {}
    assert ("products", "cat1", "missing") in kinds(ds)            # category counts must be declared

    ds = small_dataset()
    ds.tables["products"]["author"] = np.array([1, 0, 0], np.int32)
    assert ("products", "author", "order") in kinds(ds)


def test_ties_in_impression_time_are_allowed():
    ds = small_dataset()
    assert ds.tables["impressions"]["time"][0] == ds.tables["impressions"]["time"][1]
    assert find_violations(ds) == []
