"""The built-in live-streaming world: the default data source, no download needed.

Every planted signal is one that a module of the papers should recover:

* **collaborative** (-> GIE): users and streamers belong to taste communities; gift intent grows with
  ``taste_u . style_a``. Users mostly see their own community's rooms, so a sparse user's co-gifters
  (``u2a2u``) and their streamers reveal the user's taste.
* **patronage** (-> GIE, gifts only): every taste community splits into ``fan_clubs`` fan clubs and every
  viewer and streamer belongs to one; gift intent grows with ``loyalty_u . club_a`` (the clubs' latent
  vectors plus noise). Patronage drives gifts only — not clicks, long views or which rooms are shown — so
  the click history cannot reveal it: a viewer's club shows in whom they and their co-gifters gift
  (``u2a2u2a``, ``a2u2a``), which is MMBee's premise. Its draws come from a generator of their own, so
  ``weight_patronage: 0`` gives the world without it byte for byte.
* **content** (-> MFQ): each 2-minute segment of a room has latent content made of a common part plus
  one specific part per modality (frame, ASR, comments). Each modality's tokens show the common part
  and only its own specific part, and intent grows with ``taste_u . (common + all specifics)``, so
  the modalities complement each other.
* **near-future highlights** (-> statistic forecaster): a room's heat follows a damped AR(2)
  oscillation; its statistics (audience, comments, likes, gifts, ...) rise with it, highlights
  happen when it peaks, and intent depends on the heat over the *next* ``horizon_steps`` steps.
* **category chains** (-> product forecaster): a shopping room's next fine category follows one of two
  global successor maps (which one is a property of the streamer) with probability ``chain_follow``;
  purchase intent depends on whether the *next* product's top category is the viewer's favourite.

The true probability of every label of every impression is saved (``p_<label>``), so the Bayes-
optimal AUC is known; the gift signal's scale and bias are calibrated so that the mean gift
probability and the expected oracle AUC equal ``simulate.gift_rate`` and ``simulate.gift_auc``.
Everything is vectorised numpy driven by one seeded generator: same config and seed, same bytes.

The world's latent state is not saved: :func:`simulate_world` rebuilds it from ``meta["simulator"]``
(config and seed) as a :class:`World`, whose :meth:`World.probabilities` is the true response of any
viewer to any room at any time (the simulated A/B test, :mod:`graphrec.abtest`). The logged
impressions' ``p_<label>`` and the world's response are one code path (:func:`_response`).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from graphrec.config import check_simulate
from graphrec.data.dataset import Dataset, save_dataset
from graphrec.errors import ConfigError, DataError, command
from graphrec.metrics import auc, expected_auc

STEP_SECONDS = 30
LABEL_NAMES = ("click", "long_view", "gift", "purchase")
VALUE_MU, VALUE_SIGMA = 1.0, 0.8          # gift value ~ lognormal(VALUE_MU, VALUE_SIGMA)
STAT_FEATURES = ("exposure", "audience", "comments", "likes", "gifts", "gift_value",
                 "product_clicks", "orders")
CALIBRATION_SAMPLE = 200_000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(x)


def bias_for_rate(z: np.ndarray, scale: float, rate: float, iters: int = 100) -> float:
    """The bias ``b`` with ``mean(sigmoid(b + scale * z)) == rate`` (bisection; monotone in b).

    The bracket grows with ``scale * max|z|`` so the solution is inside it for any scale."""
    reach = 40.0 + scale * float(np.abs(z).max()) if len(z) else 40.0
    lo, hi = -reach, reach
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + scale * z).mean() < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate(z: np.ndarray, rate: float, target_auc: float, rng: np.random.Generator,
              name: str = "gift") -> Tuple[float, float]:
    """``(scale, bias)`` such that ``p = sigmoid(bias + scale * z)`` has mean ``rate`` and expected AUC
    ``target_auc``. Expected AUC grows monotonically with the scale, so bisection finds it."""
    zs = z if len(z) <= CALIBRATION_SAMPLE else rng.choice(z, CALIBRATION_SAMPLE, replace=False)

    def auc_at(scale: float) -> float:
        return expected_auc(_sigmoid(bias_for_rate(zs, scale, rate) + scale * zs))

    hi = 1.0
    while auc_at(hi) < target_auc and hi < 256:
        hi *= 2
    if auc_at(hi) < target_auc:
        raise ConfigError(f"simulate.{name}_auc={target_auc} is unreachable with these signal weights "
                          f"(at most {auc_at(hi):.3f}); lower it or raise the weights")
    lo = 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if auc_at(mid) < target_auc:
            lo = mid
        else:
            hi = mid
    scale = 0.5 * (lo + hi)
    return scale, bias_for_rate(z, scale, rate)  # bias on the full population: exact planted rate


def _room_heat(rng: np.random.Generator, A: int, T: int, period: float, damping: float,
               burn_in: int = 100) -> np.ndarray:
    """Damped AR(2) oscillation per room, standardised: smooth, trending, hence forecastable."""
    phi1 = 2.0 * damping * math.cos(2.0 * math.pi / period)
    phi2 = -damping ** 2
    x1 = np.zeros(A)
    x2 = np.zeros(A)
    out = np.empty((A, T), dtype=np.float32)
    for t in range(burn_in + T):
        x = phi1 * x1 + phi2 * x2 + rng.standard_normal(A)
        x2, x1 = x1, x
        if t >= burn_in:
            out[:, t - burn_in] = x
    return (out - out.mean()) / out.std()


def fan_clubs(seed: int, community: np.ndarray, cluster: np.ndarray, num_communities: int, clubs: int,
              dim: int, noise: float):
    """``(club_u [U], club_a [A], loyalty [U, D], club_style [A, D])``: each taste community split into
    ``clubs`` fan clubs, viewers and streamers assigned within their community, with latent club vectors
    plus ``noise``. Drawn from a generator of its own (seeded by ``seed``), so the rest of the world's draws
    do not depend on whether patronage is planted."""
    rng = np.random.default_rng([seed, 0x5A7])
    centres = rng.standard_normal((num_communities * clubs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    club_u = (community.astype(np.int64) * clubs + rng.integers(0, clubs, len(community))).astype(np.int32)
    club_a = (cluster.astype(np.int64) * clubs + rng.integers(0, clubs, len(cluster))).astype(np.int32)
    loyalty = (centres[club_u] + noise * rng.standard_normal((len(club_u), dim)) / math.sqrt(dim)).astype(np.float32)
    club_style = (centres[club_a] + noise * rng.standard_normal((len(club_a), dim)) / math.sqrt(dim)).astype(np.float32)
    return club_u, club_a, loyalty, club_style


def _draw_authors(rng: np.random.Generator, user_comm: np.ndarray, cluster: np.ndarray,
                  popularity: np.ndarray, in_community: np.ndarray) -> np.ndarray:
    """Author per impression: popularity-weighted, from the user's community where asked."""
    A = len(cluster)
    glob = np.searchsorted(np.cumsum(popularity) / popularity.sum(), rng.random(len(user_comm)), side="right")
    glob = np.minimum(glob, A - 1)
    order = np.argsort(cluster, kind="stable")
    cl_sorted = cluster[order]
    pop_sorted = popularity[order]
    totals = np.bincount(cl_sorted, weights=pop_sorted, minlength=int(user_comm.max()) + 1)
    within = np.cumsum(pop_sorted) - np.concatenate([[0.0], np.cumsum(totals)])[cl_sorted]
    cdf = cl_sorted + within / totals[cl_sorted]        # cluster k occupies (k, k + 1]
    idx = np.searchsorted(cdf, user_comm + rng.random(len(user_comm)), side="right")
    idx = np.minimum(idx, A - 1)
    local = order[idx]
    ok = in_community & (cluster[local] == user_comm)   # empty communities fall back to global
    return np.where(ok, local, glob).astype(np.int32)


