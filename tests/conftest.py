import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("GRAPHREC_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))

# A world small enough for tests: builds in well under a second.
TINY_SIM = ["simulate.num_users=300", "simulate.num_authors=40", "simulate.num_impressions=30000",
            "simulate.num_communities=4", "simulate.room_steps=48", "simulate.warmup_steps=6"]


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"public data not found at {path} (set GRAPHREC_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def ml100k() -> Path:
    return _require(SHARED_DATA / "ml-100k")


@pytest.fixture
def tiktok_dir() -> Path:
    return _require(SHARED_DATA / "tiktok")


@pytest.fixture
def tiny_cfg():
    from graphrec.config import load_config

    return load_config(None, TINY_SIM)
