"""Paired scores of conditional samples against the real values they stand for.

For conditional generation the pairing is real (the k-th draw of condition i is a guess of real
sample i), so proper scoring rules apply, unlike for unconditional sets that only have
distributional metrics. Draws come as ``(n, K, T)`` arrays, the truth as ``(n, T)``; a ``mask``
``(n, T)`` restricts a score to the generated slots.

* :func:`crps` — the continuous ranked probability score of the K-draw ensemble per slot,
  ``E|X − y| − ½ E|X − X'|`` (the ensemble's own CDF; Gneiting & Raftery 2007), in the traffic unit.
  For one draw it is the absolute error.
* :func:`energy_score` — its multivariate form over a sample's slots,
  ``E‖X − y‖ − ½ E‖X − X'‖`` (Euclidean norm over the scored slots).
* :func:`interval_coverage` — share of slots whose real value lies in the central ``level``
  interval of the K draws (empirical quantiles); ``level`` for a calibrated model.
* :func:`location_accuracy` — top-1 / top-k accuracy of the station per slot, ranking stations by
  how many of the K draws chose them (ties broken by the earlier draw).
* :func:`location_distance_km` — mean great-circle distance between each draw's station and the
  real one.
"""

from __future__ import annotations

import numpy as np

from mstdiff.metrics.trajectory import haversine_km


def _mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def crps_per_slot(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS ``(n, T)`` of the ensembles ``draws (n, K, T)`` at ``truth (n, T)``."""
    x = np.asarray(draws, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    K = x.shape[1]
    term1 = np.abs(x - y[:, None, :]).mean(axis=1)
    # E|X − X'| over all ordered pairs, from the sorted draws: Σ_i (2i − K − 1) x_(i) · 2 / K²
    xs = np.sort(x, axis=1)
    weights = (2 * np.arange(1, K + 1) - K - 1).reshape(1, K, 1)
    term2 = 2.0 * (weights * xs).sum(axis=1) / (K * K)
    return term1 - 0.5 * term2


def crps(draws: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean CRPS over the (masked) slots."""
    c = crps_per_slot(draws, truth)
    return float(c[_mask(mask, c.shape)].mean())


def energy_score(draws: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean energy score over samples (norms over each sample's masked slots)."""
    x = np.asarray(draws, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    m = _mask(mask, y.shape).astype(np.float64)
    d = x - y[:, None, :]
    t1 = np.sqrt((d * d * m[:, None, :]).sum(-1)).mean(axis=1)  # (n,)
    diff = x[:, :, None, :] - x[:, None, :, :]  # (n, K, K, T)
    t2 = np.sqrt((diff * diff * m[:, None, None, :]).sum(-1)).mean(axis=(1, 2))
    keep = m.sum(-1) > 0
    return float((t1 - 0.5 * t2)[keep].mean())


def interval_coverage(draws: np.ndarray, truth: np.ndarray, level: float,
                      mask: np.ndarray | None = None) -> float:
    """Share of (masked) slots whose truth lies in the central ``level`` interval of the draws."""
    lo, hi = np.quantile(np.asarray(draws, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2], axis=1)
    y = np.asarray(truth, dtype=np.float64)
    inside = (y >= lo) & (y <= hi)
    return float(inside[_mask(mask, y.shape)].mean())


def vote_ranks(draws: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` stations most often drawn per slot ``(n, T, k)`` (−1 where fewer distinct)."""
    n, K, T = draws.shape
    out = np.full((n, T, k), -1, dtype=np.int64)
    for i in range(n):
        for t in range(T):
            vals, first, counts = np.unique(draws[i, :, t], return_index=True, return_counts=True)
            order = np.lexsort((first, -counts))[:k]
            out[i, t, : order.size] = vals[order]
    return out


def location_accuracy(draws: np.ndarray, truth: np.ndarray, k: int = 1,
                      mask: np.ndarray | None = None) -> float:
    """Top-``k`` accuracy per (masked) slot of the stations ranked by votes of the K draws."""
    top = vote_ranks(np.asarray(draws), k)
    hit = (top == np.asarray(truth)[:, :, None]).any(-1)
    return float(hit[_mask(mask, hit.shape)].mean())


def location_distance_km(draws: np.ndarray, truth: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                         mask: np.ndarray | None = None) -> float:
    """Mean distance (km) between each draw's station and the real station, over (masked) slots."""
    d = np.asarray(draws)
    y = np.asarray(truth)
    dist = haversine_km(lat[d], lon[d], lat[y][:, None, :], lon[y][:, None, :])  # (n, K, T)
    m = _mask(mask, y.shape)
    return float(dist.mean(axis=1)[m].mean())
