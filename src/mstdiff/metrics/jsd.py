"""Jensen–Shannon divergence between histograms on shared bin edges.

All divergences of the evaluation use base 2, so they lie in ``[0, 1]``: 0 for identical
histograms, 1 for histograms with disjoint supports.

Binning conventions (used by every JSD metric of :mod:`mstdiff.metrics`):

- The two sets are always counted on the **same** edges, computed from the **union** of both
  sets (never one set of edges per set).
- ``method="quantile"`` (used by the metrics): interior edges at the quantiles ``i / bins`` of the
  union, de-duplicated. Quantile edges are invariant to any monotone rescaling (``log1p`` included),
  so a heavy-tailed variable such as traffic is binned as finely in its bulk as in its tail, and an
  outlier in one set cannot squash the other set into a single bin.
- ``method="linear"``: ``bins`` equal-width bins over ``range`` (default: min..max of the union),
  like :func:`numpy.histogram`.
- Values outside the edges are counted in the first or last bin (no mass is dropped).
- ``zero_bin=True``: exact zeros get a bin of their own and the edges are computed from the
  non-zero values only. Traffic, distances and radii are zero-inflated (idle slots, users who stay
  put); without this bin the zeros would swallow several quantile bins.
- Integer-valued quantities (stay lengths, number of distinct locations) use :func:`discrete_jsd`:
  one bin per distinct value that occurs in either set.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["jsd", "shared_edges", "histogram_counts", "histogram_jsd", "discrete_jsd"]

BinMethod = Literal["quantile", "linear"]


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2) between two histograms of the same shape.

    ``p`` and ``q`` are non-negative counts or probabilities (each is normalised to sum 1)::

        M = (P + Q) / 2
        JSD(P, Q) = ½ Σ_i P_i log2(P_i / M_i) + ½ Σ_i Q_i log2(Q_i / M_i)      (0 log 0 = 0)

    Symmetric, 0 iff ``P = Q``, 1 iff the supports are disjoint. Returns NaN if either histogram
    is empty (sums to 0).
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()) or (p < 0).any() or (q < 0).any():
        raise ValueError("histograms must be finite and non-negative")
    sp, sq = p.sum(), q.sum()
    if sp <= 0 or sq <= 0:
        return float("nan")
    p = p / sp
    q = q / sq
    m = 0.5 * (p + q)
    total = 0.0
    for x in (p, q):
        nz = x > 0
        total += 0.5 * float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))
    return float(min(max(total, 0.0), 1.0))


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def shared_edges(
    a: np.ndarray,
    b: np.ndarray,
    bins: int = 50,
    *,
    method: BinMethod = "quantile",
    range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Bin edges computed from the union of ``a`` and ``b`` (see the module docstring).

    ``quantile``: the quantiles ``0, 1/bins, ..., 1`` of the union, de-duplicated (ties can merge
    bins, so there may be fewer than ``bins`` bins). ``linear``: ``bins`` equal-width bins over
    ``range`` or, by default, over the min..max of the union. Returns an increasing array of at
    least one edge (a single edge means all values are equal: one bin).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    u = np.concatenate([_finite(a, "a"), _finite(b, "b")])
    if u.size == 0:
        return np.zeros(1)
    if method == "quantile":
        if range is not None:
            u = u[(u >= range[0]) & (u <= range[1])]
            if u.size == 0:
                return np.asarray(range, dtype=np.float64)
        edges = np.quantile(u, np.linspace(0.0, 1.0, bins + 1))
        return np.unique(edges)
    if method == "linear":
        lo, hi = (float(u.min()), float(u.max())) if range is None else (float(range[0]), float(range[1]))
        if hi < lo:
            raise ValueError(f"range {range} is empty")
        if hi == lo:
            return np.asarray([lo])
        return np.linspace(lo, hi, bins + 1)
    raise ValueError(f"unknown binning method {method!r}: use 'quantile' or 'linear'")


def histogram_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``x`` in the bins ``[e_0, e_1), ..., [e_{k-1}, e_k]`` (k = len(edges) - 1).

    Values below ``e_0`` go to the first bin and values above ``e_k`` to the last, so no mass is
    lost. A single edge means one bin holding everything.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    k = max(edges.size - 1, 1)
    idx = np.searchsorted(edges[1:-1], x, side="right")  # 0..k-1
    return np.bincount(idx, minlength=k).astype(np.float64)


def histogram_jsd(
    a: np.ndarray,
    b: np.ndarray,
    *,
    bins: int = 50,
    range: tuple[float, float] | None = None,
    edges: np.ndarray | None = None,
    method: BinMethod = "linear",
    zero_bin: bool = False,
) -> float:
    """JSD (base 2) between the histograms of ``a`` and ``b`` on shared edges.

    ``edges`` (explicit) wins; otherwise they come from :func:`shared_edges` of the union with
    ``bins``, ``method`` and ``range``. With ``zero_bin`` exact zeros are counted in a bin of their
    own and the edges are computed from the non-zero values. Returns NaN if either set is empty.
    """
    a = _finite(a, "a")
    b = _finite(b, "b")
    if a.size == 0 or b.size == 0:
        return float("nan")
    pa: list[np.ndarray] = []
    pb: list[np.ndarray] = []
    if zero_bin:
        za, zb = a == 0, b == 0
        pa.append(np.array([float(za.sum())]))
        pb.append(np.array([float(zb.sum())]))
        a, b = a[~za], b[~zb]
    if a.size or b.size:
        e = shared_edges(a, b, bins, method=method, range=range) if edges is None else np.asarray(edges)
        pa.append(histogram_counts(a, e))
        pb.append(histogram_counts(b, e))
    return jsd(np.concatenate(pa), np.concatenate(pb))


def discrete_jsd(a: np.ndarray, b: np.ndarray) -> float:
    """JSD (base 2) between the frequency tables of two sets of discrete values.

    One bin per distinct value occurring in ``a`` or ``b`` (exact equality), e.g. stay lengths in
    slots or numbers of distinct locations. Returns NaN if either set is empty.
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.size == 0 or b.size == 0:
        return float("nan")
    values = np.unique(np.concatenate([a, b]))
    ca = np.bincount(np.searchsorted(values, a), minlength=values.size)
    cb = np.bincount(np.searchsorted(values, b), minlength=values.size)
    return jsd(ca, cb)
