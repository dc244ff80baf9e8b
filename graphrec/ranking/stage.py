"""The ranker stage: assemble the ranker's features, train it with :func:`graphrec.fit.fit`, evaluate it.

:func:`build_ranker` is the one way to put a ranker together from a dataset and the artifacts of the
earlier stages (Θ, expansions, forecasters); the stage, serving, the benchmarks and the distributed
trainer all call it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ..config import Config
from ..data.dataset import SPLITS, Dataset
from ..data.split import graph_snapshots_for
from ..errors import UserError
from ..schema import METAPATHS
from ..stage import RunContext, Stage
from .batches import BatchBuilder, BatchConfig, PairSet, side_features
from .features import (Activity, History, RoomStatistics, TensorStore, ValueCodes, author_stat_arrays,
                       per_snapshot)

MMBEE_MODULES = ("metapaths", "modalities", "stat_forecast", "product_forecast")


def enabled_modules(cfg: Config, ds: Dataset, artifacts: Mapping[str, Any]) -> Dict[str, Any]:
    """Which ranker modules this run uses: config switches intersected with what exists."""
    sec = cfg.ranker
    exp = artifacts.get("expansions") or {}
    metapaths = [m for m in METAPATHS if sec.use_gie and sec[f"use_{m}"] and m in exp]
    return {
        "metapaths": metapaths,
        "theta_pretrained": bool(metapaths) and artifacts.get("theta") is not None,
        "modalities": ds.modalities() if sec.use_mfq and ds.has("segments") else [],
        "stat_forecast": bool(sec.use_stat_forecast and artifacts.get("stat_forecaster") is not None),
        "product_forecast": bool(sec.use_product_forecast and artifacts.get("product_forecaster") is not None),
        "realtime_stats": bool(sec.realtime_steps and ds.has("stats")),
        "activity": bool(sec.use_activity),
        "user_activity": bool(sec.use_user_activity),
        "exposure_head": bool(sec.exposure_head and not ds.implicit),
    }


def history_names(names, ds: Dataset) -> List[str]:
    """``ranker.histories`` resolved: ``main`` is the dataset's main label, ``impression`` every impression,
    ``skipped`` every impression without a positive of the main label, any other name a label of the
    dataset; in order, without repeats."""
    from ..errors import ConfigError

    out: List[str] = []
    for n in names:
        name = ds.main_label if n == "main" else n
        if name not in ("impression", "skipped") and name not in ds.labels:
            raise ConfigError(f"ranker.histories: {n!r} is not a behaviour of this dataset; use main, impression, "
                              f"skipped or one of its labels {ds.labels}")
        if name == "skipped" and ds.implicit:
            raise ConfigError("ranker.histories: 'skipped' needs impression logs; this dataset is implicit "
                              "feedback (every impression is a positive, nothing is skipped)")
        if name not in out:
            out.append(name)
    return out


def model_name(mods: Mapping[str, Any]) -> str:
    return "mmbee" if any(mods[k] for k in MMBEE_MODULES) else "din"


def product_tables(ds: Dataset, model) -> Dict[str, torch.Tensor]:
    """Per author: the times products went on sale and the forecaster's features after each prefix."""
    A = ds.num_authors
    pr = ds.tables["products"]
    counts = np.bincount(pr["author"], minlength=A)
    P = max(int(counts.max()), 1)
    pos = np.arange(len(pr["author"])) - np.concatenate([[0], np.cumsum(counts)])[pr["author"]]
    items = np.zeros((A, P, 4), np.int64)
    times = np.full((A, P), np.iinfo(np.int64).max, np.int64)
    items[pr["author"], pos] = np.stack([pr["product"], pr["cat1"], pr["cat2"], pr["cat3"]], axis=1)
    times[pr["author"], pos] = pr["time"]
    return {"prod_feat": model.prefix_table(torch.from_numpy(items), torch.from_numpy(counts)),
            "prod_time": torch.from_numpy(times)}