@dataclass
class World:
    """The latent state of a simulated world and the constants its intents were standardised and
    calibrated with: enough to give the true label probabilities of any (user, author, time)."""

    sim: Dict[str, Any]
    seed: int
    taste: np.ndarray            # [U, D]
    style: np.ndarray            # [A, D]
    content: np.ndarray          # [A * S, D] latent content of every segment
    heat: np.ndarray             # [A, T] standardised room heat
    user_bias: np.ndarray        # [U]
    author_bias: np.ndarray      # [A]
    activity: np.ndarray         # [U] how often a user is exposed (Pareto)
    popularity: np.ndarray       # [A]
    community: np.ndarray        # [U]
    cluster: np.ndarray          # [A]
    shopping: np.ndarray         # [A] 0/1
    fav_cat1: np.ndarray         # [U]
    cat3_of_author: np.ndarray   # [A, T // P] fine category on sale, -1 for rooms that do not sell
    loyalty: np.ndarray          # [U, D] a viewer's fan-club vector (patronage)
    club_style: np.ndarray       # [A, D] a streamer's fan-club vector
    first_step: int              # impressions are drawn on steps [first_step, last_step]
    last_step: int
    consts: Dict[str, Any] = field(default_factory=dict)   # standardisation and calibration (see _response)

    @property
    def num_users(self) -> int:
        return len(self.taste)

    @property
    def num_authors(self) -> int:
        return len(self.style)

    def steps(self, times: np.ndarray) -> np.ndarray:
        """The 30-s step of each time; the response exists where the horizon and next product do."""
        step = np.asarray(times, dtype=np.int64) // STEP_SECONDS
        bad = (step < 0) | (step > self.last_step)
        if bad.any():
            raise DataError(f"time {int(np.asarray(times).ravel()[np.flatnonzero(bad)[0]])} is outside the "
                            f"simulated period [0, {(self.last_step + 1) * STEP_SECONDS}) s")
        return step

    def probabilities(self, users: np.ndarray, authors: np.ndarray, times: np.ndarray) -> Dict[str, np.ndarray]:
        """``{label: p [n]}``: the true probability of every label for viewer ``users[i]`` shown room
        ``authors[i]`` at ``times[i]`` (seconds); on logged impressions it is their ``p_<label>``."""
        users = np.asarray(users, dtype=np.int64)
        authors = np.asarray(authors, dtype=np.int64)
        parts = _intent_parts(self, users, authors, self.steps(times))
        return _response(self.sim, parts, self.consts)

    @staticmethod
    def value(uniform: np.ndarray) -> np.ndarray:
        """Gift value from a uniform draw: the simulator's lognormal(VALUE_MU, VALUE_SIGMA) by inversion,
        so policies compared on the same uniforms get the same value for the same gift."""
        from scipy.special import ndtri

        u = np.clip(np.asarray(uniform, dtype=np.float64), 1e-300, 1.0 - 1e-16)
        return np.exp(VALUE_MU + VALUE_SIGMA * ndtri(u))


