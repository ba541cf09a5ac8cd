"""ADAPTIVE: a feature-enhanced GAN conditioned on station representations, with cross-city alignment.

Re-implemented from Jin et al., "Deep Transfer Learning for City-scale Cellular Traffic Generation
through Urban Knowledge Graph" (ADAPTIVE, KDD 2023), from its published description: base-station
representations (from an urban knowledge graph) are **aligned between a source city and a target
city**, a **feature-enhanced GAN** is trained on the source city's traffic and station
representations, and the aligned target representations are fed to it to generate the target
city's traffic. The paper generates per-station series; our benchmark generates per-user series, so
here the generator is conditioned on the representation of **the station where the user is, slot by
slot, along a trajectory**. The trajectory is an input:

- with :meth:`ADAPTIVE.generate` (``"adaptive"`` alone): training trajectories of the target city,
  resampled with replacement (``trajectory_source = "train"``, real trajectories);
- in a pair (``"adaptive+markov"``, ``"adaptive+replay"``): the trajectory model's generated
  locations, given to :meth:`ADAPTIVE.generate_given`, so traffic and trajectory are **coupled** in
  that pair (not independent as in the other pairs); ``replay`` draws real training trajectories.

Station features ``F`` (``(N, d)``, each column standardised within its city), ``features =``:

- ``"embeddings"``: a station-embedding file (``.npy``, one row per station of the prepared data,
  e.g. ``RUN/embed/station_embeddings.npy`` of the TuckER stage), given as ``embeddings``;
- ``"poi"``: the station table's ``poi_*`` count columns (``log1p``) plus coordinates;
- ``"coords"``: latitude and longitude only;
- ``"auto"`` (default): embeddings if a file is given, else POI columns if the table has them,
  else coordinates.

Generator ``G(z, l)`` (``e_t = E(F[l_t])``, ``E`` a two-layer MLP station encoder; ``p_t`` the
slot-position embedding; ``z_g`` per sample, ``z_t`` per slot)::

    h_t = W_in [z_t, p_t, e_t, z_g]                               # (B, T, H)
    h_t = h_t ⊙ (1 + γ(e_t)) + β(e_t)                             # feature enhancement (FiLM)
    h   = BiLSTM(h)                                               # temporal dynamics
    x_t = W_out [h_t, e_t] + b(e_t, p_t)                          # b: station × time-of-day base level

Critic: the convolutional WGAN-GP critic of :mod:`mstdiff.baselines._gan` with the critic's own
linear projection of ``F[l_t]`` as extra input channels (a conditional critic). Loss: WGAN-GP (the
paper's adversarial loss is a standard GAN objective; WGAN-GP is our stable choice on two cores).

**Cross-city alignment** (option ``source``: a second prepared dataset directory): the GAN is
trained on the *source* city's series and station features only (the paper's setting: the target
city has no traffic); before that, an affine map ``A(f) = W f + b`` of the target features onto the
source features is learned by minimising the squared maximum mean discrepancy (Gretton et al.
2012, RBF kernels at several bandwidths) between ``A(F_target)`` and ``F_source`` plus
``align_reg · ‖W − I‖²``, and generation uses ``A(F_target)``. The paper aligns learned KG
representations with its own adversarial/contrastive objectives; MMD on the features is the
standard domain-alignment option, and what we document here. Both cities need the same feature
kind and width (POI columns, or embeddings of one dimension) and the same traffic unit; the decoder
is fitted on the source traffic (the only traffic seen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._gan import Critic, GANBaseline, GANTrainConfig
from mstdiff.baselines.base import GeneratedSeries, one_of, positive, register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["ADAPTIVE", "ADAPTIVEConfig", "AdaptiveGenerator", "align_features", "mmd2", "station_features"]

FEATURE_KINDS = ("auto", "embeddings", "poi", "coords")


@dataclass
class ADAPTIVEConfig:
    """ADAPTIVE traffic baseline: station-feature-conditioned WGAN-GP, optional cross-city source."""

    features: str = "auto"  # auto | embeddings | poi | coords (module docstring)
    # station-embedding .npy of the training (target) city, one row per station; "run": the embed
    # stage of the `mstdiff benchmark` run directory (RUN/embed/station_embeddings.npy)
    embeddings: str | None = None
    source: str | None = None  # prepared dataset directory of a source city: train there, align, transfer
    source_embeddings: str | None = None  # station-embedding .npy of the source city (features = embeddings)
    align_steps: int = 300  # Adam steps of the feature alignment (source only)
    align_lr: float = 1e-2  # its learning rate
    align_reg: float = 1e-2  # weight of ‖W − I‖² in the alignment loss
    feature_dim: int = 32  # station encoder output e_t
    latent_dim: int = 16  # per-sample latent z_g
    slot_noise_dim: int = 8  # per-slot noise z_t
    hidden: int = 64  # BiLSTM width (H/2 per direction)
    time_dim: int = 16  # slot-position embedding size
    critic_width: int = 64  # channels of the critic's first convolution
    critic_feature_dim: int = 8  # channels of the critic's projection of the station features
    train: GANTrainConfig = field(default_factory=GANTrainConfig)  # WGAN-GP optimisation

    def validate(self) -> None:
        where = "baselines.adaptive"
        one_of(where, "features", self.features, FEATURE_KINDS)
        positive(where, align_steps=self.align_steps, align_lr=self.align_lr, feature_dim=self.feature_dim,
                 latent_dim=self.latent_dim, slot_noise_dim=self.slot_noise_dim, hidden=self.hidden,
                 time_dim=self.time_dim, critic_width=self.critic_width,
                 critic_feature_dim=self.critic_feature_dim)
        if self.hidden % 2:
            raise InputError(f"hidden = {self.hidden} must be even", where=f"{where}.hidden")
        if self.align_reg < 0:
            raise InputError(f"align_reg = {self.align_reg}", where=f"{where}.align_reg", fix="use >= 0")
        if self.features == "embeddings" and not self.embeddings:
            raise InputError("features = 'embeddings' needs an embeddings file", where=f"{where}.embeddings",
                             fix="set embeddings to RUN/embed/station_embeddings.npy, or use features: auto")
        if self.source_embeddings and not self.source:
            raise InputError("source_embeddings is set without a source", where=f"{where}.source_embeddings",
                             fix="set source to the source city's prepared dataset, or drop it")
        self.train.validate(where)


# ----------------------------------------------------------------------------- station features
def _standardise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    sd = f.std(axis=0)
    return ((f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def station_features(ds: PreparedDataset, kind: str = "auto", embeddings: str | None = None,
                     *, where: str = "baselines.adaptive") -> tuple[np.ndarray, str]:
    """Per-station features ``(N, d)`` float32, each column standardised within ``ds``; returns
    ``(features, kind used)``. See the module docstring for the kinds."""
    one_of(where, "features", kind, FEATURE_KINDS)
    poi_cols = [c for c in ds.stations.columns if str(c).startswith("poi_")]
    if kind == "auto":
        kind = "embeddings" if embeddings else ("poi" if poi_cols else "coords")
    if kind == "embeddings":
        if not embeddings:
            raise InputError("no embeddings file given", where=f"{where}.embeddings",
                             fix="set embeddings to RUN/embed/station_embeddings.npy")
        path = Path(embeddings)
        if not path.is_file():
            raise InputError("station-embedding file not found", where=f"{where}.embeddings: {path}",
                             fix="run the embed stage first (mstdiff run / benchmark writes RUN/embed/)")
        emb = np.load(path, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] != ds.n_stations:
            raise InputError(f"embeddings of shape {emb.shape} for {ds.n_stations} stations",
                             where=f"{where}.embeddings: {path}",
                             fix="use the embed stage output of the same prepared dataset (row per station)")
        return _standardise(emb), kind
    coords = ds.stations[["lat", "lon"]].to_numpy(dtype=np.float64)
    if kind == "poi":
        if not poi_cols:
            raise InputError("the station table has no poi_* columns", where=f"{where}.features",
                             fix="use features: coords or embeddings")
        pois = np.log1p(ds.stations[poi_cols].to_numpy(dtype=np.float64))
        return _standardise(np.concatenate([pois, coords], axis=1)), kind
    return _standardise(coords), kind


def mmd2(x: torch.Tensor, y: torch.Tensor,
         bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Biased squared MMD of samples ``x (n, d)`` and ``y (m, d)`` with a sum of RBF kernels
    ``exp(−‖a − b‖² / (2 h² d))`` (bandwidths relative to the feature dimension)."""
    d = x.shape[1]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-sq / (2 * h * h * d)) for h in bandwidths)  # type: ignore[return-value]

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def align_features(source: np.ndarray, target: np.ndarray, *, steps: int = 300, lr: float = 1e-2,
                   reg: float = 1e-2, seed: int = 0, max_points: int = 1024) -> dict[str, Any]:
    """Affine map ``W f + b`` of ``target`` features onto ``source`` features minimising
    ``MMD²(A(target), source) + reg ‖W − I‖²`` (Adam, full batch on at most ``max_points`` rows
    of each, drawn with ``seed``). Returns ``W``, ``b``, the aligned target features and the MMD²
    before and after."""
    if source.shape[1] != target.shape[1]:
        raise InputError(f"source features have {source.shape[1]} columns, target {target.shape[1]}",
                         where="baselines.adaptive.source",
                         fix="use one feature kind in both cities (POI columns, or embeddings of one size)")
    rng = np.random.default_rng(seed)

    def pick(f: np.ndarray) -> torch.Tensor:
        idx = rng.choice(f.shape[0], size=min(max_points, f.shape[0]), replace=False)
        return torch.from_numpy(np.asarray(f[np.sort(idx)], dtype=np.float32))

    src, tgt = pick(source), pick(target)
    d = source.shape[1]
    W = torch.eye(d, requires_grad=True)
    b = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    with torch.no_grad():
        before = float(mmd2(tgt, src))
    for _ in range(steps):
        loss = mmd2(tgt @ W.T + b, src) + reg * (W - torch.eye(d)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(mmd2(tgt @ W.T + b, src))
        aligned = (torch.from_numpy(np.asarray(target, dtype=np.float32)) @ W.T + b).numpy()
    return {"W": W.detach().numpy(), "b": b.detach().numpy(), "aligned": aligned.astype(np.float32),
            "mmd2_before": before, "mmd2_after": after}


# ----------------------------------------------------------------------------- networks
class AdaptiveGenerator(nn.Module):
    """``G(B, l, g) -> (B, T)``: model-space traffic along station indices ``l (B, T)``."""

    def __init__(self, T: int, features: np.ndarray, cfg: ADAPTIVEConfig) -> None:
        super().__init__()
        self.T, self.Z, self.Zt = T, cfg.latent_dim, cfg.slot_noise_dim
        H, E = cfg.hidden, cfg.feature_dim
        self.features: torch.Tensor
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.float32), persistent=False)
        pos = timestep_embedding(torch.arange(T), cfg.time_dim)  # (T, E_t)
        self.pos: torch.Tensor
        self.register_buffer("pos", pos, persistent=False)
        d_f = int(features.shape[1])
        self.encoder = nn.Sequential(nn.Linear(d_f, E), nn.LeakyReLU(0.2), nn.Linear(E, E))
        self.inp = nn.Linear(cfg.slot_noise_dim + cfg.time_dim + E + cfg.latent_dim, H)
        self.film = nn.Linear(E, 2 * H)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.lstm = nn.LSTM(H, H // 2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(H + E, 1)
        self.base = nn.Sequential(nn.Linear(E + cfg.time_dim, H), nn.LeakyReLU(0.2), nn.Linear(H, 1))

    def set_features(self, features: np.ndarray) -> None:
        f = torch.as_tensor(features, dtype=torch.float32, device=self.features.device)
        if f.shape[1] != self.features.shape[1]:
            raise InputError(f"features of width {f.shape[1]}, the generator was built for "
                             f"{self.features.shape[1]}", where="AdaptiveGenerator.set_features")
        self.features = f

    def forward(self, B: int, idx: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        if idx is None:
            raise InputError("ADAPTIVE generates along a trajectory", where="AdaptiveGenerator",
                             fix="pass the station indices (B, T)")
        dev = self.pos.device
        zg = torch.randn((B, self.Z), generator=g).to(dev)
        zt = torch.randn((B, self.T, self.Zt), generator=g).to(dev)
        e = self.encoder(self.features[idx])  # (B, T, E)
        pos = self.pos.expand(B, -1, -1)
        h = self.inp(torch.cat([zt, pos, e, zg[:, None].expand(-1, self.T, -1)], -1))  # (B, T, H)
        gamma, beta = self.film(e).chunk(2, dim=-1)
        h, _ = self.lstm(h * (1 + gamma) + beta)  # (B, T, H)
        return (self.out(torch.cat([h, e], -1)) + self.base(torch.cat([e, pos], -1)))[..., 0]


class StationCritic(nn.Module):
    """``D(x, l)``: the convolutional critic with a projection of ``F[l_t]`` as extra channels."""

    def __init__(self, T: int, features: np.ndarray, cfg: ADAPTIVEConfig) -> None:
        super().__init__()
        self.features: torch.Tensor
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.float32), persistent=False)
        self.proj = nn.Linear(int(features.shape[1]), cfg.critic_feature_dim)
        self.critic = Critic(T, cond_dim=cfg.critic_feature_dim, width=cfg.critic_width)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        assert idx is not None
        return self.critic(x, self.proj(self.features[idx]))