def with_snapshot_axis(x, per_node_dims: int = 1):
    """Θ ``[N, D]`` or an expansion ``[N, K]`` (numpy or torch) written before graph snapshots existed, as one
    snapshot ``[N, 1, ...]``; already ``[N, snapshots, ...]`` otherwise."""
    return x[:, None] if x.ndim == 1 + per_node_dims else x


def node_data(ds: Dataset, mods: Mapping[str, Any], artifacts: Mapping[str, Any]) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{ntype: {name: tensor}}``: every ranker feature that lives on the graph's nodes; Θ and the
    expansions with their graph-snapshot axis, ``[N, snapshots, ...]``."""
    U = ds.num_users
    data: Dict[str, Dict[str, torch.Tensor]] = {"user": {}, "author": {}, "segment": {}}
    if mods["theta_pretrained"]:
        theta = with_snapshot_axis(artifacts["theta"], 1)
        data["user"]["theta"] = theta[:U].float()
        data["author"]["theta"] = theta[U:].float()
    for m in mods["metapaths"]:
        # int32 as cached (the batch builder widens the rows it reads): at 1M users this halves 480 MB
        data[METAPATHS[m].seed][f"exp_{m}"] = torch.from_numpy(
            np.ascontiguousarray(with_snapshot_axis(artifacts["expansions"][m], 1), dtype=np.int32))
    if mods["modalities"]:
        seg = ds.tables["segments"]
        for m in mods["modalities"]:
            data["segment"][m] = torch.from_numpy(seg[m].astype(np.float32, copy=False))   # no copy when float32
            data["segment"][f"{m}_len"] = torch.from_numpy(
                seg.get(f"{m}_len", np.full(len(seg[m]), seg[m].shape[1])).astype(np.int64))
    if mods["product_forecast"]:
        data["author"].update(product_tables(ds, artifacts["product_forecaster"]))
    return {nt: d for nt, d in data.items() if d}


def build_ranker(cfg: Config, ds: Dataset, mods: Mapping[str, Any], artifacts: Mapping[str, Any],
                 store=None, device: str = "cpu"):
    """``(model, builder, spec)`` for ``mods`` (see :func:`enabled_modules`); the feature store is a
    :class:`TensorStore` on ``device`` unless a distributed trainer passes its own ``store``."""
    from ..models.ranker import Ranker, RankerSpec

    sec = cfg.ranker
    imp = ds.impressions
    tasks = ds.labels
    main = ds.main_label
    heads = tasks + (["exposure"] if mods["exposure_head"] else [])
    truth = ds.meta.get("truth_columns", {})
    if store is None:
        store = TensorStore(node_data(ds, mods, artifacts), device)
    train = imp["split"] == SPLITS["train"]
    histories = {}
    value_codes = history_value_codes(sec, ds)
    for name in history_names(sec.histories, ds):
        rows = (np.ones(len(imp["user"]), bool) if name == "impression" else
                imp[main] == 0 if name == "skipped" else imp[name] == 1)
        if not ds.timed:
            rows &= train
        codes = value_codes(imp["value"][rows]) if value_codes is not None else None
        histories[name] = History(imp["user"][rows], imp["author"][rows], imp["time"][rows], ds.num_users, ds.timed,
                                  codes)
    activity = user_activity = None
    with_users = bool(mods.get("user_activity"))          # absent from runs written before it existed
    if mods["activity"] or with_users:
        rows = np.ones(len(imp["user"]), bool) if ds.timed else train
        span = float(imp["time"].max() - imp["time"].min()) if len(imp["time"]) else 0.0
        windows = [max(1.0, f * span) for f in sec.activity_windows]
        if mods["activity"]:
            activity = Activity(imp["author"][rows], imp["time"][rows], imp[main][rows], ds.num_authors, ds.timed,
                                windows, ds.implicit)
        if with_users:
            user_activity = Activity(imp["user"][rows], imp["time"][rows], imp[main][rows], ds.num_users, ds.timed,
                                     windows, ds.implicit)
    stat_model = artifacts.get("stat_forecaster") if mods["stat_forecast"] else None
    prod_model = artifacts.get("product_forecaster") if mods["product_forecast"] else None
    room_stats = None
    if mods["stat_forecast"] or mods["realtime_stats"]:
        values, start = author_stat_arrays(ds.tables["stats"], ds.num_authors)
        room_stats = RoomStatistics(values, start, float(ds.meta.get("stats", {}).get("step_seconds", 30)),
                                    cfg.stat_forecast.input_steps, cfg.stat_forecast.log1p, stat_model,
                                    sec.realtime_steps if mods["realtime_stats"] else 0,
                                    int(sec.room_table_max_mb) << 20, device)
    softmax = ds.implicit or mods["exposure_head"]
    known = None
    if softmax:
        keep = train & (imp[main] == 1) if ds.implicit else train
        known = PairSet(imp["user"][keep], imp["author"][keep], ds.num_authors)
    bcfg = BatchConfig(tasks=tasks, heads=heads, hist_len=sec.hist_len, metapaths=mods["metapaths"],
                       theta_pretrained=mods["theta_pretrained"], modalities=mods["modalities"],
                       stat_forecast=mods["stat_forecast"], realtime=mods["realtime_stats"],
                       activity=mods["activity"], user_activity=with_users, product_cats=prod_model.num_cat3 if prod_model is not None else 0,
                       negatives=sec.negatives if softmax else 0, uniform_share=sec.uniform_share,
                       logq=sec.logq_correction, implicit=ds.implicit)
    user_side = side_features(ds.tables["users"], truth.get("users", []))
    author_side = side_features(ds.tables["authors"], truth.get("authors", []))
    snapshots = None
    if mods["metapaths"]:
        snapshots = graph_snapshots_for(ds, cfg)
        check_snapshot_count(store, snapshots)
    builder = BatchBuilder(ds, store, bcfg, histories, user_side, author_side, activity, room_stats, known,
                           user_activity, snapshots)
    spec = RankerSpec(
        num_users=ds.num_users, num_authors=ds.num_authors, tasks=heads, histories=list(histories),
        user_cats={k: v[1] for k, v in user_side[0].items()}, author_cats={k: v[1] for k, v in author_side[0].items()},
        user_dense=0 if user_side[1] is None else user_side[1].shape[1],
        author_dense=0 if author_side[1] is None else author_side[1].shape[1],
        id_dim=sec.id_dim, theta_dim=cfg.graphcl.dim, theta_pretrained=mods["theta_pretrained"],
        metapaths=list(mods["metapaths"]),
        modality_dims={m: int(ds.tables["segments"][m].shape[-1]) for m in mods["modalities"]},
        mfq=dict(cfg.mfq), stat_dim=room_stats.forecast_dim if room_stats is not None and stat_model is not None else 0,
        realtime_dim=room_stats.realtime_dim if room_stats is not None else 0,
        popularity_dim=activity.dim if activity is not None else 0,
        user_activity_dim=user_activity.dim if user_activity is not None else 0,
        product_cats=prod_model.num_cat3 if prod_model is not None else 0,
        product_enc_dim=prod_model.dim if prod_model is not None else 0, mlp=list(sec.mlp), dropout=sec.dropout,
        fm_dim=sec.fm_dim, attention_hidden=sec.attention_hidden, user_id=sec.user_id,
        popularity_offset_head=offset_head(sec, ds, mods, heads), user_activity_bias=bool(sec.user_activity_bias),
        history_value_codes=value_codes.num_codes if value_codes is not None else 0,
        expansion_similarity=bool(sec.expansion_similarity and mods["metapaths"]))
    warn_if_op_degenerate(ds, mods["modalities"], int(cfg.mfq["dim"]))
    torch.manual_seed(cfg.run.seed)
    model = Ranker(spec).to(device)
    return model, builder, spec


def check_snapshot_count(store, snapshots) -> None:
    """The feature store's Θ and expansions must have one slice per graph snapshot of the configuration."""
    layouts = getattr(store, "data", None)
    if layouts is None:                          # a distributed store checks its own layout at partition time
        return
    for nt, feats in layouts.items():
        for name, t in feats.items():
            if per_snapshot(name) and t.shape[1] != len(snapshots):
                raise UserError(f"{nt} feature '{name}' has {t.shape[1]} graph snapshot(s) but graph.snapshots / "
                                f"graph.past_fraction make {len(snapshots)}: the expansions and Θ were built with "
                                f"another graph configuration")


