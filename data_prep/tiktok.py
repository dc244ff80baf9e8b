"""The MMSSL/DiffMM TikTok split -> canonical dataset.

Input folder: ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` (pickled ``scipy.sparse`` users x items
matrices, read with graphrec's restricted unpickler) and ``image_feat.npy`` / ``audio_feat.npy``
(items x 128, float16). The published split is kept exactly (``split`` column). The data is
implicit feedback: every interaction is a positive (``click``) and negatives must be sampled;
items become authors, the visual features fill the ``frame`` slot and the acoustic ones the ``asr``
slot (one token per item). The split's text features are not available, so there is no
``comment`` modality. Interactions have no timestamps; ``time`` is the split order (train, then
validation, then test), which keeps the time-sorted invariant without inventing an order.

The split is published in the HKUDS repositories MMSSL and DiffMM (github.com/HKUDS/MMSSL,
github.com/HKUDS/DiffMM, folder ``Datasets/tiktok``). Every input file is checked against the SHA-256
of that published copy (:data:`KNOWN_SHA256`); a file that differs is reported as a warning, not an
error (a re-saved or re-split copy may still be usable), and each file's status is kept in the
manifest (``meta.checksums``).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from graphrec.data.dataset import Dataset
from graphrec.data.safe_pickle import load_sparse_pickle
from graphrec.errors import DataError, DataWarning, command

MATRICES = (("train", "trnMat.pkl"), ("val", "valMat.pkl"), ("test", "tstMat.pkl"))
FEATURES = (("frame", "image_feat.npy"), ("asr", "audio_feat.npy"))
# SHA-256 of the published split: HKUDS/DiffMM at commit fae20e642aeeaad4284be6f7fb3432ebb551da8e,
# Datasets/tiktok (the project's reference copy, ../shared/data/SHA256SUMS). text_feat.npy is not in
# that copy, so its sum is unknown (None): it is reported as unchecked when present.
KNOWN_SHA256: Dict[str, Optional[str]] = {
    "trnMat.pkl": "1efbc49d1a7ce5268f01e3e0c558df1f8f8644628c76aa6536be4ec61d256916",
    "valMat.pkl": "b6971ed696613d565613dd74b101c45b2aa002b66e8ba99cad03abf04db2397b",
    "tstMat.pkl": "e83a93787d88728572dbdd5b131bae01a90e17c340820e7b8f0a7c27e69d6f9e",
    "image_feat.npy": "f6c1ec1726ed2aa80315411199ab2143bee6333821bf58c5f00bd3f5b462efc2",
    "audio_feat.npy": "d45a44a9d462f578802de914c2feea5cfd45742b2922775a085b9bdc1beba26f",
    "text_feat.npy": None,
}


def check_checksums(path: Path, log: Optional[Callable[[str], None]] = None) -> Dict[str, str]:
    """Each present input file's status against :data:`KNOWN_SHA256`: ``ok``, ``differs`` or ``unknown``
    (no published sum). A differing file is reported (``log("warning: ...")``, or a :class:`DataWarning`
    without ``log``) and the conversion goes on."""
    from graphrec.data.download import sha256_file

    status = {}
    for name, known in KNOWN_SHA256.items():
        f = path / name
        if not f.is_file():
            continue
        if known is None:
            status[name] = "unknown"
            continue
        got = sha256_file(f)
        status[name] = "ok" if got == known else "differs"
        if got != known:
            msg = (f"{f}: SHA-256 {got} differs from the published TikTok split's {known} (HKUDS/MMSSL, "
                   f"HKUDS/DiffMM Datasets/tiktok); converting it anyway")
            if log is None:
                warnings.warn(msg, DataWarning, stacklevel=3)
            else:
                log(f"warning: {msg}")
    return status


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


def convert(path: Path, log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Read the split folder ``path`` into a canonical dataset (checksum differences are reported
    through ``log``, or as :class:`DataWarning` without it)."""
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
    checksums = check_checksums(path, log)          # after reading: a broken file is an error, not a warning
    meta = {
        "feedback": "implicit",
        "timestamps": False,
        "main_label": "click",
        "label_meaning": {"click": "user interacted with the micro-video (positives only)"},
        "modality_meaning": {"frame": "visual features (128-d)", "asr": "acoustic features (128-d)"},
        "split": {"kind": "published", "counts": {s: int((split == i).sum()) for i, (s, _) in enumerate(MATRICES)}},
        "source_path": str(path.resolve()),
        "checksums": checksums,
    }
    return Dataset(name="tiktok", source="tiktok", num_users=nu, num_authors=na,
                   tables={"users": {"raw_id": np.arange(nu, dtype=np.int32)},
                           "authors": {"raw_id": np.arange(na, dtype=np.int32)},
                           "impressions": impressions, "segments": segments}, meta=meta)


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    from graphrec.data.dataset import save_dataset
    from graphrec.data.validate import validate_dataset

    from ._cli import print_counts

    ap = argparse.ArgumentParser(prog="python -m data_prep.tiktok", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="folder with trnMat.pkl, valMat.pkl, tstMat.pkl and *_feat.npy")
    ap.add_argument("--out", required=True, help="output folder for the canonical dataset")
    args = ap.parse_args(argv)

    ds = convert(Path(args.src))
    validate_dataset(ds)
    print_counts(ds, save_dataset(ds, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
