"""DGL's distributed engine: partitions, the hop-by-hop walker, graph servers and DDP trainers.

The launcher tests run real graph servers and trainers: on 127.0.0.1 (one machine, DGL's own test
recipe) and on two simulated machines (network namespaces with a private /dev/shm each; skipped
with the reason where namespaces cannot be made). Every process is bounded by a timeout.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from graphrec.dist.lifecycle import Watchdog
from graphrec.dist.lifecycle import pid_alive
from graphrec.gie.metapath import METAPATHS, PAD, expand

from .conftest import FAST_MODELS, TINY_SIM
from .test_gie import exact_endpoint_distribution, toy_graph

pytest.importorskip("dgl", reason="DGL's distributed engine (the DGL-free environment has none)")

# a world where the ranker learns something in a few seconds
# 5% gifts: enough validation positives (~150) that standalone and distributed AUCs can be compared.
DIST_SETS = TINY_SIM + FAST_MODELS + ["simulate.gift_rate=0.05", "ranker.epochs=4", "ranker.batch_size=256",
                                      "eval.two_stage_candidates=0", "lightgcn.enabled=false", "run.progress=false",
                                      "run.checkpoint_every_s=0"]   # the kill tests wait for the first epoch's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sets(tmp_path, extra=()):
    out = []
    for x in list(DIST_SETS) + [f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                                f"dist.master_port={free_port()}", "dist.connect_timeout_s=9",
                                "dist.stall_timeout_s=60"] + list(extra):
        out += ["--set", x]
    return out


def python(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, **kw)


def loopback_ip_config(tmp_path) -> Path:
    path = tmp_path / "ip.txt"
    path.write_text(f"127.0.0.1 {free_port()}\n")
    return path


# ----------------------------------------------------------------------------- the walker (standalone)
@pytest.fixture
def toy_store(tmp_path):
    from graphrec.dist.store import FeatureStore, partition_features

    g = toy_graph()
    data = {"user": {"x": torch.zeros(5, 1), "exp_u2a2u": torch.zeros(5, 1, 8, dtype=torch.int32)},
            "author": {"exp_a2u2a": torch.zeros(4, 1, 6, dtype=torch.int32)}}   # one graph snapshot      # the columns walks write
    orig, layouts = partition_features(g, 5, 4, None, data, tmp_path, "toywalk")
    return g, FeatureStore(tmp_path / "toywalk.json", "toywalk", orig, layouts)


@pytest.mark.parametrize("name", list(METAPATHS))
def test_dist_walker_samples_the_exact_endpoint_distribution(toy_store, name):
    from graphrec.dist.walk import DistWalker

    g, store = toy_store
    walker = DistWalker(store.graph)
    seed_type, etypes = METAPATHS[name].seed, METAPATHS[name].etypes
    end_type = g.to_canonical_etype(etypes[-1])[2]
    n = 20000
    gen = torch.Generator().manual_seed(0)
    for seed in range(g.num_nodes(seed_type)):
        exact = exact_endpoint_distribution(g, seed_type, etypes, seed)
        new_seed = store.new_of_orig[seed_type][seed]
        ends = walker.walk(new_seed.view(1), etypes, n, gen).view(-1)
        ends = torch.where(ends >= 0, store.orig_of_new[end_type][ends.clamp(min=0)], ends).numpy()
        counts = np.bincount(np.where(ends < 0, len(exact) - 1, ends), minlength=len(exact))
        support = exact > 0
        assert counts[~support].sum() == 0, (name, seed)
        if support.sum() > 1:
            assert chisquare(counts[support], exact[support] * n).pvalue > 1e-4, (name, seed, counts, exact * n)


def test_dist_walker_exclusions_and_owned_expansions(toy_store):
    from graphrec.dist.walk import DistWalker, walk_owned_expansions

    g, store = toy_store
    walker = DistWalker(store.graph)
    users = torch.arange(5)
    new = expand(walker, store.graph, "u2a2u2a", users, 50, generator=torch.Generator().manual_seed(1),
                 gifted=walker.gifted(users))
    u, a = g.edges(etype="u2a")
    gifted = set(zip(u.tolist(), a.tolist()))
    orig_u, orig_a = store.orig_of_new["user"], store.orig_of_new["author"]
    for s in range(5):
        assert all((int(orig_u[s]), int(orig_a[x])) not in gifted for x in new[s].tolist() if x != PAD)
    mine = walk_owned_expansions(store, {"u2a2u": 8, "a2u2a": 6, "a2a": 0})
    assert sorted(mine["u2a2u"][0].tolist()) == list(range(5))        # one trainer owns every seed
    assert sorted(mine) == ["a2u2a", "u2a2u"]                         # k = 0 is not walked
    sim = store.rows("user", torch.arange(5), ["exp_u2a2u", "x"], snapshot=torch.zeros(5))   # in the packed table
    assert sim["exp_u2a2u"].shape == (5, 8) and torch.equal(sim["x"], torch.zeros(5, 1))   # the rest intact
    seeds, walks = mine["u2a2u"]
    assert torch.equal(sim["exp_u2a2u"][seeds].long(), walks)
    for s in range(5):
        assert all(x != s for x in sim["exp_u2a2u"][s].tolist())       # never the seed itself (original ids)
    assert (store.rows("author", torch.tensor([3]), ["exp_a2u2a"])["exp_a2u2a"] == PAD).all()   # no gifters
    assert store.rows("author", torch.tensor([3]), ["exp_a2u2a"])["exp_a2u2a"].shape == (1, 1, 6)   # every snapshot
    with pytest.raises(ValueError, match="re-run graphrec.partition"):
        store.write("user", torch.arange(5), {"exp_u2a2u": torch.zeros(5, 3, dtype=torch.long)})


# ----------------------------------------------------------------------------- partition
def test_partition_keeps_features_and_the_id_mapping(tmp_path):
    import dgl

    from graphrec.config import load_config
    from graphrec.data.dataset import load_dataset
    from graphrec.data.sources import dataset_dir
    from graphrec.dist.packed import unpack
    from graphrec.dist.prepare import PARTITION_FORMAT, load_orig_ids, load_prepared, part_dir_of, prepare
    from graphrec.errors import ConfigError

    overrides = [x for x in sets(tmp_path) if x != "--set"] + ["dist.num_parts=2", "dist.part_method=random"]
    cfg = load_config(None, overrides)
    part_dir = prepare(cfg, log=lambda m: None)
    assert part_dir == part_dir_of(cfg) and not list(part_dir.parent.glob(".*tmp*"))
    prepared = load_prepared(part_dir, cfg)
    assert prepared["num_parts"] == 2 and prepared["modules"]["metapaths"] and prepared["format"] == PARTITION_FORMAT
    orig = load_orig_ids(part_dir)
    ds = load_dataset(dataset_dir(cfg))
    assert sorted(orig["user"].tolist()) == list(range(ds.num_users))
    assert sorted(orig["author"].tolist()) == list(range(ds.num_authors))
    with np.load(Path(prepared["prepared_by"]) / "expansions.npz") as z:
        a2a = z["a2a"]
    seen = 0
    for part in range(2):
        _, node_feats, _, gpb, _, _, _ = dgl.distributed.load_partition(part_dir / prepared["part_config"], part)
        local = gpb.partid2nids(part, "author")                       # new ids owned by this part
        got = unpack(node_feats["author/packed"], prepared["features"]["author"], ["exp_a2a"])["exp_a2a"].numpy()
        np.testing.assert_array_equal(got, a2a[orig["author"][local].numpy()])
        np.testing.assert_array_equal(                                  # Θ also on its own, for the second hop
            node_feats["author/theta"].numpy(),
            unpack(node_feats["author/packed"], prepared["features"]["author"], ["theta"])["theta"].numpy())
        seen += len(local)
    assert seen == ds.num_authors
    other = load_config(None, overrides + ["run.seed=5"])
    with pytest.raises(ConfigError, match="run.seed"):
        load_prepared(part_dir, other)


def test_partition_signature_holds_every_ranker_setting_that_changes_the_node_data():
    """A ranker setting that changes which features become node data (``enabled_modules``) is in the partitions'
    signature (read from the config schema), so a launch with another value is refused, not run on partitions
    made for another ranker."""
    from types import SimpleNamespace

    from graphrec.config import Config, Section, load_config, load_schema
    from graphrec.dist.prepare import SIGNATURE_KEYS
    from graphrec.ranking.stage import enabled_modules

    ds = SimpleNamespace(implicit=False, has=lambda table: True, modalities=lambda: ["frame", "speech"])
    artifacts = {"expansions": dict.fromkeys(METAPATHS, 0), "theta": 0, "stat_forecaster": 0, "product_forecaster": 0}
    base = load_config(None, [])
    changing = set()
    for key, spec in load_schema()["ranker"].items():
        if spec.type not in ("bool", "int"):
            continue
        cfg = Config({s: Section(dict(v)) for s, v in base.items()})
        cfg.ranker[key] = (not spec.default) if spec.type == "bool" else (0 if spec.default else 1)
        if enabled_modules(cfg, ds, artifacts) != enabled_modules(base, ds, artifacts):
            changing.add(("ranker", key))
    assert {("ranker", f"use_{m}") for m in METAPATHS} <= changing      # one switch per metapath of the schema
    assert changing <= set(SIGNATURE_KEYS), changing - set(SIGNATURE_KEYS)


# ----------------------------------------------------------------------------- launcher input errors
def test_launcher_reports_bad_input(tmp_path, capsys):
    from graphrec.dist.launch import main, read_ip_config
    from graphrec.errors import ConfigError

    bad = tmp_path / "ip.txt"
    bad.write_text("127.0.0.1 30050\n10.0.0.x\n")
    with pytest.raises(ConfigError, match=r"ip.txt:2: '10.0.0.x' is not an IPv4 address"):
        read_ip_config(bad)
    bad.write_text("# machines\n127.0.0.1 70000\n")
    with pytest.raises(ConfigError, match=r"ip.txt:2: port must be 1..65535"):
        read_ip_config(bad)
    good = tmp_path / "ok.txt"
    good.write_text("10.0.0.1\n10.0.0.2 31000  # second\n")
    assert read_ip_config(good) == [("10.0.0.1", 30050), ("10.0.0.2", 31000)]
    assert main(sets(tmp_path) + ["--num-trainers", "1"]) == 2             # nothing partitioned yet
    assert "graphrec.partition" in capsys.readouterr().err


def test_watchdog_stops_a_stalled_or_orphaned_trainer():
    codes = []
    dog = Watchdog(1.0, exit=codes.append, poll_s=0.05).start()
    for _ in range(20):                   # kicked every 0.05 s for 1 s: no stall
        dog.kick()
        time.sleep(0.05)
    assert codes == []
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert codes == [3]
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid) and pid_alive(os.getpid())
    codes.clear()
    Watchdog(100, server_pids=[p.pid], exit=codes.append, poll_s=0.05).start()
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert codes == [3]


# ----------------------------------------------------------------------------- real servers and trainers
def _partition(tmp_path, n, extra=()):
    r = python("-m", "graphrec.partition", "--num-parts", str(n), *sets(tmp_path, extra))
    assert r.returncode == 0, r.stderr[-3000:]


def _shares(run_dir: Path, world: int):
    shares = []
    for r in range(world):
        with np.load(run_dir / "shares" / f"rank{r}.npz") as z:
            shares.append({k: z[k] for k in z.files})
    return shares


def _assert_disjoint_and_complete(shares, num_impressions):
    everything = np.concatenate([np.concatenate([s[k] for k in ("train", "val", "test")]) for s in shares])
    assert len(everything) == num_impressions == len(np.unique(everything))
    assert all(len(s["train"]) > 0 for s in shares)


def _standalone_val_auc(tmp_path, world: int):
    """The standalone run that ``world`` DDP trainers of batch 256 match step for step: each of their
    optimizer steps averages ``world`` batches, i.e. one standalone batch of ``world * 256``."""
    from graphrec.config import load_config
    from graphrec.run import run

    cfg = load_config(None, [x for x in sets(tmp_path, [f"ranker.batch_size={256 * world}"]) if x != "--set"])
    m = run(cfg).metrics
    return _last_epoch_auc(m), m["data"], m


def _last_epoch_auc(m) -> float:
    """Validation AUC after the last epoch: training progress, without the noise of picking the best epoch
    by GAUC on ~150 positives. The reported AUC is the best epoch's, the same number as in the history."""
    history = m["ranker"]["history"]
    best = history[m["ranker"]["best_epoch"] - 1]["val_auc"]
    assert abs(m["eval"]["val"]["mmbee"]["gift"]["auc"] - best) < 1e-4, (m["eval"]["val"]["mmbee"]["gift"]["auc"], best)
    return history[-1]["val_auc"]


