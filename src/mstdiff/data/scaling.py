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

#: probabilities of the quantiles behind :meth:`TrafficScaler.calibrate_values`
VALUE_LEVELS = np.linspace(0.0, 1.0, 201)

#: model-space distance under which :meth:`TrafficScaler.map_values` treats two values as tied
TIE_TOLERANCE = 1e-6

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
    # model-space quantiles (at VALUE_LEVELS) of the training slots strictly between the atoms (the
    # activity channel's class 1), the target of :meth:`calibrate_values` (None: saved before it)
    positive_quantiles: tuple[float, ...] | None = None
    # :meth:`calibrate_values`: a model's class-1 values at these model-space quantiles are mapped
    # onto ``value_to`` (piecewise linear, by rank) in :meth:`decode_with_activity`; None: no map
    value_from: tuple[float, ...] | None = None
    value_to: tuple[float, ...] | None = None

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
        mu, sd = (float(lx.mean()) if lx.size else 0.0), (std if std > 0 else 1.0)
        inner = x[(x > 0) & (x < upper)] if upper is not None else pos
        pq = (tuple(float(v) for v in (np.quantile(np.log1p(inner), VALUE_LEVELS) - mu) / sd)
              if inner.size else None)
        return cls(
            mean=mu,
            std=sd,
            zero_threshold=zero_thr,
            log_cap=cap,
            upper=None if upper is None else float(upper),
            resolution=None if res is None else float(res),
            full_threshold=full_thr,
            zero_share=float((x == 0).mean()) if x.size else 0.0,
            full_share=float((x >= upper).mean()) if (upper is not None and x.size) else 0.0,
            train_max=float(x.max()) if x.size else None,
            positive_quantiles=pq,
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

    def decode_with_activity(self, x: A, activity: np.ndarray | Tensor, *,
                             generator: torch.Generator | None = None) -> A:
        """Decode with the atoms given by an activity channel instead of the thresholds.

        Class 0 is exactly 0, class 2 exactly ``upper``; class 1 is the continuous value rounded
        to the resolution and kept strictly between the atoms (``[resolution, upper − resolution]``),
        after the value map of :meth:`calibrate_values` where the scaler has one (``generator``:
        the draws that spread tied values over their share, :meth:`map_values`).
        """
        t = _as_tensor(x)
        a = _as_tensor(activity).to(t.device).long()
        if self.value_from is not None and self.value_to is not None:
            u = (None if generator is None else
                 torch.rand(t.shape, generator=generator, device=generator.device).cpu().double().numpy())
            v = np.clip(t.detach().cpu().double().numpy(), *self.model_range())  # as calibrated
            mapped = self.map_values(v, u)
            t = torch.from_numpy(mapped).to(device=t.device, dtype=t.dtype)
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

    def calibrate_values(self, x: np.ndarray | Tensor) -> TrafficScaler:
        """A copy that maps a model's class-1 values onto the training distribution of the values
        between the atoms, by rank (quantile mapping).

        ``x``: model-space values of the model's own samples at the slots its activity channel
        made class 1 (positive, not full). Their quantiles at :data:`VALUE_LEVELS` are mapped onto
        the training set's (``positive_quantiles``), piecewise linearly in between, so the order of
        the values within and across samples is kept and only their scale moves. A diffusion model
        whose traffic stream and activity channel disagree on where a sample is active puts
        zero-like values into active slots; this puts the share of each value back. Training
        statistics only, like :meth:`calibrate`. Values are taken inside :meth:`model_range` here
        and in decoding, so a model sampled with or without ``clip_traffic`` has its pile at the
        bound spread over that pile's share (:meth:`map_values`).
        """
        if self.positive_quantiles is None:
            raise InputError("this traffic scaler has no training quantiles of the positive values",
                             where="TrafficScaler.calibrate_values",
                             fix="re-train the model with this version (the scaler is fitted then)")
        v = _as_tensor(x).double().numpy().ravel()
        v = np.clip(v[np.isfinite(v)], *self.model_range())  # what decoding maps (a pile at a bound: a tie)
        if v.size == 0:
            return self
        src = np.maximum.accumulate(np.quantile(v, VALUE_LEVELS))  # non-decreasing for np.interp
        return dataclasses.replace(self, value_from=tuple(float(a) for a in src),
                                   value_to=tuple(self.positive_quantiles))

    def map_values(self, x: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        """The value map of :meth:`calibrate_values` on model-space values ``x``: the level of each
        value among the calibration sample's (a piecewise-linear CDF through the quantiles at
        :data:`VALUE_LEVELS`), then the training quantile at that level. A value the calibration
        sample holds many times (a model's samples pile up at the clip of the training range) has a
        range of levels, not one: ``u`` in [0, 1) (same shape as ``x``) picks its place in that
        range (the randomised probability integral transform), so a tie becomes a spread of values
        with the share it had, not a spike at one; without ``u``, the middle of the range."""
        if self.value_from is None or self.value_to is None:
            return np.asarray(x, dtype=np.float64)
        src, dst = np.asarray(self.value_from), np.asarray(self.value_to)
        lev = VALUE_LEVELS
        v = np.asarray(x, dtype=np.float64)
        # a knot within TIE_TOLERANCE counts as the same value: a float32 sample clipped at a bound
        # lies a rounding step away from the float64 bound its calibration sample piled up at
        left = np.searchsorted(src, v - TIE_TOLERANCE, side="left")
        right = np.searchsorted(src, v + TIE_TOLERANCE, side="right")
        # strictly between two knots: linear between their levels; on a run of equal knots: the run
        i = np.clip(left, 1, src.size - 1)
        span = src[i] - src[i - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(span > 0, (v - src[i - 1]) / span, 0.5)
        inside = lev[i - 1] + np.clip(frac, 0.0, 1.0) * (lev[i] - lev[i - 1])
        lo = lev[np.clip(left, 0, src.size - 1)]
        hi = lev[np.clip(right - 1, 0, src.size - 1)]
        w = np.full(v.shape, 0.5) if u is None else np.asarray(u, dtype=np.float64)
        level = np.where(right > left, lo + w * (hi - lo), inside)
        outside_lo, outside_hi = v < src[0] - TIE_TOLERANCE, v > src[-1] + TIE_TOLERANCE
        level = np.where(outside_lo, 0.0, np.where(outside_hi, 1.0, level))  # outside the sample: its ends
        return np.interp(level, lev, dst)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrafficScaler:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("positive_quantiles", "value_from", "value_to"):  # JSON / torch.save give lists
            if kw.get(k) is not None:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)
