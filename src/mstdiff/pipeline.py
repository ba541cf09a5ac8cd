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
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from mstdiff.config import (
    Check,
    apply_overrides,
    between,
    check_kwargs,
    deep_merge,
    dump_yaml,
    from_dict,
    ge,
    gt,
    load_yaml,
    load_yaml_located,
    locate,
    to_dict,
)
from mstdiff.data.dataset import PreparedDataset, is_share, save_splits
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_text, check_output_dir, log_to_file, read_json, run_meta, write_json
from mstdiff.models.day_pattern import DayPatternConfig
from mstdiff.models.vqvae import VQVAE, VQVAEConfig
from mstdiff.training.model import split_sampling_options, unknown_sampling_options
from mstdiff.training.mstdiff import (
    ModelConfig,
    MSTDiff,
    TrainConfig,
    check_pattern,
    generate,
    has_traffic,
    load_transition,
    pretrain_vqvae_stage,
    station_coordinates,
    train_mstdiff,
)

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    CHECKS: ClassVar[dict[str, Check]] = {"split": between(0, 1), "split_seed": ge(0)}

    source: str = "synthetic"  # shanghai-telecom | app-usage | csv | movesim | synthetic
    raw: str | None = None  # raw input (relative paths: from the working directory)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (see README)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # user-level train/val/test fractions
    split_seed: int = 0  # seed of the user-level split
    # split by this samples column instead of the fractions (e.g. "part": the raw file of a sample)
    split_by: str | None = None
    # with split_by: the column values of each split, e.g. {train: [real], val: [val], test: [val]}
    parts: dict[str, Any] = field(default_factory=dict)  # lists of values; val may be a share (0, 1)


@dataclass
class KGStageConfig:
    CHECKS: ClassVar[dict[str, Check]] = {"poi_radius_km": gt(0)}

    poi_table: str | None = None  # optional POI table attached by nearest neighbour (Shanghai)
    poi_radius_km: float = 0.5  # radius of that match
    build: dict[str, Any] = field(default_factory=dict)  # KGOptions fields
    embed: dict[str, Any] = field(default_factory=dict)  # TuckerConfig fields (+ holdout)
    transition: dict[str, Any] = field(default_factory=dict)  # k, eps, num_steps, schedule, ...


@dataclass
class GenerateConfig:
    CHECKS: ClassVar[dict[str, Check]] = {"n": ge(1), "batch_size": ge(1), "seed": ge(0)}

    n: int | None = None  # samples to generate (None: as many as the test split)
    batch_size: int = 256  # samples per sampling batch (memory is bounded by this)
    seed: int = 0  # sampling seed
    # more generated sets, one per seed (e.g. [0, 1, 2]): every model's row is pooled over them
    # (mean ± sd over the sets, mstdiff.metrics.pooled); the set of `seed` is written to
    # `generated/`, the others to `generated-seed{k}/`. Empty: the one set of `seed`
    seeds: list[int] = field(default_factory=list)
    # sampling options of model.hybrid for generation (e.g. {location_temperature: 0.9}); empty: as trained
    sampling: dict[str, Any] = field(default_factory=dict)
    # conditional generation (mstdiff.conditional) instead of unconditional samples, e.g.
    # {kind: locations} (traffic for the test split's trajectories), {kind: traffic}, or
    # {kind: both, mask: "after=18:00"}; keys: kind, given (test | a prepared dataset), mask,
    # samples_per_condition (K). Empty: unconditional
    condition: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [k for k in self.seeds if not isinstance(k, int) or isinstance(k, bool) or k < 0]
        if bad:
            raise InputError(f"generate.seeds holds {bad}", where="generate.seeds",
                             fix="give non-negative integers, e.g. [0, 1, 2]")

    def all_seeds(self) -> list[int]:
        """The generation seeds in order: ``seed`` first, then the others of ``seeds``."""
        return [self.seed] + [k for k in dict.fromkeys(self.seeds) if k != self.seed]


