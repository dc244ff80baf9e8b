"""The MMSSL/DiffMM TikTok split -> canonical dataset.

Input folder: ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` (pickled ``scipy.sparse`` users x items
matrices, read with graphrec's restricted unpickler) and ``image_feat.npy`` / ``audio_feat.npy``
(items x 128, float16). The published split is kept exactly (``split`` column). The data is
implicit feedback: every interaction is a positive (``click``) and negatives must be sampled;
items become authors, the visual features fill the ``frame`` slot and the acoustic ones the ``asr``
slot (one token per item). The split's text features are not available, so there is no
``comment`` modality. Interactions have no timestamps; ``time`` is the split order (train, then
validation, then test), which keeps the time-sorted invariant without inventing an order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from graphrec.data.dataset import Dataset
from graphrec.data.safe_pickle import load_sparse_pickle
from graphrec.errors import DataError

MATRICES = (("train", "trnMat.pkl"), ("val", "valMat.pkl"), ("test", "tstMat.pkl"))
FEATURES = (("frame", "image_feat.npy"), ("asr", "audio_feat.npy"))


def _load_features(path: Path, num_items: int) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: feature file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable or truncated .npy ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] != num_items:
        raise DataError(f"{path}: expected shape ({num_items}, d) (one row per item), got {arr.shape}")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: non-finite values in rows {np.flatnonzero(bad)[:5].tolist()}")
    return arr


def convert(path: Path) -> Dataset:
    """Read the split folder ``path`` into a canonical dataset."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: TikTok folder not found (expected trnMat.pkl, valMat.pkl, tstMat.pkl, "
                        f"image_feat.npy, audio_feat.npy)")
    mats = {}
    for split, name in MATRICES:
        mats[split] = load_sparse_pickle(path / name)
    shape = mats["train"].shape
    for split, name in MATRICES:
        if mats[split].shape != shape:
            raise DataError(f"{path / name}: shape {mats[split].shape} differs from trnMat.pkl's {shape}")
    nu, na = shape
    users, items, split_code = [], [], []
    for code, (split, _) in enumerate(MATRICES):
        m = mats[split].tocsr()
        m.sum_duplicates()
        m.eliminate_zeros()
        coo = m.tocoo()
        order = np.lexsort((coo.col, coo.row))
        users.append(coo.row[order])
        items.append(coo.col[order])
        split_code.append(np.full(len(order), code, dtype=np.uint8))
    user = np.concatenate(users).astype(np.int32)
    author = np.concatenate(items).astype(np.int32)
    split = np.concatenate(split_code)
    impressions = {"user": user, "author": author, "time": split.astype(np.int64),
                   "click": np.ones(len(user), dtype=np.uint8), "split": split}
    segments = {"author": np.arange(na, dtype=np.int32), "start": np.zeros(na, dtype=np.int64)}
    for modality, name in FEATURES:
        feat = _load_features(path / name, na)
        segments[modality] = feat[:, None, :]
        segments[f"{modality}_len"] = np.ones(na, dtype=np.int16)
    meta = {
        "feedback": "implicit",
        "timestamps": False,
        "main_label": "click",
        "label_meaning": {"click": "user interacted with the micro-video (positives only)"},
        "modality_meaning": {"frame": "visual features (128-d)", "asr": "acoustic features (128-d)"},
        "split": {"kind": "published", "counts": {s: int((split == i).sum()) for i, (s, _) in enumerate(MATRICES)}},
        "source_path": str(path.resolve()),
    }
    return Dataset(name="tiktok", source="tiktok", num_users=nu, num_authors=na,
                   tables={"users": {"raw_id": np.arange(nu, dtype=np.int32)},
                           "authors": {"raw_id": np.arange(na, dtype=np.int32)},
                           "impressions": impressions, "segments": segments}, meta=meta)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from graphrec.data.dataset import save_dataset
    from graphrec.data.validate import validate_dataset

    from ._cli import print_counts, run_cli

    ap = argparse.ArgumentParser(prog="python -m data_prep.tiktok", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="folder with trnMat.pkl, valMat.pkl, tstMat.pkl and *_feat.npy")
    ap.add_argument("--out", required=True, help="output folder for the canonical dataset")
    args = ap.parse_args(argv)

    def job() -> None:
        ds = convert(Path(args.src))
        validate_dataset(ds)
        print_counts(ds, save_dataset(ds, Path(args.out)))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
