import json
import os

import numpy as np
import pytest

import graphrec.data.dataset as dsmod
from graphrec.data.dataset import SCHEMA_VERSION, load_dataset, read_manifest, save_dataset
from graphrec.errors import DataError

from .test_validate import small_dataset


def test_round_trip(tmp_path):
    ds = small_dataset()
    out = save_dataset(ds, tmp_path / "toy")
    back = load_dataset(out)
    assert back.num_users == 3 and back.num_authors == 2
    assert set(back.tables) == set(ds.tables)
    for t, cols in ds.tables.items():
        for c, v in cols.items():
            np.testing.assert_array_equal(back.tables[t][c], v)
            assert back.tables[t][c].dtype == v.dtype
    m = read_manifest(out)
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["counts"]["impressions"] == 5 and m["counts"]["positives_gift"] == 2
    assert m["labels"] == ["gift"] and m["modalities"] == ["frame"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]   # no temp leftovers


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dsmod.save_table

    def flaky(path, columns):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(path, columns)

    monkeypatch.setattr(dsmod, "save_table", flaky)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(small_dataset(), tmp_path / "toy")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = save_dataset(small_dataset(), tmp_path / "toy")
    before = (out / "manifest.json").read_text()

    def broken(path, columns):
        raise OSError("disk full")

    monkeypatch.setattr(dsmod, "save_table", broken)
    with pytest.raises(OSError):
        save_dataset(small_dataset(), out)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_rewrite_replaces(tmp_path):
    ds = small_dataset()
    out = save_dataset(ds, tmp_path / "toy")
    ds.tables["impressions"]["gift"][:] = 1
    save_dataset(ds, out)
    assert load_dataset(out).impressions["gift"].sum() == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_truncated_table_is_a_clear_error(tmp_path):
    out = save_dataset(small_dataset(), tmp_path / "toy")
    f = out / "impressions.npz"
    f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    with pytest.raises(DataError, match=r"impressions.npz: unreadable or truncated table"):
        load_dataset(out)


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="manifest.json missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99, "name": "x", "source": "y",
                                                       "counts": {}, "tables": {}}))
    with pytest.raises(DataError, match="schema_version 99 is not supported"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(DataError, match="manifest field 'name' is missing"):
        read_manifest(tmp_path)


def test_tables_never_unpickle(tmp_path):
    out = save_dataset(small_dataset(), tmp_path / "toy")
    np.savez(out / "users.npz", age=np.array([object(), 1], dtype=object))
    with pytest.raises(DataError, match="users.npz"):
        load_dataset(out)