def generated_dir(model_dir: Path, config: GenerateConfig, seed: int) -> Path:
    """Where the set of generation ``seed`` goes: ``generated/`` for ``config.seed``, else
    ``generated-seed{seed}/``."""
    return model_dir / ("generated" if seed == config.seed else f"generated-seed{seed}")


@dataclass
class EvaluateConfig:
    CHECKS: ClassVar[dict[str, Check]] = {"seed": ge(0)}

    seed: int = 0  # seed of the floor draws (the floor: the test split against train-split users)
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


def check_run_config(config: RunConfig, origins: dict[str, str] | None = None) -> None:
    """The checks of a run config that go beyond one field's type and range, done at load time so
    that a mistake stops the run before any stage: the data source and paths, the split, the option
    sections passed on to stages (``kg.build``/``embed``/``transition``, ``generate.sampling``), the
    device, and for a benchmark its model names, variants and baseline configs."""
    from mstdiff.data.prepare import SOURCES
    from mstdiff.diffusion.discrete import transition_dir
    from mstdiff.diffusion.hybrid import HybridConfig
    from mstdiff.kg.stages import embed_kg_dir
    from mstdiff.kg.triples import KGOptions
    from mstdiff.kg.tucker import TuckerConfig
    from mstdiff.training.utils import resolve_device

    origins = origins or {}

    def err(key: str, what: str, fix: str) -> InputError:
        return InputError(what, where=locate(origins, key, "config"), fix=fix)

    d = config.data
    if d.source not in SOURCES:
        raise err("data.source", f"data.source = {d.source!r} is unknown", f"use one of {list(SOURCES)}")
    if d.source != "synthetic":
        if d.raw is None:
            raise err("data.source", f"data.raw is required for source {d.source!r}",
                      "set data.raw to the folder or file of raw records")
        if not Path(d.raw).exists():
            raise err("data.raw", f"data.raw = {d.raw!r} does not exist (from {os.getcwd()})",
                      "check the path; relative paths are from the working directory")
    if any(f < 0 for f in d.split) or abs(sum(d.split) - 1.0) > 1e-6:
        raise err("data.split", f"data.split = {list(d.split)} must be three fractions >= 0 summing to 1",
                  "e.g. [0.8, 0.1, 0.1]")
    if d.split_by is None and d.parts:
        raise err("data.parts", "data.parts is set but data.split_by is not",
                  "set data.split_by to the samples column the parts name (e.g. part), or remove data.parts")
    if d.split_by is not None:
        example = ("e.g. data: {split_by: part, parts: {train: [real], val: [val], test: [val]}}; "
                   "val may be a share of the training part instead (val: 0.1)")
        if set(d.parts) != {"train", "val", "test"}:
            raise err("data.parts" if d.parts else "data.split_by",
                      f"data.parts has {sorted(d.parts)}: with data.split_by it needs train, val and test",
                      example)
        for name, values in d.parts.items():
            if name == "val" and is_share(values) and 0.0 < values < 1.0:
                continue  # a share of the training part's users (data.dataset.column_split)
            if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
                raise err(f"data.parts.{name}", f"data.parts.{name} = {values!r} is not a list of values",
                          example)
    if config.kg.poi_table is not None and not Path(config.kg.poi_table).is_file():
        raise err("kg.poi_table", f"kg.poi_table = {config.kg.poi_table!r} is not a file",
                  "check the path, or remove kg.poi_table")
    if config.kg.poi_radius_km <= 0:
        raise err("kg.poi_radius_km", f"kg.poi_radius_km = {config.kg.poi_radius_km}", "use a radius > 0")
    from_dict(KGOptions, config.kg.build, origins=origins, prefix="kg.build.")
    embed, stage_keys = dict(config.kg.embed), ("holdout", "split_seed")
    check_kwargs(embed_kg_dir, {k: v for k, v in embed.items() if k in stage_keys}, "kg.embed.",
                 origins=origins, checks={"holdout": between(0, 1, open_hi=True), "split_seed": ge(0)})
    from_dict(TuckerConfig, {k: v for k, v in embed.items() if k not in stage_keys}, origins=origins,
              prefix="kg.embed.")
    if "num_steps" in config.kg.transition:
        raise err("kg.transition.num_steps", "kg.transition.num_steps is set from model.gaussian.num_steps",
                  "remove num_steps there (both branches share S)")
    check_kwargs(transition_dir, config.kg.transition, "kg.transition.", origins=origins,
                 exclude=("overwrite", "num_steps"),
                 checks={"k": ge(1), "eps": gt(0), "tv_target": between(0, 1, open_lo=True),
                         "dist_quantile": between(0, 1, open_lo=True), "max_dist": gt(0)})
    check_pattern(config.model)
    config.model.pattern.validate_for(config.model.denoiser.seq_len)
    bad, fix = unknown_sampling_options(config.generate.sampling)
    if bad:
        raise err(f"generate.sampling.{bad[0]}", f"unknown sampling option(s) {bad}", fix)
    hybrid_opts, pattern_opts = split_sampling_options(config.generate.sampling)
    from_dict(HybridConfig, {**to_dict(config.model.hybrid), **hybrid_opts}, origins=origins,
              prefix="generate.sampling.")
    from_dict(DayPatternConfig, {**to_dict(config.model.pattern), **pattern_opts}, origins=origins,
              prefix="generate.sampling.")
    cond = config.generate.condition
    if cond:
        from mstdiff.conditional import CONDITION_KINDS, mask_rule

        example = "e.g. generate: {condition: {kind: both, mask: after=18:00, samples_per_condition: 5}}"
        bad = sorted(set(cond) - set(CONDITION_KEYS))
        if bad:
            raise err(f"generate.condition.{bad[0]}", f"unknown condition key(s) {bad}",
                      f"use {list(CONDITION_KEYS)}: {example}")
        if cond.get("kind") not in CONDITION_KINDS:
            raise err("generate.condition.kind", f"generate.condition.kind = {cond.get('kind')!r}",
                      f"use one of {list(CONDITION_KINDS)}: {example}")
        if cond["kind"] == "both" and cond.get("mask") is None:
            raise err("generate.condition.mask", "generate.condition.kind = both needs a mask (which slots "
                      "to fill)", example)
        k = cond.get("samples_per_condition", 1)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise err("generate.condition.samples_per_condition",
                      f"generate.condition.samples_per_condition = {k!r} is not a whole number >= 1", example)
        given = cond.get("given", "test")
        if given != "test" and not (Path(str(given)) / "meta.json").is_file():
            raise err("generate.condition.given",
                      f"generate.condition.given = {given!r} is neither 'test' nor a prepared dataset",
                      "use test (the run's test split) or a folder written by mstdiff prepare")
        mask = cond.get("mask")
        if mask is not None and not str(mask).endswith(".npy"):
            try:
                mask_rule(str(mask), 1, 48, bin_minutes=30)
            except InputError as exc:
                raise err("generate.condition.mask", exc.what, exc.fix or example) from None
    try:
        resolve_device(config.train.device)
    except InputError as exc:
        raise err("train.device", exc.what, exc.fix or "") from None
    if isinstance(config, BenchmarkConfig):
        from mstdiff.baselines import make_baseline

        if not config.models:
            raise err("models", "models is empty", "list at least one model, e.g. [mstdiff, dit+markov]")
        for name in config.variants:
            variant_config(config, name)
        for name in config.models:
            if name == "mstdiff" or name in config.variants:
                continue
            try:
                make_baseline(name, baseline_config(name, config))
            except InputError as exc:
                raise InputError(f"models: {name!r}: {exc.what}",
                                 where=locate(origins, f"baselines.{name}", locate(origins, "models")),
                                 fix=exc.fix) from None
        unused = sorted(set(config.baselines) - set(config.models))
        if unused:
            logger.warning("baselines %s are configured but not in models: they are not run", unused)