def history_value_codes(sec, ds: Dataset):
    """``ranker.history_values``: the :class:`ValueCodes` of the dataset's training values, or None."""
    if not sec.history_values:
        return None
    if not ds.timed or "value" not in ds.impressions:
        raise UserError("ranker.history_values needs timestamped impressions with a 'value' column (a rating, a "
                        f"gift value); dataset {ds.name!r} has " + ("no timestamps" if not ds.timed else "no 'value'")
                        + "; set it false")
    imp = ds.impressions
    return ValueCodes(imp["value"][imp["split"] == SPLITS["train"]])


def offset_head(sec, ds: Dataset, mods: Mapping[str, Any], heads: List[str]) -> int:
    """The head that gets ``ranker.popularity_offset`` (the main label's), or -1."""
    if not sec.popularity_offset:
        return -1
    if ds.implicit:
        raise UserError("ranker.popularity_offset: implicit data has no positive rate (every impression is a "
                        "positive); set it false")
    if not mods["activity"]:
        raise UserError("ranker.popularity_offset needs the author activity features: set ranker.use_activity true")
    return heads.index(ds.main_label)


def warn_if_op_degenerate(ds: Dataset, modalities, dim: int) -> None:
    """MFQ's OP keeps what a modality's tokens say beyond the other modalities' tokens; when those span
    all ``mfq.dim`` dimensions nothing but rounding noise is left to attend to. Say so, once per build."""
    import warnings

    if len(modalities) < 2:
        return
    tokens = {m: int(ds.tables["segments"][m].shape[1]) for m in modalities}
    others = max(sum(n for o, n in tokens.items() if o != m) for m in modalities)
    if others >= dim:
        warnings.warn(f"mfq.dim={dim} is not above the {others} tokens of the other modalities ({tokens}): MFQ's "
                      f"orthogonal projection then leaves only rounding noise; set mfq.dim above {others}",
                      UserWarning, stacklevel=2)


