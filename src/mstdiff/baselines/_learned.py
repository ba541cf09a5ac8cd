"""Training and sampling shared by the learned diffusion baselines (CSDI, DiT-1D, DiffTraj).

A subclass says how a dataset becomes a float array ``(U, C, T)`` (:meth:`_encode_train`,
:meth:`_encode`), which ε-network to build (:meth:`_build_network`, called as ``net(x, s)`` with
``x (B, C, T)`` and diffusion steps ``s (B,)``), and how a sampled ``x_0`` becomes a
:class:`GeneratedSeries` (:meth:`_decode`). Everything else is here: AdamW with warm-up + cosine
learning rate, gradient clipping, EMA of the weights (used for sampling), the ε-prediction loss
``‖ε − ε̂(√ᾱ_s x0 + √(1−ᾱ_s) ε, s)‖²`` (Ho et al. 2020, eq. 14), an optional validation loss with
fixed noise draws, and batched ancestral sampling with a progress bar.

Reproducibility: the initial weights, dropout, the data order, the steps and the noise all come
from ``config.train.seed`` (explicit ``torch.Generator`` plus :func:`local_rng`), and sampling
from the ``seed`` given to :meth:`generate`; the global RNGs are left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mstdiff.baselines._ddpm import BETA_SCHEDULES, DDPMSchedule
from mstdiff.baselines.base import Baseline, GeneratedSeries, one_of, positive
from mstdiff.config import Check, between, ge, gt
from mstdiff.config import one_of as choice
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.errors import InputError
from mstdiff.training.utils import EMA, loading_device, local_rng, lr_lambda, resolve_device

logger = logging.getLogger(__name__)

TD = TypeVar("TD", bound="TrafficDiffusionBaseline")
CALIBRATION_SAMPLES = 256  # samples drawn after training to calibrate the traffic decoder's atoms
CALIBRATION_SEED_OFFSET = 104_729  # their seed: train.seed + this (apart from any generation seed)

__all__ = ["DiffusionBaseline", "DiffusionConfig", "TrainConfig"]


@dataclass
class TrainConfig:
    """Optimisation settings shared by the learned baselines."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": ge(0), "max_steps": ge(0), "batch_size": ge(1), "lr": gt(0), "weight_decay": ge(0),
        "lr_schedule": choice("cosine", "step", "constant"), "warmup_steps": ge(0),
        "ema_decay": between(0, 1, open_hi=True), "threads": ge(1), "seed": ge(0),
        "sample_batch_size": ge(1), "val_max_samples": ge(1),
    }

    epochs: int = 50  # passes over the training set
    max_steps: int | None = None  # stop after this many optimiser steps (None: epochs decide)
    batch_size: int = 64  # samples per optimiser step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    lr_schedule: str = "cosine"  # after warm-up: cosine | step | constant (training.utils.lr_lambda)
    warmup_steps: int = 100  # linear learning-rate warm-up
    grad_clip: float = 1.0  # max global gradient norm (0 or less: no clipping)
    ema_decay: float = 0.999  # EMA of the weights (with warm-up)
    use_ema: bool = True  # sample with the EMA weights (else the last weights)
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    threads: int | None = None  # torch CPU threads while fitting/generating (None: torch's default)
    seed: int = 0  # initial weights, data order, diffusion steps and noise of training
    sample_batch_size: int = 512  # samples per batch when generating
    val_max_samples: int = 2048  # validation loss on at most this many validation samples

    def validate(self, where: str) -> None:
        positive(f"{where}.train", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                 sample_batch_size=self.sample_batch_size, val_max_samples=self.val_max_samples)
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads = {self.threads}", where=f"{where}.train.threads",
                             fix="use a positive number or null")
        if self.max_steps is not None and self.max_steps < 0:
            raise InputError(f"max_steps = {self.max_steps}", where=f"{where}.train.max_steps",
                             fix="use a non-negative number or null")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay = {self.ema_decay}", where=f"{where}.train.ema_decay",
                             fix="use a value in [0, 1)")
        one_of(f"{where}.train", "lr_schedule", self.lr_schedule, ("cosine", "step", "constant"))