def load_run_config(
    path: str | os.PathLike[str] | None, overrides: tuple[str, ...] | list[str] = (),
    cls: type[RunConfig] = RunConfig,
) -> Any:
    """A ``cls`` config from a YAML file (or defaults) with ``section.key=value`` overrides.

    Every value is checked here, before any stage runs (:func:`check_run_config`): errors name the
    key, the value, the allowed range and where it came from (``file.yaml:LINE`` or ``--set``).
    """
    data, origins = load_yaml_located(path) if path is not None else ({}, {})
    data = apply_overrides(data, list(overrides), origins)
    config = from_dict(cls, data, where=str(path) if path else "config", origins=origins)
    check_run_config(config, origins)
    return config


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


@dataclass
class Stages:
    """What the shared stages produce: the splits and the MSTDiff inputs."""

    data: PreparedDataset
    train: PreparedDataset
    val: PreparedDataset
    test: PreparedDataset
    vqvae: VQVAE | None


def _start_run_dir(config: Any, out: Path, overwrite: bool) -> None:
    if overwrite:
        _clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").exists():
        # compare in YAML form (tuples → lists), the old file read with today's defaults, so that
        # a setting added to the package since does not make an old run directory "different"
        try:
            previous = yaml.safe_load(dump_yaml(from_dict(type(config), load_yaml(out / "config.yaml"))))
        except InputError:
            previous = None
        if previous != yaml.safe_load(dump_yaml(config)):
            raise InputError("this run directory was made with a different config", where=str(out),
                             fix="pass --overwrite to start again, or use a new --out")
    atomic_write_text(out / "config.yaml", dump_yaml(config))


