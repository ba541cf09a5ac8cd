"""MSH-GAN: a GAN for individual users' mobile traffic series with a switch-mode generator group.

MSH-GAN is one of the traffic baselines of the MSTDiff paper. Re-implemented from the description
we had of it (the project's issue 15): individual behaviour is captured by a **BiLSTM plus
self-attention**, and group-level behaviour by a **switch-mode generator group** (a small set of
mode generators and a learned switch choosing among them per sample or per segment). The original
publication's text was not reachable from here; where the description is silent we took the
standard option, listed below, so this is "an MSH-GAN-style model", not a verified replica.

Generator ``G(z)``, for ``B`` samples of ``T`` slots (``z_g ~ N(0, I_Z)`` per sample,
``z_t ~ N(0, I_{Z_t})`` per slot, ``e_t`` the sinusoidal slot-position embedding)::

    # individual branch
    h_t = W_in [z_t, e_t, z_g]                                   # (B, T, H)
    h   = BiLSTM(h)                                              # (B, T, H), H/2 per direction
    h   = LN(h + MHA(h, h, h))                                   # self-attention over the day
    # group branch: K mode generators and a switch
    m_k = MLP_k(z_g)                            k = 1..K         # (B, T) each: one group pattern
    π   = softmax(W_s [z_g, mean_t h] / τ)                       # (B, S, K): per segment of T/S slots
    y_t = Σ_k π_{seg(t), k} m_{k, t}                             # the switched group series
    x_t = y_t + W_out [h_t, y_t]                                 # individual deviation on top

Choices where the description is silent (the standard options):

- **loss**: WGAN-GP (Gulrajani et al. 2017; λ = 10, n_critic = 5, Adam 2e-4 with β = (0.5, 0.9)),
  see :mod:`mstdiff.baselines._gan`; the critic is a 1-D convolutional network over the series,
  its first differences and the slot position (:class:`~mstdiff.baselines._gan.Critic`);
- **switch**: a soft switch (softmax with temperature ``τ``), one choice per segment of
  ``T / segments`` slots (``segments = 1``: one mode mixture per sample); a hard choice is not
  differentiable and the soft switch needs no gradient estimator (we did not try a hard,
  straight-through one). ``switch_entropy`` (a penalty on the batch-mean switch entropy being low)
  keeps the generator group from collapsing onto one mode;
- **modes**: ``K = 4`` mode generators, each a two-layer MLP of the sample latent;
- **data space**: series in the model space of the shared
  :class:`~mstdiff.data.scaling.TrafficScaler` (``(log1p(m) − μ)/σ``); generated series are decoded
  back to the data's domain (range, resolution, exact zeros and full slots), with the atoms
  calibrated on the trained generator's own samples like every learned traffic model here.

MSH-GAN generates traffic only; pair it with a trajectory model (``"mshgan+markov"``) for the
joint metrics (the two are then drawn independently).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._gan import Critic, GANBaseline, GANTrainConfig
from mstdiff.baselines.base import GeneratedSeries, positive, register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["MSHGAN", "MSHGANConfig", "MSHGenerator"]


@dataclass
class MSHGANConfig:
    """MSH-GAN traffic baseline (sizes for T = 48 user-days on a CPU)."""

    latent_dim: int = 32  # Z: per-sample latent z_g
    slot_noise_dim: int = 8  # Z_t: per-slot noise z_t
    hidden: int = 64  # H: width of the individual branch (BiLSTM: H/2 per direction)
    lstm_layers: int = 1  # BiLSTM layers
    heads: int = 4  # self-attention heads (must divide hidden)
    modes: int = 4  # K: mode generators of the switch-mode group
    mode_hidden: int = 64  # hidden width of each mode generator's MLP
    segments: int = 6  # S: switch choices per sample (each covers T/S slots; must divide T)
    switch_temperature: float = 1.0  # τ of the soft switch
    switch_entropy: float = 0.1  # weight of the penalty against the switch collapsing onto one mode
    time_dim: int = 16  # slot-position embedding size
    critic_width: int = 64  # channels of the critic's first convolution
    train: GANTrainConfig = field(default_factory=GANTrainConfig)  # WGAN-GP optimisation

    def validate(self) -> None:
        where = "baselines.mshgan"
        positive(where, latent_dim=self.latent_dim, slot_noise_dim=self.slot_noise_dim, hidden=self.hidden,
                 lstm_layers=self.lstm_layers, heads=self.heads, modes=self.modes,
                 mode_hidden=self.mode_hidden, segments=self.segments,
                 switch_temperature=self.switch_temperature, time_dim=self.time_dim,
                 critic_width=self.critic_width)
        if self.hidden % 2 or self.hidden % self.heads:
            raise InputError(f"hidden = {self.hidden} must be even and divisible by heads = {self.heads}",
                             where=f"{where}.hidden", fix="use e.g. hidden 64 with 4 heads")
        if self.switch_entropy < 0:
            raise InputError(f"switch_entropy = {self.switch_entropy}", where=f"{where}.switch_entropy",
                             fix="use a non-negative weight")
        self.train.validate(where)


class MSHGenerator(nn.Module):
    """``G(B, None, g) -> (B, T)`` model-space series; see the module docstring for the equations."""

    def __init__(self, T: int, cfg: MSHGANConfig) -> None:
        super().__init__()
        if T % cfg.segments:
            raise InputError(f"segments = {cfg.segments} does not divide T = {T}",
                             where="baselines.mshgan.segments", fix="use a divisor of T, e.g. 6 for T = 48")
        self.T, self.Z, self.Zt = T, cfg.latent_dim, cfg.slot_noise_dim
        self.segments, self.tau = cfg.segments, cfg.switch_temperature
        H = cfg.hidden
        pos = timestep_embedding(torch.arange(T), cfg.time_dim)  # (T, E_t)
        self.pos: torch.Tensor
        self.register_buffer("pos", pos, persistent=False)
        self.inp = nn.Linear(cfg.slot_noise_dim + cfg.time_dim + cfg.latent_dim, H)
        self.lstm = nn.LSTM(H, H // 2, num_layers=cfg.lstm_layers, batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(H, cfg.heads, batch_first=True)
        self.norm = nn.LayerNorm(H)
        self.modes = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.latent_dim, cfg.mode_hidden), nn.LeakyReLU(0.2),
                          nn.Linear(cfg.mode_hidden, T))
            for _ in range(cfg.modes))
        self.switch = nn.Linear(cfg.latent_dim + H, cfg.segments * cfg.modes)
        self.out = nn.Sequential(nn.Linear(H + 1, H), nn.LeakyReLU(0.2), nn.Linear(H, 1))
        self.last_switch: torch.Tensor | None = None  # π of the last call (B, S, K), for the entropy term

    def forward(self, B: int, idx: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        dev = self.pos.device
        zg = torch.randn((B, self.Z), generator=g).to(dev)  # (B, Z)
        zt = torch.randn((B, self.T, self.Zt), generator=g).to(dev)  # (B, T, Z_t)
        h = self.inp(torch.cat([zt, self.pos.expand(B, -1, -1), zg[:, None].expand(-1, self.T, -1)], -1))
        h, _ = self.lstm(h)  # (B, T, H)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])  # self-attention over the day
        m = torch.stack([mode(zg) for mode in self.modes], dim=1)  # (B, K, T)
        logits = self.switch(torch.cat([zg, h.mean(dim=1)], -1)).view(B, self.segments, -1)  # (B, S, K)
        pi = torch.softmax(logits / self.tau, dim=-1)
        self.last_switch = pi
        w = pi.repeat_interleave(self.T // self.segments, dim=1)  # (B, T, K)
        y = (w * m.transpose(1, 2)).sum(-1)  # (B, T) switched group series
        return y + self.out(torch.cat([h, y[..., None]], -1))[..., 0]


@register_baseline
class MSHGAN(GANBaseline):
    """MSH-GAN (WGAN-GP): BiLSTM + self-attention individual branch over a switch-mode generator group.

    Fitted: the generator (EMA weights) and the :class:`TrafficScaler` (calibrated atoms).
    """

    name: ClassVar[str] = "mshgan"
    produces: ClassVar[frozenset[str]] = frozenset({"traffic"})
    config_class: ClassVar[type[Any]] = MSHGANConfig

    def _training_data(self, train: PreparedDataset) -> tuple[np.ndarray, np.ndarray | None]:
        if train.T % self.config.segments:
            raise InputError(f"segments = {self.config.segments} does not divide T = {train.T}",
                             where="baselines.mshgan.segments", fix="use a divisor of T, e.g. 6 for T = 48")
        self.scaler = TrafficScaler.for_dataset(train)
        return self.scaler.encode(train.traffic), None

    def _build_networks(self, T: int) -> tuple[nn.Module, nn.Module]:
        return MSHGenerator(T, self.config), Critic(T, width=self.config.critic_width)

    def _generator_penalty(self, G: nn.Module) -> torch.Tensor:
        """``switch_entropy · (log K − H(mean π))``: zero when the batch uses every mode equally."""
        pi = getattr(G, "last_switch", None)
        if pi is None or self.config.switch_entropy == 0:
            return torch.zeros(())
        p = pi.mean(dim=(0, 1))  # (K,) batch use of each mode
        ent = -(p * torch.log(p.clamp_min(1e-8))).sum()
        return self.config.switch_entropy * (float(np.log(p.numel())) - ent)

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        return GeneratedSeries(traffic=self._decode(self._sample(n, None, seed, progress=progress)))

    @torch.no_grad()
    def mode_usage(self, n: int = 512, *, seed: int = 0) -> np.ndarray:
        """Mean switch weight of each mode over ``n`` samples ``(K,)`` (a collapsed group shows one ≈ 1)."""
        self._check_fitted()
        assert self.generator is not None
        g = torch.Generator().manual_seed(seed)
        self.generator(n, None, g)
        pi = getattr(self.generator, "last_switch", None)
        assert isinstance(pi, torch.Tensor)
        return pi.mean(dim=(0, 1)).cpu().numpy()
