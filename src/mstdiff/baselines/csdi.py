"""CSDI-style unconditional traffic generator.

Re-implemented from Tashiro, Song, Song & Ermon, "CSDI: Conditional Score-based Diffusion Models
for Probabilistic Time Series Imputation", NeurIPS 2021 (§4 and appendix: the denoising network,
a stack of residual layers à la DiffWave with a temporal transformer; quadratic β schedule, 50
steps, β from 1e-4 to 0.5). Here the model is **unconditional** (nothing is observed, every slot
is generated), with one feature (the traffic series), so:

- the *feature* transformer of CSDI (attention across the K features) is dropped: K = 1;
- the side information is the sinusoidal embedding of the slot position (time of day) only, with
  no conditional mask.

Network (``x`` ``(B, 1, T)``, step ``s``)::

    h = ReLU(Conv1x1(x))                                          # (B, C, T)
    e = SiLU(W2 SiLU(W1 emb(s)))                                  # diffusion-step embedding
    for each residual layer:
        y = h + W_e e                                             # add step embedding
        y = TransformerEncoderLayer over time(y)                  # temporal attention
        y = Conv1x1(y) + Conv1x1(side)                            # (B, 2C, T)
        y = sigmoid(y_gate) * tanh(y_filter)                      # gated activation
        res, skip = split(Conv1x1(y));  h = (h + res) / √2
    ε̂ = Conv1x1(ReLU(Conv1x1(Σ skip / √L)))                      # last layer zero-initialised

Traffic is scaled with :class:`~mstdiff.data.scaling.TrafficScaler` (log1p, standardise;
exact zeros restored on decoding).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._learned import DiffusionConfig, TrafficDiffusionBaseline, TrainConfig
from mstdiff.baselines.base import positive, register_baseline
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["CSDI", "CSDIConfig", "CSDINet"]


@dataclass
class CSDIConfig:
    """CSDI-style traffic baseline (defaults: the paper's, except where noted)."""

    channels: int = 64  # residual channels C (paper: 64)
    layers: int = 4  # residual layers (paper: 4)
    heads: int = 8  # attention heads of the temporal transformer (paper: 8)
    ff_dim: int = 64  # feed-forward width of the transformer layer (paper: 64)
    step_emb_dim: int = 128  # diffusion-step embedding size (paper: 128)
    time_emb_dim: int = 128  # side information: slot-position embedding size (paper: 128)
    dropout: float = 0.0  # dropout inside the transformer layers
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        steps=50, beta_schedule="quadratic", beta_start=1e-4, beta_end=0.5))  # paper: 50 quadratic
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation

    def validate(self) -> None:
        where = "baselines.csdi"
        positive(where, channels=self.channels, layers=self.layers, heads=self.heads, ff_dim=self.ff_dim,
                 step_emb_dim=self.step_emb_dim, time_emb_dim=self.time_emb_dim)
        if self.channels % self.heads:
            raise InputError(f"channels = {self.channels} is not divisible by heads = {self.heads}",
                             where=f"{where}.heads", fix="make channels a multiple of heads")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout = {self.dropout}", where=f"{where}.dropout", fix="use [0, 1)")
        self.diffusion.validate(where)
        self.train.validate(where)


class _ResidualLayer(nn.Module):
    def __init__(self, C: int, step_dim: int, side_dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.step_proj = nn.Linear(step_dim, C)
        self.time_layer = nn.TransformerEncoderLayer(
            d_model=C, nhead=heads, dim_feedforward=ff_dim, dropout=dropout, activation="gelu",
            batch_first=True)
        self.mid_proj = nn.Conv1d(C, 2 * C, 1)
        self.side_proj = nn.Conv1d(side_dim, 2 * C, 1)
        self.out_proj = nn.Conv1d(C, 2 * C, 1)

    def forward(self, h: torch.Tensor, side: torch.Tensor,
                e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = h + self.step_proj(e)[:, :, None]  # (B, C, T)
        y = self.time_layer(y.transpose(1, 2)).transpose(1, 2)  # attention over time
        y = self.mid_proj(y) + self.side_proj(side)  # (B, 2C, T); side is (1, E_t, T), broadcast
        gate, filt = y.chunk(2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filt)  # (B, C, T)
        res, skip = self.out_proj(y).chunk(2, dim=1)
        return (h + res) / math.sqrt(2.0), skip


class CSDINet(nn.Module):
    """The CSDI denoising network for one feature, unconditional: ``net(x, s) -> ε̂``."""

    def __init__(self, T: int, cfg: CSDIConfig, in_channels: int = 1) -> None:
        super().__init__()
        C = cfg.channels
        self.step_emb_dim = cfg.step_emb_dim
        self.in_proj = nn.Conv1d(in_channels, C, 1)
        self.step_mlp = nn.Sequential(
            nn.Linear(cfg.step_emb_dim, cfg.step_emb_dim), nn.SiLU(),
            nn.Linear(cfg.step_emb_dim, cfg.step_emb_dim), nn.SiLU())
        side = timestep_embedding(torch.arange(T), cfg.time_emb_dim).T[None]  # (1, E_t, T)
        self.side: torch.Tensor
        self.register_buffer("side", side, persistent=False)
        self.layers = nn.ModuleList(
            _ResidualLayer(C, cfg.step_emb_dim, cfg.time_emb_dim, cfg.heads, cfg.ff_dim, cfg.dropout)
            for _ in range(cfg.layers))
        self.skip_proj = nn.Conv1d(C, C, 1)
        self.out_proj = nn.Conv1d(C, in_channels, 1)
        nn.init.zeros_(self.out_proj.weight)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.in_proj(x))  # (B, C, T)
        e = self.step_mlp(timestep_embedding(s, self.step_emb_dim))  # (B, E)
        skips = torch.zeros_like(h)
        for layer in self.layers:
            h, skip = layer(h, self.side, e)  # side information (1, E_t, T), the same for every sample
            skips = skips + skip
        y = torch.relu(self.skip_proj(skips / math.sqrt(len(self.layers))))
        return self.out_proj(y)  # (B, 1, T)


@register_baseline
class CSDI(TrafficDiffusionBaseline):
    """CSDI-style unconditional DDPM over the (log-scaled, standardised) traffic series.

    Fitted: the network weights and the :class:`TrafficScaler` (mean/std of ``log1p`` traffic and
    the zero threshold) of the training set.
    """

    name: ClassVar[str] = "csdi"
    config_class: ClassVar[type[Any]] = CSDIConfig


    def _build_network(self, T: int) -> nn.Module:
        return CSDINet(T, self.config)

