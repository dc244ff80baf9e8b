"""``python -m graphrec.abtest --cfg yaml/live.yaml [--runs [NAME=]RUN_DIR ...] [--requests N] [--k K]``

A simulated online A/B test. MMBee's headline results are online (+2.86% gifting users and gifts
over its base ranker); the simulator knows the true response of every viewer to every room at every
time (:class:`data_prep.simulate.World`, rebuilt from the dataset's simulator config and seed), so
the same experiment can run offline:

* **traffic**: requests (user, time) from the world's own exposure process over the test period
  (users by their activity, times uniform over its 30-s steps); the candidates of a request are the
  rooms on air then (every author in this simulator), or a random ``--candidates C`` of them;
* **policies** rank the candidates and show their top ``k``: trained runs (scored by the ranker's own
  path, ``builder.pairs`` + the model, ranked by the main label's head), popularity, random and the
  oracle (the true gift probability: the ceiling);
* **outcomes** are drawn from the true response with common random numbers: one uniform per
  (request, author, label), the same for every policy, so the comparison is paired; gift value is the
  simulator's lognormal, drawn by inversion from its own common uniform;
* **metrics**, as in MMBee's online table: share of gifting users (users with a gift among their
  requests), gifts, gift value and clicks per exposure, with 95% confidence intervals and the lift
  over a control by a paired bootstrap over users.

Without ``--runs`` the full model and DIN are trained on the world (or reused from
``<run.out_dir>/abtest-cache/<fingerprint>/``). Writes ``<run.out_dir>/<run.name>-abtest-<time>/``:
``abtest.json`` (policy -> metric -> mean, CI, lift, lift CI), ``setup.json``, ``report.md``,
TensorBoard text and scalars, and ``abtest.png`` (:func:`graphrec.plots.plot_abtest`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from .errors import ConfigError, DataError, command
from .report import abtest_report, abtest_table

# streams of the common random numbers: one uniform per (request, author) and stream
GIFT, CLICK, VALUE, TIE, RANDOM = range(5)
PAIR_CHUNK = 32768                              # (user, author, time) triples per scoring call


# ----------------------------------------------------------------------------- common random numbers
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixed hash of uint64 values."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crn_uniform(seed: int, stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per ``(seed, stream, a[i], b[i])``, by hashing (no generator state): the same
    key gives the same number whichever policy asks and in whatever order, so outcomes are paired."""
    a = np.asarray(a).astype(np.uint64)
    b = np.asarray(b).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(_mix(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(stream)) ^ a)
        h = _mix(h ^ (b * np.uint64(0xD6E8FEB86659FD93)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)


# ----------------------------------------------------------------------------- traffic
@dataclass
class Traffic:
    """The requests of one test: who asks, when, and which rooms are candidates."""

    users: np.ndarray          # [R]
    times: np.ndarray          # [R] seconds
    candidates: np.ndarray     # [R, C] author ids
    first_step: int
    last_step: int

    @property
    def size(self) -> int:
        return len(self.users)

    def pairs(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (user, author, time) triple, request-major ([R * C] each)."""
        C = self.candidates.shape[1]
        return np.repeat(self.users, C), self.candidates.reshape(-1), np.repeat(self.times, C)


def split_period(world, ds) -> Tuple[int, int]:
    """The steps of the dataset's test split (its first test impression to the world's last step)."""
    from data_prep.simulate import STEP_SECONDS

    imp = ds.impressions
    test = imp["split"] == 2 if "split" in imp else np.zeros(len(imp["time"]), bool)
    first = int(imp["time"][test].min()) // STEP_SECONDS if test.any() else world.first_step
    return max(first, world.first_step), world.last_step


def make_traffic(world, ds, requests: int, candidates: Optional[int] = None, seed: int = 0) -> Traffic:
    """``requests`` requests drawn as the world draws its impressions: users by activity, times uniform
    over the test period's steps (and the seconds within a step)."""
    from data_prep.simulate import STEP_SECONDS

    if requests < 1:
        raise ConfigError(f"--requests must be at least 1, got {requests}")
    rng = np.random.default_rng([seed, 1])
    first, last = split_period(world, ds)
    share = np.cumsum(world.activity) / world.activity.sum()
    users = np.minimum(np.searchsorted(share, rng.random(requests), side="right"), world.num_users - 1)
    steps = rng.integers(first, last + 1, requests)
    times = steps.astype(np.int64) * STEP_SECONDS + rng.integers(0, STEP_SECONDS, requests)
    A = world.num_authors
    if candidates is None or candidates <= 0 or candidates >= A:
        cand = np.tile(np.arange(A, dtype=np.int64), (requests, 1))
    else:
        cand = np.argsort(rng.random((requests, A)), axis=1)[:, :candidates].astype(np.int64)
    return Traffic(users.astype(np.int64), times, cand, first, last)


# ----------------------------------------------------------------------------- policies
class Policy(Protocol):
    """Scores (user, author, time) triples; a request shows its candidates with the highest scores."""

    name: str

    def score(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> np.ndarray:
        ...


class RunPolicy(Policy):
    """A trained run (:func:`graphrec.load_run`), through its ranker's own scoring path: the builder's
    pairs, the model, the main label's head (``RankerScorer.pair_scores``)."""

    def __init__(self, name: str, loaded) -> None:
        self.name, self.run = name, loaded
        self.scorer = loaded.scorer()

    def score(self, users, authors, times):
        return self.scorer.pair_scores(users, authors, times)


class PopularityPolicy(Policy):
    """Most-popular: the author's training gifts (:class:`graphrec.evaluation.Popularity`)."""

    name = "popularity"

    def __init__(self, ds) -> None:
        from .evaluation import Popularity, split_mask

        self.pop = Popularity(ds, ds.main_label, split_mask(ds, "train"))

    def score(self, users, authors, times):
        return self.pop.pair_scores(users, authors, times)


class RandomPolicy(Policy):
    """A uniformly random order (a hash of the triple: the same request always gets the same order)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, users, authors, times):
        return crn_uniform(self.seed, RANDOM, np.asarray(users, np.int64) * 2 ** 31 + np.asarray(times, np.int64),
                           authors)


class OraclePolicy(Policy):
    """The true gift probability: what no model can beat on average (the ceiling)."""

    name = "oracle"

    def __init__(self, world, label: str = "gift") -> None:
        self.world, self.label = world, label

    def score(self, users, authors, times):
        return self.world.probabilities(users, authors, times)[self.label]


def _chunked(fn: Callable, traffic: Traffic, desc: str, progress: bool) -> np.ndarray:
    """``fn(users, authors, times)`` over every candidate triple of ``traffic``, in chunks: ``[R, C]``."""
    from tqdm import tqdm

    u, a, t = traffic.pairs()
    outs = []
    for s in tqdm(range(0, len(u), PAIR_CHUNK), desc=desc, disable=not progress, leave=False, unit="chunk"):
        outs.append(np.asarray(fn(u[s:s + PAIR_CHUNK], a[s:s + PAIR_CHUNK], t[s:s + PAIR_CHUNK])))
    return np.concatenate(outs).reshape(traffic.candidates.shape)


# ----------------------------------------------------------------------------- the test
@dataclass
class Outcomes:
    """What every candidate of every request would do if shown (common to all policies)."""

    p_gift: np.ndarray       # [R, C] true probabilities
    gift: np.ndarray         # [R, C] 0/1
    click: np.ndarray        # [R, C] 0/1
    value: np.ndarray        # [R, C] gift value (0 without a gift)
    tie: np.ndarray          # [R, C] tie-breaking uniform


def draw_outcomes(world, traffic: Traffic, seed: int = 0, progress: bool = False) -> Outcomes:
    """The true response of every candidate and its draw from the common uniforms."""
    from tqdm import tqdm

    u, a, t = traffic.pairs()
    R, C = traffic.candidates.shape
    req = np.repeat(np.arange(R, dtype=np.int64), C)
    p_gift, p_click = np.empty(len(u)), np.empty(len(u))
    for s in tqdm(range(0, len(u), PAIR_CHUNK), desc="true response", disable=not progress, leave=False):
        p = world.probabilities(u[s:s + PAIR_CHUNK], a[s:s + PAIR_CHUNK], t[s:s + PAIR_CHUNK])
        p_gift[s:s + PAIR_CHUNK], p_click[s:s + PAIR_CHUNK] = p["gift"], p["click"]
    gift = crn_uniform(seed, GIFT, req, a) < p_gift
    click = crn_uniform(seed, CLICK, req, a) < p_click
    value = np.where(gift, world.value(crn_uniform(seed, VALUE, req, a)), 0.0)
    shape = (R, C)
    return Outcomes(p_gift.reshape(shape), gift.reshape(shape), click.reshape(shape), value.reshape(shape),
                    crn_uniform(seed, TIE, req, a).reshape(shape))


def top_k(scores: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` best scores (ties broken by the common ``tie`` uniforms)."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    return np.lexsort((tie, -scores), axis=-1)[:, :k]


def per_user(shown: np.ndarray, out: Outcomes, users: np.ndarray) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per user (in ``np.unique(users)`` order) each metric's numerator and denominator."""
    uniq, inv = np.unique(users, return_inverse=True)
    n = len(uniq)

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=np.take_along_axis(x, shown, axis=1).sum(axis=1).astype(np.float64),
                           minlength=n)

    exposures = np.bincount(inv, minlength=n).astype(np.float64) * shown.shape[1]
    gifts = total(out.gift)
    return {"gifting_users": ((gifts > 0).astype(np.float64), np.ones(n)),
            "gifts_per_exposure": (gifts, exposures),
            "value_per_exposure": (total(out.value), exposures),
            "clicks_per_exposure": (total(out.click), exposures),
            "expected_gifts_per_exposure": (total(out.p_gift), exposures)}


def paired_bootstrap(sums: Mapping[str, Mapping[str, Tuple[np.ndarray, np.ndarray]]], control: str,
                     resamples: int = 1000, seed: int = 0, level: float = 0.95,
                     progress: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``policy -> metric -> {mean, ci_low, ci_high, lift, lift_ci_low, lift_ci_high}``. Every metric is a
    ratio of per-user sums; users are resampled with replacement, the same resample for every policy
    (paired), and the lift ``metric / control's metric - 1`` is taken within each resample."""
    from tqdm import tqdm

    if control not in sums:
        raise ConfigError(f"--control {control!r} is not one of the policies {list(sums)}")
    n = len(next(iter(next(iter(sums.values())).values()))[0])
    rng = np.random.default_rng([seed, 2])
    boot = {p: {m: [] for m in ms} for p, ms in sums.items()}
    chunk = max(1, min(resamples, 4_000_000 // max(n, 1)))
    with tqdm(total=resamples, desc="bootstrap", disable=not progress, leave=False) as bar:
        for s in range(0, resamples, chunk):
            b = min(chunk, resamples - s)
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)   # [b, users]
            for p, ms in sums.items():
                for m, (num, den) in ms.items():
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boot[p][m].append((w @ num) / (w @ den))
            bar.update(b)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for p, ms in sums.items():
        out[p] = {}
        for m, (num, den) in ms.items():
            b = np.concatenate(boot[p][m])
            c = np.concatenate(boot[control][m])
            mean = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
            cn, cd = sums[control][m]
            cmean = float(cn.sum() / cd.sum()) if cd.sum() > 0 else float("nan")
            with np.errstate(invalid="ignore", divide="ignore"):
                lift_b = b / c - 1.0
                lift = mean / cmean - 1.0 if cmean else float("nan")
            ok = np.isfinite(lift_b)
            out[p][m] = {"mean": mean,
                         "ci_low": float(np.nanpercentile(b, lo)), "ci_high": float(np.nanpercentile(b, hi)),
                         "lift": float(lift),
                         "lift_ci_low": float(np.percentile(lift_b[ok], lo)) if ok.any() else float("nan"),
                         "lift_ci_high": float(np.percentile(lift_b[ok], hi)) if ok.any() else float("nan")}
    return out


def run_abtest(world, ds, policies: Sequence[Policy], requests: int = 5000, k: int = 10,
               candidates: Optional[int] = None, control: Optional[str] = None, seed: int = 0,
               resamples: int = 1000, progress: bool = False,
               log: Callable[[str], None] = lambda s: None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The whole test: ``(results, setup)``; ``results`` is :func:`paired_bootstrap`'s table."""
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ConfigError(f"policy names must be unique, got {names}")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    control = control or default_control(names)
    if control not in names:
        raise ConfigError(f"--control {control!r} is not one of the policies {names}")
    t0 = time.time()
    traffic = make_traffic(world, ds, requests, candidates, seed)
    C = traffic.candidates.shape[1]
    k = min(k, C)
    log(f"{traffic.size:,} requests from {len(np.unique(traffic.users)):,} users over steps "
        f"{traffic.first_step}-{traffic.last_step}, {C} candidates each, top {k} shown")
    out = draw_outcomes(world, traffic, seed, progress)
    sums, timing = {}, {}
    for pol in policies:
        t = time.time()
        scores = _chunked(pol.score, traffic, pol.name, progress)
        sums[pol.name] = per_user(top_k(scores, out.tie, k), out, traffic.users)
        timing[pol.name] = round(time.time() - t, 2)
        log(f"{pol.name}: scored {scores.size:,} candidates in {timing[pol.name]:.1f}s")
    results = paired_bootstrap(sums, control, resamples, seed, progress=progress)
    setup = {"requests": traffic.size, "users": int(len(np.unique(traffic.users))), "k": k, "candidates": C,
             "all_candidates": C == world.num_authors, "control": control, "seed": seed,
             "bootstrap_resamples": resamples, "level": 0.95, "test_steps": [traffic.first_step, traffic.last_step],
             "policies": names, "world": {"dataset": str(ds.path) if ds.path else ds.name,
                                          "simulator_seed": world.seed},
             "scoring_seconds": timing, "seconds": round(time.time() - t0, 1)}
    return results, setup


def default_control(names: Sequence[str]) -> str:
    """DIN when it is among the policies, else popularity (else the first)."""
    for want in ("DIN", "din", "popularity"):
        if want in names:
            return want
    return names[0]


# ----------------------------------------------------------------------------- reports
def write_outputs(run_dir: Path, results, setup, runs: Mapping[str, str], cfg=None) -> Path:
    """``abtest.json``, ``setup.json``, ``report.md``, TensorBoard and the figure in ``run_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    from .data.dataset import atomic_write_text
    from .plots import plot_abtest

    setup = {**setup, "runs": dict(runs)}
    atomic_write_text(run_dir / "abtest.json", json.dumps(results, indent=2))
    atomic_write_text(run_dir / "setup.json", json.dumps(setup, indent=2))
    if cfg is not None:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    report = abtest_report(results, setup, runs)
    atomic_write_text(run_dir / "report.md", report)
    with SummaryWriter(log_dir=str(run_dir)) as writer:
        writer.add_text("abtest", report, 0)
        for p, ms in results.items():
            for m, r in ms.items():
                writer.add_scalar(f"abtest/{p}/{m}", r["mean"], 0)
                if r["lift"] == r["lift"]:
                    writer.add_scalar(f"abtest_lift/{p}/{m}", r["lift"], 0)
    plot_abtest(run_dir, run_dir)
    return run_dir


# ----------------------------------------------------------------------------- runs and worlds
def _run_data_path(run_dir: Path) -> Path:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise DataError(f"--runs {run_dir}: not a run folder (metrics.json missing)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if "data" not in m or "path" not in m["data"]:
        raise DataError(f"--runs {run_dir}: metrics.json names no dataset (the run did not finish its data stage)")
    return Path(m["data"]["path"])


def check_same_world(runs: Mapping[str, Path], world_dir: Path) -> None:
    """Every run must be trained on ``world_dir``: a policy from another world knows other users."""
    want = Path(world_dir).resolve()
    for name, d in runs.items():
        got = _run_data_path(d)
        if got.resolve() != want:
            raise DataError(f"--runs {d} ({name}) was trained on the world {got}, but this A/B test's world is "
                            f"{world_dir}; every policy must be trained on the same world (same data.* and "
                            f"simulate.* settings as --cfg/--set)")


def parse_runs(specs: Sequence[str]) -> Dict[str, Path]:
    """``[NAME=]RUN_DIR`` each; unnamed runs are called after their model (``DIN``) or ``run.name``."""
    out: Dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        d = Path(path)
        if not name:
            name = _default_run_name(d)
        base, i = name, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = d
    return out


def _default_run_name(d: Path) -> str:
    try:
        m = json.loads((d / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return d.name
    if m.get("ranker", {}).get("model") == "din":
        return "DIN"
    return m.get("run", {}).get("name") or d.name


def abtest_cache_dir(cfg) -> Path:
    """``<run.out_dir>/abtest-cache/<fingerprint>``: the fingerprint of everything that shapes the trained
    models (every section but ``run``, plus ``run.seed``)."""
    sections = [s for s in cfg if s != "run"]
    key = hashlib.sha256(f"{cfg.fingerprint(*sections)}:{cfg.run.seed}".encode()).hexdigest()[:12]
    return Path(cfg.run.out_dir) / "abtest-cache" / key


def trained_runs(cfg_file: Optional[str], overrides: Sequence[str], log: Callable[[str], None] = print) -> Dict[str, Path]:
    """The full model and DIN trained on the world of ``cfg_file`` + ``overrides``, reused from the cache
    folder when a finished run is there."""
    from .config import load_config
    from .run import ABLATIONS, run_many

    base = load_config(cfg_file, overrides)
    cache = abtest_cache_dir(base)
    runs, tasks = {}, []
    for variant in ("full", "DIN"):
        folder = cache / variant
        runs[variant] = folder
        if (folder / "metrics.json").exists() and (folder / "checkpoints" / "ranker.pt").exists() and \
                "ranker" in json.loads((folder / "metrics.json").read_text()):
            log(f"reusing {variant} from {folder}")
            continue
        if folder.exists():
            shutil.rmtree(folder)                  # an unfinished run of an earlier call
        folder.mkdir(parents=True)
        cfg = load_config(cfg_file, list(overrides) + ABLATIONS[variant] +
                          [f"run.out_dir={cache}", f"run.name=abtest-{variant.lower()}"])
        tasks.append((cfg, cfg_file, folder))
        log(f"training {variant} in {folder}")
    if tasks:
        run_many(tasks, base.run.jobs)
    return runs


def load_policies(runs: Mapping[str, Path], ds, world, seed: int,
                  log: Callable[[str], None] = print) -> List[Policy]:
    """The runs (loaded once each) and the built-in policies: popularity, random, oracle."""
    from .reload import load_run

    reserved = {"popularity", "random", "oracle"} & set(runs)
    if reserved:
        raise ConfigError(f"--runs names {sorted(reserved)} are taken by built-in policies; name them otherwise "
                          f"(NAME=RUN_DIR)")
    pols: List[Policy] = []
    for name, d in runs.items():
        log(f"loading {name} from {d}")
        pols.append(RunPolicy(name, load_run(d)))
    return pols + [PopularityPolicy(ds), RandomPolicy(seed), OraclePolicy(world)]


def _check_simulated(cfg) -> None:
    if cfg.data.source != "simulate":
        raise ConfigError(f"data.source={cfg.data.source}: the A/B test needs the built-in simulator "
                          f"(data.source=simulate), the only world whose true response is known")


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphrec.abtest", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", metavar="FILE", help="experiment YAML whose data/simulate sections set the world")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config key (repeatable)")
    ap.add_argument("--runs", nargs="+", metavar="[NAME=]RUN_DIR",
                    help="trained run folders on the same world (default: train full and DIN, or reuse them)")
    ap.add_argument("--requests", type=int, default=5000, help="requests (user, time) to draw (default 5000)")
    ap.add_argument("--k", type=int, default=10, help="rooms shown per request (default 10)")
    ap.add_argument("--candidates", type=int, default=0,
                    help="candidates per request: a random C of the rooms on air (default 0: all of them)")
    ap.add_argument("--control", help="the policy lifts are measured against (default: DIN if present, else popularity)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the traffic, outcomes and bootstrap (default 0)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    args = ap.parse_args(argv)
    import torch

    from .config import load_config
    from .data.dataset import load_dataset
    from .data.sources import dataset_dir, load_data
    from .data.split import ensure_split
    from .data.validate import validate_dataset
    from .run import make_run_dir
    from data_prep.simulate import world_of

    if args.bootstrap < 10:
        raise ConfigError(f"--bootstrap must be at least 10, got {args.bootstrap}")
    progress = sys.stderr.isatty()
    log = lambda s: print(f"[abtest] {s}", file=sys.stderr, flush=True)   # noqa: E731
    cfg = load_config(args.cfg, args.overrides)
    if args.runs:
        runs = parse_runs(args.runs)
        first = next(iter(runs.values()))
        if args.cfg or args.overrides:
            _check_simulated(cfg)
            world_dir = dataset_dir(cfg, log=log)
        else:                                   # the runs' own world, split as the first run split it
            world_dir = _run_data_path(first)
            cfg = load_config(first / "config.yaml") if (first / "config.yaml").exists() else cfg
        check_same_world(runs, world_dir)
        ds = load_dataset(world_dir)
        validate_dataset(ds)
        ensure_split(ds, cfg.data.val_fraction, cfg.data.test_fraction)
    else:
        _check_simulated(cfg)
        runs = trained_runs(args.cfg, args.overrides, log)
        ds = load_data(cfg, log=log)
    world = world_of(ds, log=log)
    with torch.no_grad():                       # scoring only; main() may be called in-process (tests)
        policies = load_policies(runs, ds, world, args.seed, log)
        results, setup = run_abtest(world, ds, policies, args.requests, args.k, args.candidates or None,
                                    args.control, args.seed, args.bootstrap, progress, log)
    out = make_run_dir(Path(cfg.run.out_dir), f"{cfg.run.name}-abtest")
    write_outputs(out, results, setup, {n: str(d) for n, d in runs.items()}, cfg)
    print(abtest_table(results, setup["control"]))
    print(f"A/B test folder: {out}  (report.md, abtest.json, abtest.png; tensorboard --logdir {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
