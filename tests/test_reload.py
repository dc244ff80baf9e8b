"""``graphrec.load_run`` on a run folder read from elsewhere: from another working directory, an old
run folder that recorded its dataset relative to where it ran, a dataset that is gone, a damaged
``expansions.npz``. One small run (relative ``run.out_dir`` / ``data.cache_dir``, as from the
project root), copied per test where a test changes it."""
import json
import shutil
from pathlib import Path

import pytest

import graphrec
from graphrec.config import load_config
from graphrec.errors import DataError
from graphrec.run import run

from .conftest import FAST_MODELS, TINY_SIM


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished run made from ``<tmp>/project`` with relative paths: ``(project, run_dir)``."""
    project = tmp_path_factory.mktemp("reload") / "project"
    project.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        result = run(load_config(None, TINY_SIM + FAST_MODELS + [
            "simulate.num_impressions=8000", "run.out_dir=runs", "data.cache_dir=cache", "run.progress=false",
            "run.skip_stages=[graphcl, stat_forecast, product_forecast, lightgcn, evaluation, report]"]))
    return project, (project / result.run_dir).resolve()


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of the run folder at ``to`` (same depth as ``runs/<name>`` when ``to`` is so)."""
    shutil.copytree(run_dir, to)
    return to


def test_run_records_its_dataset_absolute_and_loads_from_another_directory(small_run, tmp_path, monkeypatch):
    project, run_dir = small_run
    recorded = json.loads((run_dir / "metrics.json").read_text())["data"]["path"]
    assert Path(recorded).is_absolute() and Path(recorded).parent == project / "cache"
    monkeypatch.chdir(tmp_path)                      # neither the project nor the run folder
    loaded = graphrec.load_run(run_dir)
    assert loaded.dataset.path == Path(recorded) and loaded.modules["metapaths"]
    assert set(loaded.artifacts["expansions"]) and loaded.ranker is not None


def test_an_old_run_folder_with_a_relative_dataset_path_still_loads(small_run, tmp_path, monkeypatch):
    project, run_dir = small_run
    old = copy_run(run_dir, project / "runs" / "old-style")     # beside the original, so cache/ is two levels up
    m = json.loads((old / "metrics.json").read_text())
    m["data"]["path"] = str((project / m["data"]["path"]).relative_to(project))     # as runs before the fix wrote it
    (old / "metrics.json").write_text(json.dumps(m))
    try:
        monkeypatch.chdir(tmp_path)
        loaded = graphrec.load_run(old)              # found against the run folder's parents
        assert loaded.dataset.path == project / m["data"]["path"]
        monkeypatch.chdir(project)
        assert graphrec.load_run(Path("runs") / "old-style").dataset.path.resolve() == project / m["data"]["path"]
    finally:
        shutil.rmtree(old)


def test_a_dataset_that_is_gone_names_the_paths_tried(small_run, tmp_path, monkeypatch):
    project, run_dir = small_run
    moved = copy_run(run_dir, tmp_path / "runs" / "moved")      # away from the project: no parent has cache/
    m = json.loads((moved / "metrics.json").read_text())
    rel = str((project / m["data"]["path"]).relative_to(project))
    m["data"]["path"] = rel
    (moved / "metrics.json").write_text(json.dumps(m))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"its dataset cache/simulate-\w+ \(tried .*\) is gone; rebuild") as err:
        graphrec.load_run(moved)
    msg = str(err.value)
    tried = msg[msg.index("(tried ") + 7:msg.index(") is gone")].split(", ")
    # the current directory, then the run folder's parents (the current directory again is not repeated)
    assert tried[:3] == [str(tmp_path / rel), str(tmp_path / "runs" / rel), str(tmp_path.parent / rel)]
    assert len(tried) == len(set(tried)) and tried[-1] == str(Path("/") / rel)
    assert "python -m graphrec.run --cfg" in msg and "set data.path" in msg
    m["data"]["path"] = str(tmp_path / "nowhere")                                # absolute: the one path tried
    (moved / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=rf"its dataset {tmp_path / 'nowhere'} is gone; rebuild it"):
        graphrec.load_run(moved)


def test_a_truncated_expansions_file_is_a_data_error(small_run, tmp_path, capsys):
    _, run_dir = small_run
    cut = copy_run(run_dir, tmp_path / "cut")
    path = cut / "expansions.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"expansions.npz: unreadable or truncated expansions file "
                                        r"\(BadZipFile: .*\); copy it again .* re-run `python -m graphrec.run --cfg"):
        graphrec.load_run(cut)
    serve = pytest.importorskip("graphrec.serve", reason="the serving extra (FastAPI) is not installed")
    assert serve.main(["--run", str(cut)]) == 2                  # the command line: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: unreadable or truncated expansions file") and "Traceback" not in err
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"expansions.npz: unreadable or truncated expansions file \(EOFError"):
        graphrec.load_run(cut)
