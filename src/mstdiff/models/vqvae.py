"""VQ-VAE on one set of wavelet coefficients (paper eq. 9), pre-trained and then frozen.

The denoiser's coarsest stage reads the noisy coarse coefficients through this model's encoder and
codebook (DESIGN §1). The model is small: a 1-D convolutional encoder maps the coefficient
sequence ``w (B, L)`` (default ``cA3``, ``L = T/8``) to per-position latents ``z_e (B, L, d)``;
each latent is replaced by its nearest codebook vector ``z_q``; a convolutional decoder maps
``z_q`` back to ``ŵ (B, L)``. Training minimises (van den Oord et al. 2017; MSTDiff eq. 9)::

    L = ‖w − ŵ‖² + ‖sg[z_e] − z_q‖² + β ‖z_e − sg[z_q]‖²        β = 0.25

with the straight-through estimator ``z_e + sg[z_q − z_e]`` carrying the reconstruction gradient
past the non-differentiable nearest-code lookup. Each squared norm is averaged over its elements
(a constant rescaling of eq. 9). The coefficients are standardised inside the model with a
shift/scale fitted on the training data (stored as buffers), so the loss and the latents do not
depend on the traffic unit.

Codebook health: :func:`pretrain_vqvae` reports the perplexity ``exp(H(p))`` of the code
histogram of each epoch (``1`` = one code used, ``K`` = all used equally) and the number of dead
codes (never selected during the epoch), and warns when dead codes remain. Two documented
remedies, both optional: initialising the codebook from encoder outputs of the data
(``codebook_init="data"``, default) and re-initialising dead codes from random encoder outputs at the
end of each epoch (``dead_code_restart=True``), as in e.g. Dhariwal et al. 2020 (Jukebox).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mstdiff.config import Check, ge, gt, one_of
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_bytes
from mstdiff.models.wavelet import SCALES
from mstdiff.torchio import load_torch_file

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "mstdiff.vqvae"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# shared helper: deterministic parameter initialisation from an explicit generator


def init_weights_(module: nn.Module, generator: torch.Generator | None = None, *, std: float = 0.02) -> None:
    """Re-initialise every parameter of ``module`` from ``generator`` (nothing is seeded globally).

    Linear and Embedding weights ~ N(0, std²) (nanoGPT), Conv1d weights with PyTorch's default
    Kaiming-uniform rule, biases 0, LayerNorm weight 1 / bias 0. A module type with parameters of
    its own that is not covered raises ``TypeError``, so no parameter is silently left out.
    Values are drawn on the generator's device and copied, so a CPU generator gives the same
    weights whatever device the module lives on.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def fill(param: Tensor, draw: Any) -> None:
        tmp = torch.empty(param.shape, dtype=param.dtype, device=gen_device)
        draw(tmp)
        with torch.no_grad():
            param.copy_(tmp)

    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if isinstance(sub, nn.Linear | nn.Embedding):
            fill(sub.weight, lambda t: nn.init.normal_(t, 0.0, std, generator=generator))
        elif isinstance(sub, nn.Conv1d):
            fill(sub.weight, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator))
        elif isinstance(sub, nn.LayerNorm):
            if sub.weight is not None:
                nn.init.ones_(sub.weight)
        else:
            raise TypeError(f"init_weights_ does not know how to initialise {type(sub).__name__}")
        bias = getattr(sub, "bias", None)
        if isinstance(bias, Tensor):
            nn.init.zeros_(bias)


# ---------------------------------------------------------------------------------------------
# config and model