def needs_graph(models: Any, data: PreparedDataset) -> bool:
    """Whether some MSTDiff of ``models`` (ModelConfigs) reads the knowledge graph's stages: every model
    but a day-pattern one whose stations have coordinates (its assigner's kernel is the map)."""
    coords = station_coordinates(data) is not None
    return any(not (m.pattern.enabled and coords) for m in models)


def run_shared_stages(config: RunConfig, out: Path, timings: dict[str, float], *,
                      progress: bool = True, need_mstdiff: bool = True,
                      models: Any = None, need_embed: bool = False) -> Stages:
    """prepare → split (→ kg → embed → transition → vqvae when MSTDiff is needed), each skipped if
    done; the knowledge-graph stages only for ``models`` (default: ``config.model``) that read them
    (:func:`needs_graph`) or when ``need_embed`` (a baseline reads this run's embeddings)."""
    from mstdiff.data.prepare import prepare
    from mstdiff.diffusion.discrete import transition_dir
    from mstdiff.kg.stages import build_kg_dir, embed_kg_dir

    dc = config.data
    with _stage("prepare", timings):
        if not (out / "data" / "meta.json").exists():
            prepare(dc.source, Path(dc.raw) if dc.raw else None, out / "data", **dc.options)
        data = PreparedDataset.load(out / "data")
    with _stage("split", timings):
        if not (out / "split" / "meta.json").exists():
            save_splits(data, out / "split", fractions=dc.split, seed=dc.split_seed, by=dc.split_by,
                        parts=dc.parts)
        train, val, test = (PreparedDataset.load(out / "split" / k) for k in ("train", "val", "test"))
    vqvae: VQVAE | None = None
    graph = need_embed or needs_graph([config.model] if models is None else models, data)
    if need_mstdiff and not graph:
        logger.info("the day-pattern model reads no knowledge graph: kg, embed and transition skipped")
    elif need_mstdiff:
        with _stage("kg", timings):
            build_kg_dir(out / "data", out / "kg", config.kg.poi_table,
                         poi_radius_km=config.kg.poi_radius_km, **config.kg.build)
        with _stage("embed", timings):
            embed_kg_dir(out / "kg", out / "embed", progress=progress, **config.kg.embed)
        if "num_steps" in config.kg.transition:
            raise InputError("kg.transition.num_steps is set from model.gaussian.num_steps",
                             where="kg.transition", fix="remove num_steps there (both branches share S)")
        with _stage("transition", timings):
            transition_dir(out / "embed", out / "transition",
                           num_steps=config.model.gaussian.num_steps, **config.kg.transition)
        with _stage("vqvae", timings):
            # no VQ-VAE for a dataset without traffic (it would be pre-trained on zeros): MSTDiff
            # without traffic is trained instead (training.mstdiff.trajectory_only_if_needed)
            if config.model.denoiser.use_vqvae and config.model.denoiser.use_traffic and has_traffic(train):
                if not (out / "vqvae" / "vqvae.pt").exists():
                    pretrain_vqvae_stage(train, out / "vqvae", config.vqvae, seed=config.train.seed,
                                         device=config.train.device, progress=progress)
                vqvae = VQVAE.load(out / "vqvae" / "vqvae.pt")
    return Stages(data, train, val, test, vqvae)