@dataclass
class DiffusionConfig:
    """The DDPM noise schedule of a learned baseline."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "steps": ge(1), "beta_schedule": choice(*BETA_SCHEDULES), "beta_start": gt(0), "beta_end": gt(0),
        "variance": choice("posterior", "beta"),
    }

    steps: int = 50  # diffusion steps S
    beta_schedule: str = "quadratic"  # linear | quadratic | cosine
    beta_start: float = 1e-4  # β of the first step
    beta_end: float = 0.5  # β of the last step
    variance: str = "posterior"  # sampling variance: posterior (β̃_s) | beta (β_s)
    clip_x0: bool = True  # clamp the x_0 estimate at every step to the training range (+10 % margin)

    def validate(self, where: str) -> None:
        positive(f"{where}.diffusion", steps=self.steps, beta_start=self.beta_start, beta_end=self.beta_end)
        one_of(f"{where}.diffusion", "beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        one_of(f"{where}.diffusion", "variance", self.variance, ("posterior", "beta"))

    def schedule(self) -> DDPMSchedule:
        return DDPMSchedule.from_config(self.beta_schedule, self.steps, self.beta_start, self.beta_end,
                                        self.variance)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (None: leave as is); restored afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _History:
    step_loss: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


class DiffusionBaseline(Baseline):
    """Base class of the DDPM baselines; see the module docstring."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.net: nn.Module | None = None  # the sampling network (EMA weights by default)
        self.history = _History()
        self.device = torch.device("cpu")
        self.x0_range: np.ndarray | None = None  # (C, 2) per-channel clamp range of x_0 (set by fit)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _encode_train(self, train: PreparedDataset) -> np.ndarray:
        """Fit any scaler on ``train`` and return its model-space array ``(U, C, T)`` float32."""

    @abstractmethod
    def _encode(self, ds: PreparedDataset) -> np.ndarray:
        """Model-space array of another dataset with the fitted scaler."""

    @abstractmethod
    def _build_network(self, T: int) -> nn.Module:
        """A fresh ε-network for series of length ``T``."""

    @abstractmethod
    def _decode(self, x0: np.ndarray) -> GeneratedSeries:
        """Sampled ``x_0`` ``(n, C, T)`` → generated series."""

    @abstractmethod
    def _extra_state(self) -> dict[str, Any]:
        """Fitted state besides the weights (scalers, ...)."""

    @abstractmethod
    def _set_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    # ------------------------------------------------------------------ training
    def _make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (a subclass may split decay groups)."""
        tc: TrainConfig = self.config.train
        params = [p for p in net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)

    def _loss(self, net: nn.Module, sched: DDPMSchedule, x0: torch.Tensor,
              g: torch.Generator) -> torch.Tensor:
        """ε-prediction MSE with ``s ~ U{0..S-1}`` and ``ε ~ N(0, I)`` drawn from ``g`` (CPU)."""
        s = torch.randint(0, sched.steps, (x0.shape[0],), generator=g).to(x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        xs = sched.add_noise(x0, noise, s)  # (B, C, T)
        return torch.mean((net(xs, s) - noise) ** 2)

    @torch.no_grad()
    def _val_loss(self, net: nn.Module, sched: DDPMSchedule, data: torch.Tensor, seed: int) -> float:
        was_training = net.training
        net.eval()
        g = torch.Generator().manual_seed(seed)
        bs = self.config.train.sample_batch_size
        total, count = 0.0, 0
        for a in range(0, data.shape[0], bs):
            xb = data[a:a + bs].to(self.device)
            total += float(self._loss(net, sched, xb, g)) * xb.shape[0]
            count += xb.shape[0]
        net.train(was_training)
        return total / max(count, 1)

    def evaluate_loss(self, ds: PreparedDataset, *, seed: int = 0) -> float:
        """The ε-prediction loss of the sampling network on ``ds`` with noise drawn from ``seed``."""
        self._check_fitted()
        assert self.net is not None
        data = torch.from_numpy(self._encode(ds))
        with cpu_threads(self.config.train.threads):
            return self._val_loss(self.net, self.config.diffusion.schedule(), data, seed)

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> DiffusionBaseline:
        cfg = self.config
        tc: TrainConfig = cfg.train
        t0 = time.perf_counter()
        self._remember_shape(train)
        data = torch.from_numpy(self._encode_train(train))  # (U, C, T) on CPU
        lo = data.amin(dim=(0, 2)).double().numpy()
        hi = data.amax(dim=(0, 2)).double().numpy()
        margin = 0.1 * np.maximum(hi - lo, 1e-3)
        self.x0_range = np.stack([lo - margin, hi + margin], axis=1)  # (C, 2)
        val_data = None
        if val is not None and val.n_samples:
            if val.T != train.T:
                raise InputError(f"validation T = {val.T} differs from training T = {train.T}",
                                 where=f"{self.name}.fit")
            val_data = torch.from_numpy(self._encode(val)[: tc.val_max_samples])
        self.device = resolve_device(tc.device)
        sched = cfg.diffusion.schedule()
        U = data.shape[0]
        steps_per_epoch = math.ceil(U / tc.batch_size)
        total = tc.epochs * steps_per_epoch
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        self.history = _History()
        val_seed = tc.seed + 7919  # fixed noise for every validation pass

        with local_rng(tc.seed), cpu_threads(tc.threads):  # reproducible init/dropout; global RNG untouched
            net = self._build_network(train.T).to(self.device)
            opt = self._make_optimizer(net)
            lr_sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda(tc.lr_schedule, total, min(tc.warmup_steps, max(total - 1, 0))))
            ema = EMA(net, tc.ema_decay)
            g = torch.Generator().manual_seed(tc.seed)
            n_params = sum(p.numel() for p in net.parameters())
            logger.info("%s: %d parameters, %d samples, %d steps (%d per epoch) on %s",
                        self.name, n_params, U, total, steps_per_epoch, self.device)
            if val_data is not None:
                self.history.epochs.append({"epoch": 0, "step": 0, "train_loss": None,
                                            "val_loss": self._val_loss(net, sched, val_data, val_seed)})
            step, epoch = 0, 0
            net.train()
            bar = tqdm(total=total, desc=f"fit {self.name}", disable=not progress, leave=False)
            while step < total:
                epoch += 1
                perm = torch.randperm(U, generator=g)
                losses = []
                for a in range(0, U, tc.batch_size):
                    if step >= total:
                        break
                    xb = data[perm[a:a + tc.batch_size]].to(self.device)
                    loss = self._loss(net, sched, xb, g)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if tc.grad_clip > 0:
                        nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad],
                                                 tc.grad_clip)
                    opt.step()
                    lr_sched.step()
                    ema.update(net)
                    step += 1
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FloatingPointError(
                            f"{self.name}: training loss is {lv} at step {step}; lower train.lr")
                    losses.append(lv)
                    self.history.step_loss.append(lv)
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.4f}", refresh=False)
                rec: dict[str, Any] = {"epoch": epoch, "step": step,
                                       "train_loss": float(np.mean(losses)) if losses else None}
                if val_data is not None:
                    rec["val_loss"] = self._val_loss(net, sched, val_data, val_seed)
                self.history.epochs.append(rec)
                logger.debug("%s epoch %d: %s", self.name, epoch, rec)
            bar.close()
        self.net = (ema.shadow if tc.use_ema else net).eval()
        logger.info("%s fitted in %.1fs (%d steps, last epoch loss %s)", self.name,
                    time.perf_counter() - t0, step,
                    self.history.epochs[-1].get("train_loss") if self.history.epochs else None)
        return self

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_model_space(self, n: int, *, seed: int, progress: bool = True) -> np.ndarray:
        """``n`` samples of ``x_0`` ``(n, C, T)`` in model space (before decoding)."""
        self._check_fitted()
        assert self.net is not None and self.T is not None
        self._check_n(n)
        sched = self.config.diffusion.schedule()
        g = torch.Generator().manual_seed(int(seed))
        bs = self.config.train.sample_batch_size
        C = self._channels
        clip = None
        if self.config.diffusion.clip_x0 and self.x0_range is not None:
            r = torch.as_tensor(self.x0_range, dtype=torch.float32)
            clip = (r[None, :, 0, None], r[None, :, 1, None])  # (1, C, 1) each
        out = np.empty((n, C, self.T), dtype=np.float32)
        n_batches = math.ceil(n / bs)
        with cpu_threads(self.config.train.threads), tqdm(
                total=n_batches * sched.steps, desc=f"generate {self.name}", disable=not progress,
                leave=False) as bar:
            for a in range(0, n, bs):
                b = min(a + bs, n)
                x = sched.sample(self.net, (b - a, C, self.T), g, self.device, progress=bar, clip=clip)
                out[a:b] = x.float().cpu().numpy()
        return out

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        x0 = self.sample_model_space(n, seed=seed, progress=progress)
        return self._decode(x0)

    _channels: int = 1  # C of the model-space array

    # ------------------------------------------------------------------ state
    def _get_state(self) -> dict[str, Any]:
        assert self.net is not None
        return {
            "weights": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "extra": self._extra_state(),
            "x0_range": self.x0_range,
            "history": {"step_loss": list(self.history.step_loss), "epochs": list(self.history.epochs)},
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_extra_state(state["extra"])
        rng_ = state.get("x0_range")
        self.x0_range = None if rng_ is None else np.asarray(rng_, dtype=np.float64)
        self.device = loading_device(self.config.train.device, self.name)
        assert self.T is not None
        with local_rng(0):
            net = self._build_network(self.T)
        net.load_state_dict(state["weights"])
        self.net = net.to(self.device).eval()
        self.net.requires_grad_(False)
        hist = state.get("history") or {}
        self.history = _History(list(hist.get("step_loss", [])), list(hist.get("epochs", [])))


class TrafficDiffusionBaseline(DiffusionBaseline):
    """A DDPM over the traffic series alone (CSDI, DiT): log1p + standardise with the training set's
    :class:`~mstdiff.data.scaling.TrafficScaler`, one channel ``(U, 1, T)``, exact zeros restored."""

    produces: ClassVar[frozenset[str]] = frozenset({"traffic"})

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.scaler: TrafficScaler | None = None

    def _encode_train(self, train: PreparedDataset) -> np.ndarray:
        self.scaler = TrafficScaler.for_dataset(train)
        return self._encode(train)

    def fit(self: TD, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> TD:
        """Train (:meth:`DiffusionBaseline.fit`), then calibrate the decoder's atoms on own samples.

        The zero and full-slot thresholds of the :class:`TrafficScaler` are set from
        ``calibration_samples`` samples of the trained model (seeded from the training seed, not
        from any generation seed), so that they carry the training set's shares of both atoms.
        """
        super().fit(train, val=val, progress=progress)
        assert self.scaler is not None
        n_cal = min(CALIBRATION_SAMPLES, max(train.n_samples, 1))
        x = self.sample_model_space(n_cal, seed=self.config.train.seed + CALIBRATION_SEED_OFFSET,
                                    progress=False)
        self.scaler = self.scaler.calibrate(x[:, 0, :])
        logger.info("%s: decoder calibrated on %d samples (zero at <= %.3g, full at >= %s)", self.name,
                    n_cal, self.scaler.zero_threshold, self.scaler.full_threshold)
        return self

    def _encode(self, ds: PreparedDataset) -> np.ndarray:
        assert self.scaler is not None
        return self.scaler.encode(ds.traffic)[:, None, :]  # (U, 1, T)

    def _decode(self, x0: np.ndarray) -> GeneratedSeries:
        assert self.scaler is not None
        return GeneratedSeries(traffic=self.scaler.decode(x0[:, 0, :]))

    def _extra_state(self) -> dict[str, Any]:
        assert self.scaler is not None
        return {"scaler": self.scaler.to_dict()}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.scaler = TrafficScaler.from_dict(state["scaler"])
