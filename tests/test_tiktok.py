import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from data_prep import tiktok
from graphrec.data.safe_pickle import load_sparse_pickle, restricted_loads
from graphrec.data.validate import find_violations
from graphrec.errors import DataError


def test_known_counts_and_exact_split(tiktok_dir):
    ds = tiktok.convert(tiktok_dir)
    assert (ds.num_users, ds.num_authors) == (9308, 6710)
    split = ds.impressions["split"]
    assert [(split == i).sum() for i in range(3)] == [59_541, 3_051, 6_130]
    assert find_violations(ds) == []
    # the published split is kept pair for pair
    tst = load_sparse_pickle(tiktok_dir / "tstMat.pkl")
    test_pairs = set(zip(ds.impressions["user"][split == 2].tolist(), ds.impressions["author"][split == 2].tolist()))
    assert test_pairs == set(zip(tst.row.tolist(), tst.col.tolist()))
    seg = ds.tables["segments"]
    assert seg["frame"].shape == (6710, 1, 128) and seg["asr"].shape == (6710, 1, 128)
    assert seg["frame"].dtype == np.float32 and "comment" not in seg
    np.testing.assert_allclose(seg["frame"][:, 0], np.load(tiktok_dir / "image_feat.npy").astype(np.float32))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/graphrec-pwned",))


def test_restricted_unpickler_refuses_other_classes(tmp_path):
    marker = "/tmp/graphrec-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load 'posix.system'"):
        restricted_loads(pickle.dumps(Evil()))
    assert not os.path.exists(marker)
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps({"m": sp.coo_matrix(np.eye(2)), "x": Evil()}))
    with pytest.raises(DataError, match=r"evil.pkl: refusing to load"):
        load_sparse_pickle(f)
    assert not os.path.exists(marker)
    f.write_bytes(pickle.dumps(pickle.Pickler))            # any class outside the whitelist
    with pytest.raises(DataError, match="refusing to load '_pickle.Pickler'"):
        load_sparse_pickle(f)


def test_restricted_unpickler_accepts_sparse_matrices(tmp_path):
    m = sp.random(20, 30, density=0.1, format="csr", random_state=0)
    for obj in (m, m.tocoo(), m.tocsc()):
        back = restricted_loads(pickle.dumps(obj))
        assert (back != obj).nnz == 0
    f = tmp_path / "arr.pkl"
    f.write_bytes(pickle.dumps(np.arange(3)))
    with pytest.raises(DataError, match="expected a scipy sparse matrix, got ndarray"):
        load_sparse_pickle(f)


def test_bad_inputs(tiktok_dir, tmp_path):
    d = tmp_path / "tk"
    d.mkdir()
    for f in tiktok_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "valMat.pkl").write_bytes((d / "valMat.pkl").read_bytes()[:500])
    with pytest.raises(DataError, match=r"valMat.pkl: truncated or malformed pickle"):
        tiktok.convert(d)
    (d / "valMat.pkl").write_bytes((tiktok_dir / "valMat.pkl").read_bytes())
    np.save(d / "audio_feat.npy", np.zeros((10, 128), np.float16))
    with pytest.raises(DataError, match=r"audio_feat.npy: expected shape \(6710, d\)"):
        tiktok.convert(d)
    (d / "audio_feat.npy").unlink()
    with pytest.raises(DataError, match=r"audio_feat.npy: feature file not found"):
        tiktok.convert(d)
    with pytest.raises(DataError, match="TikTok folder not found"):
        tiktok.convert(tmp_path / "nothing")


def test_cli(tiktok_dir, tmp_path, capsys):
    assert tiktok.main(["--src", str(tiktok_dir), "--out", str(tmp_path / "o")]) == 0
    assert "users=9,308 authors=6,710 impressions=68,722" in capsys.readouterr().out


def test_published_checksums_match_the_reference_copy(tiktok_dir):
    import warnings

    from graphrec.errors import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = tiktok.convert(tiktok_dir)
    assert ds.meta["checksums"] == {n: "ok" for n in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl", "image_feat.npy",
                                                      "audio_feat.npy")}


def small_split(d):
    """A 3-user x 4-item split in the published file layout (small fixture files, not the real ones)."""
    d.mkdir()
    for name, rows, cols in (("trnMat.pkl", [0, 1, 2], [0, 1, 2]), ("valMat.pkl", [0], [3]), ("tstMat.pkl", [1], [3])):
        (d / name).write_bytes(pickle.dumps(sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(3, 4))))
    np.save(d / "image_feat.npy", np.arange(32, dtype=np.float16).reshape(4, 8))
    np.save(d / "audio_feat.npy", np.ones((4, 8), np.float16))
    return d


def test_modified_file_warns_naming_it(tmp_path, monkeypatch):
    import warnings

    from graphrec.data.download import sha256_file
    from graphrec.errors import DataWarning

    d = small_split(tmp_path / "tk")
    sums = {f.name: sha256_file(f) for f in d.iterdir()}
    monkeypatch.setattr(tiktok, "KNOWN_SHA256", {**sums, "text_feat.npy": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert tiktok.convert(d).meta["checksums"]["audio_feat.npy"] == "ok"
    np.save(d / "audio_feat.npy", np.zeros((4, 8), np.float16))            # same shape, other values
    np.save(d / "text_feat.npy", np.zeros((4, 8), np.float16))             # no published sum: not checked
    with pytest.warns(DataWarning, match=r"audio_feat.npy: SHA-256 [0-9a-f]{64} differs from the published") as rec:
        ds = tiktok.convert(d)                                               # a warning, not an error
    assert len(rec) == 1 and ds.num_authors == 4
    assert ds.meta["checksums"]["audio_feat.npy"] == "differs" and ds.meta["checksums"]["text_feat.npy"] == "unknown"
    logged = []
    tiktok.convert(d, log=logged.append)                                     # the pipeline's log gets it instead
    assert len(logged) == 1 and logged[0].startswith("warning: ") and "audio_feat.npy" in logged[0]
