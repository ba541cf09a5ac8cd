"""``mstdiff run``: prepare → split → kg → transition → vqvae → train → generate → evaluate.

One run directory holds every stage's output in its own sub-directory, each with a ``meta.json``::

    RUN/config.yaml   resolved config          RUN/meta.json   stage timings, versions
    RUN/data/         prepared dataset          RUN/split/      train/ val/ test/
    RUN/kg/           triples + summary         RUN/embed/      TuckER station embeddings
    RUN/transition/   graph transition process  RUN/vqvae/      pre-trained VQ-VAE
    RUN/train/        model.pt, checkpoint.pt   RUN/generated/  generated set (prepared format)
    RUN/evaluate/     metrics.json, metrics.md, plots/

A stage whose output exists is skipped, training resumes from its checkpoint: re-running the
same command after an interruption continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstdiff.config import apply_overrides, dump_yaml, from_dict, load_yaml
from mstdiff.data.dataset import PreparedDataset, save_splits
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_text, read_json, run_meta, write_json
from mstdiff.models.vqvae import VQVAE, VQVAEConfig
from mstdiff.training.mstdiff import (
    ModelConfig,
    MSTDiff,
    TrainConfig,
    generate,
    load_transition,
    pretrain_vqvae_stage,
    train_mstdiff,
)

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    source: str = "synthetic"  # shanghai-telecom | app-usage | csv | synthetic
    raw: str | None = None  # raw input (relative paths: from the working directory)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (see README)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # user-level train/val/test fractions
    split_seed: int = 0  # seed of the user-level split


@dataclass
class KGStageConfig:
    poi_table: str | None = None  # optional POI table attached by nearest neighbour (Shanghai)
    poi_radius_km: float = 0.5  # radius of that match
    build: dict[str, Any] = field(default_factory=dict)  # KGOptions fields
    embed: dict[str, Any] = field(default_factory=dict)  # TuckerConfig fields (+ holdout)
    transition: dict[str, Any] = field(default_factory=dict)  # k, eps, num_steps, schedule, ...


@dataclass
class GenerateConfig:
    n: int | None = None  # samples to generate (None: as many as the test split)
    batch_size: int = 256  # samples per sampling batch (memory is bounded by this)
    seed: int = 0  # sampling seed


@dataclass
class EvaluateConfig:
    seed: int = 0  # seed of the floor subsets
    plots: bool = True  # write PNG plots


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    kg: KGStageConfig = field(default_factory=KGStageConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def load_run_config(
    path: str | os.PathLike[str] | None, overrides: tuple[str, ...] | list[str] = ()
) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (or defaults) with ``section.key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(RunConfig, data, where=str(path) if path else "config")


def _stage(name: str, timings: dict[str, float]) -> Any:
    class _Timer:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()
            logger.info("stage %s", name)

        def __exit__(self, *exc: Any) -> None:
            timings[name] = round(time.perf_counter() - self.t0, 2)

    return _Timer()


def _clear_run_dir(out: Path) -> None:
    if not out.exists():
        return
    if any(out.iterdir()) and not (out / "config.yaml").exists():
        raise InputError("refusing to overwrite a directory that is not an mstdiff run directory",
                         where=str(out), fix="choose another --out")
    shutil.rmtree(out)


def run_pipeline(config: RunConfig, out: str | os.PathLike[str], *, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run every stage into ``out`` (skipping stages already done); return the top-level meta."""
    from mstdiff.data.prepare import prepare
    from mstdiff.diffusion.discrete import transition_dir
    from mstdiff.kg.stages import build_kg_dir, embed_kg_dir
    from mstdiff.metrics.evaluate import evaluate

    out = Path(out)
    if overwrite:
        _clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").exists():
        previous = load_yaml(out / "config.yaml")
        if previous != load_yaml_text(dump_yaml(config)):
            raise InputError("this run directory was made with a different config", where=str(out),
                             fix="pass --overwrite to start again, or use a new --out")
    atomic_write_text(out / "config.yaml", dump_yaml(config))
    timings: dict[str, float] = {}
    dc = config.data

    with _stage("prepare", timings):
        if not (out / "data" / "meta.json").exists():
            raw = Path(dc.raw) if dc.raw else None
            prepare(dc.source, raw, out / "data", **dc.options)
        data = PreparedDataset.load(out / "data")
    with _stage("split", timings):
        if not (out / "split" / "meta.json").exists():
            save_splits(data, out / "split", fractions=dc.split, seed=dc.split_seed)
        train, val, test = (PreparedDataset.load(out / "split" / k) for k in ("train", "val", "test"))
    with _stage("kg", timings):
        build_kg_dir(out / "data", out / "kg", config.kg.poi_table, poi_radius_km=config.kg.poi_radius_km,
                     **config.kg.build)
    with _stage("embed", timings):
        embed_kg_dir(out / "kg", out / "embed", progress=progress, **config.kg.embed)
    with _stage("transition", timings):
        transition_dir(out / "embed", out / "transition",
                       num_steps=config.model.gaussian.num_steps, **config.kg.transition)
    with _stage("vqvae", timings):
        if config.model.denoiser.use_vqvae:
            if not (out / "vqvae" / "vqvae.pt").exists():
                pretrain_vqvae_stage(train, out / "vqvae", config.vqvae, seed=config.train.seed,
                                     device=config.train.device, progress=progress)
            vqvae: VQVAE | None = VQVAE.load(out / "vqvae" / "vqvae.pt")
        else:
            vqvae = None
    with _stage("train", timings):
        if not (out / "train" / "model.pt").exists():
            emb = np.load(out / "embed" / "station_embeddings.npy")
            train_mstdiff(
                train, val, discrete=load_transition(out / "transition"), vqvae=vqvae,
                model_config=config.model, train_config=dataclasses.replace(config.train, progress=progress),
                out_dir=out / "train", transition_path=os.path.relpath(out / "transition" / "transition.pt",
                                                                       out / "train"),
                station_embeddings=torch.from_numpy(emb).float(), resume=True,
            )
    with _stage("generate", timings):
        n = config.generate.n or test.n_samples
        if not (out / "generated" / "meta.json").exists():
            model = MSTDiff.load(out / "train" / "model.pt")
            generate(model, train, n, out / "generated", seed=config.generate.seed,
                     batch_size=config.generate.batch_size, device=config.train.device, progress=progress)
        gen = PreparedDataset.load(out / "generated")
    with _stage("evaluate", timings):
        result = evaluate(test, {"mstdiff": gen}, out / "evaluate", seed=config.evaluate.seed,
                          plots=config.evaluate.plots, overwrite=True)
    meta = run_meta(stage="run", timings=timings,
                    sizes={"train": train.n_samples, "val": val.n_samples, "test": test.n_samples,
                           "generated": gen.n_samples, "stations": data.n_stations, "T": data.T})
    if (out / "meta.json").exists():
        meta["previous_runs"] = read_json(out / "meta.json").get("previous_runs", 0) + 1
    write_json(out / "meta.json", meta)
    meta["table"] = result.to_markdown()
    return meta


def load_yaml_text(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
