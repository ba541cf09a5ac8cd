"""Gaussian DDPM noise process for the traffic wavelet coefficients (Ho et al. 2020).

A parameter-free object: the schedule lives in (non-persistent) buffers, so ``.to(device)`` moves
it and no checkpoint needs it; the network never sees betas. Steps are numbered ``s = 1..S`` for
noising, and every buffer has an entry at index 0 meaning "no noise" (``ᾱ_0 = 1``), so a step
tensor indexes the buffers directly.

Schedule (the quadratic schedule of CSDI, Tashiro et al. 2021, which MSTDiff follows)::

    β_s = ( sqrt(β_1) + (s−1)/(S−1) · (sqrt(β_S) − sqrt(β_1)) )²,   s = 1..S

Defaults β_1 = 1e-4, β_S = 0.5, S = 50 (CSDI's values for S = 50). They give ``ᾱ_S ≈ 3.4e-5``
(``sqrt(ᾱ_S) ≈ 0.006``), so ``w_S`` is N(0, I) up to a 0.6 % trace of the data, as the sampler's
start ``w_S ~ N(0, I)`` assumes, while the first steps add little noise (β_1 = 1e-4), so the
fine detail of the coefficients is resolved in the last steps. Computed in float64, stored
float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mstdiff.config import Check, between, ge, gt
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class GaussianConfig:
    """Schedule of the traffic branch."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "num_steps": ge(1), "beta_start": between(0, 1, open_lo=True, open_hi=True),
        "beta_end": between(0, 1, open_lo=True, open_hi=True), "clip_denoised": gt(0),
    }

    num_steps: int = 50  # S, diffusion steps (paper and CSDI: 50)
    beta_start: float = 1e-4  # β_1, noise of the first step (CSDI)
    beta_end: float = 0.5  # β_S, noise of the last step (CSDI); gives ᾱ_S ≈ 3e-5 at S = 50
    clip_denoised: float | None = None  # clamp the predicted w0 to ±this in step(); None = no clamp

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise InputError(f"gaussian.num_steps = {self.num_steps} must be >= 1")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise InputError(
                f"gaussian betas ({self.beta_start}, {self.beta_end}) are invalid",
                fix="need 0 < beta_start <= beta_end < 1",
            )


def quadratic_beta_schedule(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """``β_1..β_S`` (float64, shape (S,)) of the quadratic schedule: linear in sqrt(β)."""
    return np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_steps, dtype=np.float64) ** 2


@dataclass
class GaussianStepOutput:
    """Result of one reverse step."""

    prev_sample: Tensor  # w_{s-1}, same shape as w_s
    pred_original_sample: Tensor  # ŵ_0 implied by ε̂, same shape as w_s


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draws from ``generator`` placed on ``device``.

    Drawn on the generator's device (so a CPU generator gives the same numbers whatever the target
    device) and then moved.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


class GaussianDiffusion(nn.Module):
    """DDPM forward/reverse process with a quadratic β schedule (buffers only, no parameters)."""

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_mean_coef_x0: Tensor
    posterior_mean_coef_xs: Tensor

    def __init__(self, config: GaussianConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GaussianConfig()
        betas = np.concatenate(
            [[0.0], quadratic_beta_schedule(config.num_steps, config.beta_start, config.beta_end)]
        )  # (S+1,), β_0 = 0
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)  # ᾱ_s, ᾱ_0 = 1
        ac_prev = np.concatenate([[1.0], ac[:-1]])  # ᾱ_{s-1}
        one_minus = np.where(np.arange(ac.size) == 0, 1.0, 1.0 - ac)  # avoid 0/0 at s = 0
        # q(w_{s-1} | w_s, w_0) = N(c0 w_0 + cs w_s, β̃_s)   (DDPM eqs. 6-7)
        post_var = betas * (1.0 - ac_prev) / one_minus
        coef_x0 = betas * np.sqrt(ac_prev) / one_minus
        coef_xs = (1.0 - ac_prev) * np.sqrt(alphas) / one_minus
        coef_x0[0], coef_xs[0] = 1.0, 0.0  # s = 0: identity
        for name, value in (
            ("betas", betas),
            ("alphas", alphas),
            ("alphas_cumprod", ac),
            ("sqrt_alphas_cumprod", np.sqrt(ac)),
            ("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - ac)),
            ("posterior_variance", post_var),
            ("posterior_mean_coef_x0", coef_x0),
            ("posterior_mean_coef_xs", coef_xs),
        ):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)

    @property
    def num_steps(self) -> int:
        """S."""
        return self.config.num_steps

    def _at(self, buf: Tensor, s: Tensor | int, like: Tensor) -> Tensor:
        """``buf[s]`` shaped to broadcast against ``like (B, ...)``; ``s`` is an int or Long[B]."""
        s_t = torch.as_tensor(s, device=buf.device, dtype=torch.long)
        if s_t.numel() and (int(s_t.min()) < 0 or int(s_t.max()) > self.num_steps):
            raise ValueError(f"diffusion step out of range 0..{self.num_steps}: {s_t.tolist()}")
        out = buf[s_t].to(device=like.device, dtype=like.dtype)
        return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))

    def add_noise(self, x0: Tensor, noise: Tensor, s: Tensor | int) -> Tensor:
        """``x_s = sqrt(ᾱ_s) x0 + sqrt(1 − ᾱ_s) ε`` (DDPM eq. 4)."""
        return (
            self._at(self.sqrt_alphas_cumprod, s, x0) * x0
            + self._at(self.sqrt_one_minus_alphas_cumprod, s, x0) * noise
        )

    def predict_x0(self, x_s: Tensor, eps: Tensor, s: Tensor | int) -> Tensor:
        """``x̂0 = (x_s − sqrt(1 − ᾱ_s) ε) / sqrt(ᾱ_s)`` (inverse of :meth:`add_noise`)."""
        return (x_s - self._at(self.sqrt_one_minus_alphas_cumprod, s, x_s) * eps) / self._at(
            self.sqrt_alphas_cumprod, s, x_s
        )

    def posterior_mean_variance(self, x0: Tensor, x_s: Tensor, s: Tensor | int) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_{s-1} | x_s, x0)`` (DDPM eq. 7), variance broadcastable."""
        mean = (
            self._at(self.posterior_mean_coef_x0, s, x_s) * x0
            + self._at(self.posterior_mean_coef_xs, s, x_s) * x_s
        )
        return mean, self._at(self.posterior_variance, s, x_s)

    def step(
        self, eps_hat: Tensor, s: Tensor | int, x_s: Tensor, generator: torch.Generator | None = None,
        clip: Callable[[Tensor], Tensor] | None = None,
    ) -> GaussianStepOutput:
        """Ancestral step ``x_{s-1} ~ N(μ̃(x̂0(ε̂), x_s), β̃_s)``; no noise is added at s = 1 (β̃_1 = 0).

        ``clip``: maps the predicted ``x̂0`` into the data's domain before the posterior mean (after
        ``config.clip_denoised``), as DDPM clips ``x̂0`` to the data range (Ho et al. 2020, §3.3)."""
        x0_hat = self.predict_x0(x_s, eps_hat, s)
        if self.config.clip_denoised is not None:
            x0_hat = x0_hat.clamp(-self.config.clip_denoised, self.config.clip_denoised)
        if clip is not None:
            x0_hat = clip(x0_hat)
        mean, var = self.posterior_mean_variance(x0_hat, x_s, s)
        noise = randn(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
        return GaussianStepOutput(prev_sample=mean + var.sqrt() * noise, pred_original_sample=x0_hat)
