"""DiT-1D: a diffusion transformer over the traffic series.

Re-implemented from Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023, for
one-dimensional series: the series ``(B, 1, T)`` is cut into ``T / p`` patches of ``p`` slots,
each linearly embedded and given a fixed sinusoidal position embedding; transformer blocks with
**adaLN-Zero** conditioning on the diffusion step (§3.2: the step embedding regresses a shift ``γ``,
scale ``β`` and gate ``α`` per block and sub-layer, the gate's regressor zero-initialised so that each
block starts as the identity); a final adaLN + linear layer (zero-initialised) maps each token back
to ``p`` values, which are un-patchified. ε-prediction with a fixed variance (the paper also learns
Σ; we do not). No class conditioning: the model is unconditional.

Block (``c`` = step embedding)::

    γ1, β1, α1, γ2, β2, α2 = Linear(SiLU(c))                     # zero-initialised
    x = x + α1 · Attn(LN(x) · (1 + β1) + γ1)
    x = x + α2 · MLP(LN(x) · (1 + β2) + γ2)

Schedule: the paper's linear 1e-4 .. 0.02 over 1000 steps, shortened to 100 steps with the βs
scaled by 1000 / 100 (the usual rescaling that keeps ``Σβ``, hence ``ᾱ_S``, about the same), so
sampling on a CPU is ten times cheaper. Traffic is scaled with
:class:`~mstdiff.data.scaling.TrafficScaler`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._learned import DiffusionConfig, TrafficDiffusionBaseline, TrainConfig
from mstdiff.baselines.base import positive, register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["DiT", "DiTConfig", "DiT1D"]


@dataclass
class DiTConfig:
    """DiT-1D traffic baseline (a DiT-S-like shape scaled down to short series)."""

    patch_size: int = 4  # slots per token; must divide T
    hidden: int = 128  # token width D
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP width / D
    step_freq_dim: int = 256  # sinusoidal size of the diffusion-step embedding (paper: 256)
    dropout: float = 0.0  # dropout in attention and MLP
    # noise schedule: the paper's 1000 steps of 1e-4..0.02, shortened to 100 with the betas x 10
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        steps=100, beta_schedule="linear", beta_start=1e-3, beta_end=0.2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4))  # optimisation

    def validate(self) -> None:
        where = "baselines.dit"
        positive(where, patch_size=self.patch_size, hidden=self.hidden, depth=self.depth, heads=self.heads,
                 mlp_ratio=self.mlp_ratio, step_freq_dim=self.step_freq_dim)
        if self.hidden % self.heads:
            raise InputError(f"hidden = {self.hidden} is not divisible by heads = {self.heads}",
                             where=f"{where}.heads", fix="make hidden a multiple of heads")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout = {self.dropout}", where=f"{where}.dropout", fix="use [0, 1)")
        self.diffusion.validate(where)
        self.train.validate(where)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class _DiTBlock(nn.Module):
    def __init__(self, D: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(D, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, D))
        self.ada = nn.Linear(D, 6 * D)  # applied to SiLU(c)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(nn.functional.silu(c)).chunk(6, dim=1)  # each (B, D)
        h = _modulate(self.norm1(x), sh1, sc1)
        x = x + g1[:, None, :] * self.attn(h, h, h, need_weights=False)[0]
        x = x + g2[:, None, :] * self.mlp(_modulate(self.norm2(x), sh2, sc2))
        return x


class DiT1D(nn.Module):
    """Patchify → adaLN-Zero transformer blocks → final adaLN layer → unpatchify: ``net(x, s) -> ε̂``."""

    def __init__(self, T: int, cfg: DiTConfig, in_channels: int = 1) -> None:
        super().__init__()
        p, D = cfg.patch_size, cfg.hidden
        if T % p:
            raise InputError(f"patch_size = {p} does not divide T = {T}", where="baselines.dit.patch_size",
                             fix="use a divisor of T, e.g. 4 or 8")
        self.p, self.C, self.n_tok = p, in_channels, T // p
        self.freq_dim = cfg.step_freq_dim
        self.embed = nn.Linear(p * in_channels, D)
        pos = timestep_embedding(torch.arange(self.n_tok), D)[None]  # (1, T/p, D) fixed
        self.pos: torch.Tensor
        self.register_buffer("pos", pos, persistent=False)
        self.step_in = nn.Linear(cfg.step_freq_dim, D)  # step MLP: Linear, SiLU, Linear
        self.step_out = nn.Linear(D, D)
        self.blocks = nn.ModuleList(_DiTBlock(D, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(D, 2 * D)  # applied to SiLU(c)
        self.final = nn.Linear(D, p * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        lins: list[nn.Linear] = [self.final_ada, self.final]
        lins += [blk.ada for blk in self.blocks if isinstance(blk, _DiTBlock)]
        for lin in lins:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.step_in.weight, std=0.02)
        nn.init.normal_(self.step_out.weight, std=0.02)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        tok = x.reshape(B, C, self.n_tok, self.p).permute(0, 2, 3, 1).reshape(B, self.n_tok, self.p * C)
        h = self.embed(tok) + self.pos  # (B, T/p, D)
        c = self.step_out(nn.functional.silu(self.step_in(timestep_embedding(s, self.freq_dim))))  # (B, D)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(nn.functional.silu(c)).chunk(2, dim=1)
        out = self.final(_modulate(self.final_norm(h), shift, scale))  # (B, T/p, p*C)
        return out.reshape(B, self.n_tok, self.p, C).permute(0, 3, 1, 2).reshape(B, C, T)


@register_baseline
class DiT(TrafficDiffusionBaseline):
    """DiT-1D unconditional DDPM over the (log-scaled, standardised) traffic series.

    Fitted: the network weights and the :class:`TrafficScaler` of the training set.
    """

    name: ClassVar[str] = "dit"
    config_class: ClassVar[type[Any]] = DiTConfig

    def _encode_train(self, train: PreparedDataset) -> np.ndarray:
        if train.T % self.config.patch_size:
            raise InputError(f"patch_size = {self.config.patch_size} does not divide T = {train.T}",
                             where="baselines.dit.patch_size", fix="use a divisor of T, e.g. 4 or 8")
        return super()._encode_train(train)

    def _build_network(self, T: int) -> nn.Module:
        return DiT1D(T, self.config)