def _intent_parts(w: "World", user: np.ndarray, author: np.ndarray, step: np.ndarray) -> Dict[str, np.ndarray]:
    """The raw (unstandardised) intent signals of (user, author, step) triples."""
    sim = w.sim
    W, H, P = sim["segment_steps"], sim["horizon_steps"], sim["product_steps"]
    S = sim["room_steps"] // W
    segment = (author.astype(np.int64) * S + step // W).astype(np.int32)
    next_cat1 = w.cat3_of_author[author, step // P + 1] // (sim["cat2_per_cat1"] * sim["cat3_per_cat2"])
    return {"collab": np.einsum("ij,ij->i", w.taste[user], w.style[author]),
            "patron": np.einsum("ij,ij->i", w.loyalty[user], w.club_style[author]),
            "cont": np.einsum("ij,ij->i", w.taste[user], w.content[segment]),
            "future_heat": w.heat[author[:, None], step[:, None] + np.arange(H)].mean(axis=1),
            "ub": w.user_bias[user], "ab": w.author_bias[author],
            "in_shop": w.shopping[author] == 1,
            "match": (next_cat1 == w.fav_cat1[user]).astype(np.float32)}


def _response(sim: Mapping[str, Any], parts: Mapping[str, np.ndarray], consts: Dict[str, Any],
              rng: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
    """``{label: p}`` from the intent parts. With ``rng`` (the simulator, on the logged impressions)
    the standardisation and calibration constants are fitted into ``consts`` first (``calibrate``
    draws from ``rng``); without, the fitted ``consts`` are applied to any triples."""
    fit = rng is not None

    def std(name: str, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        if fit:
            consts[name] = (x.mean(), float(x.std()))
        mean, sd = consts[name]
        return (x - mean) / sd if sd > 0 else np.zeros_like(x)

    collab, cont = std("collab", parts["collab"]), std("cont", parts["cont"])
    heat_z = std("heat", parts["future_heat"])
    ub, ab = std("user_bias", parts["ub"]), std("author_bias", parts["ab"])
    z_gift = (sim["weight_collaborative"] * collab + sim["weight_content"] * cont + sim["weight_heat"] * heat_z
              + sim["weight_user_bias"] * ub + sim["weight_author_bias"] * ab)
    if sim.get("weight_patronage", 0.0):      # 0: not even standardised, so the world is today's byte for byte
        z_gift = z_gift + sim["weight_patronage"] * std("patron", parts["patron"])
    if fit:
        consts["gift_scale"], consts["gift_bias"] = calibrate(z_gift, sim["gift_rate"], sim["gift_auc"], rng)
    p = {"gift": _sigmoid(consts["gift_bias"] + consts["gift_scale"] * z_gift)}
    z_click = std("click", 0.6 * collab + 0.5 * cont + 0.4 * heat_z + 0.5 * ab + 0.3 * ub)
    if fit:
        consts["click_bias"] = bias_for_rate(z_click, 1.5, sim["click_rate"])
    p["click"] = _sigmoid(consts["click_bias"] + 1.5 * z_click)
    z_view = std("long_view", 0.8 * collab + 0.8 * cont + 0.3 * heat_z + 0.3 * ab)
    if fit:
        consts["long_view_bias"] = bias_for_rate(z_view, 1.5, sim["long_view_rate"])
    p["long_view"] = _sigmoid(consts["long_view_bias"] + 1.5 * z_view)
    in_shop = parts["in_shop"]
    z_buy = 2.0 * parts["match"] + 0.5 * collab + 0.3 * heat_z
    p_buy = np.zeros(len(z_buy))
    if fit:
        consts["purchase_bias"] = bias_for_rate(z_buy[in_shop], 1.0, sim["purchase_rate"]) if in_shop.any() else None
    if in_shop.any() and consts["purchase_bias"] is not None:
        p_buy[in_shop] = _sigmoid(consts["purchase_bias"] + z_buy[in_shop])
    p["purchase"] = p_buy
    return p


def simulate(sim: Mapping[str, Any], seed: int = 0, progress: bool = False,
             log: Callable[[str], None] = lambda s: None) -> Dataset:
    """Generate the world described in the module docstring from the ``simulate`` config section
    (its cross-key rules are :func:`graphrec.config.check_simulate`, also run at config load)."""
    return simulate_world(sim, seed, progress, log)[0]


def simulate_world(sim: Mapping[str, Any], seed: int = 0, progress: bool = False,
                   log: Callable[[str], None] = lambda s: None) -> Tuple[Dataset, World]:
    """:func:`simulate`, and the world's latent state behind it (same config and seed: same bytes)."""
    check_simulate(sim)
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    U, A, N = sim["num_users"], sim["num_authors"], sim["num_impressions"]
    C, D = sim["num_communities"], sim["taste_dim"]
    T, W, H = sim["room_steps"], sim["segment_steps"], sim["horizon_steps"]
    S, L, d = T // W, sim["tokens_per_modality"], sim["token_dim"]
    P = sim["product_steps"]
    n1, n2, n3, ppc = sim["num_cat1"], sim["cat2_per_cat1"], sim["cat3_per_cat2"], sim["products_per_cat3"]
    K3 = n1 * n2 * n3
    bar = tqdm(total=7, desc="simulate", disable=not progress, leave=False)

    def phase(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    # -- people: communities, tastes, styles, activity and popularity
    centres = rng.standard_normal((C, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    community = rng.integers(0, C, U).astype(np.int32)
    taste = (centres[community] + sim["taste_noise"] * rng.standard_normal((U, D)) / math.sqrt(D)).astype(np.float32)
    region = np.where(rng.random(U) < 0.5, community, rng.integers(0, C, U)).astype(np.int32)
    user_bias = rng.standard_normal(U).astype(np.float32)
    activity = rng.pareto(sim["activity_alpha"], U) + 1.0
    fav_cat1 = np.where(rng.random(U) < 0.7, community % n1, rng.integers(0, n1, U)).astype(np.int32)

    cluster = rng.integers(0, C, A).astype(np.int32)
    style = (centres[cluster] + sim["taste_noise"] * rng.standard_normal((A, D)) / math.sqrt(D)).astype(np.float32)
    shopping = (rng.random(A) < sim["shopping_fraction"]).astype(np.uint8)
    popularity = rng.pareto(sim["popularity_alpha"], A) + 1.0
    author_bias = rng.standard_normal(A).astype(np.float32)
    club_u, club_a, loyalty, club_style = fan_clubs(seed, community, cluster, C, sim["fan_clubs"], D,
                                                    sim["taste_noise"])
    phase("people")

    # -- rooms: heat, highlights and statistics on the 30-s clock
    heat = _room_heat(rng, A, T, sim["heat_period"], sim["heat_damping"])
    highlight = np.zeros((A, T), dtype=np.int8)                    # 0 none, 1 chat, 2 talent, 3 PK, 4 grab
    hot = heat > sim["highlight_threshold"]
    kind = np.where(shopping[:, None] == 1, 4, rng.integers(1, 4, (A, T)))
    highlight[hot] = kind[hot]
    base = (50.0 * popularity / popularity.mean())[:, None]
    audience = base * np.exp(0.5 * heat) * rng.lognormal(0.0, 0.1, (A, T))
    exposure = audience * 4.0 * rng.lognormal(0.0, 0.1, (A, T))
    comments = rng.poisson(audience * 0.3 * np.exp(0.4 * heat))
    likes = rng.poisson(audience * np.exp(0.3 * heat))
    gifts = rng.poisson(audience * 0.01 * np.exp(0.6 * heat))
    gift_value = gifts * rng.lognormal(1.0, 0.5, (A, T))
    shop = shopping[:, None].astype(np.float64)
    product_clicks = shop * rng.poisson(audience * 0.1 * np.exp(0.5 * heat))
    orders = shop * rng.poisson(audience * 0.01 * np.exp(0.5 * heat))
    stat_values = np.stack([exposure, audience, comments, likes, gifts, gift_value, product_clicks, orders],
                           axis=-1).astype(np.float32)
    phase("rooms")

    # -- segment content: a common part plus one specific part per modality
    seg_author = np.repeat(np.arange(A, dtype=np.int32), S)
    seg_start = (np.tile(np.arange(S, dtype=np.int64), A) * W * STEP_SECONDS)
    common = 0.3 * style[seg_author] + rng.standard_normal((A * S, D)).astype(np.float32) / math.sqrt(D)
    specific = {m: 0.8 * rng.standard_normal((A * S, D)).astype(np.float32) / math.sqrt(D)
                for m in ("frame", "asr", "comment")}
    content = common + sum(specific.values())
    segments: Dict[str, np.ndarray] = {"author": seg_author, "start": seg_start}
    for m, spec in specific.items():
        proj = (rng.standard_normal((2 * D, d)) / math.sqrt(2 * D)).astype(np.float32)
        base_tok = np.concatenate([common, spec], axis=1) @ proj * math.sqrt(D)
        noise = sim["token_noise"] * rng.standard_normal((A * S, L, d)).astype(np.float32)
        segments[m] = (base_tok[:, None, :] + noise).astype(np.float32)
        segments[f"{m}_len"] = np.full(A * S, L, dtype=np.int16)
    phase("content")

    # -- product sequences of shopping rooms: a per-streamer category chain
    shop_ids = np.flatnonzero(shopping).astype(np.int32)
    n_prod = T // P
    succ = np.stack([rng.permutation(K3), rng.permutation(K3)])
    rule = rng.integers(0, 2, len(shop_ids))
    cat3 = np.empty((len(shop_ids), n_prod), dtype=np.int64)
    cat3[:, 0] = rng.integers(0, K3, len(shop_ids))
    for i in range(1, n_prod):
        follow = rng.random(len(shop_ids)) < sim["chain_follow"]
        cat3[:, i] = np.where(follow, succ[rule, cat3[:, i - 1]], rng.integers(0, K3, len(shop_ids)))
    product = cat3 * ppc + rng.integers(0, ppc, cat3.shape)
    cat3_of_author = np.full((A, n_prod), -1, dtype=np.int64)
    cat3_of_author[shop_ids] = cat3
    products = {
        "author": np.repeat(shop_ids, n_prod),
        "time": np.tile(np.arange(n_prod, dtype=np.int64) * P * STEP_SECONDS, len(shop_ids)),
        "product": product.ravel().astype(np.int32),
        "cat1": (cat3 // (n2 * n3)).ravel().astype(np.int32),
        "cat2": (cat3 // n3).ravel().astype(np.int32),
        "cat3": cat3.ravel().astype(np.int32),
    }
    phase("products")

    # -- impressions: who sees which room when
    user = np.searchsorted(np.cumsum(activity) / activity.sum(), rng.random(N), side="right")
    user = np.minimum(user, U - 1).astype(np.int32)
    author = _draw_authors(rng, community[user], cluster, popularity, rng.random(N) < sim["community_exposure"])
    last_step = min(T - H, (n_prod - 1) * P) - 1                   # next product and horizon exist
    step = rng.integers(sim["warmup_steps"], last_step + 1, N).astype(np.int32)
    time = step.astype(np.int64) * STEP_SECONDS + rng.integers(0, STEP_SECONDS, N)
    segment = (author.astype(np.int64) * S + step // W).astype(np.int32)
    phase("impressions")

    # -- intents and labels (one code path with the world's response to any triple: World.probabilities)
    world = World(sim=dict(sim), seed=seed, taste=taste, style=style, content=content, heat=heat,
                  user_bias=user_bias, author_bias=author_bias, activity=activity, popularity=popularity,
                  community=community, cluster=cluster, shopping=shopping, fav_cat1=fav_cat1,
                  cat3_of_author=cat3_of_author, loyalty=loyalty, club_style=club_style,
                  first_step=sim["warmup_steps"], last_step=last_step)
    p = _response(sim, _intent_parts(world, user, author, step), world.consts, rng)
    scale, bias = world.consts["gift_scale"], world.consts["gift_bias"]
    in_shop = shopping[author] == 1
    labels = {k: (rng.random(N) < v).astype(np.uint8) for k, v in p.items()}
    value = (labels["gift"] * rng.lognormal(VALUE_MU, VALUE_SIGMA, N)).astype(np.float32)
    phase("labels")

    order = np.argsort(time, kind="stable")
    impressions: Dict[str, np.ndarray] = {"user": user[order], "author": author[order], "time": time[order],
                                          "segment": segment[order], "value": value[order]}
    for k in ("click", "long_view", "gift", "purchase"):
        impressions[k] = labels[k][order]
        impressions[f"p_{k}"] = p[k][order].astype(np.float32)

    oracle = {}
    for k in ("click", "long_view", "gift", "purchase"):
        pk, yk = p[k], labels[k]
        scope = in_shop if k == "purchase" else slice(None)
        oracle[k] = {"planted_rate": float(sim[f"{k}_rate"]),
                     "rate": float(yk[scope].mean()) if yk[scope].size else float("nan"),   # NaN: no shopping room
                     "expected_auc": expected_auc(pk[scope]), "realized_auc": auc(yk[scope], pk[scope])}
    oracle["gift"]["planted_auc"] = float(sim["gift_auc"])
    oracle["purchase"]["scope"] = "impressions of shopping rooms"
    phase("done")
    bar.close()

    meta = {
        "simulator": {**dict(sim), "seed": seed, "calibration": {"gift_scale": scale, "gift_bias": bias}},
        "oracle": oracle,
        "feedback": "explicit",
        "main_label": "gift",
        "stats": {"step_seconds": STEP_SECONDS, "features": list(STAT_FEATURES)},
        "segments": {"step_seconds": W * STEP_SECONDS},
        "products": {"num_products": K3 * ppc, "num_cat1": n1, "num_cat2": n1 * n2, "num_cat3": K3,
                     "step_seconds": P * STEP_SECONDS},
        "gifting": gifting_statistics(impressions["user"], impressions["author"], impressions["gift"], U, A),
        "truth_columns": {"users": ["community", "fav_cat1", "fan_club"], "authors": ["cluster", "fan_club"],
                          "impressions": [f"p_{k}" for k in ("click", "long_view", "gift", "purchase")],
                          "stats": ["highlight"]},
        "label_meaning": {"click": "entered the room", "long_view": "stayed long", "gift": "sent a gift",
                          "purchase": "bought the next product (shopping rooms)"},
    }
    tables = {
        "users": {"region": region, "community": community, "fav_cat1": fav_cat1},
        "authors": {"shopping": shopping, "cluster": cluster},
        "impressions": impressions,
        "segments": segments,
        "stats": {"author": np.arange(A, dtype=np.int32), "start": np.zeros(A, dtype=np.int64),
                  "values": stat_values, "highlight": highlight},
        "products": products,
    }
    if sim.get("weight_patronage", 0.0):          # planted truth, never a ranker input (truth_columns)
        tables["users"]["fan_club"] = club_u
        tables["authors"]["fan_club"] = club_a
    log(f"simulated {U} users, {A} authors ({len(shop_ids)} shopping), {N} impressions, "
        f"gift rate {oracle['gift']['rate']:.4f}, oracle gift AUC {oracle['gift']['realized_auc']:.4f} "
        f"(expected {oracle['gift']['expected_auc']:.4f})")
    return Dataset(name=f"simulate-s{seed}", source="simulate", num_users=U, num_authors=A,
                   tables=tables, meta=meta), world


def gifting_statistics(user: np.ndarray, author: np.ndarray, gift: np.ndarray, num_users: int,
                       num_authors: int) -> Dict[str, float]:
    """How gifting is spread over a time-sorted log: the share of users (and streamers) with a gift, gifts per
    gifter and per user, the share of gifts sent to a streamer the user had gifted before (repeat gifting),
    the share of gifts sent by the top 10% of gifters, and distinct streamers per gifter."""
    g = np.flatnonzero(gift == 1)
    u, a = user[g].astype(np.int64), author[g].astype(np.int64)
    per_user = np.bincount(u, minlength=num_users)
    gifters = per_user[per_user > 0]
    pairs = u * num_authors + a
    _, first = np.unique(pairs, return_index=True)          # the first gift of each (user, streamer) pair
    top = np.sort(gifters)[::-1][:max(1, int(np.ceil(0.1 * len(gifters))))] if len(gifters) else np.zeros(1)
    n = max(len(g), 1)
    return {"gifts": int(len(g)), "gifting_users_share": float(len(gifters) / max(num_users, 1)),
            "gifted_streamers_share": float(len(np.unique(a)) / max(num_authors, 1)),
            "gifts_per_user": float(len(g) / max(num_users, 1)),
            "gifts_per_gifter": float(gifters.mean()) if len(gifters) else 0.0,
            "streamers_per_gifter": float(len(first) / max(len(gifters), 1)),
            "repeat_gift_share": float(1.0 - len(first) / n) if len(g) else 0.0,
            "top10pct_gifters_share": float(top.sum() / n) if len(g) else 0.0}


def world_of(ds: Dataset, check: int = 20_000, log: Callable[[str], None] = lambda s: None) -> World:
    """The :class:`World` behind a simulated dataset, rebuilt from ``meta["simulator"]`` (config and seed;
    the simulator is deterministic) and checked against the dataset: the same impressions, and its
    response equal to the stored ``p_<label>`` on ``check`` logged impressions (0: all)."""
    from graphrec.config import load_config

    meta = ds.meta.get("simulator")
    if ds.source != "simulate" or not isinstance(meta, dict):
        raise DataError(f"dataset '{ds.name}' (source {ds.source}) is not a simulated world: only the built-in "
                        f"simulator (data.source=simulate) knows the true response of every viewer")
    sim = dict(load_config(None).simulate)           # keys added since the dataset was built keep their defaults
    sim.update({k: v for k, v in meta.items() if k not in ("seed", "calibration")})
    log(f"rebuilding the latent state of {ds.name} from its simulator config (seed {meta['seed']})")
    rebuilt, world = simulate_world(sim, seed=int(meta["seed"]))
    imp, new = ds.impressions, rebuilt.impressions
    stale = [c for c in ("user", "author", "time", "gift") if c in imp and not np.array_equal(imp[c], new[c])]
    if stale or len(imp["user"]) != len(new["user"]):
        raise DataError(f"dataset '{ds.name}'{f' ({ds.path})' if ds.path else ''} was simulated by another version "
                        f"of data_prep/simulate.py (its {stale or 'size'} differ from a rebuild with the same config "
                        f"and seed); rebuild it: delete the folder and run again")
    idx = np.arange(len(imp["user"]))
    if check and len(idx) > check:
        idx = np.random.default_rng(0).choice(idx, check, replace=False)
    p = world.probabilities(imp["user"][idx], imp["author"][idx], imp["time"][idx])
    for k in LABEL_NAMES:
        if f"p_{k}" in imp and not np.allclose(p[k], imp[f"p_{k}"][idx], rtol=1e-4, atol=1e-6):
            raise DataError(f"dataset '{ds.name}': the rebuilt world's p_{k} differs from the stored one; "
                            f"rebuild the dataset with this version of the simulator")
    return world


@command
def main(argv: Optional[List[str]] = None) -> int:
    from ._cli import print_counts
    from graphrec.config import load_config
    from graphrec.data.validate import validate_dataset

    ap = argparse.ArgumentParser(prog="python -m data_prep.simulate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder for the canonical dataset")
    ap.add_argument("--cfg", help="experiment YAML whose `simulate` section sets the world (optional)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="simulate.KEY=VALUE",
                    help="override a simulate.* key (repeatable); see graphrec/defaults.yaml")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the world (default: simulate.seed)")
    args = ap.parse_args(argv)

    cfg = load_config(args.cfg, args.overrides)
    ds = simulate(cfg.simulate, seed=cfg.simulate.seed if args.seed is None else args.seed,
                  progress=sys.stderr.isatty(), log=print)
    validate_dataset(ds)
    out = save_dataset(ds, args.out)
    print_counts(ds, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
