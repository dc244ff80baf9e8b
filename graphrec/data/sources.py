"""Resolve ``data.*`` config to a canonical dataset folder, converting or simulating once.

Converted and simulated datasets are cached under ``data.cache_dir`` in a folder named after a
fingerprint of everything that determines their content (source, input files' sizes and times,
conversion options, simulator section and seed, schema version), so a changed input or option
never reuses a stale copy and an unchanged one is never rebuilt.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict

from ..config import Config, check_data_path
from ..errors import ConfigError, DataError
from .dataset import MANIFEST, SCHEMA_VERSION, read_manifest, save_dataset
from .validate import validate_dataset

# Bumped when a converter's output changes, so caches made by an older converter are rebuilt.
CONVERTER_VERSION = {"tiktok": 3}   # 2: meta.timestamps = False (rows carry their split as time); 3: meta.checksums

_INPUT_FILES = {
    "movielens": ("u.data", "u.item", "u.user", "u.occupation", "u.info"),
    "tiktok": ("trnMat.pkl", "valMat.pkl", "tstMat.pkl", "image_feat.npy", "audio_feat.npy"),
    "kuailive": ("user.csv", "streamer.csv", "room.csv", "click.csv", "negative.csv", "gift.csv", "comment.csv",
                 "like.csv", "title_embeddings_pca128.npy"),
}


def _file_signature(path: Path, names) -> Dict[str, Any]:
    if path.is_file():  # a zip archive
        st = path.stat()
        return {path.name: [st.st_size, int(st.st_mtime)]}
    sig = {}
    for name in names:
        f = path / name
        if f.exists():
            st = f.stat()
            sig[name] = [st.st_size, int(st.st_mtime)]
    return sig


def _fingerprint(payload: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dataset_dir(cfg: Config, progress: bool = False, log: Callable[[str], None] = print) -> Path:
    """Return the canonical dataset folder for ``cfg``, building it first if it is not cached."""
    source = cfg.data.source
    check_data_path(source, cfg.data.path)          # also checked at load (graphrec.config)
    if source == "canonical":
        path = Path(cfg.data.path).expanduser()
        read_manifest(path)
        return path

    cache = Path(cfg.data.cache_dir).expanduser()
    if source == "simulate":
        payload = {"source": source, "schema": SCHEMA_VERSION, "simulate": dict(cfg.simulate)}
    else:
        if source == "movielens" and not cfg.data.path:        # the official archive, downloaded once
            from data_prep.movielens import fetch

            raw = fetch(cache, cfg.data.url, cfg.data.sha256, progress=progress, log=log).resolve()
        else:
            raw = Path(cfg.data.path).expanduser().resolve()
        if not raw.exists():
            raise DataError(f"{raw}: data.path does not exist (data.source={source}; pass your copy with "
                            f"--set data.path=..., see README: 'Public datasets')")
        payload = {"source": source, "schema": SCHEMA_VERSION, "path": str(raw),
                   "files": _file_signature(raw, _INPUT_FILES[source])}
        if source in CONVERTER_VERSION:
            payload["converter"] = CONVERTER_VERSION[source]
        if source == "movielens":
            from data_prep.text import minilm_available

            encoder = cfg.data.text_encoder
            if encoder == "auto":
                encoder = "minilm" if minilm_available() else "tfidf"
            payload.update(positive_rating=cfg.data.positive_rating, val_fraction=cfg.data.val_fraction,
                           test_fraction=cfg.data.test_fraction, text_encoder=encoder,
                           text_dim=cfg.data.text_dim if encoder == "tfidf" else None)
        if source == "kuailive":
            payload.update(long_view_seconds=cfg.data.long_view_seconds, stat_step_seconds=cfg.data.stat_step_seconds,
                           stat_steps=cfg.data.stat_steps)
    out = cache / f"{source}-{_fingerprint(payload)}"
    if (out / MANIFEST).exists():
        log(f"using cached dataset {out}")
        return out

    log(f"building dataset {out} (source={source})")
    if source == "simulate":
        from data_prep.simulate import simulate

        ds = simulate(cfg.simulate, seed=cfg.simulate.seed, progress=progress, log=log)
    elif source == "movielens":
        from data_prep.movielens import convert

        ds = convert(raw, cfg.data.positive_rating, cfg.data.val_fraction,
                     cfg.data.test_fraction, payload["text_encoder"], cfg.data.text_dim, cfg.run.seed)
    elif source == "tiktok":
        from data_prep.tiktok import convert

        ds = convert(raw, log=log)
    elif source == "kuailive":
        from data_prep.kuailive import convert

        ds = convert(raw, long_view_seconds=cfg.data.long_view_seconds, step_seconds=cfg.data.stat_step_seconds,
                     steps=cfg.data.stat_steps, log=log)
    else:  # the config schema's choices make this unreachable
        raise ConfigError(f"data.source: unknown source {source!r}")
    validate_dataset(ds)
    save_dataset(ds, out)
    return out


def load_data(cfg: Config, progress: bool = False, log: Callable[[str], None] = print):
    """The run's dataset: built or reused (:func:`dataset_dir`), validated, and split (its own split, or
    by time per ``data.val_fraction`` / ``data.test_fraction``)."""
    from .dataset import load_dataset
    from .split import ensure_split

    ds = load_dataset(dataset_dir(cfg, progress=progress, log=log))
    validate_dataset(ds)
    if ensure_split(ds, cfg.data.val_fraction, cfg.data.test_fraction):
        log(f"split by time: val_fraction={cfg.data.val_fraction} test_fraction={cfg.data.test_fraction}")
    return ds
