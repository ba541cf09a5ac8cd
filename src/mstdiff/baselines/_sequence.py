"""Pieces shared by the learned sequence baselines over stations (PateGail, VOLUNTEER).

- :class:`SequenceTrainConfig`: optimisation, device, seed and the resumable training checkpoint;
- :func:`time_of_day`: the time-of-day class of every slot of a window (windows start at midnight);
- :class:`ResumeFile`: a training checkpoint written every few steps and at the end of fitting. A fit
  started with the same config (apart from the lengths listed in ``resume_free``) and the same
  training set continues from it: interrupted, or asked for more iterations, the fit ends with the
  same weights as one uninterrupted run (same device and thread count). The file holds tensors,
  numbers and strings only and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstdiff.baselines.base import positive
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.training.utils import save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ResumeFile", "SequenceTrainConfig", "bins_per_day", "time_of_day"]

RESUME_FORMAT = "mstdiff-baseline-resume"


@dataclass
class SequenceTrainConfig:
    """Optimisation of a learned sequence baseline."""

    batch_size: int = 64  # trajectories per optimiser step
    lr: float = 1e-3  # Adam learning rate (constant: an extended fit equals a longer one)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global gradient norm (0 or less: no clipping)
    device: str = "cpu"  # cpu | cuda | cuda:K | auto
    threads: int | None = None  # torch CPU threads while fitting/generating (None: torch's default)
    seed: int = 0  # initial weights, data order, party split, rollouts and privacy noise
    sample_batch_size: int = 512  # trajectories per batch when generating
    checkpoint: str | None = None  # resumable training checkpoint file (None: none written)
    checkpoint_every: int = 50  # steps (epochs or iterations) between checkpoint writes

    def validate(self, where: str) -> None:
        positive(f"{where}.train", batch_size=self.batch_size, lr=self.lr,
                 sample_batch_size=self.sample_batch_size, checkpoint_every=self.checkpoint_every)
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads = {self.threads}", where=f"{where}.train.threads",
                             fix="use a positive number or null")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay = {self.weight_decay}", where=f"{where}.train.weight_decay",
                             fix="use a non-negative value")


def bins_per_day(ds: PreparedDataset, where: str) -> int:
    if 1440 % ds.bin_minutes:
        raise InputError(f"bin_minutes = {ds.bin_minutes} does not divide a day", where=where,
                         fix="prepare the data with a bin size that divides 1440 minutes")
    return 1440 // ds.bin_minutes


def time_of_day(T: int, per_day: int) -> torch.Tensor:
    """Time-of-day class ``t mod per_day`` of slots ``0..T-1`` (windows start at midnight)."""
    return torch.arange(T) % per_day


def data_fingerprint(ds: PreparedDataset) -> str:
    """A short hash of a training set's locations and station table (resume must see the same data)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ds.locations).tobytes())
    h.update(np.ascontiguousarray(ds.coords).tobytes())
    h.update(str(ds.locations.shape).encode())
    return h.hexdigest()[:16]


class ResumeFile:
    """The resumable training checkpoint of one fit (see the module docstring).

    ``key`` identifies the fit: the config as JSON without the fields in ``resume_free`` (lengths
    of training that may grow between runs, and the checkpoint settings) plus the data fingerprint.
    """

    def __init__(self, path: str | os.PathLike[str] | None, config: dict[str, Any], ds: PreparedDataset,
                 resume_free: tuple[str, ...], where: str) -> None:
        self.path = None if path is None else Path(path)
        cfg = {k: v for k, v in config.items() if k not in resume_free}
        train = dict(cfg.get("train") or {})
        for k in ("checkpoint", "checkpoint_every", "sample_batch_size", "device", "threads"):
            train.pop(k, None)
        cfg["train"] = train
        self.key = json.dumps(cfg, sort_keys=True, default=str) + "|" + data_fingerprint(ds)
        self.where = where

    def load(self) -> dict[str, Any] | None:
        """The saved state of this fit, or None (no file, or no checkpoint configured)."""
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise InputError("not a training checkpoint of a sequence baseline", where=str(self.path),
                             fix="delete it or point train.checkpoint at a new file")
        if state.get("key") != self.key:
            raise InputError("the training checkpoint belongs to another config or training set",
                             where=f"{self.where}.train.checkpoint ({self.path})",
                             fix="delete it, or use another train.checkpoint path for this fit")
        logger.info("%s: resuming from %s", self.where, self.path)
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        save_checkpoint(self.path, {"format": RESUME_FORMAT, "key": self.key, **state})