def fit_spec(cfg: Config, ds: Dataset):
    """The ranker's :class:`~graphrec.fit.FitSpec`: early stopping on the dataset's headline metric."""
    from ..fit import FitSpec

    sec = cfg.ranker
    monitor = f"recall@{cfg.eval.k}" if ds.implicit else "gauc"
    return FitSpec(epochs=sec.epochs, lr=sec.lr, seed=cfg.run.seed, weight_decay=sec.weight_decay,
                   grad_clip=sec.grad_clip, patience=sec.patience, monitor=monitor, mode="max",
                   amp=cfg.run.amp, tag="ranker", checkpoint_every_s=cfg.run.checkpoint_every_s,
                   warmup_steps=sec.warmup_steps, lr_decay=sec.lr_decay)


def id_reinit(model, seed: int):
    """``ranker.reinit_ids``: ``reinit(epoch)`` for :func:`graphrec.fit.fit` that draws the ranker's id tables
    (:meth:`~graphrec.models.ranker.Ranker.id_tables`) afresh as the model initialises them, from the epoch's
    seed, and returns them. The rest of the network keeps what it learnt, so it cannot adapt to ids it has already fitted
    (MEDA, Liu et al. 2023, against the one-epoch overfitting of Zhang et al. 2022)."""
    from ..fit import epoch_seed

    tables = model.id_tables()

    def reinit(epoch: int):
        gen = torch.Generator().manual_seed(epoch_seed(seed + 7, epoch))
        with torch.no_grad():
            for w, std in tables:
                w.copy_(torch.randn(w.shape, generator=gen) * std)
        return [w for w, _ in tables]
    return reinit


