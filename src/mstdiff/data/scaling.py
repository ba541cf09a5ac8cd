"""Traffic scaling shared by every learned model: ``log1p``, standardise, and back into the data's domain.

Real traffic is heavy-tailed, mostly exact zeros and, for connected minutes, often exactly a full
slot. Models work on ``x = (log1p(m) − μ) / σ`` with μ, σ from the training set. Decoding inverts
it and puts the value back where real values can lie (DESIGN §1, "Traffic decoding stays in the
data's domain"):

1. ``m = expm1(σ x + μ)``, clamped to ``[0, upper]``; ``upper`` is the largest possible value
   (``bin_minutes`` for connected minutes; none for bytes, where the log is capped at
   ``log1p(2 · max)`` only to keep ``expm1`` finite);
2. the **atoms**: ``m ≤ zero_threshold`` becomes exactly 0 and ``m ≥ full_threshold`` exactly
   ``upper`` (a full slot);
3. every other value is rounded to the data's ``resolution`` (1 for whole minutes or bytes) and
   kept inside ``[resolution, upper − resolution]``, so it stays a partial slot.

The thresholds start at the midpoints of the data's grid (half a resolution step above 0 and
below ``upper``). :meth:`TrafficScaler.calibrate` then sets them from a model's own samples so
that the generated share of zeros and of full slots equals the training set's (``zero_share``,
``full_share``): a diffusion model blurs an atom into a bump around it, and a fixed midpoint
turns about half of that bump into the atom. Calibration uses training statistics only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from mstdiff.errors import InputError

A = TypeVar("A", np.ndarray, Tensor)

#: units whose values cannot exceed the slot length (``meta["bin_minutes"]``)
SLOT_BOUNDED_UNITS = ("minutes",)


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float64))


def _like(y: Tensor, x: np.ndarray | Tensor) -> Any:
    """NumPy in → float32 NumPy out; tensor in → tensor out."""
    return y if isinstance(x, Tensor) else y.numpy().astype(np.float32)


def detect_resolution(x: np.ndarray) -> float | None:
    """1.0 when every value is a whole number (minutes, bytes), else None (continuous data)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return None
    return 1.0 if bool(np.all(np.abs(x - np.round(x)) < 1e-6)) else None


