"""Training and sampling of MSTDiff (paper Algorithms 1 and 2) with exact resume.

A trained model directory holds ``model.pt`` (EMA weights, configs, traffic scaler, the path of the
transition process), ``checkpoint.pt`` (everything needed to continue training exactly),
``history.jsonl`` (losses), ``config.yaml`` and ``meta.json``.

Reproducibility: data order comes from a generator seeded with ``(seed, epoch)``, diffusion noise
from one generator whose state is checkpointed, dropout from torch's default generator inside a
:func:`~mstdiff.training.utils.local_rng` scope whose state is checkpointed too. So an interrupted
run resumed with ``resume=True`` ends with the same weights as an uninterrupted one.

Data-parallel training: run the same command under ``torchrun --nproc_per_node K``; see
:mod:`mstdiff.training.distributed` for how batches, seeds and outputs are shared out. Optional
mixed precision (``amp``) and ``torch.compile`` (``compile``) are off by default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm.auto import tqdm

from mstdiff.config import Check, between, dump_yaml, from_dict, ge, gt, one_of, to_dict
from mstdiff.data.dataset import PreparedDataset, normalisation_stats
from mstdiff.data.scaling import TrafficScaler
from mstdiff.diffusion.absorbing import AbsorbingProcess
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.diffusion.location import LocationConfig, make_location_process
from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, atomic_write_text, check_output_dir, run_meta, write_json
from mstdiff.models.day_pattern import (
    DayPatternConfig,
    StationAssigner,
    gibbs_moves,
    permute_labels,
    redraw_invalid_moves,
)
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.losses import training_loss
from mstdiff.models.vqvae import VQVAE
from mstdiff.models.wavelet import dwt, idwt
from mstdiff.threads import set_threads
from mstdiff.training import distributed
from mstdiff.training.utils import (
    EMA,
    Autocast,
    load_checkpoint,
    local_rng,
    lr_lambda,
    needs_grad_scaler,
    resolve_device,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": ge(0), "max_steps": ge(0), "batch_size": ge(1), "lr": gt(0), "weight_decay": ge(0),
        "schedule": one_of("cosine", "step", "constant"), "warmup_steps": ge(0), "grad_clip": ge(0),
        "ema_decay": between(0, 1, open_hi=True), "loss_weights": ge(0), "val_batches": ge(0),
        "checkpoint_every": ge(1), "log_every": ge(1), "seed": ge(0), "num_threads": ge(1),
        "calibration_samples": ge(0), "calibration_batch_size": ge(1), "activity_weight": ge(0),
        "condition_rate": between(0, 1), "station_prior": ge(0),
        "station_prior_counts": one_of("slots", "arrivals"), "station_lr": ge(0),
    }

    epochs: int = 20  # passes over the training samples
    max_steps: int | None = None  # stop after this many optimiser steps (None: run all epochs)
    batch_size: int = 64  # samples per optimiser step (the global batch: split over torchrun's K ranks)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decay of matrices and embeddings (not biases / norms)
    schedule: str = "cosine"  # cosine | step | constant, after a linear warm-up
    warmup_steps: int = 50  # linear warm-up steps
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    ema_decay: float = 0.995  # EMA of weights used for validation and sampling
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)  # λ1 traffic MSE, λ2 KL, λ3 CE
    val_batches: int = 8  # validation batches per epoch (fixed noise: comparable across epochs)
    checkpoint_every: int = 200  # optimiser steps between checkpoints (and one per epoch)
    log_every: int = 25  # optimiser steps between history lines
    seed: int = 0  # seeds data order, noise, dropout and initial weights
    device: str = "auto"  # auto | cpu | cuda | cuda:K (under torchrun: auto/cuda → cuda:LOCAL_RANK)
    num_threads: int | None = None  # CPU threads of torch, Numba and DuckDB alike (None: their defaults)
    progress: bool = True  # tqdm progress bar (rank 0 only)
    amp: bool = False  # mixed precision: the network under autocast (bf16; fp16 + loss scaling on old GPUs)
    compile: bool = False  # torch.compile the denoiser (slow first steps; pays off on GPUs, long runs)
    # after training, the traffic decoder's zero / full-slot thresholds are set from this many of the
    # model's own samples so that both atoms get the training shares (0: keep the grid midpoints)
    calibration_samples: int = 256
    calibration_batch_size: int = 256  # samples per sampling batch of that calibration
    # start the station table head's biases at the log visit shares of the training set (+ this
    # pseudo-count per station), so the table head starts from the real marginal instead of uniform
    # over N (a far-away station drawn for a masked slot was the first failure at N = 23,768); 0: off
    station_prior: float = 0.0
    # what the prior counts: "slots" (every slot's station: where users are) or "arrivals" (the
    # first slot of each stay: where users go; what a move component draws)
    station_prior_counts: str = "slots"
    activity_weight: float = 1.0  # weight of the activity channel's masked CE (model.activity)
    # share of training samples given as the conditional sampler sees them (mstdiff.conditional):
    # observed location / activity tokens clean; 0 = unconditional training only
    condition_rate: float = 0.0
    # keep the EMA weights of the epoch with the lowest validation loss (val_total) instead of the
    # last epoch's: early stopping without stopping (a small set overfits a large station table)
    keep_best: bool = False
    # learning rate of the station table (its N embeddings and biases) as a factor of lr: the part
    # that memorises a small training set (0: kept at the knowledge-graph embeddings and the prior)
    station_lr: float = 1.0


@dataclass
class ModelConfig:
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    location: LocationConfig = field(default_factory=LocationConfig)  # absorbing (default) or graph noise
    # slot activity channel (zero / partial / full slot) diffused beside the locations; its classes
    # set the traffic atoms at decoding (off: the calibrated decoder's thresholds set them)
    activity: bool = False
    # trajectories only: diffuse the day's pattern of places, then draw its stations from training
    # counts (mstdiff.models.day_pattern); off: the network draws the stations themselves
    pattern: DayPatternConfig = field(default_factory=DayPatternConfig)


def check_sampling_options(options: dict[str, Any], where: str = "sampling") -> None:
    """Sampling options are fields of ``model.hybrid`` or the sampling fields of ``model.pattern``
    (:attr:`DayPatternConfig.SAMPLING`); anything else is an :class:`InputError`."""
    known = {f.name for f in dataclasses.fields(HybridConfig)} | set(DayPatternConfig.SAMPLING)
    bad = sorted(set(options) - known)
    if bad:
        raise InputError(f"unknown sampling option(s) {bad}", where=where,
                         fix=f"use fields of model.hybrid or model.pattern's "
                             f"{list(DayPatternConfig.SAMPLING)}: {sorted(known)}")


def check_pattern(config: ModelConfig, where: str = "model") -> None:
    """``model.pattern.enabled`` needs a trajectory-only model with absorbing noise and a copy head
    that reads no station coordinates (the pattern's labels have none)."""
    if not config.pattern.enabled:
        return
    d = config.denoiser
    needs = [
        (config.location.process == "absorbing", "location.process = 'absorbing'",
         "the labels have no transition graph"),
        (not d.use_traffic, "denoiser.use_traffic = false", "the pattern carries no traffic"),
        (d.use_locations, "denoiser.use_locations = true", "the pattern is the location stream"),
        (d.near_k == 0, "denoiser.near_k = 0", "the labels have no map"),
        (not d.move_decay, "denoiser.move_decay = false", "the labels have no map"),
        (not config.activity, "activity = false", "there is no traffic"),
    ]
    for ok, setting, why in needs:
        if not ok:
            raise InputError(f"{where}.pattern.enabled needs {setting} ({why})", where=f"{where}.pattern",
                             fix=f"set {where}.{setting.replace(' = ', ': ')}, or pattern.enabled: false")


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, float]]
    seconds: float
    samples_per_second: float  # global: all ranks together
    peak_rss_mb: float  # this process
    rank: int = 0  # this process's rank under torchrun (only rank 0 wrote the outputs)
    world_size: int = 1  # number of processes that trained together


