"""Training shared by the GAN traffic baselines (MSH-GAN, ADAPTIVE): WGAN-GP with checkpoints.

Loss: Wasserstein GAN with gradient penalty (Gulrajani et al. 2017, Algorithm 1)::

    L_D = E[D(x̃, c)] − E[D(x, c)] + λ E[(‖∇_x̂ D(x̂, c)‖₂ − 1)²],   x̂ = εx + (1 − ε)x̃,  ε ~ U[0, 1]
    L_G = −E[D(G(z, c), c)]

with ``n_critic`` critic steps per generator step and Adam(β1 = 0.5, β2 = 0.9) at a constant
learning rate (the paper's settings, λ = 10, n_critic = 5). ``c`` is an optional per-slot condition
(ADAPTIVE: station features along the trajectory; MSH-GAN: none). Series live in the model space of
the shared :class:`~mstdiff.data.scaling.TrafficScaler` (``(log1p(m) − μ)/σ``); after training the
decoder's atoms are calibrated on the generator's own samples exactly as for the diffusion baselines.

A subclass says how a dataset becomes real series and conditions (:meth:`_training_data`), which
generator and critic to build (:meth:`_build_networks`), and how conditions are drawn for
generation (:meth:`generate`). Everything else is here: the loop, an EMA of the generator (used for
sampling), monitoring, the progress bar and checkpoint/resume.

Monitoring: an adversarial loss says little about convergence, so every epoch records the critic's
Wasserstein estimate ``E[D(x)] − E[D(x̃)]`` and, with a validation set, two sample statistics of the
EMA generator in model space against the validation series with fixed noise: the 1-Wasserstein
distance of the pooled values (``val_w1``) and of the pooled first differences (``val_w1_diff``).

Checkpoint/resume: with ``train.checkpoint`` set, the networks, the optimisers, the EMA, the data
order generator and the history are written atomically at the end of every ``checkpoint_every``
epochs; a later :meth:`fit` with the same settings (``epochs``/``max_steps`` may grow) continues
from it and gives the same weights as an uninterrupted run. The file is read with
``torch.load(weights_only=True)``.

Reproducibility: initial weights come from ``train.seed`` (:func:`local_rng`), every draw of
training (data order, noise, interpolation weights) from one explicit ``torch.Generator``, and
generation from the ``seed`` given to :meth:`generate`; the global RNGs are left untouched.
"""

from __future__ import annotations

import io
import logging
import math
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mstdiff.baselines._ddpm import timestep_embedding
from mstdiff.baselines._learned import CALIBRATION_SAMPLES, CALIBRATION_SEED_OFFSET, cpu_threads
from mstdiff.baselines.base import Baseline, positive
from mstdiff.config import to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_bytes
from mstdiff.training.utils import EMA, loading_device, local_rng, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Critic", "GANBaseline", "GANTrainConfig", "w1"]

CHECKPOINT_FORMAT = "mstdiff-gan-checkpoint"
MONITOR_SAMPLES = 256  # samples of the EMA generator per epoch for the validation statistics
# settings that may differ between an interrupted run and its resumption
RESUMABLE_KEYS = ("epochs", "max_steps", "checkpoint", "checkpoint_every", "threads", "device",
                  "sample_batch_size")


@dataclass
class GANTrainConfig:
    """Optimisation settings of the GAN baselines (WGAN-GP)."""

    epochs: int = 60  # passes over the training set (one critic step per batch)
    max_steps: int | None = None  # stop after this many critic steps (None: epochs decide)
    batch_size: int = 64  # samples per step
    lr_g: float = 2e-4  # Adam learning rate of the generator (constant)
    lr_d: float = 2e-4  # Adam learning rate of the critic (constant)
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas (WGAN-GP paper)
    n_critic: int = 5  # critic steps per generator step (WGAN-GP paper: 5)
    gp_weight: float = 10.0  # λ of the gradient penalty (WGAN-GP paper: 10)
    ema_decay: float = 0.99  # EMA of the generator weights (with warm-up), used for sampling
    use_ema: bool = True  # sample with the EMA generator (else the last weights)
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    threads: int | None = None  # torch CPU threads while fitting/generating (None: torch's default)
    seed: int = 0  # initial weights, data order and every noise draw of training
    sample_batch_size: int = 512  # samples per batch when generating
    checkpoint: str | None = None  # resume file (written at epoch ends, read by fit); None: none
    checkpoint_every: int = 5  # epochs between checkpoints

    def validate(self, where: str) -> None:
        positive(f"{where}.train", epochs=self.epochs, batch_size=self.batch_size, lr_g=self.lr_g,
                 lr_d=self.lr_d, n_critic=self.n_critic, sample_batch_size=self.sample_batch_size,
                 checkpoint_every=self.checkpoint_every)
        if self.gp_weight < 0:
            raise InputError(f"gp_weight = {self.gp_weight}", where=f"{where}.train.gp_weight",
                             fix="use a non-negative weight")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise InputError(f"betas = {self.betas}", where=f"{where}.train.betas",
                             fix="two values in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay = {self.ema_decay}", where=f"{where}.train.ema_decay",
                             fix="use a value in [0, 1)")
        if self.max_steps is not None and self.max_steps < 0:
            raise InputError(f"max_steps = {self.max_steps}", where=f"{where}.train.max_steps",
                             fix="use a non-negative number or null")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads = {self.threads}", where=f"{where}.train.threads",
                             fix="use a positive number or null")