@pytest.mark.slow
def test_one_machine_one_server_two_trainers(tmp_path):
    _partition(tmp_path, 1)
    run_dir = tmp_path / "runs" / "dist"
    r = python("-m", "graphrec.launch", *sets(tmp_path), "--ip-config", str(loopback_ip_config(tmp_path)),
               "--num-trainers", "2", "--num-servers", "1", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dist"]["world_size"] == 2 and len(m["ranker"]["history"]) == 4
    auc, data, standalone = _standalone_val_auc(tmp_path, world=2)
    for split in ("val", "test"):                 # one metrics schema, standalone or distributed
        keys = set(m["eval"][split]["mmbee"])
        assert keys == set(standalone["eval"][split]["mmbee"])             # per-bucket entries included
        assert {k for k in keys if "@" not in k} == {"click", "long_view", "gift", "purchase", "topk"}
        assert {"gift@0", "topk@0"} <= keys
        # each trainer ranked its own users: together every user with a positive in the split, once
        assert m["eval"][split]["mmbee"]["topk"]["users"] == standalone["eval"][split]["mmbee"]["topk"]["users"] > 0
    # one metrics.json (graphrec.metrics_schema): a standalone run's entries, the partition step's stage entries
    # (graph, expansion, graphcl, forecasters) included, plus dist; the same keys in run, data, ranker, graphcl
    assert set(m) - {"dist"} == set(standalone), set(m) ^ set(standalone)
    assert {"data", "graph", "expansion", "graphcl", "ranker", "eval", "stages"} <= set(m)
    for entry in ("run", "data", "ranker", "graphcl"):
        assert set(m[entry]) == set(standalone[entry]), (entry, set(m[entry]) ^ set(standalone[entry]))
    assert m["data"]["split"] == standalone["data"]["split"] and m["ranker"]["monitor"] == "gauc"
    assert m["ranker"]["parameters"] > 0 and m["ranker"]["train_seconds"] > 0
    assert [(s["name"], s["status"].split(":")[0]) for s in m["stages"]] == [
        ("connect", "ran"), ("load", "ran"), ("walk", "skipped"), ("graphcl", "skipped"), ("ranker", "ran"),
        ("evaluation", "ran"), ("report", "ran")]
    report = (run_dir / "report.md").read_text()          # rendered as a standalone run's, plus its own section
    for section in ("## Dataset", "## Metrics on test", "## Ranker training", "## Gifting graph", "## Distributed run",
                    "## Stages"):
        assert section in report, section
    shares = _shares(run_dir, 2)
    _assert_disjoint_and_complete(shares, data["impressions"])
    from graphrec.data.dataset import load_dataset

    users = load_dataset(Path(data["path"])).impressions["user"]
    owned = [set(users[np.concatenate(list(s.values()))].tolist()) for s in shares]
    assert not owned[0] & owned[1]        # node_split gives each user (and all their impressions) to one trainer
    assert abs(_last_epoch_auc(m) - auc) < 0.05, (_last_epoch_auc(m), auc)


@pytest.mark.slow
def test_server_killed_mid_run_stops_the_trainers(tmp_path):
    _partition(tmp_path, 1)
    run_dir = tmp_path / "runs" / "killed"
    p = subprocess.Popen([sys.executable, "-m", "graphrec.launch", *sets(tmp_path, ["ranker.epochs=200"]),
                          "--ip-config", str(loopback_ip_config(tmp_path)), "--num-trainers", "2",
                          "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "ranker_last.pt").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.2)
        pids = json.loads((run_dir / "processes-0.json").read_text())
        killed = time.monotonic()
        os.kill(pids["servers"][0], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert elapsed < 30
    assert "graph server 0" in err and "exited with code -9" in err
    for rank in pids["trainers"]:
        assert not pid_alive(rank)
    assert "error: trainer" in err


@pytest.mark.slow
def test_crashed_trainer_is_restarted_from_the_last_checkpoint(tmp_path):
    _partition(tmp_path, 1)
    run_dir = tmp_path / "runs" / "crash"
    ip = loopback_ip_config(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "graphrec.launch", *sets(tmp_path, ["ranker.epochs=3"]),
                          "--ip-config", str(ip), "--num-trainers", "2", "--run-dir", str(run_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "ranker_last.pt").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.1)
        os.kill(json.loads((run_dir / "processes-0.json").read_text())["trainers"][1], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and "trainer 1" in err and "exit code -9" in err, err[-4000:]
    assert not (run_dir / "metrics.json").exists()
    r = python("-m", "graphrec.launch", "--resume", str(run_dir), "--ip-config", str(ip), "--num-trainers", "2")
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["ranker"]["resumed_from_epoch"] >= 1
    assert [h["epoch"] for h in m["ranker"]["history"]] == [1, 2, 3]
    assert "ranker: resumed after epoch" in r.stderr


# ----------------------------------------------------------------------------- two simulated machines
@pytest.fixture
def two_machines():
    from graphrec.bench.netns import list_namespaces, simulated_machines, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"simulated machines unavailable here: {reason}")
    with simulated_machines(2) as machines:
        yield machines
    assert not set(m.namespace for m in machines) & set(list_namespaces())


def _launch_on(machines, args, run_dir, only=None, timeout=300):
    # one intra-op thread each: two machines' servers and trainers share this host's cores, and
    # oversubscribed OpenMP threads once made a run exceed the timeout
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "gr0", "OMP_NUM_THREADS": "1"}
    procs = []
    for i, m in enumerate(machines):
        if only is not None and i not in only:
            continue
        procs.append(subprocess.Popen(m.command([sys.executable, "-m", "graphrec.launch", *args, "--machine-rank",
                                                 str(i), "--run-dir", str(run_dir)]),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs


def _assert_walks_follow_the_graph(tmp_path, run_dir):
    """Every walked endpoint is reachable along its metapath in the training graph (original ids),
    whichever partition the seed and each hop lived on; together the trainers walked every seed."""
    from graphrec.config import load_config
    from graphrec.run import run

    cfg = load_config(None, [x for x in sets(tmp_path) if x != "--set"] + [
        "run.skip_stages=[expansion, graphcl, stat_forecast, product_forecast, lightgcn, ranker, evaluation, report]"])
    g = run(cfg).state["graph"]
    adj = {}
    for et in ("u2a", "a2u", "a2a"):
        s, d = g.edges(etype=et)
        adj[et] = {}
        for a, b in zip(s.tolist(), d.tolist()):
            adj[et].setdefault(a, set()).add(b)
    walked = {}
    for path in sorted((run_dir / "expansions").glob("rank*.npz")):
        with np.load(path) as z:
            for name in METAPATHS:
                walked.setdefault(name, []).append((z[f"{name}_seeds"], z[name]))
    for name, mp in METAPATHS.items():
        seed_type, etypes = mp.seed, mp.etypes
        seeds = np.concatenate([s for s, _ in walked[name]])
        assert sorted(seeds.tolist()) == list(range(g.num_nodes(seed_type))), name
        for s_ids, ends in walked[name]:
            for seed, row in zip(s_ids.tolist(), ends.tolist()):
                reach = {seed}
                for et in etypes:
                    reach = set().union(*(adj[et].get(v, set()) for v in reach)) if reach else set()
                assert all(x in reach for x in row if x != PAD), (name, seed, row, reach)


@pytest.mark.slow
def test_two_machines_one_server_one_trainer_each(tmp_path, two_machines):
    _partition(tmp_path, 2)
    ip = tmp_path / "ip2.txt"
    ip.write_text("".join(f"{m.ip} 30050\n" for m in two_machines))
    run_dir = tmp_path / "runs" / "two"
    t0 = time.monotonic()
    codes, errs = _launch_on(two_machines, sets(tmp_path) + ["--ip-config", str(ip), "--num-trainers", "1"], run_dir)
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errs)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dist"]["world_size"] == 2 and m["dist"]["num_parts"] == 2
    # a batch pulls each node type at most twice (users, authors: the batch's rows, then the Θ of the
    # expansions' endpoints) and the segments once: 5 with every module (it was 20, one per feature)
    # (a node type whose rows are all in the cache of remote rows, dist.remote_cache_mb, needs none)
    reads = m["dist"]["feature_reads"]
    assert 3.0 <= reads["pulls_per_batch"] <= 5.0, reads
    assert [len(r) for r in reads["per_rank"]] == [4, 4]
    # half the rows live on the other machine: on this small world each trainer copies them once before
    # training (dist.remote_cache_mb), and every batch reads them from memory
    assert reads["remote_kb_per_batch"] == 0, reads
    for rank, epochs in enumerate(reads["per_rank"]):
        assert all(e["cache_hits"] > 0 and e["cached_mb"] > 0 for e in epochs), epochs
        held = re.search(r"cache of remote rows: ([0-9.]+) MB", (run_dir / f"trainer-{rank}.log").read_text())
        assert held and float(held.group(1)) > 0
    assert "pulls/batch" in (run_dir / "trainer-0.log").read_text()
    auc, data, _ = _standalone_val_auc(tmp_path, world=2)
    _assert_disjoint_and_complete(_shares(run_dir, 2), data["impressions"])
    assert abs(_last_epoch_auc(m) - auc) < 0.05, (_last_epoch_auc(m), auc)
    print(f"2x1 wall {time.monotonic() - t0:.1f}s, val AUC {m['eval']['val']['mmbee']['gift']['auc']:.4f} "
          f"(standalone {auc:.4f})")

    # the walked expansions across both partitions (remote sampling through the other server)
    codes, errs = _launch_on(two_machines, sets(tmp_path, ["dist.expansion=walk", "ranker.epochs=1"])
                             + ["--ip-config", str(ip), "--num-trainers", "1"], tmp_path / "runs" / "walk")
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errs)
    m = json.loads((tmp_path / "runs" / "walk" / "metrics.json").read_text())
    assert m["dist"]["walked"]["metapaths"] == sorted(METAPATHS)
    _assert_walks_follow_the_graph(tmp_path, tmp_path / "runs" / "walk")

    # machine 1 never starts: machine 0's trainer gives up after dist.connect_timeout_s
    t0 = time.monotonic()
    codes, errs = _launch_on(two_machines, sets(tmp_path) + ["--ip-config", str(ip), "--num-trainers", "1"],
                             tmp_path / "runs" / "alone", only=[0], timeout=120)
    assert codes[0] != 0 and time.monotonic() - t0 < 60
    assert "cannot reach every graph server" in errs[0], errs[0][-3000:]


def test_graph_names_differ_for_folders_of_the_same_name(tmp_path):
    """DGL names shared memory after the graph: two partitions in folders called ``part`` (two experiments,
    two test sessions on one host) once mapped each other's partition book and the trainer died with
    ``'NoneType' object has no attribute 'ntypes'``."""
    from graphrec.dist.store import graph_name_for

    a, b = tmp_path / "one" / "part", tmp_path / "two" / "part"
    assert graph_name_for(a) != graph_name_for(b)
    assert graph_name_for(a) == graph_name_for(tmp_path / "one" / ".." / "one" / "part")   # the same folder
    assert re.fullmatch(r"graphrec_part_[0-9a-f]{8}", graph_name_for(a))