# ----------------------------------------------------------------------------- tensors


def encode_series(ds: PreparedDataset, scaler: TrafficScaler, device: torch.device) -> tuple[Tensor, Tensor]:
    """Clean wavelet coefficients ``w0 (U, T)`` of scaled traffic and station ids ``l0 (U, T)``."""
    m = torch.from_numpy(np.asarray(ds.traffic, dtype=np.float32)).to(device)
    w0 = dwt(scaler.encode(m))  # (U, T)
    l0 = torch.from_numpy(np.asarray(ds.locations, dtype=np.int64)).to(device)  # (U, T)
    return w0, l0


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


# ----------------------------------------------------------------------------- model bundle


@dataclass
class MSTDiff:
    """A trained MSTDiff: denoiser (EMA weights), hybrid process and traffic scaler."""

    denoiser: MSTDiffDenoiser
    hybrid: HybridDiffusion
    scaler: TrafficScaler
    config: ModelConfig
    # model.pattern: the network draws day patterns, this draws their stations
    assigner: StationAssigner | None = None

    @property
    def n_stations(self) -> int:
        """Stations of the generated trajectories (the pattern model's network has its labels)."""
        return self.assigner.n_stations if self.assigner is not None else int(self.hybrid.num_states)

    def to(self, device: torch.device | str) -> MSTDiff:
        self.denoiser.to(device)
        self.hybrid.to(device)
        return self

    def with_sampling(self, **options: Any) -> MSTDiff:
        """This model with other sampling options of ``model.hybrid`` (e.g. ``location_temperature``,
        ``unmask_order``) or ``model.pattern`` (``redraw_invalid``); the weights are shared. Unknown
        names are an :class:`InputError`."""
        if not options:
            return self
        check_sampling_options(options)
        hopts = {k: v for k, v in options.items() if k not in DayPatternConfig.SAMPLING}
        popts = {k: v for k, v in options.items() if k in DayPatternConfig.SAMPLING}
        hcfg = dataclasses.replace(self.hybrid.config, **hopts)
        hybrid = HybridDiffusion(self.hybrid.gaussian, self.hybrid.discrete, hcfg,
                                 activity=self.hybrid.activity)
        pattern = (from_dict(DayPatternConfig, {**to_dict(self.config.pattern), **popts}, where="sampling",
                             prefix="model.pattern.") if popts else self.config.pattern)
        config = dataclasses.replace(self.config, hybrid=hcfg, pattern=pattern)
        return MSTDiff(self.denoiser, hybrid, self.scaler, config, assigner=self.assigner)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator, device: torch.device | str | None = None,
        progress: bool = False,
        on_step: Callable[[], None] | None = None,
        impute: Any = None,
        guide: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 2 for ``n`` samples: traffic ``(n, T)`` float32 ≥ 0 and station ids ``(n, T)``.

        ``impute``: the conditioning hook of :meth:`HybridDiffusion.sample`
        (:func:`mstdiff.conditional.make_imputer`); for conditional generation use
        :meth:`generate_conditional` or :func:`mstdiff.conditional.sample_conditional`; ``guide``:
        ``impute`` gives locations, weighted by the sampling option ``condition_weight``."""
        T = self.config.denoiser.seq_len
        out = self.hybrid.sample(self.denoiser, n, T, generator, device=device, progress=progress,
                                 on_step=on_step, impute=impute, guide=guide)
        l0_tok = out.l0
        pattern = self.config.pattern
        if self.assigner is not None and pattern.tokens == "moves" and (pattern.redraw_invalid
                                                                        or pattern.gibbs_sweeps):
            l0_tok = self._redraw_invalid(l0_tok, generator)
        l0 = l0_tok.cpu().numpy().astype(np.int32)
        if self.assigner is not None:  # l0 holds tokens of day patterns: draw their stations
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            l0 = self.assigner.assign(self.config.pattern.decode(l0), np.random.default_rng(seed))
        if not self.config.denoiser.use_traffic:  # "MSTDiff without traffic": trajectories only
            return np.zeros(l0.shape, dtype=np.float32), l0
        x = idwt(out.w0)
        traffic = (self.scaler.decode(x) if out.a0 is None
                   else self.scaler.decode_with_activity(x, out.a0)).float().cpu().numpy()
        return traffic.astype(np.float32), l0

    def _redraw_invalid(self, tokens: Tensor, generator: torch.Generator) -> Tensor:
        """``model.pattern.redraw_invalid`` (and ``gibbs_sweeps`` first, :func:`gibbs_moves`): the
        day patterns' invalid move tokens drawn again from the network given the rest of each day
        (:func:`redraw_invalid_moves`), at the step whose share of masked slots is one slot in T."""
        T = tokens.shape[1]
        step = max(1, round(self.hybrid.num_steps / T))
        mask_id = getattr(self.hybrid.discrete, "mask_id", None)
        if mask_id is None:
            raise InputError("model.pattern.redraw_invalid needs the absorbing location process",
                             where="sampling", fix="set redraw_invalid=false")
        was_training = self.denoiser.training
        self.denoiser.eval()

        def logits_fn(x: Tensor, rows: Tensor) -> Tensor:
            w = torch.zeros(x.shape, device=x.device)
            s = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
            return self.denoiser(w, x, s, rows=rows).logits

        try:
            if self.config.pattern.gibbs_sweeps:
                tokens = gibbs_moves(tokens, logits_fn, int(mask_id), self.config.pattern.gibbs_sweeps,
                                     generator=generator)
            return redraw_invalid_moves(tokens, logits_fn, int(mask_id), generator=generator)
        finally:
            self.denoiser.train(was_training)

    def generate(self, n: int | None = None, *, generator: torch.Generator, condition: Any = None,
                 device: torch.device | str | None = None, batch_size: int = 256,
                 progress: bool = False, reveal: str = "immediate") -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples in batches, or, with ``condition`` (an :class:`~mstdiff.conditional.Observed`),
        one sample per row of it: the observed traffic and locations are kept exactly and the rest is
        generated consistently with them (:mod:`mstdiff.conditional`)."""
        from mstdiff.conditional import Observed, sample_conditional

        dev = torch.device(device) if device is not None else next(self.denoiser.parameters()).device
        if condition is None:
            if n is None or n < 1:
                raise InputError(f"n = {n}: give the number of samples or a condition", where="generate")
            T = self.config.denoiser.seq_len
            z = np.zeros((n, T), dtype=bool)
            condition = Observed(np.zeros((n, T), np.float32), np.zeros((n, T), np.int64), z, z)
        return sample_conditional(self, condition, generator=generator, device=dev, batch_size=batch_size,
                                  progress=progress, reveal=reveal)

    def save(
        self, path: str | os.PathLike[str], *, transition_path: str | None, meta: dict[str, Any]
    ) -> None:
        save_checkpoint(path, {
            "kind": "mstdiff-model",
            "config": to_dict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.denoiser.state_dict().items()},
            "vqvae_config": (dataclasses.asdict(self.denoiser.vqvae.config)
                             if self.denoiser.vqvae is not None else None),
            "scaler": self.scaler.to_dict(),
            "transition_path": transition_path,
            "pattern_state": self.assigner.to_state() if self.assigner is not None else None,
            "meta": meta,
        })

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, discrete: Any = None,
             map_location: str | torch.device = "cpu") -> MSTDiff:
        """Rebuild from ``model.pt``; the transition is read from its recorded path unless given."""
        path = Path(path)
        if path.is_dir():
            path = path / "model.pt"
        fix = "point to the model.pt written by `mstdiff train`"
        payload = load_checkpoint(path, map_location, what="MSTDiff model file", fix=fix)
        if payload.get("kind") != "mstdiff-model":
            raise InputError("not an MSTDiff model file", where=str(path), fix=fix)
        missing = sorted({"config", "state_dict", "vqvae_config", "scaler"} - set(payload))
        if missing:
            raise InputError(f"MSTDiff model file without {missing}: written by an incompatible version",
                             where=str(path), fix="re-train it with this version (`mstdiff train`)")
        config = from_dict(ModelConfig, payload["config"], where=f"{path}:config")
        vqvae = None
        try:
            if payload["vqvae_config"] is not None:
                from mstdiff.models.vqvae import VQVAEConfig

                vqvae = VQVAE(VQVAEConfig(**payload["vqvae_config"]))
            denoiser = MSTDiffDenoiser(config.denoiser, vqvae)
            denoiser.load_state_dict(payload["state_dict"])
        except (RuntimeError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise InputError(f"the weights do not fit the model they describe ({first}): written by an "
                             "incompatible version, or damaged", where=str(path),
                             fix="re-train it with this version (`mstdiff train`)") from None
        assigner = None
        if config.pattern.enabled:
            if not payload.get("pattern_state"):
                raise InputError("a pattern model file without its station assigner", where=str(path),
                                 fix="re-train it with this version (`mstdiff train`)")
            assigner = StationAssigner.from_state(payload["pattern_state"], config.pattern)
        if discrete is None and config.location.process == "graph":
            discrete = load_transition(_resolve_relative(payload["transition_path"], path.parent))
        discrete = make_location_process(config.location, num_states=config.denoiser.num_stations,
                                         num_steps=config.gaussian.num_steps, graph=discrete)
        hybrid = HybridDiffusion(GaussianDiffusion(config.gaussian), discrete, config.hybrid,
                                 activity=activity_process(config))
        return cls(denoiser, hybrid, TrafficScaler.from_dict(payload["scaler"]), config,
                   assigner=assigner).to(map_location)


CALIBRATION_SEED_OFFSET = 104_729  # the calibration draws use train.seed + this (apart from generation)


@torch.no_grad()
def calibrate_decoder(model: MSTDiff, n: int, *, seed: int, device: torch.device | str,
                      batch_size: int = 256) -> TrafficScaler:
    """The model's scaler with its atom thresholds calibrated on ``n`` of its own samples.

    See :meth:`TrafficScaler.calibrate`: the zero and full-slot thresholds are the quantiles of
    the sampled (continuous) traffic at the training shares of both atoms.
    """
    if model.hybrid.activity is not None or not model.config.denoiser.use_traffic:
        return model.scaler  # the activity channel sets the atoms, or there is no traffic at all
    gen = torch.Generator(device=device).manual_seed(int(seed) + CALIBRATION_SEED_OFFSET)
    T = model.config.denoiser.seq_len
    parts = []
    for a in range(0, n, batch_size):
        out = model.hybrid.sample(model.denoiser, min(batch_size, n - a), T, gen, device=device)
        parts.append(idwt(out.w0).float().cpu())
    scaler = model.scaler.calibrate(torch.cat(parts))
    logger.info("traffic decoder calibrated on %d samples: zero at <= %.3g, full at >= %s",
                n, scaler.zero_threshold, scaler.full_threshold)
    return scaler


def _resolve_relative(p: str | None, base: Path) -> Path:
    if p is None:
        raise InputError("the model file records no transition process",
                         fix="pass the transition explicitly (discrete=...)")
    cand = Path(p)
    return cand if cand.is_absolute() else (base / cand)


def load_transition(path: str | os.PathLike[str]) -> Any:
    """Load a :class:`~mstdiff.diffusion.discrete.GraphTransition` written by ``mstdiff kg transition``."""
    from mstdiff.diffusion.discrete import GraphTransition

    path = Path(path)
    if path.is_dir():
        path = path / "transition.pt"
    if not path.exists():
        raise InputError("transition process not found", where=str(path),
                         fix="build it with `mstdiff kg transition`")
    return GraphTransition.load(path)


# ----------------------------------------------------------------------------- training

PATTERN_SEED_OFFSET = 15_485_863  # the label mappings of epoch e use this + 1000 · train.seed + e


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


@torch.no_grad()
def validation_loss(model: MSTDiffDenoiser, hybrid: HybridDiffusion, w0: Tensor, l0: Tensor,
                    cfg: TrainConfig, a0: Tensor | None = None) -> dict[str, float]:
    """Mean loss parts over up to ``val_batches`` batches with fixed noise (same every call)."""
    if w0.shape[0] == 0:
        return {}
    was = model.training
    model.eval()
    gen = torch.Generator(device=w0.device).manual_seed(cfg.seed + 7919)
    sums: dict[str, float] = {}
    nb = 0
    for b in range(min(cfg.val_batches, math.ceil(w0.shape[0] / cfg.batch_size))):
        sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        _, parts = training_loss(model, hybrid, w0[sl], l0[sl], gen, cfg.loss_weights,
                                 a0=None if a0 is None else a0[sl], activity_weight=cfg.activity_weight)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        nb += 1
    model.train(was)
    return {f"val_{k}": v / nb for k, v in sums.items()}


def activity_process(config: ModelConfig) -> AbsorbingProcess | None:
    """The slot activity stream of a model config (an absorbing process over its K classes), or None."""
    K = config.denoiser.activity_classes
    return AbsorbingProcess(K, config.gaussian.num_steps) if K else None


def has_traffic(ds: PreparedDataset) -> bool:
    """Whether ``ds`` holds traffic (a dataset of trajectories only, such as GeoLife, does not)."""
    flag = getattr(ds, "has_traffic", None)
    return bool(flag) if flag is not None else bool(ds.meta.get("has_traffic", True))


def trajectory_only_if_needed(config: ModelConfig, train: PreparedDataset, *,
                              log: bool = True) -> ModelConfig:
    """``config`` as "MSTDiff without traffic" when the training set has no traffic (or the config
    asks for it): no traffic stream input, no VQ-VAE, no activity channel."""
    d = config.denoiser
    if has_traffic(train) and d.use_traffic:
        return config
    if log and d.use_traffic:
        logger.info("the training set has no traffic: MSTDiff without traffic (trajectory branch alone)")
    if log and (d.use_vqvae or config.activity):
        logger.info("no traffic: the VQ-VAE and the slot activity channel are off")
    return dataclasses.replace(config, activity=False, denoiser=dataclasses.replace(
        d, use_traffic=False, use_vqvae=False, activity_classes=0))


def station_coordinates(ds: PreparedDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lat, lon)`` of the station table, or None when it has no coordinates."""
    st = ds.stations
    if "lat" not in st or "lon" not in st:
        return None
    return st["lat"].to_numpy(dtype=np.float64), st["lon"].to_numpy(dtype=np.float64)


def build_model(config: ModelConfig, discrete: Any, vqvae: VQVAE | None, *, seed: int,
                station_embeddings: Tensor | None = None,
                station_coords: tuple[np.ndarray, np.ndarray] | None = None,
                ) -> tuple[MSTDiffDenoiser, HybridDiffusion]:
    if config.denoiser.num_stations != discrete.num_states:
        raise InputError(
            f"denoiser num_stations = {config.denoiser.num_stations} but the transition process has "
            f"{discrete.num_states} states", fix="build the transition from the same prepared dataset")
    discrete = make_location_process(config.location, num_states=discrete.num_states,
                                     num_steps=config.gaussian.num_steps, graph=discrete)
    mask = getattr(discrete, "mask_id", None) is not None
    if config.denoiser.mask_token != mask:
        config = dataclasses.replace(config, denoiser=dataclasses.replace(config.denoiser, mask_token=mask))
    gen = torch.Generator().manual_seed(seed)
    denoiser = MSTDiffDenoiser(config.denoiser, vqvae if config.denoiser.use_vqvae else None,
                               station_embeddings=station_embeddings, generator=gen)
    if station_coords is not None:
        denoiser.set_station_coordinates_(*station_coords)
    hybrid = HybridDiffusion(GaussianDiffusion(config.gaussian), discrete, config.hybrid,
                             activity=activity_process(config))
    return denoiser, hybrid


def train_mstdiff(
    train: PreparedDataset,
    val: PreparedDataset | None,
    *,
    discrete: Any,
    vqvae: VQVAE | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | os.PathLike[str],
    transition_path: str | None = None,
    station_embeddings: Tensor | None = None,
    resume: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train MSTDiff (Algorithm 1) and write ``model.pt`` (EMA weights) into ``out_dir``.

    With ``resume=True`` and a ``checkpoint.pt`` in ``out_dir``, training continues exactly where it
    stopped. Ctrl-C writes a checkpoint before stopping, so nothing is lost. ``callback(step, parts)``
    is called after every optimiser step with the detached loss parts (means over the global batch).

    Under ``torchrun --nproc_per_node K`` (or inside a process group the caller initialised) every
    process runs this function: the denoiser is wrapped in DistributedDataParallel, each rank trains
    on its chunk of every global batch, and only rank 0 writes files, validates and shows progress
    (:mod:`mstdiff.training.distributed`). With K = 1 the result equals a plain run's bit for bit.
    """
    check_output_dir(out_dir, reuse=True)  # a file, a read-only or a full disk fails before any work
    ctx, device = distributed.setup(train_config.device)
    try:
        return _train(train, val, discrete=discrete, vqvae=vqvae, model_config=model_config,
                      cfg=train_config, out=Path(out_dir), transition_path=transition_path,
                      station_embeddings=station_embeddings, resume=resume, callback=callback,
                      ctx=ctx, device=device)
    finally:
        distributed.teardown(ctx)


def _train(
    train: PreparedDataset,
    val: PreparedDataset | None,
    *,
    discrete: Any,
    vqvae: VQVAE | None,
    model_config: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    transition_path: str | None,
    station_embeddings: Tensor | None,
    resume: bool,
    callback: Callable[[int, dict[str, float]], None] | None,
    ctx: distributed.DistContext,
    device: torch.device,
) -> TrainResult:
    K, rank, main = ctx.world_size, ctx.rank, ctx.is_main
    ckpt_path = out / "checkpoint.pt"
    distributed.check_batch_size(cfg.batch_size, K)
    problem = None
    if main and out.exists() and any(out.iterdir()) and not resume:
        problem = "training output directory is not empty"
    if distributed.broadcast_object(problem, ctx):  # rank 0 decides; every rank stops alike
        raise InputError("training output directory is not empty", where=str(out),
                         fix="pass --resume to continue it, or choose a new --out")
    if cfg.num_threads:
        set_threads(cfg.num_threads)  # torch, Numba and DuckDB alike
    scaler = TrafficScaler.for_dataset(train)
    model_config = trajectory_only_if_needed(model_config, train, log=main)
    pattern = model_config.pattern
    assigner: StationAssigner | None = None
    if pattern.enabled:  # the network learns day patterns over P labels; the assigner their stations
        check_pattern(model_config)
        pattern.validate_for(train.T)
        coords = station_coordinates(train)
        assigner = StationAssigner.fit(
            np.asarray(train.locations), train.n_stations, pattern,
            coords=None if coords is None else np.stack(coords, axis=1),
            graph=getattr(discrete, "rate", None))
        if main and station_embeddings is not None:
            logger.info("model.pattern: the station embeddings are not used (the network sees labels)")
        station_embeddings = None
    n_symbols = pattern.num_symbols(train.T) if pattern.enabled else train.n_stations
    discrete = make_location_process(model_config.location, num_states=n_symbols,
                                     num_steps=model_config.gaussian.num_steps,
                                     graph=None if pattern.enabled else discrete)
    model_config = dataclasses.replace(
        model_config,
        denoiser=dataclasses.replace(
            model_config.denoiser, num_stations=n_symbols, seq_len=train.T,
            mask_token=getattr(discrete, "mask_id", None) is not None,
            activity_classes=scaler.activity_classes if model_config.activity else 0),
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml({"model": model_config, "train": cfg}))

    w0, l0 = encode_series(train, scaler, device)
    wv, lv = encode_series(val, scaler, device) if val is not None else (w0[:0], l0[:0])
    labels: Tensor | None = None  # tokens "labels": each epoch maps them by fresh random injections
    if pattern.enabled:
        l0 = torch.from_numpy(pattern.encode(np.asarray(train.locations))).long().to(device)
        if val is not None:
            lv = torch.from_numpy(pattern.encode(np.asarray(val.locations))).long()
        if pattern.tokens == "labels":
            labels = l0
            if val is not None:  # one fixed mapping: the validation loss is comparable across epochs
                lv = permute_labels(lv, pattern.labels, torch.Generator().manual_seed(cfg.seed + 1))
        lv = lv.to(device)
    a0 = av = None
    if model_config.activity:  # slot activity classes of the real traffic (zero / partial / full)
        a0 = scaler.activity(torch.from_numpy(np.asarray(train.traffic, dtype=np.float32))).to(device)
        av = (scaler.activity(torch.from_numpy(np.asarray(val.traffic, dtype=np.float32))).to(device)
              if val is not None else a0[:0])
    denoiser, hybrid = build_model(model_config, discrete, vqvae, seed=cfg.seed,
                                   station_embeddings=station_embeddings,
                                   station_coords=None if pattern.enabled else station_coordinates(train))
    if cfg.station_prior > 0 and labels is None:  # (a resumed run then loads its own weights)
        denoiser.init_station_prior_(station_counts(l0.cpu().numpy(), n_symbols, cfg.station_prior_counts),
                                     cfg.station_prior)
    if model_config.denoiser.copy_nearest and model_config.denoiser.use_locations:
        denoiser.init_copy_context_(l0.cpu().numpy(), seed=cfg.seed)
    denoiser.to(device)
    hybrid.to(device)
    opt = torch.optim.AdamW(denoiser.optimizer_groups(
        cfg.weight_decay, None if cfg.station_lr == 1.0 else cfg.lr * cfg.station_lr), lr=cfg.lr)
    U, B = w0.shape[0], cfg.batch_size
    if U == 0:
        raise InputError("the training set is empty", where="train", fix="check the split fractions")
    per_epoch = math.ceil(U / B)
    total = min(cfg.epochs * per_epoch, cfg.max_steps or 10**12)  # optimiser steps in all
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, total, cfg.warmup_steps))
    ema = EMA(denoiser, cfg.ema_decay)
    # this rank's streams; rank 0 (and a single process) uses exactly seed + 1 and seed
    rseed = distributed.rank_seed(cfg.seed, rank)
    noise_gen = torch.Generator(device=device).manual_seed(rseed + 1)
    grad_scaler = (torch.amp.GradScaler(device.type)
                   if cfg.amp and device.type == "cuda" and needs_grad_scaler(device) else None)

    # position: the next batch to run is batch `batch` of epoch `epoch`
    step, epoch, batch = 0, 0, 0
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    rng_state: Tensor | None = None
    best: dict[str, Any] | None = None  # keep_best: {"epoch", "val_total", "state"} of the EMA weights
    if resume and ckpt_path.exists():
        restart = "delete it (and the rest of the directory) to train afresh, or choose a new --out"
        st = load_checkpoint(ckpt_path, device, what="training checkpoint", fix=restart)
        try:
            denoiser.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            ema.load_state_dict(st["ema"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputError(f"this checkpoint does not fit the model being trained ({first}): another "
                             "config or an incompatible version", where=str(ckpt_path), fix=restart) from None
        if grad_scaler is not None and st.get("grad_scaler"):
            grad_scaler.load_state_dict(st["grad_scaler"])
        streams = _rank_streams(st, rank, K)
        if streams is not None:
            noise_gen.set_state(streams["noise_gen"].cpu() if device.type == "cpu" else streams["noise_gen"])
            rng_state = streams["torch_rng"].cpu()
        if streams is None and rank == 1:
            saved = st.get("world_size", 1)
            why = (f"was written by {saved} process(es)" if saved != K
                   else "was written on an interrupt, with rank 0's streams only")
            logger.warning(
                "checkpoint %s %s: ranks 1..%d restart their noise and dropout streams from their "
                "seeds (training continues correctly, but not bit for bit like an uninterrupted run)",
                ckpt_path, why, K - 1)
        step, epoch, batch = st["step"], st["epoch"], st["batch"]
        history, running = st["history"], st["running"]
        best = st.get("best")
        if main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, step, epoch, batch)

    # the network as the loss calls it: DDP (any K), then torch.compile, then autocast
    net: Any = denoiser
    if ctx.active:
        def probe(m: torch.nn.Module) -> Tensor:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 104729)
            return training_loss(m, hybrid, w0[:2], l0[:2], g, cfg.loss_weights,
                                 a0=None if a0 is None else a0[:2], activity_weight=cfg.activity_weight)[0]

        unused = distributed.unused_parameters(denoiser, probe)
        if unused and main:
            logger.info("DDP: %d parameters get no gradient (%s...): find_unused_parameters on",
                        len(unused), ", ".join(unused[:3]))
        net = distributed.wrap_ddp(denoiser, device, find_unused_parameters=bool(unused))
    if cfg.compile:
        net = torch.compile(net)
    if cfg.amp:
        net = Autocast(net, device)

    def checkpoint(*, collective: bool = True) -> None:
        """Rank 0 writes; with K > 1 the ranks' random streams are gathered first (collective)."""
        mine = {"noise_gen": noise_gen.get_state(), "torch_rng": torch.get_rng_state()}
        streams = distributed.gather_objects(mine, ctx) if collective else None
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "model": denoiser.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "ema": ema.state_dict(), "noise_gen": mine["noise_gen"], "torch_rng": mine["torch_rng"],
            "rank_streams": streams if K > 1 else None, "world_size": K,
            "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            "step": step, "epoch": epoch, "batch": batch, "history": history, "running": running,
            "best": best,
        })

    def end_epoch() -> None:
        """Validate with the EMA weights (fixed noise; rank 0 only) and move to the next epoch."""
        nonlocal epoch, batch, best
        epoch, batch = epoch + 1, 0
        if not main:
            return
        vrec = validation_loss(cast(MSTDiffDenoiser, ema.shadow), hybrid, wv, lv, cfg, av)
        if vrec:
            history.append({"step": step, "epoch": epoch, **vrec})
            logger.info("epoch %d: %s", epoch, vrec)
            if cfg.keep_best and (best is None or vrec["val_total"] < best["val_total"]):
                best = {"epoch": epoch, "val_total": float(vrec["val_total"]),
                        "state": {k: v.detach().clone() for k, v in ema.shadow.state_dict().items()}}

    t0 = time.perf_counter()
    steps_at_start = step
    order, order_epoch = torch.empty(0, dtype=torch.long), -1
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (cfg.progress and main))
    with local_rng(rseed, rng_state):
        denoiser.train()
        try:
            while step < total:
                if batch == per_epoch:
                    end_epoch()
                    checkpoint()
                    continue
                if order_epoch != epoch:
                    order, order_epoch = _epoch_order(U, cfg.seed, epoch).to(device), epoch
                    if labels is not None:  # a function of (seed, epoch) alone: resume stays exact
                        g = torch.Generator().manual_seed(PATTERN_SEED_OFFSET + 1000 * cfg.seed + epoch)
                        l0 = permute_labels(labels.cpu(), pattern.labels, g).to(device)
                idx = order[batch * B:(batch + 1) * B]  # the global batch, the same on every rank
                loss, parts, n_local = _local_loss(net, hybrid, w0, l0, idx, noise_gen, cfg, ctx, a0)
                opt.zero_grad(set_to_none=True)
                if grad_scaler is not None:
                    grad_scaler.scale(loss).backward()
                    grad_scaler.unscale_(opt)
                else:
                    loss.backward()  # DDP: gradients averaged over the ranks here
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(denoiser.trainable_parameters(), cfg.grad_clip)
                if grad_scaler is not None:
                    grad_scaler.step(opt)
                    grad_scaler.update()
                else:
                    opt.step()
                sched.step()
                ema.update(denoiser)
                step, batch = step + 1, batch + 1
                values = _global_means(parts, n_local, int(idx.numel()), ctx)
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + v
                running["n"] = running.get("n", 0.0) + 1
                # the bar shows this step's loss (tqdm redraws at most a few times per second)
                bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)
                bar.update(1)
                if callback is not None:
                    callback(step, dict(values))
                if step % cfg.log_every == 0 or step == total:
                    n = running.pop("n")
                    rec = {"step": step, "epoch": epoch, "lr": float(sched.get_last_lr()[0]),
                           **{k: v / n for k, v in running.items()}}
                    history.append(rec)
                    running = {}
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
            if batch == per_epoch:  # the last epoch's validation
                end_epoch()
        except KeyboardInterrupt:
            if main:
                logger.warning("interrupted at step %d: writing %s (continue with --resume)", step, ckpt_path)
            # no collective here: the other ranks may be interrupted elsewhere (their streams restart)
            checkpoint(collective=K == 1)
            raise
        finally:
            bar.close()
        checkpoint()
    seconds = time.perf_counter() - t0
    done = step - steps_at_start
    sps = done * B / seconds if seconds > 0 else 0.0  # global samples (all ranks together)
    if main:
        if best is not None:
            ema.shadow.load_state_dict(best["state"])
            logger.info("keep_best: the EMA weights of epoch %d (val_total %.4f)", best["epoch"],
                        best["val_total"])
        ema.shadow.eval()
        bundle = MSTDiff(cast(MSTDiffDenoiser, ema.shadow), hybrid, scaler, model_config, assigner=assigner)
        if cfg.calibration_samples:
            bundle.scaler = calibrate_decoder(bundle, min(cfg.calibration_samples, U), seed=cfg.seed,
                                              device=device, batch_size=cfg.calibration_batch_size)
        meta = run_meta(stage="train", steps=step, epochs=epoch, samples_per_second=sps,
                        train_samples=U, val_samples=int(wv.shape[0]), device=str(device),
                        world_size=K, backend=ctx.backend, amp=cfg.amp, compile=cfg.compile,
                        trainable_parameters=denoiser.num_parameters(), peak_rss_mb=peak_rss_mb(),
                        seconds=seconds, best_epoch=best["epoch"] if best is not None else None)
        bundle.save(out / "model.pt", transition_path=transition_path, meta=meta)
        atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        write_json(out / "meta.json", meta)
    distributed.barrier(ctx)  # every rank returns once the outputs exist
    return TrainResult(out, step, history, seconds, sps, peak_rss_mb(), rank=rank, world_size=K)