# ----------------------------------------------------------------------------- the baseline
@register_baseline
class ADAPTIVE(GANBaseline):
    """ADAPTIVE (WGAN-GP): traffic along a trajectory, conditioned on the stations' features.

    Fitted: the generator (EMA weights) with the target city's (aligned) station features, the
    :class:`TrafficScaler` (calibrated atoms), the training trajectories (for :meth:`generate`) and,
    with a source city, the alignment map and its MMD² before/after.
    """

    name: ClassVar[str] = "adaptive"
    produces: ClassVar[frozenset[str]] = frozenset({"traffic"})
    config_class: ClassVar[type[Any]] = ADAPTIVEConfig
    conditions_on_locations: ClassVar[bool] = True  # a pair feeds it the trajectory model's locations

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._train_features: np.ndarray | None = None  # features of the city the GAN trains on
        self.target_features: np.ndarray | None = None  # features generation uses (aligned if transferred)
        self.trajectories: np.ndarray | None = None  # training trajectories of the target city (U, T)
        self.feature_kind: str | None = None
        self.alignment: dict[str, Any] | None = None

    def bind_run_dir(self, run_dir: str | Path) -> None:
        """Resolve ``embeddings: run`` to ``run_dir/embed/station_embeddings.npy`` (called by
        :func:`mstdiff.pipeline.run_benchmark` before fitting)."""
        if self.config.embeddings == "run":
            self.config.embeddings = str(Path(run_dir) / "embed" / "station_embeddings.npy")

    def _training_data(self, train: PreparedDataset) -> tuple[np.ndarray, np.ndarray | None]:
        cfg: ADAPTIVEConfig = self.config
        if cfg.embeddings == "run":
            raise InputError("embeddings: run is only resolved inside `mstdiff benchmark`",
                             where="baselines.adaptive.embeddings",
                             fix="give the path of a station_embeddings.npy (RUN/embed/ of a run)")
        target, kind = station_features(train, cfg.features, cfg.embeddings)
        self.feature_kind = kind
        self.trajectories = np.ascontiguousarray(train.locations, dtype=np.int32)
        if cfg.source is None:
            self.scaler = TrafficScaler.for_dataset(train)
            self._train_features = self.target_features = target
            self.alignment = None
            return self.scaler.encode(train.traffic), train.locations
        src = PreparedDataset.load(cfg.source)
        if src.T != train.T or src.bin_minutes != train.bin_minutes:
            raise InputError(f"source city has T = {src.T} of {src.bin_minutes} min, target T = {train.T} "
                             f"of {train.bin_minutes} min", where="baselines.adaptive.source",
                             fix="prepare both cities with the same window and bin size")
        units = (str(src.meta.get("traffic_unit")), str(train.meta.get("traffic_unit")))
        if units[0] != units[1]:
            raise InputError(f"source traffic is in {units[0]}, target in {units[1]}",
                             where="baselines.adaptive.source",
                             fix="use two cities with the same traffic unit")
        if kind == "embeddings" and not cfg.source_embeddings:
            raise InputError("the target uses embeddings but no source_embeddings file is given",
                             where="baselines.adaptive.source_embeddings",
                             fix="give the source city's station embeddings, or use POI/coordinate features")
        source_f, _ = station_features(src, kind, cfg.source_embeddings)
        al = align_features(source_f, target, steps=cfg.align_steps, lr=cfg.align_lr, reg=cfg.align_reg,
                            seed=cfg.train.seed)
        logger.info("adaptive: aligned %d target stations onto %d source stations (MMD² %.4f → %.4f)",
                    target.shape[0], source_f.shape[0], al["mmd2_before"], al["mmd2_after"])
        self.alignment = {k: al[k] for k in ("W", "b", "mmd2_before", "mmd2_after")}
        self.alignment["source"] = str(cfg.source)
        self.alignment["source_samples"] = int(src.n_samples)
        self._train_features, self.target_features = source_f, al["aligned"]
        self.scaler = TrafficScaler.for_dataset(src)
        return self.scaler.encode(src.traffic), src.locations

    def _build_networks(self, T: int) -> tuple[nn.Module, nn.Module]:
        f = self._train_features if self._train_features is not None else self.target_features
        assert f is not None
        return AdaptiveGenerator(T, f, self.config), StationCritic(T, f, self.config)

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> ADAPTIVE:
        if self.config.source is not None:
            val = None  # the validation split is of the target city; the GAN trains on the source
        super().fit(train, val=val, progress=progress)
        return self

    def _calibrate(self, train: PreparedDataset) -> None:
        # generation (and so calibration) runs on the target city's (aligned) features
        assert isinstance(self.generator, AdaptiveGenerator) and self.target_features is not None
        self.generator.set_features(self.target_features)
        super()._calibrate(train)

    def _monitor_condition(self, val: PreparedDataset) -> np.ndarray | None:
        return val.locations

    def _calibration_condition(self, n: int, seed: int) -> np.ndarray | None:
        return self._draw_trajectories(n, seed)

    def _draw_trajectories(self, n: int, seed: int) -> np.ndarray:
        assert self.trajectories is not None
        rng = np.random.default_rng(seed)
        return self.trajectories[rng.integers(0, self.trajectories.shape[0], size=n)]

    # ------------------------------------------------------------------ generation
    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        """Traffic along ``n`` training trajectories of the target city drawn with replacement
        (real trajectories; child seeds of ``seed`` for the draw and the noise)."""
        self._check_fitted()
        self._check_n(n)
        s_traj, s_noise = (int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(2))
        return self.generate_given(self._draw_trajectories(n, s_traj), seed=s_noise, progress=progress)

    def generate_given(self, locations: np.ndarray, *, seed: int, progress: bool = True) -> GeneratedSeries:
        """Traffic along the given trajectories ``(n, T)`` (station indices of the target city)."""
        self._check_fitted()
        loc = np.asarray(locations)
        if loc.ndim != 2 or loc.shape[1] != self.T:
            raise InputError(f"locations of shape {loc.shape}", where="adaptive.generate_given",
                             fix=f"pass station indices of shape (n, {self.T})")
        if loc.size and (loc.min() < 0 or loc.max() >= (self.n_stations or 0)):
            raise InputError(f"station indices outside 0..{(self.n_stations or 0) - 1}",
                             where="adaptive.generate_given",
                             fix="pass indices into the training station table")
        x = self._sample(int(loc.shape[0]), loc, seed, progress=progress)
        return GeneratedSeries(traffic=self._decode(x), locations=None)

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"target_features": self.target_features, "trajectories": self.trajectories,
                "feature_kind": self.feature_kind, "alignment": self.alignment}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.target_features = np.asarray(state["target_features"], dtype=np.float32)
        self._train_features = None
        self.trajectories = np.asarray(state["trajectories"], dtype=np.int32)
        self.feature_kind = state.get("feature_kind")
        self.alignment = state.get("alignment")
