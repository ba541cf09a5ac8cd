"""File-based stages behind ``mstdiff kg build`` and ``mstdiff kg embed``.

Each stage reads one directory and writes another, atomically (``mstdiff.io.atomic_dir``), with a
``meta.json`` whose ``params`` record everything the output depends on. Re-running a stage with the
same parameters on a valid output does nothing (resumable pipelines); different parameters need
``overwrite=True``. ``mstdiff kg transition`` is :func:`mstdiff.diffusion.discrete.transition_dir`
(the diffusion layer owns the transition object).

Layouts::

    kg_dir/     entities.tsv triples.tsv summary.json stations.parquet meta.json
    embed_dir/  station_embeddings.npy (N, d) entity_embeddings.npy relation_embeddings.npy
                entities.tsv metrics.json history.json tucker.pt meta.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, dumps_json, read_json, run_meta, write_json
from mstdiff.kg.triples import KGOptions, KnowledgeGraph, build_knowledge_graph, load_poi_table
from mstdiff.kg.tucker import (
    TuckerConfig,
    link_prediction_report,
    random_embedding_baseline,
    split_triples,
    train_tucker,
)

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "station_embeddings.npy"


def stations_fingerprint(stations: pd.DataFrame) -> str:
    """SHA-256 (16 hex digits) of the station ids and coordinates, in order.

    Every stage records it, so a consumer can check that embeddings and transitions are aligned with
    the station table of the dataset it trains on.
    """
    h = hashlib.sha256()
    h.update("\n".join(stations["station_id"].astype(str)).encode())
    h.update(np.ascontiguousarray(stations[["lat", "lon"]].to_numpy(np.float64)).tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _normal(obj: Any) -> Any:
    return json.loads(dumps_json(obj))


# fields added to the stage configs after their first release: recorded in ``params`` only when they
# differ from their defaults, so that outputs made before they existed stay current
_LATER_FIELDS = {"visit_top_k", "visit_min_count", "scoring", "negatives", "full_max_entities"}


def config_params(obj: Any) -> dict[str, Any]:
    """``asdict(obj)`` without the later fields that are at their defaults (see ``_LATER_FIELDS``)."""
    default = type(obj)()
    return {k: v for k, v in asdict(obj).items()
            if k not in _LATER_FIELDS or v != getattr(default, k)}


def stage_is_current(
    out_dir: Path, params: dict[str, Any], *, overwrite: bool, validate: Callable[[Path], None],
) -> bool:
    """True when ``out_dir`` holds a valid output for ``params`` (skip the work).

    Raises :class:`InputError` when it holds something else and ``overwrite`` is false.
    """
    if not out_dir.exists():
        return False
    meta_path = out_dir / "meta.json"
    reason = ""
    if meta_path.exists():
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            meta, reason = {}, "an unreadable meta.json"
        if not reason and meta.get("params") == _normal(params):
            try:
                validate(out_dir)
                logger.info("%s is up to date: nothing to do", out_dir)
                return True
            except (InputError, OSError, ValueError, KeyError) as exc:
                reason = f"an invalid output ({exc})"
        elif not reason:
            reason = "an output made with other parameters or inputs"
    else:
        reason = "no meta.json"
    if overwrite:
        logger.info("replacing %s (%s)", out_dir, reason)
        return False
    raise InputError(f"output directory exists with {reason}", where=str(out_dir),
                     fix="choose another output directory or pass --overwrite")


# ---------------------------------------------------------------------------------------- kg build
def _training_part(dataset_dir: Path) -> Path:
    split_train = dataset_dir / "train"
    if not (dataset_dir / "stations.parquet").exists() and (split_train / "stations.parquet").exists():
        return split_train  # a split directory: all parts share the station table; train's trajectories
    return dataset_dir


def _load_stations(dataset_dir: Path) -> pd.DataFrame:
    from mstdiff.data import PreparedDataset

    return PreparedDataset.load(_training_part(dataset_dir), mmap=True).stations


def _validate_kg(path: Path) -> None:
    KnowledgeGraph.load(path)


def build_kg_dir(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    poi_table: str | os.PathLike[str] | None = None,
    *,
    poi_radius_km: float = 0.5,
    overwrite: bool = False,
    **opts: Any,
) -> Path:
    """``mstdiff kg build``: the knowledge graph of a prepared dataset's stations.

    ``dataset_dir``: a prepared dataset (or a split directory with ``train/``). ``poi_table``: an
    optional POI table attached with :func:`~mstdiff.kg.triples.attach_poi_context` within
    ``poi_radius_km``. ``opts``: fields of :class:`~mstdiff.kg.triples.KGOptions`.
    """
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    known = {f.name for f in fields(KGOptions)}
    bad = sorted(set(opts) - known)
    if bad:
        raise InputError(f"unknown knowledge-graph options {bad}", where="kg build",
                         fix=f"use some of {sorted(known)}")
    options = KGOptions(**opts)
    stations = _load_stations(dataset_dir)
    locations = None
    if options.visit_top_k > 0:
        from mstdiff.data import PreparedDataset

        locations = np.asarray(PreparedDataset.load(_training_part(dataset_dir), mmap=True).locations)
    params = {
        "stage": "kg_build",
        "stations_sha256": stations_fingerprint(stations),
        "poi_table_sha256": file_sha256(poi_table) if poi_table is not None else None,
        "poi_radius_km": poi_radius_km if poi_table is not None else None,
        "options": config_params(options),
    }
    if locations is not None:  # VisitedAfter: the graph depends on the training trajectories
        digest = hashlib.sha256(np.ascontiguousarray(locations).tobytes()).hexdigest()[:16]
        params["locations_sha256"] = digest
    if stage_is_current(out, params, overwrite=overwrite, validate=_validate_kg):
        return out
    pois = load_poi_table(poi_table) if poi_table is not None else None
    kg = build_knowledge_graph(stations, pois, poi_radius_km=poi_radius_km, options=options,
                               locations=locations)
    with atomic_dir(out, overwrite=True) as tmp:
        kg.save(tmp)
        if pois is not None:
            from mstdiff.kg.triples import attach_poi_context

            stations = attach_poi_context(stations, pois, poi_radius_km)
        stations.to_parquet(tmp / "stations.parquet", index=False)
        write_json(tmp / "meta.json", run_meta(
            stage="kg_build", params=params, dataset=str(dataset_dir.resolve()),
            poi_table=str(Path(poi_table).resolve()) if poi_table is not None else None,
            summary=kg.summary()))
    logger.info("knowledge graph written to %s", out)
    return out


# ---------------------------------------------------------------------------------------- kg embed
def _checkpoint_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.checkpoint.pt")


def _validate_embed(path: Path) -> None:
    meta = read_json(path / "meta.json")
    emb = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
    if emb.shape != (meta["n_stations"], meta["params"]["config"]["entity_dim"]):
        raise ValueError(f"{EMBEDDINGS_FILE} has shape {emb.shape}")


def embed_kg_dir(
    kg_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    holdout: float = 0.1,
    split_seed: int = 0,
    config: TuckerConfig | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """``mstdiff kg embed``: TuckER embeddings of a knowledge graph, one row per station.

    A fraction ``holdout`` of the triples (both directions of a border together) is held out to
    report filtered link-prediction metrics against an untrained (random) model in ``metrics.json``;
    training uses the rest (``holdout = 0``: all triples, no metrics). ``overrides``: fields of
    :class:`~mstdiff.kg.tucker.TuckerConfig`. Training checkpoints to ``.<out>.checkpoint.pt`` beside
    ``out_dir`` and resumes from it after an interruption.
    """
    kg_dir, out = Path(kg_dir), Path(out_dir)
    cfg = config or TuckerConfig()
    known = {f.name for f in fields(TuckerConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(f"unknown TuckER options {bad}", where="kg embed",
                         fix=f"use some of {sorted(known)}")
    cfg = TuckerConfig(**{**asdict(cfg), **overrides})
    if not 0 <= holdout < 1:
        raise InputError(f"holdout = {holdout} must be in [0, 1)", where="kg embed")
    kg = KnowledgeGraph.load(kg_dir)
    kg_meta = read_json(kg_dir / "meta.json") if (kg_dir / "meta.json").exists() else {}
    params = {
        "stage": "kg_embed",
        "kg_triples_sha256": file_sha256(kg_dir / "triples.tsv"),
        "stations_sha256": kg_meta.get("params", {}).get("stations_sha256"),
        "holdout": holdout, "split_seed": split_seed, "config": config_params(cfg),
    }
    if stage_is_current(out, params, overwrite=overwrite, validate=_validate_embed):
        return out

    rng = np.random.default_rng(split_seed)
    sym = tuple(i for i, r in enumerate(kg.relations) if r == "BaseBorderBy")
    train, test = split_triples(kg.triples, holdout, rng, symmetric_relations=sym)
    logger.info("TuckER: %d training and %d held-out triples, %d entities", len(train), len(test),
                kg.n_entities)
    ckpt = _checkpoint_path(out)
    res = train_tucker(train, kg.n_entities, kg.n_relations, cfg, checkpoint=ckpt, device=device,
                       progress=progress)
    metrics: dict[str, Any] = {}
    if len(test):
        metrics["trained"], metrics["per_relation"] = link_prediction_report(
            res.model, test, kg.triples, list(kg.relations))
        metrics["random_embeddings"] = random_embedding_baseline(
            test, kg.triples, kg.n_entities, kg.n_relations, cfg)
        logger.info("link prediction (filtered): MRR %.3f / Hits@10 %.3f; random embeddings: MRR %.4f",
                    metrics["trained"]["mrr"], metrics["trained"]["hits@10"],
                    metrics["random_embeddings"]["mrr"])
    with atomic_dir(out, overwrite=True) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, res.entity_embeddings[:kg.n_stations])
        np.save(tmp / "entity_embeddings.npy", res.entity_embeddings)
        np.save(tmp / "relation_embeddings.npy", res.relation_embeddings)
        shutil.copyfile(kg_dir / "entities.tsv", tmp / "entities.tsv")
        torch.save({k: v.cpu() for k, v in res.model.state_dict().items()}, tmp / "tucker.pt")
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "history.json", res.history)
        write_json(tmp / "meta.json", run_meta(
            stage="kg_embed", params=params, kg_dir=str(kg_dir.resolve()), n_stations=kg.n_stations,
            n_entities=kg.n_entities, n_train=int(len(train)), n_test=int(len(test)),
            link_prediction=metrics.get("trained"), random_baseline=metrics.get("random_embeddings")))
    ckpt.unlink(missing_ok=True)
    logger.info("station embeddings written to %s", out / EMBEDDINGS_FILE)
    return out