@dataclass(frozen=True)
class TrafficScaler:
    mean: float  # μ of log1p(traffic) over the training set
    std: float  # σ of log1p(traffic) (1 if the set is constant)
    zero_threshold: float  # decoded values at or below this become exactly 0
    log_cap: float = float("inf")  # decoded log1p(traffic) is clamped to at most this
    upper: float | None = None  # largest possible value (a full slot); None: unbounded (bytes, MB)
    resolution: float | None = None  # values are multiples of this (1: whole minutes); None: continuous
    full_threshold: float | None = None  # decoded values at or above this become exactly `upper`
    zero_share: float = 0.0  # share of exact zeros in the training set (calibration target)
    full_share: float = 0.0  # share of values equal to `upper` in the training set (calibration target)
    calibrated: bool = False  # thresholds set by `calibrate` from a model's samples
    train_max: float | None = None  # largest training value (None: a scaler saved before it was kept)

    @classmethod
    def fit(cls, traffic: np.ndarray, *, upper: float | None = None,
            resolution: float | None | str = "auto") -> TrafficScaler:
        """Statistics of the training traffic; ``upper`` and ``resolution`` describe the domain.

        ``resolution = "auto"``: 1 where every training value is whole, else continuous.
        """
        x = np.asarray(traffic, dtype=np.float64)
        if not np.isfinite(x).all() or (x < 0).any():
            raise InputError("traffic must be finite and >= 0", where="TrafficScaler.fit",
                             fix="check the prepared dataset (mstdiff info)")
        if upper is not None and x.size and x.max() > upper * (1 + 1e-6):
            raise InputError(f"traffic reaches {x.max():g}, above its possible maximum {upper:g}",
                             where="TrafficScaler.fit",
                             fix="check the dataset's traffic_unit and bin_minutes (mstdiff info)")
        res = detect_resolution(x) if resolution == "auto" else resolution
        lx = np.log1p(x)
        pos = x[x > 0]
        std = float(lx.std()) if lx.size else 1.0
        if res is not None:
            zero_thr = 0.5 * float(res)
        else:
            zero_thr = float(pos.min()) / 2 if pos.size else 0.0
        full_thr = None
        if upper is not None:
            full_thr = float(upper) - 0.5 * float(res) if res is not None else float(upper)
        cap = math.log1p(float(upper)) if upper is not None else (
            float(np.log1p(2 * x.max())) if x.size else float("inf"))
        return cls(
            mean=float(lx.mean()) if lx.size else 0.0,
            std=std if std > 0 else 1.0,
            zero_threshold=zero_thr,
            log_cap=cap,
            upper=None if upper is None else float(upper),
            resolution=None if res is None else float(res),
            full_threshold=full_thr,
            zero_share=float((x == 0).mean()) if x.size else 0.0,
            full_share=float((x >= upper).mean()) if (upper is not None and x.size) else 0.0,
            train_max=float(x.max()) if x.size else None,
        )

    @classmethod
    def for_dataset(cls, ds: Any) -> TrafficScaler:
        """:meth:`fit` on a prepared dataset, with its domain from the meta (unit, slot length)."""
        meta = getattr(ds, "meta", {}) or {}
        unit = str(meta.get("traffic_unit", "unknown")).lower()
        upper = float(meta["bin_minutes"]) if unit in SLOT_BOUNDED_UNITS and meta.get("bin_minutes") else None
        return cls.fit(ds.traffic, upper=upper)

    def encode(self, traffic: A) -> A:
        """``(log1p(m) − μ) / σ`` (tensor → tensor, array → float32 array)."""
        t = _as_tensor(traffic)
        return _like((torch.log1p(t.clamp_min(0)) - self.mean) / self.std, traffic)

    def model_range(self) -> tuple[float, float]:
        """``[encode(0), encode(max)]``: where the training series lie in model space. ``max`` is
        ``upper`` where the unit has one, else the training maximum (for a scaler saved without it,
        the value at the log cap, ``2 · max``)."""
        top = (math.log1p(self.upper) if self.upper is not None
               else math.log1p(self.train_max) if self.train_max is not None else self.log_cap)
        lo = -self.mean / self.std
        return lo, max(lo, (top - self.mean) / self.std) if math.isfinite(top) else float("inf")

    def continuous(self, x: A) -> A:
        """``expm1(σ x + μ)`` clamped to ``[0, upper]``: the value before atoms and rounding."""
        t = _as_tensor(x)
        y = torch.nan_to_num(t * self.std + self.mean, nan=0.0, posinf=self.log_cap, neginf=0.0)
        m = torch.expm1(y.clamp(max=self.log_cap)).clamp_min(0)
        if self.upper is not None:
            m = m.clamp(max=self.upper)
        return _like(m, x)

    def decode(self, x: A) -> A:
        """Model space → traffic in the data's domain: atoms at 0 and ``upper``, values on the grid."""
        t = _as_tensor(x)
        m = _as_tensor(self.continuous(t))
        zero = m <= self.zero_threshold
        full = (torch.zeros_like(zero) if self.full_threshold is None or self.upper is None
                else m >= self.full_threshold)
        if self.resolution is not None:
            r = self.resolution
            m = torch.round(m / r) * r
            hi = self.upper - r if self.upper is not None else float("inf")
            m = m.clamp(min=r, max=max(hi, r))
        if self.upper is not None:
            m = torch.where(full, torch.full_like(m, self.upper), m)
        m = torch.where(zero, torch.zeros_like(m), m)
        return _like(m, x)

    @property
    def activity_classes(self) -> int:
        """Classes of the slot activity channel: 3 (zero / partial / full) with an ``upper``, else 2."""
        return 3 if self.upper is not None else 2

    def activity(self, traffic: A) -> A:
        """Slot activity classes of real traffic: 0 zero, 1 partial (or positive), 2 full (``upper``)."""
        t = _as_tensor(traffic)
        a = (t > 0).long()
        if self.upper is not None:
            a = torch.where(t >= self.upper, torch.full_like(a, 2), a)
        return a if isinstance(traffic, Tensor) else a.numpy()

    def decode_with_activity(self, x: A, activity: np.ndarray | Tensor) -> A:
        """Decode with the atoms given by an activity channel instead of the thresholds.

        Class 0 is exactly 0, class 2 exactly ``upper``; class 1 is the continuous value rounded
        to the resolution and kept strictly between the atoms (``[resolution, upper − resolution]``).
        """
        t = _as_tensor(x)
        a = _as_tensor(activity).to(t.device).long()
        m = _as_tensor(self.continuous(t))
        lo = self.resolution if self.resolution is not None else 2.0 * self.zero_threshold
        if self.resolution is not None:
            m = torch.round(m / self.resolution) * self.resolution
        hi = self.upper - (self.resolution or 0.0) if self.upper is not None else float("inf")
        m = m.clamp(min=lo, max=max(hi, lo))
        m = torch.where(a == 0, torch.zeros_like(m), m)
        if self.upper is not None:
            m = torch.where(a == 2, torch.full_like(m, self.upper), m)
        return _like(m, x)

    def calibrate(self, x: np.ndarray | Tensor) -> TrafficScaler:
        """A copy whose thresholds give ``x``'s decoded values the training shares of zeros and full slots.

        ``x``: model-space samples of the model being calibrated (any shape). The zero threshold is
        the ``zero_share`` quantile of their continuous values, the full threshold the
        ``1 − full_share`` quantile; values tied with a threshold (clamped at 0 or ``upper``) join its atom.
        """
        m = np.sort(_as_tensor(self.continuous(_as_tensor(x))).double().numpy().ravel())
        if m.size == 0:
            return self
        k0 = int(round(self.zero_share * m.size))  # the k0 smallest values become zeros
        zero_thr = float(m[k0 - 1]) if k0 > 0 else -1.0
        full_thr = self.full_threshold
        if self.upper is not None:
            k1 = int(round(self.full_share * m.size))  # the k1 largest values become full slots
            full_thr = float(m[m.size - k1]) if k1 > 0 else self.upper + 1.0
            full_thr = max(full_thr, float(np.nextafter(zero_thr, np.inf)))
        return dataclasses.replace(self, zero_threshold=zero_thr, full_threshold=full_thr, calibrated=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrafficScaler:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
