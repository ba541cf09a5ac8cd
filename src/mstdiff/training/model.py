"""A trained MSTDiff: its config, how it is built, sampled (Algorithm 2), saved and loaded, and
generation to disk in bounded memory.

:class:`MSTDiff` bundles the denoiser (EMA weights), the hybrid process, the traffic scaler and, for
a day-pattern model, the station assigner; :func:`generate` streams its samples into a prepared
dataset. Training (Algorithm 1) is :mod:`mstdiff.training.mstdiff`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm.auto import tqdm

from mstdiff.config import from_dict, to_dict
from mstdiff.data.dataset import PreparedDataset, normalisation_stats
from mstdiff.data.scaling import TrafficScaler
from mstdiff.diffusion.absorbing import AbsorbingProcess
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.diffusion.location import LocationConfig, make_location_process
from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, run_meta, write_json
from mstdiff.models.day_pattern import (
    MOVE_TOKENS,
    DayPatternConfig,
    gibbs_moves,
    redraw_invalid_moves,
)
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.station_assigner import StationAssigner
from mstdiff.models.vqvae import VQVAE
from mstdiff.models.wavelet import dwt, idwt
from mstdiff.training.utils import (
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


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



def sampling_option_names() -> set[str]:
    """What a sampling option may name: a field of ``model.hybrid`` or one of ``model.pattern``'s
    :attr:`DayPatternConfig.SAMPLING`."""
    return {f.name for f in dataclasses.fields(HybridConfig)} | set(DayPatternConfig.SAMPLING)


def unknown_sampling_options(options: dict[str, Any]) -> tuple[list[str], str]:
    """The names of ``options`` that are no sampling option, and how to fix them."""
    known = sampling_option_names()
    return sorted(set(options) - known), (f"use fields of model.hybrid or model.pattern's "
                                          f"{list(DayPatternConfig.SAMPLING)}: {sorted(known)}")


def split_sampling_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as ``(model.hybrid's, model.pattern's)``."""
    pattern = {k: v for k, v in options.items() if k in DayPatternConfig.SAMPLING}
    return {k: v for k, v in options.items() if k not in pattern}, pattern


