"""Traffic scaling shared by every learned model: ``log1p``, standardise, and back.

Real traffic is heavy-tailed and mostly exact zeros. Models work on
``x = (log1p(m) − μ) / σ`` with μ, σ from the training set. Decoding inverts it,
``m = max(expm1(σ x + μ), 0)``, and sets values below ``zero_threshold`` (half the smallest
positive training value) to exactly 0, so generated series keep the real share of empty slots
instead of a haze of tiny positive values. Decoded values are capped at twice the training
maximum (``log_cap = log1p(2 max)``): a diffusion sample far outside the data (an undertrained
model, a diverging trajectory) then stays finite instead of overflowing ``expm1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from mstdiff.errors import InputError

A = TypeVar("A", np.ndarray, Tensor)


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float64))


def _like(y: Tensor, x: np.ndarray | Tensor) -> Any:
    """NumPy in → float32 NumPy out; tensor in → tensor out."""
    return y if isinstance(x, Tensor) else y.numpy().astype(np.float32)


@dataclass(frozen=True)
class TrafficScaler:
    mean: float  # μ of log1p(traffic) over the training set
    std: float  # σ of log1p(traffic) (1 if the set is constant)
    zero_threshold: float  # decoded values below this become exactly 0
    log_cap: float = float("inf")  # decoded log1p(traffic) is clamped to at most this

    @classmethod
    def fit(cls, traffic: np.ndarray) -> TrafficScaler:
        x = np.asarray(traffic, dtype=np.float64)
        if not np.isfinite(x).all() or (x < 0).any():
            raise InputError("traffic must be finite and >= 0", where="TrafficScaler.fit",
                             fix="check the prepared dataset (mstdiff info)")
        lx = np.log1p(x)
        pos = x[x > 0]
        std = float(lx.std()) if lx.size else 1.0
        return cls(
            mean=float(lx.mean()) if lx.size else 0.0,
            std=std if std > 0 else 1.0,
            zero_threshold=float(pos.min()) / 2 if pos.size else 0.0,
            log_cap=float(np.log1p(2 * x.max())) if x.size else float("inf"),
        )

    def encode(self, traffic: A) -> A:
        """``(log1p(m) − μ) / σ`` (tensor → tensor, array → float32 array)."""
        t = _as_tensor(traffic)
        return _like((torch.log1p(t.clamp_min(0)) - self.mean) / self.std, traffic)

    def decode(self, x: A) -> A:
        """``max(expm1(min(σ x + μ, log_cap)), 0)`` with values below ``zero_threshold`` set to 0."""
        t = _as_tensor(x)
        y = torch.nan_to_num(t * self.std + self.mean, nan=0.0, posinf=self.log_cap, neginf=0.0)
        m = torch.expm1(y.clamp(max=self.log_cap)).clamp_min(0)
        return _like(torch.where(m < self.zero_threshold, torch.zeros_like(m), m), x)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrafficScaler:
        return cls(**d)
