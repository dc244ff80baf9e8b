"""MovieLens-100K downloaded on first use, against a local HTTP server on 127.0.0.1 serving a zip
built from the shared copy (the official archive is not reachable from the test machines)."""
import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import pytest

from data_prep import movielens
from graphrec.config import load_config
from graphrec.data.dataset import read_manifest
from graphrec.data.sources import dataset_dir
from graphrec.errors import ConfigError, DownloadError


@pytest.fixture(scope="module")
def ml_zip():
    from .conftest import SHARED_DATA, _require

    src = _require(SHARED_DATA / "ml-100k")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.user", "u.info", "u.occupation"):
            zf.write(src / name, f"ml-100k/{name}")
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


class _Server:
    """``http.server`` in a thread on 127.0.0.1 (port 0): serves ``payload`` at any path, counts requests;
    ``truncate`` sends only that many bytes of it (with the full Content-Length)."""

    def __init__(self, payload: bytes, truncate=None):
        owner = self
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload if truncate is None else payload[:truncate])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ml-100k.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def cfg_for(tmp_path, url, sha256):
    return load_config("yaml/movielens.yaml", ["data.path=", f"data.url={url}", f"data.sha256={sha256}",
                                               f"data.cache_dir={tmp_path / 'cache'}", "data.text_encoder=tfidf"])


def leftovers(tmp_path):
    d = tmp_path / "cache" / "downloads"
    return sorted(os.listdir(d)) if d.exists() else []


def test_download_convert_then_reuse(ml_zip, tmp_path):
    data, digest = ml_zip
    with _Server(data) as srv:
        cfg = cfg_for(tmp_path, srv.url, digest)
        assert cfg.data.path is None                               # movielens may leave data.path unset
        out = dataset_dir(cfg, log=lambda m: None)
        assert len(srv.requests) == 1
        counts = read_manifest(out)["counts"]
        assert (counts["users"], counts["authors"], counts["impressions"]) == (943, 1682, 100_000)
        assert leftovers(tmp_path) == ["ml-100k.zip"]
        assert (tmp_path / "cache" / "downloads" / "ml-100k.zip").read_bytes() == data
        assert dataset_dir(cfg, log=lambda m: None) == out         # second run: both caches reused
        assert movielens.fetch(tmp_path / "cache", srv.url, digest, log=lambda m: None).read_bytes() == data
        assert len(srv.requests) == 1                              # ... without a request


def test_checksum_mismatch_fails_and_leaves_nothing(ml_zip, tmp_path):
    data, digest = ml_zip
    with _Server(data) as srv:
        with pytest.raises(DownloadError) as e:
            dataset_dir(cfg_for(tmp_path, srv.url, "0" * 64), log=lambda m: None)
    msg = str(e.value)
    assert f"expected {'0' * 64}, got {digest}" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []


def test_cached_copy_with_another_digest_is_downloaded_again(ml_zip, tmp_path):
    data, digest = ml_zip
    dest = tmp_path / "cache" / "downloads" / "ml-100k.zip"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the archive")
    with _Server(data) as srv:
        movielens.fetch(tmp_path / "cache", srv.url, digest, log=lambda m: None)
        assert len(srv.requests) == 1 and dest.read_bytes() == data


def test_unreachable_url_is_one_line(tmp_path, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                       # nothing listens there now
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    with pytest.raises(DownloadError) as e:
        dataset_dir(cfg_for(tmp_path, url, "0" * 64), log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "--set data.path=/path/to/ml-100k.zip" in msg
    assert leftovers(tmp_path) == []
    # the command line prints it as one line and exits 2
    assert movielens.main(["--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"), "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download") and "\n" not in err and not (tmp_path / "o").exists()


def test_truncated_or_interrupted_download_leaves_nothing(ml_zip, tmp_path, monkeypatch):
    data, digest = ml_zip
    with _Server(data, truncate=1000) as srv:
        with pytest.raises(DownloadError, match=r"connection closed after 1,000 of"):
            movielens.fetch(tmp_path / "cache", srv.url, digest, log=lambda m: None)
    assert leftovers(tmp_path) == []
    import tqdm

    def ctrl_c(self, n=1):
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "update", ctrl_c)
    with _Server(data) as srv:
        with pytest.raises(KeyboardInterrupt):
            movielens.fetch(tmp_path / "cache", srv.url, digest, log=lambda m: None)
    assert leftovers(tmp_path) == []


def test_path_rules():
    assert load_config(None, ["data.source=movielens"]).data.sha256 is None   # the official digest applies
    assert len(movielens.ML100K_SHA256) == 64 and movielens.ML100K_URL.endswith("/ml-100k.zip")
    with pytest.raises(ConfigError, match="data.path must point at the kuailive input"):
        load_config(None, ["data.source=kuailive"])
    with pytest.raises(ConfigError, match="data.path must point at the tiktok input"):
        load_config(None, ["data.source=tiktok"])


def test_malformed_digest_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.sha256 must be 64 hexadecimal digits"):
        movielens.fetch(tmp_path, "http://127.0.0.1:9/ml-100k.zip", "abc")