def train_and_generate_mstdiff(config: RunConfig, out: Path, st: Stages, model_dir: Path, n: int,
                               timings: dict[str, float], *, progress: bool = True) -> list[PreparedDataset]:
    """Train MSTDiff into ``model_dir/train`` (resuming); generate ``n`` samples into ``.../generated``
    (and one more set per extra seed of ``generate.seeds``, :func:`generated_dir`); the sets in
    seed order."""
    with _stage("train", timings):
        if not (model_dir / "train" / "model.pt").exists():
            graph = needs_graph([config.model], st.data)  # else the stages were skipped
            emb = np.load(out / "embed" / "station_embeddings.npy") if graph else None
            train_mstdiff(
                st.train, st.val, discrete=load_transition(out / "transition") if graph else None,
                vqvae=st.vqvae, model_config=config.model,
                train_config=dataclasses.replace(config.train, progress=progress),
                out_dir=model_dir / "train",
                transition_path=(os.path.relpath(out / "transition" / "transition.pt", model_dir / "train")
                                 if graph else None),
                station_embeddings=torch.from_numpy(emb).float() if emb is not None else None, resume=True,
                calibration_sampling=config.generate.sampling,
            )
    gc = config.generate
    with _stage("generate", timings):
        model = None
        for seed in gc.all_seeds():
            where = generated_dir(model_dir, gc, seed)
            if (where / "meta.json").exists():
                continue
            if model is None:
                model = MSTDiff.load(model_dir / "train" / "model.pt").with_sampling(**gc.sampling)
            if gc.condition:
                from mstdiff.conditional import generate_conditional

                c = gc.condition
                generate_conditional(model, st.train, condition_set(config, st), c["kind"],
                                     where, mask=c.get("mask"),
                                     samples_per_condition=int(c.get("samples_per_condition", 1)),
                                     seed=seed, batch_size=gc.batch_size, device=config.train.device,
                                     progress=progress, condition_path=str(c.get("given", "test")))
            else:
                generate(model, st.train, n, where, seed=seed,
                         batch_size=gc.batch_size, device=config.train.device, progress=progress)
        return [PreparedDataset.load(generated_dir(model_dir, gc, seed)) for seed in gc.all_seeds()]


CONDITION_KEYS = ("kind", "given", "mask", "samples_per_condition")


def condition_set(config: RunConfig, st: Stages) -> PreparedDataset:
    """The real set ``generate.condition.given`` names: the run's test split (default) or a dataset."""
    given = config.generate.condition.get("given", "test")
    return st.test if given == "test" else PreparedDataset.load(given)


