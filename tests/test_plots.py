"""``python -m graphrec.plots``: the figures are written as PNG from run folders, with clear errors."""
import json

import pytest

from graphrec.plots import ablation_rows, main

PNG = b"\x89PNG\r\n\x1a\n"


def _fake_run(folder, name, model, auc, gauc, baselines=True):
    folder.mkdir(parents=True)
    test = {model: {"gift": {"auc": auc, "gauc": gauc}}}
    if baselines:
        test["popularity"] = {"gift": {"auc": 0.6, "gauc": 0.55}}
        test["oracle"] = {"gift": {"auc": 0.9, "gauc": 0.85}}
    (folder / "metrics.json").write_text(json.dumps({
        "run": {"name": name}, "data": {"main_label": "gift"}, "ranker": {"model": model},
        "eval": {"test": test}}))


def test_ablation_rows_follow_the_ablation_order_and_plot(tmp_path):
    _fake_run(tmp_path / "DIN-1", "DIN", "din", 0.70, 0.66)
    _fake_run(tmp_path / "full-1", "full", "mmbee", 0.75, 0.73)
    _fake_run(tmp_path / "GIE-1", "GIE", "mmbee", 0.73, 0.71, baselines=False)
    rows = ablation_rows(tmp_path)
    assert [r["variant"] for r in rows] == ["full", "-GIE", "DIN", "popularity", "oracle"]
    assert rows[0]["auc"] == 0.75 and rows[1]["gauc"] == 0.71 and rows[-1]["auc"] == 0.9
    assert main(["--ablation", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "ablation_auc.png").read_bytes()[:8] == PNG


def test_run_figures_from_a_tiny_run(tmp_path, capsys):
    from graphrec.config import load_config
    from graphrec.run import run

    from .conftest import FAST_MODELS, TINY_SIM

    cfg = load_config(None, TINY_SIM + FAST_MODELS + [f"run.out_dir={tmp_path / 'runs'}",
                                                       f"data.cache_dir={tmp_path / 'cache'}", "lightgcn.enabled=false"])
    run_dir = run(cfg).run_dir
    assert main(["--run", str(run_dir), "--out", str(tmp_path / "fig")]) == 0
    for name in ("forecast_vs_truth.png", "ranker_training.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == PNG
    assert not list((tmp_path / "fig").glob(".*tmp"))


def test_plots_report_missing_inputs(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "fig")]) == 2
    assert "metrics.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
