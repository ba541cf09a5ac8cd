"""Traffic scaling shared by the traffic baselines (CSDI, DiT-1D).

``encode``: ``z = (log1p(m) − mean) / std`` with ``mean``/``std`` of ``log1p`` of the training
traffic. ``decode``: ``m = expm1(z · std + mean)``, clamped at 0, and every value below
``zero_threshold`` (half the smallest positive training value) set to exactly 0, because real
traffic has many exact zeros that a continuous model only gets close to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mstdiff.errors import InputError

__all__ = ["TrafficScaler"]


@dataclass
class TrafficScaler:
    """``log1p`` + standardisation of traffic, with exact zeros restored on decoding."""

    mean: float = 0.0  # mean of log1p(traffic) over the training set
    std: float = 1.0  # std of log1p(traffic) over the training set (1 if the set is constant)
    zero_threshold: float = 0.0  # decoded values below this become 0 (half the smallest positive value)

    @classmethod
    def fit(cls, traffic: np.ndarray) -> TrafficScaler:
        x = np.asarray(traffic, dtype=np.float64)
        if x.size == 0:
            raise InputError("no traffic values to fit the scaler on", where="TrafficScaler.fit")
        if not np.isfinite(x).all() or (x < 0).any():
            raise InputError("traffic must be finite and >= 0", where="TrafficScaler.fit")
        lx = np.log1p(x)
        std = float(lx.std())
        pos = x[x > 0]
        return cls(
            mean=float(lx.mean()),
            std=std if std > 1e-12 else 1.0,
            zero_threshold=float(0.5 * pos.min()) if pos.size else 0.0,
        )

    def encode(self, traffic: np.ndarray) -> np.ndarray:
        """``(log1p(m) − mean) / std`` as float32, same shape."""
        x = np.asarray(traffic, dtype=np.float64)
        return ((np.log1p(np.clip(x, 0.0, None)) - self.mean) / self.std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """``expm1(z · std + mean)`` clamped to ``[0, ∞)``; values below ``zero_threshold`` → 0."""
        lx = np.asarray(z, dtype=np.float64) * self.std + self.mean
        m = np.expm1(np.clip(lx, None, 80.0))  # clip keeps a diverged sample finite
        m = np.where(np.isfinite(m), m, 0.0)
        m = np.clip(m, 0.0, None)
        m[m < self.zero_threshold] = 0.0
        return m.astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "zero_threshold": self.zero_threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrafficScaler:
        return cls(mean=float(data["mean"]), std=float(data["std"]),
                   zero_threshold=float(data["zero_threshold"]))