def run_pipeline(config: RunConfig, out: str | os.PathLike[str], *, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run every stage into ``out`` (skipping stages already done, the evaluation included: a
    finished run directory is reported, not recomputed); return the top-level meta. What the stages
    log goes to ``out/log.txt`` too."""
    out = check_output_dir(out, reuse=True)
    _start_run_dir(config, out, overwrite)
    with log_to_file(out / "log.txt"):
        return _run_pipeline(config, out, progress)


def _run_pipeline(config: RunConfig, out: Path, progress: bool) -> dict[str, Any]:
    from mstdiff.metrics.evaluate import evaluate

    timings: dict[str, float] = {}
    if (out / "meta.json").exists() and (out / "evaluate" / "metrics.md").exists():
        logger.info("run %s is finished: nothing to do (pass --overwrite to start again)", out)
        meta = read_json(out / "meta.json")
        meta["table"] = (out / "evaluate" / "metrics.md").read_text(encoding="utf-8")
        return meta
    st = run_shared_stages(config, out, timings, progress=progress)
    n = config.generate.n or st.test.n_samples
    gens = train_and_generate_mstdiff(config, out, st, out, n, timings, progress=progress)
    gen = gens[0]
    with _stage("evaluate", timings):
        result = evaluate(st.test, {"mstdiff": gens}, out / "evaluate", seed=config.evaluate.seed,
                          reference=st.train, train=st.train, plots=config.evaluate.plots, overwrite=True)
        paired = None
        if config.generate.condition:  # the pairing is real: paired scores against the conditions
            from mstdiff.conditional import score_conditional

            c = config.generate.condition
            paired = score_conditional(gen, condition_set(config, st), st.train, c["kind"],
                                       mask=c.get("mask"), seed=config.generate.seed)
            write_json(out / "evaluate" / "paired.json", {"condition": c, "scores": paired})
            logger.info("paired scores (%s): %s", c["kind"], paired)
    meta = run_meta(stage="run", timings=timings,
                    sizes={"train": st.train.n_samples, "val": st.val.n_samples, "test": st.test.n_samples,
                           "generated": gen.n_samples, "stations": st.data.n_stations, "T": st.data.T},
                    **({"paired": paired} if paired is not None else {}))
    write_json(out / "meta.json", meta)
    meta["table"] = result.to_markdown()
    return meta


# ----------------------------------------------------------------------------- benchmark


@dataclass
class BenchmarkConfig(RunConfig):
    models: list[str] = field(default_factory=lambda: ["mstdiff", "dit+markov", "csdi+timegeo"])
    baselines: dict[str, Any] = field(default_factory=dict)  # per-baseline config, keyed by name
    # more MSTDiff configurations, keyed by name: sections (model, train, generate) merged over the
    # run's, e.g. {mstdiff-paper: {model: {location: {process: graph}}}}
    variants: dict[str, Any] = field(default_factory=dict)


def load_benchmark_config(
    path: str | os.PathLike[str] | None, overrides: tuple[str, ...] | list[str] = ()
) -> BenchmarkConfig:
    return load_run_config(path, overrides, BenchmarkConfig)


def ablation_defaults(config: RunConfig) -> dict[str, Any]:
    """Config of ``mstdiff-traffic`` (MSTDiff without trajectory) taken from the run's MSTDiff sections:
    the same denoiser, VQ-VAE, Gaussian schedule and training budget, so the ablation differs from
    MSTDiff only by the trajectory branch."""
    den = {k: v for k, v in to_dict(config.model.denoiser).items() if k not in ("num_stations", "seq_len")}
    g, tc = config.model.gaussian, config.train
    return {
        "denoiser": {**den, "use_locations": False},
        "vqvae": to_dict(config.vqvae),
        "diffusion": {"steps": g.num_steps, "beta_schedule": "quadratic", "beta_start": g.beta_start,
                      "beta_end": g.beta_end, "clip_x0": False},
        "train": {"epochs": tc.epochs, "max_steps": tc.max_steps, "batch_size": tc.batch_size,
                  "lr": tc.lr, "weight_decay": tc.weight_decay, "lr_schedule": tc.schedule,
                  "warmup_steps": tc.warmup_steps,
                  "grad_clip": tc.grad_clip, "ema_decay": tc.ema_decay, "device": tc.device,
                  "threads": tc.num_threads, "seed": tc.seed,
                  "sample_batch_size": config.generate.batch_size},
    }


VARIANT_SECTIONS = ("model", "train", "generate")


def variant_config(config: BenchmarkConfig, name: str) -> RunConfig:
    """The run config of the MSTDiff variant ``name`` ("mstdiff": the run's own sections)."""
    base = {k: v for k, v in to_dict(config).items() if k in {f.name for f in dataclasses.fields(RunConfig)}}
    if name == "mstdiff":
        return from_dict(RunConfig, base, where="config")
    extra = config.variants.get(name) or {}
    bad = sorted(set(extra) - set(VARIANT_SECTIONS))
    if bad:
        raise InputError(f"variant {name!r} sets {bad}: a variant may only change {list(VARIANT_SECTIONS)}",
                         where=f"variants.{name}", fix="the shared stages (data, kg, vqvae) are common")
    gauss = (extra.get("model") or {}).get("gaussian") or {}
    steps = gauss.get("num_steps", config.model.gaussian.num_steps)
    if steps != config.model.gaussian.num_steps:
        raise InputError("a variant may not change model.gaussian.num_steps", where=f"variants.{name}",
                         fix="the transition stage is shared and built for the run's number of steps")
    return from_dict(RunConfig, deep_merge(base, extra), where=f"variants.{name}")


def baseline_config(name: str, config: BenchmarkConfig) -> dict[str, Any] | None:
    """The config given to ``make_baseline(name, ...)``: ``config.baselines[name]`` over, for the
    ``mstdiff-traffic`` part of ``name``, the run's MSTDiff settings (:func:`ablation_defaults`)."""
    given = config.baselines.get(name)
    parts = [p.strip() for p in name.lower().split("+")]
    if "mstdiff-traffic" not in parts:
        return given
    defaults = ablation_defaults(config)
    if len(parts) == 1:
        return deep_merge(defaults, given or {})
    given = dict(given or {})
    return {**given, "mstdiff-traffic": deep_merge(defaults, given.get("mstdiff-traffic") or {})}


def run_benchmark(config: BenchmarkConfig, out: str | os.PathLike[str], *, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Train every model of ``config.models`` on one prepared dataset, generate as many samples as
    the test split, evaluate all against the test split with the floor row.

    Writes ``results.json`` (metrics, wall time and peak memory per model), ``results.md`` (the
    metrics table with the floor row, best bolded, plus a cost table) and ``evaluate/plots``.
    Baselines that produce one modality only must be paired (``csdi+markov``): the joint metrics
    need both. A model whose output exists is not trained again.
    """
    from mstdiff.baselines import make_baseline

    out = Path(out)
    if not config.models:
        raise InputError("no models to benchmark", where="models", fix="list e.g. [mstdiff, markov]")
    variants = {name: variant_config(config, name) for name in config.models
                if name == "mstdiff" or name in config.variants}
    baselines = {name: make_baseline(name, baseline_config(name, config))
                 for name in config.models if name not in variants}
    for name, model in baselines.items():  # reported before any training
        if model.produces != frozenset({"traffic", "locations"}):
            logger.info("baseline %r produces only %s: its other metrics are reported as not applicable "
                        "(pair it, e.g. csdi+markov, for joint metrics)", name, sorted(model.produces))
    check_output_dir(out, reuse=True)
    _start_run_dir(config, out, overwrite)
    with log_to_file(out / "log.txt"):
        return _run_benchmark(config, out, variants, baselines, progress)


def _run_benchmark(config: BenchmarkConfig, out: Path, variants: dict[str, RunConfig],
                   baselines: dict[str, Any], progress: bool) -> dict[str, Any]:
    from mstdiff.baselines import generate_dataset
    from mstdiff.metrics.evaluate import evaluate
    from mstdiff.training.mstdiff import peak_rss_mb

    timings: dict[str, float] = {}
    run_embed = any(getattr(getattr(part, "config", None), "embeddings", None) == "run"
                    for model in baselines.values() for part in getattr(model, "parts", (model,)))
    st = run_shared_stages(config, out, timings, progress=progress, need_mstdiff=bool(variants),
                           models=[v.model for v in variants.values()], need_embed=run_embed)
    n = config.generate.n or st.test.n_samples
    for model in baselines.values():  # e.g. ADAPTIVE's `embeddings: run` → this run's embed stage
        for part in getattr(model, "parts", (model,)):
            bind = getattr(part, "bind_run_dir", None)
            if callable(bind):
                bind(out)
    generated: dict[str, list[PreparedDataset]] = {}
    costs: dict[str, dict[str, float]] = {}
    gc = config.generate
    for name in config.models:
        model_dir = out / "models" / name
        t0 = time.perf_counter()
        if name in variants:
            generated[name] = train_and_generate_mstdiff(variants[name], out, st, model_dir, n, {},
                                                         progress=progress)
        else:
            model = baselines[name]
            fitted = False
            for seed in gc.all_seeds():  # a baseline is fitted once, then draws one set per seed
                where = generated_dir(model_dir, gc, seed)
                if (where / "meta.json").exists():
                    continue
                if not fitted:
                    model.fit(st.train, val=st.val, progress=progress)
                    fitted = True
                generate_dataset(model, st.train, n, seed, progress=progress).save(where, overwrite=True)
            generated[name] = [PreparedDataset.load(generated_dir(model_dir, gc, seed))
                               for seed in gc.all_seeds()]
        costs[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
        logger.info("benchmark: %s done in %.1f s", name, costs[name]["seconds"])
    with _stage("evaluate", timings):
        result = evaluate(st.test, generated, out / "evaluate", seed=config.evaluate.seed,
                          reference=st.train, train=st.train, plots=config.evaluate.plots, overwrite=True)
    cost_lines = ["| model | wall time (s) | peak RSS so far (MiB) | independent pair |",
                  "|---|---:|---:|---|"]
    for name, c in costs.items():
        pair = "yes" if getattr(baselines.get(name), "independent", False) else "no"
        cost_lines.append(f"| {name} | {c['seconds']:.1f} | {c['peak_rss_mb']:.0f} | {pair} |")
    table = result.to_markdown()
    seeds = gc.all_seeds()
    listed = ", ".join(map(str, seeds))
    per_model = (f"{n} samples generated per model" if len(seeds) == 1 else
                 f"{len(seeds)} sets of {n} samples generated per model (seeds {listed}), "
                 "each row pooled over them")
    md = (f"# Benchmark\n\nReal set: test split ({st.test.n_samples} samples, N = {st.data.n_stations}, "
          f"T = {st.data.T}); {per_model}.\n\n{table}\n\n## Cost\n\n"
          + "\n".join(cost_lines)
          + "\n\nWall time covers fitting (or training) and generation; a model whose output already "
            "existed shows only its loading time. Peak RSS is the process maximum up to the end of that "
            "model (it never decreases). Pairs `a+b` generate traffic and trajectories independently, except "
            "coupled ones (independent pair: no) whose traffic follows the trajectory model's locations.\n")
    atomic_write_text(out / "results.md", md)
    results = run_meta(stage="benchmark", models=config.models, costs=costs, stage_timings=timings,
                       metrics=result.to_dict(), sizes={"test": st.test.n_samples, "generated": n},
                       generation_seeds=seeds)
    write_json(out / "results.json", results)
    results["markdown"] = md
    return results
