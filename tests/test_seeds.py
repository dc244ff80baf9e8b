"""Several seeds of one configuration: the aggregate, ties, and the `--seeds` command."""
import json

import numpy as np
import pytest

from graphrec.run import main
from graphrec.report import fmt, is_tie
from graphrec.seeds import aggregate, summary

from .conftest import FAST_MODELS, TINY_SIM


def test_summary_is_mean_and_sample_sd():
    s = summary([0.70, 0.72, 0.74])
    assert s["mean"] == pytest.approx(0.72) and s["sd"] == pytest.approx(0.02) and s["n"] == 3
    assert summary([0.5])["sd"] == 0.0
    assert summary([0.5, float("nan")])["n"] == 1                      # a missing value is not a zero
    assert fmt(s) == "0.7200 ± 0.0200" and fmt(0.5) == "0.5000" and fmt(None) == "–"


def test_aggregate_keeps_the_metrics_schema_and_marks_ties():
    def run(auc, recall):
        return {"data": {"main_label": "gift"}, "stages": [{"name": "ranker", "seconds": 2.0}],
                "ranker": {"model": "mmbee", "modules": {}, "history": [{}, {}], "best_epoch": 1, "best_val": auc},
                "eval": {"test": {"mmbee": {"gift": {"auc": auc}, "topk": {"label": "gift", "recall@20": recall}}}}}
    agg = aggregate([run(0.70, 0.10), run(0.74, 0.12)], seeds=[0, 1], dirs=["seed0", "seed1"])
    test = agg["eval"]["test"]["mmbee"]
    assert test["gift"]["auc"]["mean"] == pytest.approx(0.72) and test["gift"]["auc"]["values"] == [0.70, 0.74]
    assert test["topk"]["label"] == "gift" and test["topk"]["recall@20"]["sd"] == pytest.approx(np.std([0.1, 0.12], ddof=1))
    assert agg["ranker"]["epochs_run"]["mean"] == 2 and agg["stage_seconds"]["ranker"]["mean"] == 2.0
    sd = test["gift"]["auc"]["sd"]                                      # 0.028
    assert is_tie(test["gift"]["auc"], summary([0.72 + sd / 2] * 2))    # closer than the seed sd: a tie
    assert not is_tie(test["gift"]["auc"], summary([0.72 + 2 * sd] * 2))
    assert not is_tie(0.7, 0.7)                                          # single runs have no sd to compare with


@pytest.mark.slow
def test_seeds_command_writes_one_folder_per_seed_and_the_aggregate(tmp_path, capsys):
    sets = TINY_SIM + FAST_MODELS + ["simulate.num_impressions=6000", "ranker.epochs=1", "lightgcn.enabled=false",
                                     f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                                     "run.seed=3"]
    assert main(["--seeds", "2"] + [a for s in sets for a in ("--set", s)]) == 0
    parent = next((tmp_path / "runs").iterdir())
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["seed3", "seed4"]
    agg = json.loads((parent / "metrics.json").read_text())
    runs = [json.loads((parent / f"seed{s}" / "metrics.json").read_text()) for s in (3, 4)]
    assert [r["run"]["seed"] for r in runs] == [3, 4]
    assert runs[0]["data"]["path"] == runs[1]["data"]["path"]           # one simulated world for every seed
    values = [r["eval"]["test"]["mmbee"]["gift"]["auc"] for r in runs]
    assert agg["eval"]["test"]["mmbee"]["gift"]["auc"]["values"] == pytest.approx(values)
    report = (parent / "report.md").read_text()
    assert agg["seeds"] == [3, 4] and "±" in report
    assert "two-stage (popularity top 20)" in report and "{'mean'" not in report     # counts print as counts
    assert main(["--seeds", "0"] + [a for s in sets for a in ("--set", s)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_run_the_seeds_in_parallel_processes_with_the_same_results(tmp_path):
    """``--jobs 2``: the seeds run in two worker processes, each seed as it would run alone."""
    import torch

    sets = TINY_SIM + FAST_MODELS + ["simulate.num_impressions=6000", "ranker.epochs=1", "lightgcn.enabled=false",
                                     f"data.cache_dir={tmp_path / 'cache'}", "run.progress=false"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # the workers' share of this machine's cores, as below
    try:
        args = [a for s in sets for a in ("--set", s)]
        assert main(["--seeds", "2", "--set", f"run.out_dir={tmp_path / 'seq'}"] + args) == 0
        assert main(["--seeds", "2", "--jobs", "2", "--set", f"run.out_dir={tmp_path / 'par'}"] + args) == 0
    finally:
        torch.set_num_threads(threads)
    seq, par = (json.loads(next((tmp_path / d).iterdir()).joinpath("metrics.json").read_text()) for d in ("seq", "par"))
    assert par["seeds"] == seq["seeds"] == [0, 1]
    for s, p in zip(seq["eval"]["test"]["mmbee"]["gift"]["auc"]["values"], par["eval"]["test"]["mmbee"]["gift"]["auc"]["values"]):
        assert p == pytest.approx(s, abs=2e-3)    # bit-exact with equal thread counts; close otherwise
    runs = [json.loads(d.joinpath("metrics.json").read_text()) for d in sorted(next((tmp_path / "par").iterdir()).glob("seed*"))]
    assert {r["run"]["seed"] for r in runs} == {0, 1}


def test_jobs_workers_end_with_their_parent(tmp_path):
    """A ``--jobs`` worker whose parent is killed (``kill -9``) stops instead of training on as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing as mp, os\n"
        "from graphrec.run import _worker_init\n"
        "def child():\n"
        "    print(os.getpid(), flush=True); time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_worker_init,\n"
        "                             initargs=(os.getpid(), 1)) as pool:\n"
        "        pool.submit(child).result()\n")
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 15 s")