def station_counts(locations: np.ndarray, n_stations: int, what: str = "slots") -> np.ndarray:
    """Visits per station of ``locations (U, T)``: every slot (``"slots"``) or the first slot of each
    stay (``"arrivals"``: slot 0 and every slot whose station differs from the one before)."""
    L = np.asarray(locations)
    if what == "slots":
        return np.bincount(L.ravel(), minlength=n_stations)
    if what != "arrivals":
        raise InputError(f"station counts {what!r}", fix="use 'slots' or 'arrivals'")
    first = np.ones(L.shape, dtype=bool)
    first[:, 1:] = L[:, 1:] != L[:, :-1]
    return np.bincount(L[first], minlength=n_stations)


def _rank_streams(st: dict[str, Any], rank: int, world_size: int) -> dict[str, Tensor] | None:
    """This rank's saved noise and dropout generator states, or None when the checkpoint lacks them."""
    if rank == 0:
        return {"noise_gen": st["noise_gen"], "torch_rng": st["torch_rng"]}
    streams = st.get("rank_streams")
    if streams is None or st.get("world_size", 1) != world_size:
        return None
    return streams[rank]


def _local_loss(
    net: Any, hybrid: HybridDiffusion, w0: Tensor, l0: Tensor, idx: Tensor, noise_gen: torch.Generator,
    cfg: TrainConfig, ctx: distributed.DistContext, a0: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor], int]:
    """This rank's loss on its chunk of the global batch ``idx``, its parts and the chunk size.

    The loss is the chunk mean, rescaled when a short last batch leaves unequal chunks, so that
    DDP's average over the ranks is the global-batch mean (a rank with an empty chunk runs one
    sample with weight 0, as DDP needs every rank in every backward pass).
    """
    if ctx.world_size == 1:
        loss, parts = training_loss(net, hybrid, w0[idx], l0[idx], noise_gen, cfg.loss_weights,
                                    a0=None if a0 is None else a0[idx], activity_weight=cfg.activity_weight,
                                    condition_rate=cfg.condition_rate)
        return loss, parts, int(idx.numel())
    mine = distributed.local_chunk(idx, ctx.rank, ctx.world_size)
    n_local = int(mine.numel())
    weight = distributed.chunk_weight(n_local, int(idx.numel()), ctx.world_size)
    if n_local == 0:
        mine = idx[:1]
    loss, parts = training_loss(net, hybrid, w0[mine], l0[mine], noise_gen, cfg.loss_weights,
                                a0=None if a0 is None else a0[mine], activity_weight=cfg.activity_weight,
                                condition_rate=cfg.condition_rate)
    return (loss * weight if weight != 1.0 else loss), parts, n_local


