"""Traffic metrics: volume JSD, first-order difference JSD, daily periodic RMSE.

Inputs are traffic arrays ``[U, T]`` (samples × time bins, non-negative) of the real and the
generated set; the two sets may differ in U. No metric pairs sample i of one set with sample i of
the other (MSTDiff paper §IV-A3; DESIGN §3).
"""

from __future__ import annotations

import logging

import numpy as np

from mstdiff.errors import InputError
from mstdiff.metrics.jsd import histogram_jsd

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BINS",
    "traffic_differences",
    "daily_frequency_index",
    "periodic_strength",
    "quantile_rmse",
    "traffic_volume_jsd",
    "traffic_diff_jsd",
    "daily_periodic_rmse",
]

DEFAULT_BINS = 50  # quantile bins (besides the zero bin) of every continuous JSD metric


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [U, T] array, got shape {x.shape}")
    return x


def traffic_differences(traffic: np.ndarray) -> np.ndarray:
    """First-order differences along time, ``m[:, t+1] - m[:, t]``, shape ``[U, T-1]``."""
    return np.diff(_as_2d(traffic, "traffic"), axis=1)


def daily_frequency_index(T: int, bin_minutes: int) -> int:
    """Index of the daily frequency in ``rfft`` of a length-T series: the number of days in the window.

    ``k = T * bin_minutes / 1440`` (T = 48 at 30 min → 1; T = 336 → 7). A window that is not a whole
    number of days uses the nearest integer (with a warning); a window shorter than half a day or
    too short to resolve the frequency raises :class:`InputError`.
    """
    days = T * bin_minutes / 1440.0
    k = int(round(days))
    if k < 1 or k > T // 2:
        raise InputError(
            f"a window of T = {T} bins of {bin_minutes} min ({days:.3g} days) cannot resolve the daily "
            "frequency",
            where="daily periodic metric",
            fix="use windows of at least one day (e.g. T = 48 at 30 min)",
        )
    if abs(days - k) > 1e-9:
        logger.warning("window of %.3g days is not a whole number of days; using FFT bin %d", days, k)
    return k


def periodic_strength(traffic: np.ndarray, bin_minutes: int = 30) -> np.ndarray:
    """Per-sample share of the daily component in the amplitude spectrum, shape ``[U]``.

    With ``F = |rfft(m)|`` (bins ``0..T//2``, the DC bin included) and ``k`` the daily frequency
    index (:func:`daily_frequency_index`)::

        p(m) = F[k] / Σ_j F[j]          (0 for an all-zero series)

    Values lie in ``[0, 0.5]`` for non-negative traffic (``F[k] <= F[0]``).
    """
    x = _as_2d(traffic, "traffic")
    k = daily_frequency_index(x.shape[1], bin_minutes)
    mag = np.abs(np.fft.rfft(x, axis=1))  # (U, T//2+1)
    total = mag.sum(axis=1)
    out = np.zeros(x.shape[0])
    ok = total > 0
    out[ok] = mag[ok, k] / total[ok]
    return out


def quantile_rmse(a: np.ndarray, b: np.ndarray, n_quantiles: int | None = None) -> float:
    """RMSE between the quantile functions of two unpaired samples (sorted-value matching).

    Both samples are evaluated at the common grid ``q_i = (i + ½) / n``, ``i = 0..n-1`` with
    ``n = n_quantiles or max(len(a), len(b))``, by linear interpolation of the sorted values
    (Hazen plotting positions, so that for ``len(a) == len(b) == n`` this is exactly the RMSE
    between the sorted arrays)::

        RMSE = sqrt( mean_i (Q_a(q_i) - Q_b(q_i))² )

    Returns NaN if either sample is empty.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        return float("nan")
    n = int(n_quantiles or max(a.size, b.size))
    q = (np.arange(n) + 0.5) / n
    qa = np.quantile(a, q, method="hazen")
    qb = np.quantile(b, q, method="hazen")
    return float(np.sqrt(np.mean((qa - qb) ** 2)))


def traffic_volume_jsd(real: np.ndarray, generated: np.ndarray, *, bins: int = DEFAULT_BINS) -> float:
    """JSD (base 2) of the pooled traffic values ``m[u, t]`` of all samples and slots.

    Binning: zero traffic is a bin of its own; the positive values are binned at ``bins`` quantile
    edges of the union of both sets' positive values (equivalent to quantile bins of
    ``log1p(m)``; robust to heavy tails). Lower is better.
    """
    return histogram_jsd(_as_2d(real, "real"), _as_2d(generated, "generated"),
                         bins=bins, method="quantile", zero_bin=True)


def traffic_diff_jsd(real: np.ndarray, generated: np.ndarray, *, bins: int = DEFAULT_BINS) -> float:
    """JSD (base 2) of the pooled first-order differences ``m[u, t+1] - m[u, t]``.

    Binning: zero difference is a bin of its own; the non-zero differences (both signs) are binned
    at ``bins`` quantile edges of the union of both sets. Lower is better.
    """
    return histogram_jsd(traffic_differences(real), traffic_differences(generated),
                         bins=bins, method="quantile", zero_bin=True)


def daily_periodic_rmse(real: np.ndarray, generated: np.ndarray, *, bin_minutes: int = 30) -> float:
    """RMSE between the sorted per-sample daily periodic strengths of the two sets.

    ``p(m) = |rfft(m)|[k] / Σ_j |rfft(m)|[j]`` with ``k = T * bin_minutes / 1440`` (number of days
    in the window; :func:`periodic_strength`), then :func:`quantile_rmse` of the two sets of p
    values on a common grid of ``max(U_real, U_gen)`` quantiles. No binning. Lower is better.
    """
    return quantile_rmse(periodic_strength(real, bin_minutes), periodic_strength(generated, bin_minutes))
