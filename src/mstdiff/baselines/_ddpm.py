"""A small DDPM noise schedule shared by the learned baselines (CSDI, DiT-1D, DiffTraj).

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020. Steps are 0-based,
``s = 0 .. S-1``; ``β_s`` the variance schedule, ``α_s = 1 - β_s``, ``ᾱ_s = Π_{i≤s} α_i``.

The schedule is a parameter-free object: :meth:`DDPMSchedule.add_noise` (forward process, eq. 4)
and :meth:`DDPMSchedule.step` (one ancestral step, eq. 11). Schedules are computed in float64 and
stored as float32 tensors. Noise is always drawn from an explicit CPU ``torch.Generator`` (then
moved to the device), so a seed gives the same samples on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mstdiff.errors import InputError

__all__ = ["BETA_SCHEDULES", "DDPMSchedule", "beta_schedule", "timestep_embedding"]

BETA_SCHEDULES = ("linear", "quadratic", "cosine")


def beta_schedule(kind: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """``β_s`` for ``s = 0..steps-1`` in float64.

    - ``linear``: evenly spaced from ``beta_start`` to ``beta_end`` (DDPM, DiT, DiffTraj).
    - ``quadratic``: ``(linspace(√beta_start, √beta_end))²`` (CSDI).
    - ``cosine``: Nichol & Dhariwal 2021, ``ᾱ(s) ∝ cos²((s/S + 0.008)/1.008 · π/2)``, β clipped at
      0.999 (``beta_start``/``beta_end`` unused).
    """
    if steps < 1:
        raise InputError(f"steps = {steps}", where="diffusion steps", fix="use at least 1 step")
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    elif kind == "quadratic":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
    elif kind == "cosine":
        s = np.arange(steps + 1, dtype=np.float64) / steps
        f = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    else:
        raise InputError(f"unknown beta schedule {kind!r}", where="beta_schedule",
                         fix=f"use one of: {', '.join(BETA_SCHEDULES)}")
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise InputError(f"betas outside (0, 1) for {kind} {beta_start}..{beta_end}",
                         where="beta_schedule", fix="use 0 < beta_start <= beta_end < 1")
    return betas


class DDPMSchedule:
    """Forward process and ancestral sampler of a DDPM with ε-prediction (no network weights)."""

    def __init__(self, betas: np.ndarray, variance: str = "posterior") -> None:
        if variance not in ("posterior", "beta"):
            raise InputError(f"variance {variance!r}", where="DDPMSchedule",
                             fix="use 'posterior' (σ² = β̃, the default) or 'beta' (σ² = β)")
        b = np.asarray(betas, dtype=np.float64)
        a = 1.0 - b
        abar = np.cumprod(a)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)  # β̃_s (eq. 7); 0 at s = 0
        sigma2 = post_var if variance == "posterior" else b
        f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
        self.variance = variance
        self.betas = f32(b)
        self.sqrt_abar = f32(np.sqrt(abar))
        self.sqrt_1m_abar = f32(np.sqrt(1.0 - abar))
        self.coef_eps = f32(b / np.sqrt(1.0 - abar))  # β_s / √(1-ᾱ_s)
        self.inv_sqrt_a = f32(1.0 / np.sqrt(a))
        self.inv_sqrt_abar = f32(1.0 / np.sqrt(abar))
        self.coef_x0 = f32(b * np.sqrt(abar_prev) / (1.0 - abar))  # posterior mean, eq. 7
        self.coef_xs = f32((1.0 - abar_prev) * np.sqrt(a) / (1.0 - abar))
        self.sigma = f32(np.sqrt(sigma2))

    @classmethod
    def from_config(cls, kind: str, steps: int, beta_start: float, beta_end: float,
                    variance: str = "posterior") -> DDPMSchedule:
        return cls(beta_schedule(kind, steps, beta_start, beta_end), variance)

    @property
    def steps(self) -> int:
        return int(self.betas.shape[0])

    @staticmethod
    def _bcast(v: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device)[s].view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``x_s = √ᾱ_s x0 + √(1-ᾱ_s) ε`` (eq. 4); ``s`` is ``(B,)`` long."""
        return self._bcast(self.sqrt_abar, s, x0) * x0 + self._bcast(self.sqrt_1m_abar, s, x0) * noise

    def step(self, eps: torch.Tensor, s: int, x: torch.Tensor, noise: torch.Tensor | None,
             clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x_{s-1} = (x_s − β_s/√(1−ᾱ_s) ε̂) / √α_s + σ_s z`` (eq. 11); no noise at ``s = 0``.

        With ``clip = (lo, hi)`` (broadcastable to ``x``) the estimate
        ``x̂_0 = (x_s − √(1−ᾱ_s) ε̂) / √ᾱ_s`` is clamped to ``[lo, hi]`` and the mean is the posterior
        mean ``μ̃(x_s, x̂_0)`` of eq. 7, which equals eq. 11 when nothing is clamped; this keeps an
        imperfect network from sending samples far outside the data range.
        """
        if clip is None:
            mean = self.inv_sqrt_a[s].item() * (x - self.coef_eps[s].item() * eps)
        else:
            x0 = (x - self.sqrt_1m_abar[s].item() * eps) * self.inv_sqrt_abar[s].item()
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            mean = self.coef_x0[s].item() * x0 + self.coef_xs[s].item() * x
        if s == 0 or noise is None:
            return mean
        return mean + self.sigma[s].item() * noise

    @torch.no_grad()
    def sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator,
        device: torch.device,
        progress: tqdm | None = None,
        clip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from ``x_{S-1} ~ N(0, I)`` down to ``x_0``; ``model(x, s) -> ε̂``.

        All noise comes from ``generator`` (a CPU generator) in a fixed order: first ``x_{S-1}``,
        then one draw per step ``s = S-1 .. 1``. ``clip``: see :meth:`step`.
        """
        if clip is not None:
            clip = (clip[0].to(device), clip[1].to(device))
        x = torch.randn(shape, generator=generator).to(device)
        for s in range(self.steps - 1, -1, -1):
            s_vec = torch.full((shape[0],), s, dtype=torch.long, device=device)
            eps = model(x, s_vec)
            noise = torch.randn(shape, generator=generator).to(device) if s > 0 else None
            x = self.step(eps, s, x, noise, clip)
            if progress is not None:
                progress.update(1)
        return x


def timestep_embedding(s: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of (diffusion steps or positions) ``s`` ``(B,)``
    (Vaswani et al. 2017): ``[cos(s·f_k), sin(s·f_k)]``, ``f_k = max_period^{-k/(dim/2)}``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    args = s.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
