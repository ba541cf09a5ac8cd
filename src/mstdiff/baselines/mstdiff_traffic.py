"""MSTDiff without trajectory: the paper's ablation, the traffic branch of MSTDiff alone.

The network is :class:`~mstdiff.models.denoiser.MSTDiffDenoiser` with ``use_locations = False``:
the same four wavelet stages, layers, widths and frozen VQ-VAE fusion at cA3 as MSTDiff, but the
location stream of every stage is fed one learned vector instead of a trajectory, and there is no
station table and no location head. What the comparison with MSTDiff isolates is therefore the
trajectory information (and the coupling through cross-attention), not network size.

Diffusion and training follow MSTDiff's traffic branch: traffic is scaled with the training set's
:class:`~mstdiff.data.scaling.TrafficScaler`, the DDPM runs on the orthonormal Haar coefficients
``w = DWT(x)`` with MSTDiff's quadratic schedule (1e-4 .. 0.5, S = 50, no clamping of x̂0), AdamW
with MSTDiff's decay groups (matrices only), warm-up + cosine, EMA 0.995. Because the Haar transform
is orthonormal, noising ``x`` in time and transforming is the same process as noising ``w``
(``DWT(ε) ~ N(0, I)``), so the shared DDPM loop of :mod:`mstdiff.baselines._learned` trains it on
``x`` with the network mapping ``x_s ↦ IDWT(ε̂(DWT(x_s), s))``.

The VQ-VAE is pre-trained inside :meth:`fit` on the cA3 coefficients of the scaled training traffic
(same config and seed as MSTDiff's stage, hence the same codebook), then frozen. In ``mstdiff
benchmark`` every setting defaults to the run config's ``model``, ``vqvae`` and ``train`` sections,
so the ablation is MSTDiff's network and budget unless a setting is overridden.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mstdiff.baselines._learned import DiffusionConfig, TrafficDiffusionBaseline, TrainConfig
from mstdiff.baselines.base import register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.vqvae import VQVAE, VQVAEConfig, pretrain_vqvae
from mstdiff.models.wavelet import dwt, idwt, scale_coeffs

logger = logging.getLogger(__name__)

__all__ = ["MSTDiffTraffic", "MSTDiffTrafficConfig", "WaveletEpsNet"]


@dataclass
class MSTDiffTrafficConfig:
    """MSTDiff's traffic branch alone; defaults are MSTDiff's (DenoiserConfig, VQVAEConfig, training)."""

    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)  # use_locations is forced off
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)  # pre-trained in fit (if denoiser.use_vqvae)
    # MSTDiff's Gaussian process: quadratic 1e-4 .. 0.5 over 50 steps, posterior variance, no clamp
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        steps=50, beta_schedule="quadratic", beta_start=1e-4, beta_end=0.5, clip_x0=False))
    # MSTDiff's optimisation defaults (mstdiff.training.mstdiff.TrainConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=20, lr=1e-3, weight_decay=0.01, warmup_steps=50, ema_decay=0.995))

    def validate(self) -> None:
        where = "baselines.mstdiff-traffic"
        self.denoiser.use_locations = False
        self.diffusion.validate(where)
        self.train.validate(where)
        if self.diffusion.beta_schedule != "quadratic":
            logger.warning("%s: beta_schedule %r differs from MSTDiff's quadratic schedule",
                           where, self.diffusion.beta_schedule)


class WaveletEpsNet(nn.Module):
    """``x_s (B, 1, T)`` in time ↦ ``IDWT(ε̂(DWT(x_s), s + 1))``: MSTDiff's denoiser, traffic only.

    The denoiser counts steps 1..S (MSTDiff's convention); the shared DDPM loop counts 0..S-1.
    """

    def __init__(self, denoiser: MSTDiffDenoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        w = dwt(x[:, 0])  # (B, T)
        eps_w = self.denoiser(w, None, s + 1).eps  # (B, T) in coefficient order
        return idwt(eps_w).unsqueeze(1)  # (B, 1, T)


@register_baseline
class MSTDiffTraffic(TrafficDiffusionBaseline):
    """MSTDiff without trajectory (traffic only): pair it with a trajectory model for joint sets."""

    name: ClassVar[str] = "mstdiff-traffic"
    config_class: ClassVar[type[Any]] = MSTDiffTrafficConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._vqvae: VQVAE | None = None  # pre-trained by fit, rebuilt (untrained) before a load

    def _encode_train(self, train: PreparedDataset) -> np.ndarray:
        x = super()._encode_train(train)  # (U, 1, T), fits the scaler
        cfg: MSTDiffTrafficConfig = self.config
        if cfg.denoiser.use_vqvae:
            coeffs = scale_coeffs(dwt(torch.from_numpy(x[:, 0])), cfg.vqvae.scale)  # (U, L)
            self._vqvae, hist = pretrain_vqvae(coeffs, cfg.vqvae, seed=cfg.train.seed, progress=False)
            if hist:
                logger.info("%s: VQ-VAE pre-trained, perplexity %.1f of %d codes", self.name,
                            hist[-1].get("perplexity", float("nan")), cfg.vqvae.num_codes)
        return x

    def _build_network(self, T: int) -> nn.Module:
        cfg: MSTDiffTrafficConfig = self.config
        dcfg = dataclasses.replace(cfg.denoiser, seq_len=T, num_stations=0, use_locations=False)
        vq = None
        if dcfg.use_vqvae:  # the pre-trained one after fit; before a load, its weights come with the state
            vq = self._vqvae if self._vqvae is not None else VQVAE(cfg.vqvae)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        return WaveletEpsNet(MSTDiffDenoiser(dcfg, vq, generator=gen))

    def _make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        assert isinstance(net, WaveletEpsNet)
        tc = self.config.train
        return torch.optim.AdamW(net.denoiser.optimizer_groups(tc.weight_decay), lr=tc.lr)