@dataclass
class VQVAEConfig:
    """VQ-VAE architecture and pre-training settings (one config for both, saved in checkpoints)."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "scale": one_of(*SCALES), "hidden": ge(1), "code_dim": ge(1), "num_codes": ge(2),
        "num_res_blocks": ge(0), "beta": ge(0), "codebook_init": one_of("data", "uniform"),
        "epochs": ge(0), "batch_size": ge(1), "lr": gt(0), "weight_decay": ge(0),
    }

    scale: str = "cA3"  # which coefficient set it encodes; cA3 (T/8 smooth trend) as in the paper
    hidden: int = 64  # channels of the conv encoder/decoder; the input has 1 channel and L <= 42
    code_dim: int = 16  # d, dimension of a latent / codebook vector
    num_codes: int = 64  # K, codebook size; ~ the number of distinct coarse shapes worth naming
    num_res_blocks: int = 2  # residual conv blocks in encoder and decoder (kernel 3: field 1+4*blocks)
    beta: float = 0.25  # commitment weight β of eq. 9 (the paper's and van den Oord et al.'s value)
    codebook_init: str = "data"  # "data": codes = random encoder outputs before training; "uniform": U(±1/K)
    dead_code_restart: bool = True  # re-initialise codes unused in an epoch from random encoder outputs
    epochs: int = 100  # pre-training epochs over all user samples
    batch_size: int = 256  # samples per AdamW step
    lr: float = 1e-3  # AdamW learning rate (small model, short sequences: a large rate is stable)
    weight_decay: float = 0.0  # AdamW decay; 0 so that it does not shrink the codebook towards 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(
                f"vqvae.scale = {self.scale!r} is not a wavelet scale", fix=f"use one of {SCALES}"
            )
        if self.codebook_init not in ("data", "uniform"):
            raise InputError(
                f"vqvae.codebook_init = {self.codebook_init!r} is unknown", fix="use 'data' or 'uniform'"
            )
        for name in ("hidden", "code_dim", "num_codes", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"vqvae.{name} = {getattr(self, name)} must be >= 1")


@dataclass
class VQVAEOutput:
    """Everything one forward pass computes; ``loss`` is eq. 9."""

    recon: Tensor  # ŵ, (B, L), in the input's units
    z_e: Tensor  # encoder output, (B, L, d)
    z_q: Tensor  # nearest codebook vectors, (B, L, d)
    codes: Tensor  # code indices, (B, L) long
    loss: Tensor  # recon + codebook + β commit, scalar
    recon_loss: Tensor  # ‖w − ŵ‖² on standardised coefficients, scalar
    codebook_loss: Tensor  # ‖sg[z_e] − z_q‖², scalar
    commit_loss: Tensor  # ‖z_e − sg[z_q]‖² (before β), scalar


class ResBlock1d(nn.Module):
    """x + conv(gelu(conv(gelu(x)))), kernel 3, length-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, L)
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class VQVAE(nn.Module):
    """Conv encoder → nearest-code quantiser → conv decoder on one coefficient sequence ``(B, L)``.

    Works for any length L (fully convolutional), so one model serves T = 48 (L = 6) and
    T = 336 (L = 42). ``generator`` makes the initial weights reproducible.
    """

    shift: Tensor
    scale: Tensor

    def __init__(
        self, config: VQVAEConfig | None = None, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.config = config = config or VQVAEConfig()
        h, d = config.hidden, config.code_dim
        self.encoder = nn.Sequential(
            nn.Conv1d(1, h, 3, padding=1),
            *[ResBlock1d(h) for _ in range(config.num_res_blocks)],
            nn.GELU(),
            nn.Conv1d(h, d, 1),
        )
        self.codebook = nn.Embedding(config.num_codes, d)
        self.decoder = nn.Sequential(
            nn.Conv1d(d, h, 3, padding=1),
            *[ResBlock1d(h) for _ in range(config.num_res_blocks)],
            nn.GELU(),
            nn.Conv1d(h, 1, 1),
        )
        # standardisation of the input coefficients, fitted by pretrain_vqvae (saved in state_dict)
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        init_weights_(self, generator)
        k = config.num_codes
        gen_device = generator.device if generator is not None else torch.device("cpu")
        tmp = torch.empty(self.codebook.weight.shape, device=gen_device).uniform_(
            -1 / k, 1 / k, generator=generator
        )
        with torch.no_grad():
            self.codebook.weight.copy_(tmp)

    # -- pieces ----------------------------------------------------------------------------

    def set_normalisation(self, shift: float, scale: float) -> None:
        """Set the standardisation ``(w − shift) / scale`` applied before encoding."""
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):
            raise ValueError(f"invalid VQ-VAE normalisation shift={shift}, scale={scale}")
        self.shift.fill_(shift)
        self.scale.fill_(scale)

    def encode_continuous(self, w: Tensor) -> Tensor:
        """Encoder output ``z_e (B, L, d)`` of coefficients ``w (B, L)``."""
        x = ((w - self.shift) / self.scale).unsqueeze(1)  # (B, 1, L)
        return self.encoder(x).transpose(1, 2)  # (B, L, d)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codebook vectors ``z_q (B, L, d)`` and their indices ``(B, L)``."""
        e = self.codebook.weight  # (K, d)
        flat = z_e.reshape(-1, z_e.shape[-1])  # (B*L, d)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)  # (B*L, K)
        codes = dist.argmin(dim=1).view(z_e.shape[:-1])  # (B, L)
        return self.codebook(codes), codes  # (B, L, d), (B, L)

    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``w (B, L)`` → ``(z_q (B, L, d), codes (B, L))``."""
        return self.quantize(self.encode_continuous(w))

    def decode(self, z_q: Tensor) -> Tensor:
        """``z_q (B, L, d)`` → reconstructed coefficients ``(B, L)`` in the input's units."""
        x = self.decoder(z_q.transpose(1, 2)).squeeze(1)  # (B, L)
        return x * self.scale + self.shift

    def forward(self, w: Tensor) -> VQVAEOutput:
        """Eq. 9 loss with the straight-through estimator."""
        if w.dim() != 2:
            raise ValueError(f"VQVAE expects coefficients of shape (B, L), got {tuple(w.shape)}")
        z_e = self.encode_continuous(w)  # (B, L, d)
        z_q, codes = self.quantize(z_e)  # (B, L, d), (B, L)
        z_st = z_e + (z_q - z_e).detach()  # straight-through: forward z_q, gradient to z_e
        x_hat = self.decoder(z_st.transpose(1, 2)).squeeze(1)  # (B, L) standardised
        x = (w - self.shift) / self.scale  # (B, L)
        recon_loss = F.mse_loss(x_hat, x)
        codebook_loss = F.mse_loss(z_q, z_e.detach())  # moves the codes
        commit_loss = F.mse_loss(z_e, z_q.detach())  # moves the encoder
        loss = recon_loss + codebook_loss + self.config.beta * commit_loss
        return VQVAEOutput(
            recon=x_hat * self.scale + self.shift,
            z_e=z_e,
            z_q=z_q,
            codes=codes,
            loss=loss,
            recon_loss=recon_loss,
            codebook_loss=codebook_loss,
            commit_loss=commit_loss,
        )

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, history: list[dict[str, float]] | None = None
    ) -> None:
        """Write config + weights (+ pre-training history) atomically (temp file + ``os.replace``)."""
        payload = {
            "kind": CHECKPOINT_KIND,
            "format_version": CHECKPOINT_VERSION,
            "config": dataclasses.asdict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "history": list(history or []),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
        logger.info("saved VQ-VAE checkpoint to %s", path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, map_location: torch.device | str | None = None) -> VQVAE:
        """Rebuild a model saved by :meth:`save_checkpoint` (history: :func:`load_vqvae_history`)."""
        payload = _read_checkpoint(path, map_location)
        model = cls(VQVAEConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        if map_location is not None:
            model.to(map_location)
        return model


def _read_checkpoint(path: str | os.PathLike[str], map_location: torch.device | str | None) -> dict[str, Any]:
    path = Path(path)
    payload = load_torch_file(path, what="VQ-VAE checkpoint", map_location=map_location,
                              fix="run the VQ-VAE pre-training first (`mstdiff vqvae`)")
    if payload.get("kind") != CHECKPOINT_KIND:
        raise InputError(
            "not a mstdiff VQ-VAE checkpoint", where=str(path), fix="pass the file written by pretraining"
        )
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise InputError(
            f"VQ-VAE checkpoint format {payload.get('format_version')} is not supported "
            f"(this version reads {CHECKPOINT_VERSION})",
            where=str(path),
            fix="re-run the VQ-VAE pre-training with this version of mstdiff",
        )
    return payload


def load_vqvae_history(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The per-epoch pre-training history stored in a VQ-VAE checkpoint."""
    return list(_read_checkpoint(path, "cpu")["history"])


# ---------------------------------------------------------------------------------------------
# codebook statistics


def perplexity(counts: Tensor) -> float:
    """``exp(H(p))`` of a code histogram: 1 when one code is used, K when all K are used equally."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


@torch.no_grad()
def codebook_usage(model: VQVAE, coeffs: Tensor, *, batch_size: int = 1024) -> Tensor:
    """How often each code is selected over ``coeffs (U, L)``: counts ``(K,)`` long."""
    counts = torch.zeros(model.config.num_codes, dtype=torch.long, device=model.codebook.weight.device)
    for start in range(0, coeffs.shape[0], batch_size):
        _, codes = model.encode(coeffs[start : start + batch_size].to(counts.device))
        counts += torch.bincount(codes.flatten(), minlength=model.config.num_codes)
    return counts


@torch.no_grad()
def _random_encoder_outputs(model: VQVAE, x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` encoder outputs ``(n, d)`` at random (sample, position) pairs of ``x (U, L)``."""
    U, L = x.shape
    rows = torch.randint(0, U, (n,), generator=generator, device=generator.device).to(x.device)
    cols = torch.randint(0, L, (n,), generator=generator, device=generator.device).to(x.device)
    z = model.encode_continuous(x[rows])  # (n, L, d)
    return z[torch.arange(n, device=x.device), cols]  # (n, d)


@torch.no_grad()
def restart_codes_(
    model: VQVAE,
    codes: Tensor,
    x: Tensor,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Set the codebook rows ``codes`` to random encoder outputs of ``x (U, L)``; reset their Adam state."""
    if codes.numel() == 0:
        return
    weight = model.codebook.weight
    weight[codes] = _random_encoder_outputs(model, x, codes.numel(), generator).to(weight.dtype)
    if optimizer is not None:
        state = optimizer.state.get(weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][codes] = 0.0


# ---------------------------------------------------------------------------------------------
# pre-training


def pretrain_vqvae(
    traffic_coeffs: Tensor,
    config: VQVAEConfig | None = None,
    *,
    seed: int,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[VQVAE, list[dict[str, float]]]:
    """Pre-train a VQ-VAE on one coefficient set and return ``(model in eval mode, history)``.

    ``traffic_coeffs (U, L)`` are the coefficients of the scale ``config.scale`` of the training
    samples (e.g. ``scale_coeffs(dwt(m), "cA3")`` of normalised traffic ``m``). ``device``
    defaults to the tensor's device; all randomness (weights, shuffling, code restarts) comes from
    a generator seeded with ``seed``, so equal seeds give equal models.

    ``history`` has one dict per epoch: ``epoch, loss, recon_loss, codebook_loss, commit_loss``
    (sample-weighted means), ``perplexity`` and ``dead_codes`` of that epoch's code histogram and
    ``restarted`` (codes re-initialised after the epoch).
    """
    config = config or VQVAEConfig()
    if traffic_coeffs.dim() != 2 or traffic_coeffs.shape[0] == 0:
        raise InputError(
            "VQ-VAE pre-training needs coefficients of shape (U, L) with U > 0, "
            f"got {tuple(traffic_coeffs.shape)}",
            fix=f"pass the {config.scale} coefficients of the training samples",
        )
    device = torch.device(device) if device is not None else traffic_coeffs.device
    x = traffic_coeffs.detach().to(device=device, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise InputError(
            "VQ-VAE pre-training data contains NaN or infinite values", fix="clean the traffic first"
        )
    U = x.shape[0]
    generator = torch.Generator().manual_seed(seed)  # CPU: the same stream on every device

    model = VQVAE(config, generator=generator).to(device)
    std = float(x.std()) if x.numel() > 1 else 1.0
    model.set_normalisation(float(x.mean()), std if std > 1e-8 else 1.0)
    if config.codebook_init == "data":
        restart_codes_(model, torch.arange(config.num_codes, device=device), x, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    history: list[dict[str, float]] = []
    epochs = tqdm(range(config.epochs), desc="VQ-VAE", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        counts = torch.zeros(config.num_codes, dtype=torch.long, device=device)
        sums = dict.fromkeys(("loss", "recon_loss", "codebook_loss", "commit_loss"), 0.0)
        perm = torch.randperm(U, generator=generator).to(device)
        for start in range(0, U, config.batch_size):
            batch = x[perm[start : start + config.batch_size]]  # (b, L)
            out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            counts += torch.bincount(out.codes.flatten(), minlength=config.num_codes)
            for key in sums:
                sums[key] += float(getattr(out, key).detach()) * batch.shape[0]
        dead = (counts == 0).nonzero().flatten()
        restarted = 0
        if config.dead_code_restart and dead.numel() > 0 and epoch < config.epochs - 1:
            model.eval()
            restart_codes_(model, dead, x, generator, optimizer)
            restarted = int(dead.numel())
        row = {"epoch": float(epoch + 1), **{k: v / U for k, v in sums.items()}}
        row.update(perplexity=perplexity(counts), dead_codes=float(dead.numel()), restarted=float(restarted))
        history.append(row)
        epochs.set_postfix(
            loss=f"{row['loss']:.4f}", ppl=f"{row['perplexity']:.1f}", dead=int(row["dead_codes"])
        )

    model.eval()
    last = history[-1]
    logger.info(
        "VQ-VAE pre-trained: loss %.4f, perplexity %.1f of %d codes, %d dead codes",
        last["loss"],
        last["perplexity"],
        config.num_codes,
        int(last["dead_codes"]),
    )
    if last["dead_codes"] > 0:
        logger.warning(
            "VQ-VAE: %d of %d codes were never used in the last epoch (perplexity %.1f); consider "
            "dead_code_restart=True, a smaller num_codes or more epochs",
            int(last["dead_codes"]),
            config.num_codes,
            last["perplexity"],
        )
    return model, history
