"""DiffTraj-style trajectory generator: a continuous DDPM over (lat, lon) sequences.

Re-implemented from Zhu, Ye, Wang, Zhao & Yu, "DiffTraj: Generating GPS Trajectory with Diffusion
Probabilistic Model", NeurIPS 2023: a trajectory is the sequence of its points' coordinates, the
DDPM adds Gaussian noise to the whole sequence and a 1-D UNet (residual blocks with a diffusion-step
embedding, down- and up-sampling levels with skip connections, self-attention in the middle)
predicts ε. Here, on cellular data:

- a sample is the ``(lat, lon)`` of its station at every slot, ``(2, T)``, standardised per axis by
  the training points' mean and std (fitted);
- the model is unconditional (DiffTraj's "wide and deep" trip attributes, e.g. departure time and
  length, have no equivalent for a fixed window);
- after sampling, every point is **snapped to the nearest station** (``scipy.spatial.cKDTree`` on
  an equirectangular projection in km around the station table's centre), so the output is a
  station-index sequence like every other trajectory model's.

Schedule: the paper's linear 1e-4 .. 0.05 over 500 steps, shortened to 100 steps with the βs
scaled by 5 (keeps ``Σβ``, hence ``ᾱ_S``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._learned import DiffusionBaseline, DiffusionConfig, TrainConfig
from mstdiff.baselines.base import GeneratedSeries, positive, register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["DiffTraj", "DiffTrajConfig", "StationSnapper", "UNet1D"]

EARTH_KM_PER_DEG_LAT = 110.574
EARTH_KM_PER_DEG_LON = 111.320


@dataclass
class DiffTrajConfig:
    """DiffTraj-style trajectory baseline."""

    channels: int = 64  # base width of the UNet (a multiple of 8: GroupNorm with 8 groups)
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; len - 1 downsamplings
    res_blocks: int = 1  # residual blocks per level
    attention: bool = True  # self-attention block in the middle of the UNet
    dropout: float = 0.0  # dropout inside the residual blocks
    # noise schedule: the paper's 500 steps of 1e-4..0.05, shortened to 100 with the betas x 5
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        steps=100, beta_schedule="linear", beta_start=5e-4, beta_end=0.25))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4))  # optimisation

    def validate(self) -> None:
        where = "baselines.difftraj"
        positive(where, channels=self.channels, res_blocks=self.res_blocks)
        if self.channels % 8:
            raise InputError(f"channels = {self.channels} is not a multiple of 8", where=f"{where}.channels",
                             fix="use e.g. 32, 64 or 128 (GroupNorm uses 8 groups)")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise InputError(f"channel_mult = {self.channel_mult}", where=f"{where}.channel_mult",
                             fix="use positive integers, e.g. [1, 2, 2]")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout = {self.dropout}", where=f"{where}.dropout", fix="use [0, 1)")
        self.diffusion.validate(where)
        self.train.validate(where)


# ----------------------------------------------------------------------------- snapping
class StationSnapper:
    """Nearest station of any (lat, lon) point, by a k-d tree on projected coordinates.

    The projection is equirectangular in km around the centre ``(lat0, lon0)`` of the station
    table: ``x = (lon − lon0) · 111.32 · cos(lat0)``, ``y = (lat − lat0) · 110.574``; over a city its
    error is far below the spacing of stations.
    """

    def __init__(self, coords: np.ndarray) -> None:
        c = np.asarray(coords, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] == 0:
            raise InputError(f"station coordinates of shape {c.shape}", where="StationSnapper",
                             fix="pass an (N, 2) array of lat, lon")
        self.lat0 = float(0.5 * (c[:, 0].min() + c[:, 0].max()))
        self.lon0 = float(0.5 * (c[:, 1].min() + c[:, 1].max()))
        self.xy = self.project(c)
        self.tree = cKDTree(self.xy)

    def project(self, latlon: np.ndarray) -> np.ndarray:
        """``(..., 2)`` lat/lon degrees → ``(..., 2)`` x/y km."""
        ll = np.asarray(latlon, dtype=np.float64)
        x = (ll[..., 1] - self.lon0) * EARTH_KM_PER_DEG_LON * math.cos(math.radians(self.lat0))
        y = (ll[..., 0] - self.lat0) * EARTH_KM_PER_DEG_LAT
        return np.stack([x, y], axis=-1)

    def snap(self, latlon: np.ndarray) -> np.ndarray:
        """Index of the nearest station of every point, shape ``latlon.shape[:-1]``, int32."""
        ll = np.asarray(latlon, dtype=np.float64)
        flat = self.project(ll.reshape(-1, 2))
        flat = np.where(np.isfinite(flat), flat, 0.0)
        _, idx = self.tree.query(flat)
        return idx.astype(np.int32).reshape(ll.shape[:-1])


# ----------------------------------------------------------------------------- network
def _zero(layer: nn.Conv1d | nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        _zero(self.conv2)  # each block starts close to its skip path
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None]
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, c: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.attn = nn.MultiheadAttention(c, heads if c % heads == 0 else 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)  # (B, L, C)
        return x + self.attn(h, h, h, need_weights=False)[0].transpose(1, 2)


class UNet1D(nn.Module):
    """A small 1-D UNet ``net(x, s) -> ε̂`` for ``x`` ``(B, C_in, T)``; ``T`` divisible by
    ``2 ** (len(channel_mult) - 1)``."""

    def __init__(self, T: int, cfg: DiffTrajConfig, in_channels: int = 2) -> None:
        super().__init__()
        levels = len(cfg.channel_mult)
        if T % (2 ** (levels - 1)):
            raise InputError(f"T = {T} is not divisible by 2^{levels - 1}", where="baselines.difftraj",
                             fix="use fewer levels in channel_mult")
        ch = cfg.channels
        self.ch = ch
        emb = 4 * ch
        self.step_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.in_conv = nn.Conv1d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        c = ch
        for i, m in enumerate(cfg.channel_mult):
            for _ in range(cfg.res_blocks):
                self.down.append(_ResBlock(c, ch * m, emb, cfg.dropout))
                c = ch * m
                skips.append(c)
            if i < levels - 1:
                self.down.append(nn.Conv1d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = _ResBlock(c, c, emb, cfg.dropout)
        self.mid_attn: nn.Module = _Attention(c) if cfg.attention else nn.Identity()
        self.mid2 = _ResBlock(c, c, emb, cfg.dropout)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.res_blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), ch * m, emb, cfg.dropout))
                c = ch * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv1d(c, c, 3, padding=1)))
        self.out_norm = nn.GroupNorm(8, c)
        self.out_conv = nn.Conv1d(c, in_channels, 3, padding=1)
        _zero(self.out_conv)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        e = self.step_mlp(timestep_embedding(s, self.ch))  # (B, 4ch)
        h = self.in_conv(x)  # (B, ch, T)
        hs = [h]
        for mod in self.down:
            h = mod(h, e) if isinstance(mod, _ResBlock) else mod(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for mod in self.up:
            if isinstance(mod, _ResBlock):
                h = mod(torch.cat([h, hs.pop()], dim=1), e)
            else:
                h = mod(h)
        return self.out_conv(nn.functional.silu(self.out_norm(h)))  # (B, C_in, T)


# ----------------------------------------------------------------------------- baseline
@register_baseline
class DiffTraj(DiffusionBaseline):
    """DDPM over standardised (lat, lon) sequences with a 1-D UNet; points snapped to stations.

    Fitted: the UNet weights and the per-axis mean/std of the training points' coordinates.
    """

    name: ClassVar[str] = "difftraj"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = DiffTrajConfig
    _channels = 2

    def __init__(self, config: DiffTrajConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.coords: np.ndarray | None = None  # (N, 2) station lat/lon of the training set
        self.mean: np.ndarray | None = None  # (2,) lat/lon mean of the training points
        self.std: np.ndarray | None = None  # (2,) lat/lon std of the training points
        self.snapper: StationSnapper | None = None

    def _encode_train(self, train: PreparedDataset) -> np.ndarray:
        self.coords = train.coords
        pts = self.coords[train.locations]  # (U, T, 2)
        self.mean = pts.reshape(-1, 2).mean(axis=0)
        std = pts.reshape(-1, 2).std(axis=0)
        self.std = np.where(std > 1e-9, std, 1.0)
        self.snapper = StationSnapper(self.coords)
        return self._encode(train)

    def _encode(self, ds: PreparedDataset) -> np.ndarray:
        assert self.coords is not None and self.mean is not None and self.std is not None
        pts = self.coords[ds.locations]  # (U, T, 2)
        z = (pts - self.mean) / self.std
        return np.ascontiguousarray(z.transpose(0, 2, 1), dtype=np.float32)  # (U, 2, T)

    def _build_network(self, T: int) -> nn.Module:
        return UNet1D(T, self.config, in_channels=2)

    def _decode(self, x0: np.ndarray) -> GeneratedSeries:
        assert self.snapper is not None and self.mean is not None and self.std is not None
        latlon = x0.transpose(0, 2, 1).astype(np.float64) * self.std + self.mean  # (n, T, 2)
        return GeneratedSeries(locations=self.snapper.snap(latlon))

    def _extra_state(self) -> dict[str, Any]:
        assert self.coords is not None and self.mean is not None and self.std is not None
        return {"coords": self.coords, "mean": self.mean, "std": self.std}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.coords = np.asarray(state["coords"], dtype=np.float64)
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.std = np.asarray(state["std"], dtype=np.float64)
        self.snapper = StationSnapper(self.coords)