def check_sampling_options(options: dict[str, Any], where: str = "sampling") -> None:
    """Sampling options are fields of ``model.hybrid`` or the sampling fields of ``model.pattern``
    (:attr:`DayPatternConfig.SAMPLING`); anything else is an :class:`InputError`."""
    bad, fix = unknown_sampling_options(options)
    if bad:
        raise InputError(f"unknown sampling option(s) {bad}", where=where, fix=fix)


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
        hopts, popts = split_sampling_options(options)
        hcfg = dataclasses.replace(self.hybrid.config, **hopts)
        hybrid = HybridDiffusion(self.hybrid.gaussian, self.hybrid.discrete, hcfg,
                                 activity=self.hybrid.activity)
        pattern = (from_dict(DayPatternConfig, {**to_dict(self.config.pattern), **popts}, where="sampling",
                             prefix="model.pattern.") if popts else self.config.pattern)
        config = dataclasses.replace(self.config, hybrid=hcfg, pattern=pattern)
        return MSTDiff(self.denoiser, hybrid, self.scaler, config, assigner=self.assigner)

    def refit_assigner(self, train: PreparedDataset, *, graph: Any = None, **options: Any) -> MSTDiff:
        """This model with its station assigner fitted again on ``train`` with ``model.pattern``
        options of the assigner (``kernel``, ``move_smoothing``, ...; the network and its tokens
        unchanged, the weights shared): the assigner is counts of the training days, so another
        kernel or smoothing needs no new training. ``graph``: the transition's rate matrix, for
        stations without coordinates."""
        if self.assigner is None:
            raise InputError("this model draws its stations itself (model.pattern.enabled is false)",
                             where="refit_assigner", fix="use a day-pattern model")
        unknown = sorted(set(options) - set(DayPatternConfig.ASSIGNER))
        if unknown:
            raise InputError(f"{unknown} are not options of the station assigner", where="refit_assigner",
                             fix=f"use {list(DayPatternConfig.ASSIGNER)}")
        if train.n_stations != self.assigner.n_stations:
            raise InputError(f"the data has {train.n_stations} stations, the model "
                             f"{self.assigner.n_stations}", where="refit_assigner",
                             fix="refit on the training split of this model's data")
        pattern = from_dict(DayPatternConfig, {**to_dict(self.config.pattern), **options},
                            where="refit_assigner", prefix="model.pattern.")
        assigner = fit_assigner(train, pattern, graph=graph)
        config = dataclasses.replace(self.config, pattern=pattern)
        return MSTDiff(self.denoiser, self.hybrid, self.scaler, config, assigner=assigner)

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
                                 on_step=on_step, impute=impute, guide=guide, w0_clip=self.traffic_clip())
        l0_tok = out.l0
        pattern = self.config.pattern
        if self.assigner is not None and pattern.tokens in MOVE_TOKENS and (pattern.redraw_invalid
                                                                        or pattern.gibbs_sweeps):
            l0_tok = self._correct_moves(l0_tok, generator)
        l0 = l0_tok.cpu().numpy().astype(np.int32)
        if self.assigner is not None:  # l0 holds tokens of day patterns: draw their stations
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            l0 = self.assigner.assign(self.config.pattern.decode(l0), np.random.default_rng(seed))
        if not self.config.denoiser.use_traffic:  # "MSTDiff without traffic": trajectories only
            return np.zeros(l0.shape, dtype=np.float32), l0
        x = idwt(out.w0)
        decoded = (self.scaler.decode(x) if out.a0 is None
                   else self.scaler.decode_with_activity(x, out.a0, generator=generator))
        return decoded.float().cpu().numpy().astype(np.float32), l0

    def traffic_clip(self) -> Callable[[Tensor], Tensor] | None:
        """``model.hybrid.clip_traffic``: the map of predicted coefficients ``ŵ_0`` into the training
        range of the series (``idwt``, clamp to :meth:`TrafficScaler.model_range`, ``dwt``); None
        when the option is off or the model has no traffic."""
        if not (self.config.hybrid.clip_traffic and self.config.denoiser.use_traffic):
            return None
        lo, hi = self.scaler.model_range()
        return lambda w0: dwt(idwt(w0).clamp(lo, hi))

    def _correct_moves(self, tokens: Tensor, generator: torch.Generator) -> Tensor:
        """``model.pattern.redraw_invalid`` (and ``gibbs_sweeps`` first, :func:`gibbs_moves`): the
        day patterns' invalid move tokens drawn again from the network given the rest of each day
        (:func:`redraw_invalid_moves`), at the step at which one masked slot in T is most likely
        (:meth:`AbsorbingProcess.step_for_masked`, as the unmask order "single" scores its last slot)."""
        T = tokens.shape[1]
        discrete: Any = self.hybrid.discrete
        mask_id = getattr(discrete, "mask_id", None)
        assert mask_id is not None  # check_pattern: a pattern model diffuses with absorbing noise
        step = int(discrete.step_for_masked(torch.ones(1, dtype=torch.long), T)[0])
        was_training = self.denoiser.training
        self.denoiser.eval()

        def logits_fn(x: Tensor, rows: Tensor) -> Tensor:
            w = torch.zeros(x.shape, device=x.device)
            s = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
            return self.denoiser(w, x, s, rows=rows).logits

        try:
            if self.config.pattern.gibbs_sweeps:
                tokens = gibbs_moves(tokens, logits_fn, int(mask_id), self.config.pattern.gibbs_sweeps,
                                     generator=generator, back=self.config.pattern.back)
            return redraw_invalid_moves(tokens, logits_fn, int(mask_id), generator=generator,
                                        back=self.config.pattern.back)
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
        raw = payload["config"]
        if isinstance(raw.get("pattern"), dict) and "kernel" not in raw["pattern"]:
            # a file from before model.pattern.kernel: its assigner was fitted with the nearest kernel
            raw = {**raw, "pattern": {**raw["pattern"], "kernel": "nearest"}}
        config = from_dict(ModelConfig, raw, where=f"{path}:config")
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
                      batch_size: int = 256, values: bool = False) -> TrafficScaler:
    """The model's scaler calibrated on ``n`` of its own samples.

    Without an activity channel, its atom thresholds (:meth:`TrafficScaler.calibrate`): the zero
    and full-slot thresholds are the quantiles of the sampled (continuous) traffic at the training
    shares of both atoms. With one (the channel sets the atoms) and ``values``, the map of its
    class-1 values onto the training values between the atoms (:meth:`TrafficScaler.calibrate_values`).
    """
    if not model.config.denoiser.use_traffic:
        return model.scaler  # no traffic at all
    if model.hybrid.activity is not None and not values:
        return model.scaler  # the activity channel sets the atoms
    gen = torch.Generator(device=device).manual_seed(int(seed) + CALIBRATION_SEED_OFFSET)
    T = model.config.denoiser.seq_len
    parts = []
    for a in range(0, n, batch_size):
        out = model.hybrid.sample(model.denoiser, min(batch_size, n - a), T, gen, device=device,
                                  w0_clip=model.traffic_clip())
        x = idwt(out.w0).float().cpu()
        parts.append(x if out.a0 is None else x[out.a0.cpu() == 1])
    if model.hybrid.activity is not None:
        scaler = model.scaler.calibrate_values(torch.cat(parts))
        logger.info("traffic values calibrated on the active slots of %d samples", n)
        return scaler
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


def fit_assigner(train: PreparedDataset, pattern: DayPatternConfig, *, graph: Any = None) -> StationAssigner:
    """The station assigner of a day-pattern model, counted on ``train`` (its coordinates for the
    map kernel where it has them, else the neighbours of ``graph``)."""
    coords = station_coordinates(train)
    return StationAssigner.fit(np.asarray(train.locations), train.n_stations, pattern,
                               coords=None if coords is None else np.stack(coords, axis=1), graph=graph)



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
        with tqdm(total=batches * model.hybrid.sampling_calls(T), desc="generate", unit="step",
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
                        "sampling": {**to_dict(model.config.hybrid), **(
                            {k: getattr(model.config.pattern, k) for k in DayPatternConfig.SAMPLING}
                            if model.config.pattern.enabled else {})},
                        "location_process": model.config.location.process},
            stations_from=like.meta.get("source"),
        ))
    logger.info("generated %d samples in %.1f s (%.2f samples/s)", n, seconds, n / max(seconds, 1e-9))
    return PreparedDataset.load(out)