def w1(a: np.ndarray, b: np.ndarray, points: int = 512) -> float:
    """1-Wasserstein distance of two 1-D samples, ``∫ |F_a⁻¹(q) − F_b⁻¹(q)| dq`` on ``points`` quantiles."""
    q = (np.arange(points) + 0.5) / points
    return float(np.mean(np.abs(np.quantile(np.ravel(a), q) - np.quantile(np.ravel(b), q))))


class Critic(nn.Module):
    """A 1-D convolutional critic ``D(x, c) -> (B,)`` over a series, its first differences, the slot
    position and an optional per-slot condition ``c`` ``(B, T, C_c)``.

    Three stride-2 convolutions (kernel 5, LeakyReLU 0.2, no normalisation, as WGAN-GP advises),
    then a linear read-out of the flattened features. No recurrent layer: the gradient penalty needs
    a double backward, which cuDNN's recurrent kernels do not provide.
    """

    def __init__(self, T: int, cond_dim: int = 0, width: int = 64, time_dim: int = 16) -> None:
        super().__init__()
        pos = timestep_embedding(torch.arange(T), time_dim).T[None]  # (1, E_t, T)
        self.pos: torch.Tensor
        self.register_buffer("pos", pos, persistent=False)
        c_in = 2 + time_dim + cond_dim
        layers: list[nn.Module] = []
        length = T
        for i, (a, b) in enumerate([(c_in, width), (width, 2 * width), (2 * width, 2 * width)]):
            layers += [nn.Conv1d(a, b, 5, stride=2 if i else 1, padding=2), nn.LeakyReLU(0.2)]
            length = length if i == 0 else (length + 1) // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width * length, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
        parts = [x[:, None], diff[:, None], self.pos.expand(B, -1, -1)]
        if cond is not None:
            parts.append(cond.transpose(1, 2))
        h = self.body(torch.cat(parts, dim=1))  # (B, 2W, T')
        return self.head(h.flatten(1))[:, 0]


@dataclass
class _GANHistory:
    epochs: list[dict[str, Any]] = field(default_factory=list)


