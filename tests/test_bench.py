"""The benchmark commands run and report consistent numbers (their speed is not asserted here)."""
import json

from graphrec.bench.__main__ import main
from graphrec.bench.sampler import format_table, power_law_graph, run


def test_power_law_graph_shape():
    g = power_law_graph(1000, 100, 5000, a2a_k=3)
    assert g.num_edges("u2a") == g.num_edges("a2u") == 5000
    assert g.num_edges("a2a") == 300 and (g.out_degrees(etype="a2a") == 3).all()
    deg = g.in_degrees(etype="u2a").sort(descending=True).values
    assert deg[:10].sum() > 5 * deg[-10:].sum()          # heavy-tailed author popularity


def test_sampler_benchmark_reports_every_metapath(tmp_path, capsys):
    res = run(2000, 200, 10_000, num_seeds=500, k=4, repeats=1)
    assert [r["metapath"] for r in res["rows"]] == ["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"]
    for r in res["rows"]:
        assert r["walks"] == 2000 and r["dgl_walks_per_s"] > 0 and r["torch_cpu_walks_per_s"] > 0
    assert res["gather_ceiling_per_s"] > 0
    assert "all five" in format_table(res)
    out = tmp_path / "s.json"
    assert main(["sampler", "--users", "2000", "--authors", "200", "--edges", "10000", "--seeds", "300",
                 "--k", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert "ceiling" in capsys.readouterr().out and json.loads(out.read_text())["k"] == 2


def test_swing_benchmark_and_usage(capsys):
    assert main(["swing", "--users", "2000", "--authors", "200", "--edges", "20000"]) == 0
    assert "a2a edges" in capsys.readouterr().out
    assert main(["nope"]) == 2