def expansion_redraws(cfg: Config, graphs, metapaths, device: str):
    """``epoch -> {metapath: [N, snapshots, K]}``: every enabled expansion of every graph snapshot drawn afresh
    with the CSR walker on ``device`` (``ranker.redraw_expansions``; the offline cache stays what evaluation
    and serving read)."""
    from ..fit import epoch_seed
    from ..gie.metapath import ExpansionSampler

    ks = {m: cfg.expansion[f"k_{m}"] for m in metapaths}
    samplers = [ExpansionSampler(g, ks, "torch", device, cfg.expansion.retries, oversample=cfg.expansion.oversample)
                for g in graphs]

    def draw(epoch: int):
        drawn = [s.draw(epoch_seed(cfg.run.seed + 1, epoch) + j) for j, s in enumerate(samplers)]
        return {m: torch.stack([d[m] for d in drawn], dim=1) for m in drawn[0]}
    return draw


def train_ranker(cfg: Config, ds: Dataset, model, builder, train_idx: np.ndarray, val_idx: np.ndarray,
                 device: str, checkpoint, resume: bool = False, writer=None, log=print, progress: bool = False,
                 comm=None, redraw=None, on_epoch_end=None):
    """Train with :func:`graphrec.fit.fit` (``train_idx``/``val_idx``: this trainer's shares; ``redraw``: see
    :func:`expansion_redraws`; ``on_epoch_end(epoch, history entry)``: called after each epoch's validation)."""
    from ..fit import fit
    from .train import RankerObjective, RankerScorer, RankerTask, validation, validation_sample

    sec = cfg.ranker
    heads = model.spec.tasks
    objective = RankerObjective(heads, ds.labels, {t: sec[f"weight_{t}"] for t in ds.labels}, ds.implicit,
                                ds.main_label if ds.implicit else ("exposure" if "exposure" in heads else None),
                                sec.weight_exposure)
    world = comm.world if comm is not None else 1
    # the global batch stays ranker.batch_size: each of n trainers takes 1/n of it, so a distributed run makes as
    # many optimizer steps per epoch, of the same size, as a standalone one (the same model at equal epochs)
    task = RankerTask(builder, train_idx, max(1, sec.batch_size // world), objective, sec.max_train_impressions,
                      world, redraw)
    validate = validation(lambda: RankerScorer(model, builder, device), ds, val_idx, cfg.eval.k, cfg.eval.negatives,
                          cfg.run.seed + 1, comm, validation_sample(ds, sec.validation_users, cfg.run.seed + 3))
    return fit(model, task, fit_spec(cfg, ds), device, checkpoint=checkpoint, resume=resume, writer=writer, log=log,
               progress=progress, comm=comm, validate=validate, parameters=parameter_groups(model, sec),
               on_epoch_end=on_epoch_end or (lambda epoch, h: None),
               reinit=id_reinit(model, cfg.run.seed) if sec.reinit_ids else None)


def parameter_groups(model, sec) -> List[Dict[str, Any]]:
    """The ranker's optimizer groups: the embedding tables with ``ranker.embedding_decay``, the target
    attentions' scorers without weight decay (:func:`graphrec.models.din.attention_parameters` says why), the
    rest with ``ranker.weight_decay`` (the optimizer's default)."""
    from ..models.din import attention_parameters

    embeddings = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    attention = attention_parameters(model)
    taken = {id(p) for p in embeddings + attention}
    return [{"params": embeddings, "weight_decay": sec.embedding_decay},
            {"params": attention, "weight_decay": 0.0},
            {"params": [p for p in model.parameters() if id(p) not in taken]}]


class RankerStage(Stage):
    name = "ranker"
    section = "ranker"
    summary = "train the MMBee ranker (or the plain DIN baseline) and score validation and test"

    def run(self, ctx: RunContext) -> None:
        from ..checkpoint import save_checkpoint
        from ..evaluation import activity_buckets, evaluate, record
        from ..metrics_schema import ranker_entry
        from .train import RankerScorer

        ds, cfg = ctx.dataset, ctx.cfg
        mods = enabled_modules(cfg, ds, ctx.state)
        name = model_name(mods)
        model, builder, spec = build_ranker(cfg, ds, mods, ctx.state, device=ctx.device)
        split = ds.impressions["split"]
        train_idx = np.flatnonzero(split == SPLITS["train"])
        val_idx = np.flatnonzero(split == SPLITS["val"])
        ctx.log.info("ranker '%s': modules %s; %s train / %s val impressions", name, mods, f"{len(train_idx):,}",
                     f"{len(val_idx):,}")
        redraw = None
        if cfg.ranker.redraw_expansions and mods["metapaths"] and ctx.state.get("graphs"):
            redraw = expansion_redraws(cfg, ctx.state["graphs"], mods["metapaths"], ctx.device)
        result = train_ranker(cfg, ds, model, builder, train_idx, val_idx, ctx.device,
                              ctx.run_dir / "checkpoints" / "ranker_last.pt", ctx.state.get("resume", False),
                              ctx.writer, ctx.log.info, ctx.progress, redraw=redraw)
        ctx.metrics["ranker"] = ranker_entry(name, mods, result, fit_spec(cfg, ds).monitor, model)
        save_checkpoint(ctx.run_dir / "checkpoints" / "ranker.pt",
                        {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                         "spec": dataclasses.asdict(spec)})
        scorer = RankerScorer(model, builder, ctx.device)
        for split_name in ("val", "test"):
            if not (split == SPLITS[split_name]).any():
                continue
            entry = evaluate(scorer, ds, split_name, cfg.eval.k, cfg.eval.negatives, cfg.run.seed + 1,
                             two_stage=two_stage(cfg, ds, scorer, ctx.state.get("lightgcn")), topk=cfg.eval.topk,
                             buckets=activity_buckets(ds, cfg.eval.activity_buckets))
            record(ctx.metrics, split_name, name, entry, ctx.writer, ctx.log.info)
        test_idx = np.flatnonzero(split == SPLITS["test"])
        if len(test_idx) and not ds.implicit:
            scores = torch.sigmoid(torch.from_numpy(scorer.impression_scores(test_idx)[:, ds.labels.index(ds.main_label)]))
            ctx.writer.add_pr_curve(f"test/{name}/{ds.main_label}_pr",
                                    torch.from_numpy(ds.impressions[ds.main_label][test_idx].astype(np.int64)), scores, 0)
        ctx.state["ranker"] = model
        ctx.state["ranker_builder"] = builder


def two_stage(cfg: Config, ds: Dataset, scorer, retriever=None):
    """The two-stage top-K of ``scorer`` (:class:`graphrec.evaluation.TwoStage`): ``retriever``'s (LightGCN's;
    popularity's when None) top ``eval.two_stage_candidates`` per user, reranked; None when that is 0."""
    from ..evaluation import Popularity, TwoStage, positives_matrix, split_mask

    n = cfg.eval.two_stage_candidates
    if n <= 0:
        return None
    train = split_mask(ds, "train")
    label = "lightgcn"
    if retriever is None:
        retriever, label = Popularity(ds, ds.main_label, train), "popularity"
    return TwoStage(retriever, scorer, n, positives_matrix(ds, ds.main_label, train), label)