def _global_means(parts: dict[str, Tensor], n_local: int, n_global: int,
                  ctx: distributed.DistContext) -> dict[str, float]:
    """Loss parts as means over the global batch (chunk means weighted by chunk size, summed over ranks)."""
    if ctx.world_size == 1:
        return {k: float(v) for k, v in parts.items()}
    keys = list(parts)
    vec = torch.stack([parts[k].detach().double() for k in keys]) * n_local  # (P,)
    vec = distributed.all_reduce_sum(vec, ctx) / n_global
    return dict(zip(keys, vec.tolist()))


# ----------------------------------------------------------------------------- generation


def check_station_table(model: MSTDiff, like: PreparedDataset) -> None:
    """``like`` (whose station table generated samples use) has as many stations as ``model``."""
    if like.n_stations != model.n_stations:
        raise InputError(
            f"the station table has {like.n_stations} stations, the model {model.n_stations}",
            where="--like", fix="pass the dataset the model was trained on")


def generate(
    model: MSTDiff,
    like: PreparedDataset,
    n: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    source: str = "mstdiff",
) -> PreparedDataset:
    """Sample ``n`` series in batches, streamed to ``.npy`` files on disk (bounded memory).

    ``like`` supplies the station table. The output is a prepared dataset, so ``mstdiff evaluate``
    reads it like real data. Same seed and batch size → identical output.
    """
    if n <= 0:
        raise InputError(f"--n must be positive, got {n}", where="generate")
    dev = resolve_device(device)
    model.to(dev)
    T = model.config.denoiser.seq_len
    check_station_table(model, like)
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    with_traffic = model.config.denoiser.use_traffic  # "MSTDiff without traffic": no traffic.npy
    with atomic_dir(out, overwrite=overwrite) as tmp:
        traffic = (open_memmap(tmp / "traffic.npy", mode="w+", dtype=np.float32, shape=(n, T)) if with_traffic
                   else np.zeros((0, T), dtype=np.float32))
        locations = open_memmap(tmp / "locations.npy", mode="w+", dtype=np.int32, shape=(n, T))
        batches = -(-n // batch_size)
        # one tick per reverse diffusion step of every batch: the bar moves within a batch too
        with tqdm(total=batches * model.hybrid.num_steps, desc="generate", unit="step",
                  disable=not progress) as bar:
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                tr, lo = model.sample(k, generator=gen, device=dev, on_step=lambda: bar.update(1))
                if with_traffic:
                    traffic[start:start + k] = tr
                locations[start:start + k] = lo
                bar.set_postfix(samples=f"{start + k}/{n}")
        if isinstance(traffic, np.memmap):
            traffic.flush()
        locations.flush()
        seconds = time.perf_counter() - t0
        finite = all(np.isfinite(traffic[a:a + 16384]).all() for a in range(0, traffic.shape[0], 16384))
        if not finite:  # never commit an invalid set (checked in chunks: bounded memory)
            raise RuntimeError("generated traffic is not finite; the model or its scaler is broken")
        import pandas as pd

        like.stations.assign(station_id=like.stations["station_id"].astype(str)).to_parquet(
            tmp / "stations.parquet", index=False)
        pd.DataFrame({"user": [f"gen{i:07d}" for i in range(n)], "start": [""] * n}).to_parquet(
            tmp / "samples.parquet", index=False)
        write_json(tmp / "meta.json", run_meta(
            source=source, format_version=1, bin_minutes=like.bin_minutes, T=T,
            **({} if with_traffic else {"has_traffic": False}),
            traffic_unit=like.meta.get("traffic_unit", "unknown"),
            counts={"samples": n, "stations": like.n_stations},
            **({"normalisation": normalisation_stats(traffic)} if with_traffic else {}),
            generation={"seed": seed, "batch_size": batch_size, "device": str(dev), "seconds": seconds,
                        "samples_per_second": n / seconds if seconds > 0 else None,
                        "steps": model.hybrid.num_steps,
                        "location_input": model.config.hybrid.location_input,
                        "sampling": to_dict(model.config.hybrid),
                        "location_process": model.config.location.process},
            stations_from=like.meta.get("source"),
        ))
    logger.info("generated %d samples in %.1f s (%.2f samples/s)", n, seconds, n / max(seconds, 1e-9))
    return PreparedDataset.load(out)


# ----------------------------------------------------------------------------- VQ-VAE stage


def pretrain_vqvae_stage(
    train: PreparedDataset,
    out_dir: str | os.PathLike[str],
    config: Any = None,
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> VQVAE:
    """Pre-train the VQ-VAE on one coefficient set of the scaled training traffic (paper eq. 9).

    Writes ``vqvae.pt`` (config + weights + per-epoch history), ``history.json`` and ``meta.json``
    with the final codebook perplexity and dead-code count. Dead codes are logged as a warning.
    """
    from mstdiff.models.vqvae import VQVAEConfig, pretrain_vqvae
    from mstdiff.models.wavelet import scale_coeffs

    config = config or VQVAEConfig()
    if not has_traffic(train):
        raise InputError("the training set has no traffic: there is nothing for the VQ-VAE to encode",
                         where="pretrain-vqvae", fix="skip this stage: MSTDiff trains without traffic "
                         "(and without a VQ-VAE) on a dataset of trajectories only")
    dev = resolve_device(device)
    scaler = TrafficScaler.for_dataset(train)
    w0, _ = encode_series(train, scaler, dev)
    coeffs = scale_coeffs(w0, config.scale)  # (U, L)
    t0 = time.perf_counter()
    model, history = pretrain_vqvae(coeffs, config, seed=seed, device=dev, progress=progress)
    last = history[-1] if history else {}
    if last.get("dead_codes", 0):
        logger.warning("VQ-VAE: %d of %d codes unused in the last epoch (perplexity %.1f)",
                       last["dead_codes"], config.num_codes, last.get("perplexity", float("nan")))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_checkpoint(tmp / "vqvae.pt", history=history)
        write_json(tmp / "history.json", history)
        write_json(tmp / "meta.json", run_meta(
            stage="pretrain-vqvae", config=dataclasses.asdict(config), seed=seed, device=str(dev),
            train_samples=train.n_samples, seconds=time.perf_counter() - t0, final=last))
    return model
