"""Networks of MSTDiff: wavelet transform, VQ-VAE, multi-scale denoiser and the joint loss.

No knowledge of dataset files (only single checkpoints) and none of the CLI. Typical use::

    from mstdiff.models import (DenoiserConfig, MSTDiffDenoiser, VQVAEConfig, dwt, idwt,
                                pretrain_vqvae, scale_coeffs, training_loss)

    w0 = dwt(traffic)                                          # (U, T) → (U, T) coefficients
    vq, history = pretrain_vqvae(scale_coeffs(w0, "cA3"), VQVAEConfig(), seed=0)
    model = MSTDiffDenoiser(DenoiserConfig(num_stations=N, seq_len=T), vq, generator=g)
    opt = torch.optim.AdamW(model.optimizer_groups(weight_decay=0.01), lr=3e-4)
    loss, parts = training_loss(model, hybrid, w0_batch, l0_batch, g)   # Algorithm 1
"""

from mstdiff.models.denoiser import DenoiserConfig, DenoiserOutput, MSTDiffDenoiser
from mstdiff.models.losses import LossWeights, joint_loss, location_kl, training_loss
from mstdiff.models.vqvae import (
    VQVAE,
    VQVAEConfig,
    VQVAEOutput,
    codebook_usage,
    init_weights_,
    load_vqvae_history,
    perplexity,
    pretrain_vqvae,
)
from mstdiff.models.wavelet import SCALES, dwt, idwt, scale_coeffs, scale_lengths, scale_slices

__all__ = [
    "SCALES",
    "VQVAE",
    "DenoiserConfig",
    "DenoiserOutput",
    "LossWeights",
    "MSTDiffDenoiser",
    "VQVAEConfig",
    "VQVAEOutput",
    "codebook_usage",
    "dwt",
    "idwt",
    "init_weights_",
    "joint_loss",
    "load_vqvae_history",
    "location_kl",
    "perplexity",
    "pretrain_vqvae",
    "scale_coeffs",
    "scale_lengths",
    "scale_slices",
    "training_loss",
]