class GANBaseline(Baseline):
    """Base class of the WGAN-GP traffic baselines; see the module docstring.

    Subclass contract: the generator is called as ``G(B, idx, g)`` (it draws its own noise from the
    CPU generator ``g``) and returns model-space series ``(B, T)``; the critic as ``D(x, idx)``.
    ``idx`` is ``None`` for an unconditional model, else the per-slot condition indices ``(B, T)``
    (ADAPTIVE: the station of every slot), which each network turns into its own features.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.generator: nn.Module | None = None  # sampling generator (EMA weights by default)
        self.scaler: TrafficScaler | None = None
        self.history = _GANHistory()
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _training_data(self, train: PreparedDataset) -> tuple[np.ndarray, np.ndarray | None]:
        """Set the scaler and any fitted state; return the real model-space series ``(U, T)`` and
        their condition indices ``(U, T)`` int (``None``: unconditional)."""

    @abstractmethod
    def _build_networks(self, T: int) -> tuple[nn.Module, nn.Module]:
        """A fresh ``(generator, critic)`` for series of length ``T``."""

    def _monitor_condition(self, val: PreparedDataset) -> np.ndarray | None:
        """Condition indices used to draw the monitoring samples (default: none)."""
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ training
    def _resume_key(self) -> dict[str, Any]:
        cfg = to_dict(self.config)
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in RESUMABLE_KEYS}
        return cfg

    def _gradient_penalty(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                          idx: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        eps = torch.rand((real.shape[0], 1), generator=g).to(real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        score = D(mix, idx)
        (grad,) = torch.autograd.grad(score.sum(), mix, create_graph=True)
        return ((grad.norm(dim=1) - 1.0) ** 2).mean()

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> GANBaseline:
        cfg = self.config
        tc: GANTrainConfig = cfg.train
        t0 = time.perf_counter()
        self._remember_shape(train)
        x_np, c_np = self._training_data(train)
        assert self.T is not None
        data = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))  # (U, T)
        cidx = None if c_np is None else torch.from_numpy(np.ascontiguousarray(c_np, dtype=np.int64))
        self.device = resolve_device(tc.device)
        U = data.shape[0]
        steps_per_epoch = math.ceil(U / tc.batch_size)
        total = tc.epochs * steps_per_epoch
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        val_x = val_c = None
        if val is not None and val.n_samples:
            if val.T != train.T:
                raise InputError(f"validation T = {val.T} differs from training T = {train.T}",
                                 where=f"{self.name}.fit")
            assert self.scaler is not None
            val_x = self.scaler.encode(val.traffic)
            val_c = self._monitor_condition(val)

        with local_rng(tc.seed), cpu_threads(tc.threads):
            G, D = self._build_networks(self.T)
            G, D = G.to(self.device), D.to(self.device)
            betas = (float(tc.betas[0]), float(tc.betas[1]))
            opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=betas)
            opt_d = torch.optim.Adam(D.parameters(), lr=tc.lr_d, betas=betas)
            ema = EMA(G, tc.ema_decay)
            g = torch.Generator().manual_seed(tc.seed)
            step, epoch = 0, 0
            self.history = _GANHistory()
            ckpt_path = Path(tc.checkpoint) if tc.checkpoint else None
            if ckpt_path is not None and ckpt_path.is_file():
                step, epoch = self._load_resume(ckpt_path, G, D, opt_g, opt_d, ema, g)
                logger.info("%s: resumed from %s at epoch %d (step %d)", self.name, ckpt_path, epoch, step)
            logger.info("%s: G %d / D %d parameters, %d samples, %d steps (%d per epoch) on %s",
                        self.name, sum(p.numel() for p in G.parameters()),
                        sum(p.numel() for p in D.parameters()), U, total, steps_per_epoch, self.device)
            bar = tqdm(total=total, initial=min(step, total), desc=f"fit {self.name}",
                       disable=not progress, leave=False)
            G.train()
            D.train()
            while step < total:
                epoch += 1
                perm = torch.randperm(U, generator=g)
                rec: dict[str, Any] = {"epoch": epoch, "d_loss": 0.0, "g_loss": 0.0, "wasserstein": 0.0,
                                       "gp": 0.0}
                n_d = n_g = 0
                for a in range(0, U, tc.batch_size):
                    if step >= total:
                        break
                    idx = perm[a:a + tc.batch_size]
                    real = data[idx].to(self.device)
                    ci = None if cidx is None else cidx[idx].to(self.device)
                    # critic step
                    with torch.no_grad():
                        fake = G(real.shape[0], ci, g)
                    d_real, d_fake = D(real, ci).mean(), D(fake, ci).mean()
                    gp = self._gradient_penalty(D, real, fake, ci, g)
                    d_loss = d_fake - d_real + tc.gp_weight * gp
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    opt_d.step()
                    step += 1
                    n_d += 1
                    dl = float(d_loss.detach())
                    if not math.isfinite(dl):
                        raise FloatingPointError(f"{self.name}: critic loss is {dl} at step {step}; lower "
                                                 "train.lr_d")
                    rec["d_loss"] += dl
                    rec["wasserstein"] += float((d_real - d_fake).detach())
                    rec["gp"] += float(gp.detach())
                    # generator step every n_critic critic steps
                    if step % tc.n_critic == 0:
                        D.requires_grad_(False)
                        fake = G(real.shape[0], ci, g)
                        g_loss = -D(fake, ci).mean() + self._generator_penalty(G)
                        opt_g.zero_grad(set_to_none=True)
                        g_loss.backward()
                        opt_g.step()
                        D.requires_grad_(True)
                        ema.update(G)
                        rec["g_loss"] += float(g_loss.detach())
                        n_g += 1
                    bar.update(1)
                for key in ("d_loss", "wasserstein", "gp"):
                    rec[key] = rec[key] / max(n_d, 1)
                rec["g_loss"] = rec["g_loss"] / max(n_g, 1) if n_g else None
                rec["step"] = step
                if val_x is not None:
                    rec.update(self._monitor(ema.shadow if tc.use_ema else G, val_x, val_c, tc.seed))
                self.history.epochs.append(rec)
                bar.set_postfix(w=f"{rec['wasserstein']:.3f}", refresh=False)
                logger.debug("%s epoch %d: %s", self.name, epoch, rec)
                if ckpt_path is not None and (epoch % tc.checkpoint_every == 0 or step >= total):
                    self._save_resume(ckpt_path, G, D, opt_g, opt_d, ema, g, step, epoch)
            bar.close()
        self.generator = (ema.shadow if tc.use_ema else G).eval()
        self.generator.requires_grad_(False)
        self._calibrate(train)
        logger.info("%s fitted in %.1fs (%d critic steps)", self.name, time.perf_counter() - t0, step)
        return self

    def _generator_penalty(self, G: nn.Module) -> torch.Tensor:
        """Extra generator loss term (default: none)."""
        return torch.zeros(())

    @torch.no_grad()
    def _monitor(self, G: nn.Module, val_x: np.ndarray, val_c: np.ndarray | None,
                 seed: int) -> dict[str, float]:
        was = G.training
        G.eval()
        g = torch.Generator().manual_seed(seed + 7919)  # the same noise every epoch
        n = min(MONITOR_SAMPLES, val_x.shape[0])
        ci = None if val_c is None else torch.from_numpy(val_c[:n].astype(np.int64)).to(self.device)
        fake = G(n, ci, g).float().cpu().numpy()
        G.train(was)
        return {"val_w1": w1(val_x, fake), "val_w1_diff": w1(np.diff(val_x, axis=1), np.diff(fake, axis=1))}

    def _calibrate(self, train: PreparedDataset) -> None:
        """Set the decoder's atom thresholds from the trained generator's own samples."""
        assert self.scaler is not None
        n_cal = min(CALIBRATION_SAMPLES, max(train.n_samples, 1))
        seed = self.config.train.seed + CALIBRATION_SEED_OFFSET
        x = self._sample(n_cal, self._calibration_condition(n_cal, seed), seed, progress=False)
        self.scaler = self.scaler.calibrate(x)
        logger.info("%s: decoder calibrated on %d samples (zero at <= %.3g, full at >= %s)", self.name,
                    n_cal, self.scaler.zero_threshold, self.scaler.full_threshold)

    def _calibration_condition(self, n: int, seed: int) -> np.ndarray | None:
        return None

    # ------------------------------------------------------------------ checkpoints
    def _save_resume(self, path: Path, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer, ema: EMA, g: torch.Generator, step: int,
                     epoch: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "name": self.name, "key": _plain(self._resume_key()),
            "step": step, "epoch": epoch, "G": G.state_dict(), "D": D.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "ema": {"num_updates": ema.num_updates, "shadow": ema.shadow.state_dict()},
            "rng": g.get_state(), "history": _plain(self.history.epochs),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())

    def _load_resume(self, path: Path, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer, ema: EMA, g: torch.Generator) -> tuple[int, int]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT
        if not ok or state.get("name") != self.name:
            raise InputError(f"not a {self.name} training checkpoint", where=str(path),
                             fix="delete it or point train.checkpoint elsewhere")
        if state["key"] != _plain(self._resume_key()):
            raise InputError("the checkpoint was written with different settings", where=str(path),
                             fix="only epochs/max_steps may change between runs; delete the checkpoint to "
                                 "start again")
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        ema.num_updates = int(state["ema"]["num_updates"])
        ema.shadow.load_state_dict(state["ema"]["shadow"])
        g.set_state(state["rng"])
        self.history = _GANHistory(list(state["history"]))
        return int(state["step"]), int(state["epoch"])

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _sample(self, n: int, cond_idx: np.ndarray | None, seed: int, *, progress: bool = True) -> np.ndarray:
        """``n`` model-space series ``(n, T)`` from the sampling generator, noise from ``seed``."""
        self._check_fitted()
        assert self.generator is not None and self.T is not None
        self._check_n(n)
        g = torch.Generator().manual_seed(int(seed))
        bs = self.config.train.sample_batch_size
        out = np.empty((n, self.T), dtype=np.float32)
        with cpu_threads(self.config.train.threads), tqdm(
                total=math.ceil(n / bs), desc=f"generate {self.name}", disable=not progress,
                leave=False) as bar:
            for a in range(0, n, bs):
                b = min(a + bs, n)
                ci = None if cond_idx is None else torch.from_numpy(
                    np.asarray(cond_idx[a:b], dtype=np.int64)).to(self.device)
                out[a:b] = self.generator(b - a, ci, g).float().cpu().numpy()
                bar.update(1)
        return out

    def _decode(self, x: np.ndarray) -> np.ndarray:
        assert self.scaler is not None
        return self.scaler.decode(x)

    # ------------------------------------------------------------------ state
    def _get_state(self) -> dict[str, Any]:
        assert self.generator is not None and self.scaler is not None
        return {
            "generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "scaler": self.scaler.to_dict(),
            "extra": self._extra_state(),
            "history": list(self.history.epochs),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.scaler = TrafficScaler.from_dict(state["scaler"])
        self._set_extra_state(state["extra"])
        self.device = loading_device(self.config.train.device, self.name)
        assert self.T is not None
        with local_rng(0):
            G, _ = self._build_networks(self.T)
        G.load_state_dict(state["generator"])
        self.generator = G.to(self.device).eval()
        self.generator.requires_grad_(False)
        self.history = _GANHistory(list(state.get("history") or []))


def _plain(x: Any) -> Any:
    """Tuples → lists, numpy scalars → Python (what ``weights_only`` loading accepts and compares)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
