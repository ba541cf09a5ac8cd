"""Trajectory metrics in the conventions of MoveSim (optional set; ``evaluate(conventions="movesim")``).

MoveSim (Feng et al., "Learning to Simulate Human Mobility", KDD 2020) introduced the six metrics
that most trajectory-generation papers since report: Distance, Radius, Duration, DailyLoc, G-rank
and I-rank. :mod:`mstdiff.metrics.trajectory` computes the same six ideas in our own conventions
(the default). This module re-implements them as the MoveSim evaluation defines them, so that a
table of ours can be set beside a published one (GeoLife benchmark: 23,768 grid cells with
(lat, lon) centres, T = 48 slots of 30 min, one sample = one day). Written from the published
definitions and the behaviour of MoveSim's released evaluation; no code is copied.

Inputs are location arrays ``[U, T]`` of station indices and, for the spatial metrics, the station
coordinates ``coords`` ``[N, 2]`` as (lat, lon) degrees. The conventions:

- **JSD in nats**: ``JSD(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M)``, ``M = (P + Q)/2``, natural log, so
  values lie in ``[0, ln 2 ≈ 0.693]`` (ours: base 2, in ``[0, 1]``; ``JSD_nats = ln 2 · JSD_bits``).
- **Fixed-width bins** (:func:`fixed_histogram`): the histogram of values ``x`` with ``bins`` over
  ``[lo, hi)`` has its edges at ``lo + i · (hi − lo)/bins`` for ``i = 0, 1, ...`` while the edge
  stays below ``hi`` — ``numpy.arange(lo, hi, (hi − lo)/bins)``, hence ``bins − 1`` bins, the last one
  closed — and values outside ``[lo, last edge]`` are **dropped**, not clipped. The same edges are
  used for both sets (ours: quantile edges of the union of both sets, nothing dropped).
- **Scale** ``D`` (``max_distance``): the range of the Distance bins is ``[0, D)`` and that of the
  Radius bins ``[0, D²)``. MoveSim hard-codes ``D`` per dataset (247.3 for GeoLife, 2.088 for its
  cellular data) and does not say how it was obtained. Our default is a guess that fits both
  magnitudes: the largest squared coordinate distance between two stations of the table
  (:func:`squared_diameter`; GeoLife's cells reach from Beijing to Shanghai and beyond, 2.088 deg²
  is about one city); it is not verified. Pass ``max_distance=247.3`` to use the GeoLife constant.

Unlike ours, these metrics are not robust to the coordinate scale: Distance and Radius are in
degrees² (a degree of longitude is shorter than one of latitude away from the equator), and the
resolution of Radius hangs on ``D²``: with GeoLife's D (``D²/10,000 ≈ 6 deg²`` per bin) every
radius within a city falls into the first bin (0 for any generator), while with a city table's own D
(e.g. 0.35 deg², bins of 1.3e-5 deg²) most samples get a bin of their own, and two independent
draws of 400 samples of the synthetic city of ``tests/metrics/test_movesim.py`` differ by ≈ 0.57
nats. The fixed top-100 of G-rank and
I-rank does not scale with the number of locations, and their 0.01-wide bins put most of the 100
frequencies into the first bin.
Ours are the default for these reasons; use these to compare with published MoveSim-style tables.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mstdiff.errors import InputError
from mstdiff.metrics.jsd import jsd
from mstdiff.metrics.trajectory import _coords, _locations, _row_runs, distinct_locations, rank_profile

logger = logging.getLogger(__name__)

__all__ = [
    "LN2",
    "DISTANCE_BINS",
    "RANK_BINS",
    "TOP_K",
    "jsd_nats",
    "fixed_edges",
    "fixed_histogram",
    "squared_diameter",
    "squared_step_distances",
    "squared_radius_of_gyration",
    "durations_without_last",
    "day_length",
    "daily_distinct_locations",
    "global_top_shares",
    "individual_rank_shares",
    "distance_jsd",
    "radius_jsd",
    "duration_jsd",
    "dailyloc_jsd",
    "grank_jsd",
    "irank_jsd",
]

LN2 = math.log(2.0)
DISTANCE_BINS = 10_000  # MoveSim: Distance over [0, D), Radius over [0, D²), 10,000 steps
RANK_BINS = 100  # MoveSim: G-rank and I-rank frequencies over [0, 1), steps of 0.01
TOP_K = 100  # MoveSim: the 100 most visited locations (G-rank) / own ranks (I-rank)
MINUTES_PER_DAY = 1440


# --------------------------------------------------------------------------- conventions
def jsd_nats(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats (natural log) between two histograms of the same shape::

        JSD(P, Q) = ½ Σ_i P_i ln(P_i / M_i) + ½ Σ_i Q_i ln(Q_i / M_i),   M = (P + Q)/2

    ``p``, ``q`` are counts or probabilities (each normalised to sum 1). In ``[0, ln 2]``; NaN if
    either histogram is empty. Equals ``ln 2 ·`` :func:`mstdiff.metrics.jsd.jsd` (base 2).
    """
    return jsd(p, q) * LN2


def fixed_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """MoveSim's bin edges ``lo, lo + w, lo + 2w, ...`` below ``hi``, ``w = (hi − lo)/bins``.

    That is ``numpy.arange(lo, hi, w)``: ``bins`` edges (so ``bins − 1`` bins) for the ranges used
    here; the last edge is ``hi − w`` up to rounding.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise InputError(f"the bin range [{lo}, {hi}) is empty", where="MoveSim metrics",
                         fix="give station coordinates that are not all equal, or pass max_distance > 0")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    return np.arange(lo, hi, (hi - lo) / bins)


def fixed_histogram(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of ``values`` on :func:`fixed_edges` (``numpy.histogram`` semantics).

    Bins ``[e_0, e_1), ..., [e_{k-1}, e_k]`` (the last one closed); values below ``e_0``, above
    the last edge or not finite (stations without coordinates) are dropped.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    counts, _ = np.histogram(x, bins=fixed_edges(lo, hi, bins))
    return counts.astype(np.float64)


def _fixed_jsd(a: np.ndarray, b: np.ndarray, lo: float, hi: float, bins: int) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return jsd_nats(fixed_histogram(a, lo, hi, bins), fixed_histogram(b, lo, hi, bins))


# --------------------------------------------------------------------------- quantities
def squared_diameter(coords: np.ndarray) -> float:
    """Largest squared coordinate distance between two stations, ``max_{i,j} Δlat² + Δlon²`` (deg²).

    Stations without finite coordinates are ignored. The farthest pair lies on the convex hull, so
    only hull vertices are compared (all points where the hull is degenerate, e.g. collinear).
    """
    c = _coords(coords)
    c = np.unique(c[np.isfinite(c).all(axis=1)], axis=0)
    if c.shape[0] < 2:
        return 0.0
    cand = c
    if c.shape[0] > 3:
        from scipy.spatial import ConvexHull

        try:
            cand = c[ConvexHull(c).vertices]
        except (RuntimeError, ValueError):  # QhullError (a RuntimeError): collinear or too few points
            cand = c
    best = 0.0
    for i in range(0, cand.shape[0], 1024):  # (chunk, M) blocks keep memory bounded
        d = ((cand[i:i + 1024, None, :] - cand[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(d.max()))
    return best


def squared_step_distances(locations: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Squared coordinate distance between consecutive slots, ``Δlat² + Δlon²`` (deg², no square
    root), shape ``[U, T-1]``; 0 for a slot spent at the same station."""
    loc = _locations(locations)
    c = _coords(coords)
    d = c[loc[:, 1:]] - c[loc[:, :-1]]  # (U, T-1, 2)
    return (d**2).sum(axis=-1)


def squared_radius_of_gyration(locations: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Radius of gyration without the square root, per sample, shape ``[U]`` (deg²)::

        g_u = (1/T) Σ_t (lat_{u,t} − c_lat)² + (lon_{u,t} − c_lon)²,   c = mean (lat, lon) of the T slots
    """
    loc = _locations(locations)
    c = _coords(coords)
    if loc.shape[1] == 0:
        return np.zeros(loc.shape[0])
    p = c[loc]  # (U, T, 2)
    return ((p - p.mean(axis=1, keepdims=True)) ** 2).sum(axis=-1).mean(axis=1)


def durations_without_last(locations: np.ndarray) -> np.ndarray:
    """Lengths (slots) of the maximal runs of equal consecutive locations, pooled, **without the last
    run of each sample** (it is cut by the window end).

    ``[[0, 0, 1, 1, 1, 2]]`` → ``[2, 3]``; a sample that never moves contributes nothing.
    """
    rows, lengths = _row_runs(_locations(locations))
    last = np.append(rows[1:] != rows[:-1], True) if rows.size else np.zeros(0, dtype=bool)
    return lengths[~last]


def day_length(T: int, slots_per_day: int | None) -> int:
    """Slots of one DailyLoc "day": ``slots_per_day`` where the window holds whole days, else T."""
    if slots_per_day and slots_per_day > 0 and T >= slots_per_day and T % slots_per_day == 0:
        return int(slots_per_day)
    return int(T)


def daily_distinct_locations(locations: np.ndarray, slots_per_day: int | None = None) -> np.ndarray:
    """Number of distinct stations in each day of each sample, shape ``[U · T/S]``.

    A window of whole days (``T`` a multiple of ``slots_per_day``) is cut into its days of ``S =
    slots_per_day`` slots; any other window (or ``slots_per_day=None``) is one day of ``S = T``.
    """
    loc = _locations(locations)
    U, T = loc.shape
    S = day_length(T, slots_per_day)
    if loc.size == 0:
        return np.zeros(0, dtype=np.int64)
    return distinct_locations(loc.reshape(U * (T // S), S))


def global_top_shares(locations: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Visit shares of the set's ``k`` most visited stations, in decreasing order, shape ``[k]``.

    ``share_l = slots at station l / all slots``; where fewer than ``k`` stations are visited (or
    the table has fewer than ``k``) the vector is padded with zeros, as MoveSim's unvisited cells
    of its 23,768 are.
    """
    loc = _locations(locations).ravel()
    if loc.size == 0:
        return np.zeros(k)
    counts = np.bincount(loc).astype(np.float64)
    top = -np.sort(-counts)[:k] / loc.size
    return np.pad(top, (0, k - top.size))


def individual_rank_shares(locations: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Mean over samples of the visit frequency of each sample's r-th most visited station,
    r = 1..k, renormalised to sum 1, shape ``[k]``::

        f_u[r] = visits of u's r-th station / T   (0 beyond its distinct count)
        F[r] = mean_u f_u[r] / Σ_r' mean_u f_u[r']

    (the renormalisation only matters where a sample visits more than ``k`` stations).
    """
    loc = _locations(locations)
    if loc.size == 0:
        return np.zeros(k)
    prof = rank_profile(loc)[:k]  # mean_u f_u over ranks 1..T
    prof = np.pad(prof, (0, k - prof.size))
    total = prof.sum()
    return prof / total if total > 0 else prof


# --------------------------------------------------------------------------- metrics
def _scale(coords: np.ndarray, max_distance: float | None) -> float:
    return squared_diameter(coords) if max_distance is None else float(max_distance)


def distance_jsd(real: np.ndarray, generated: np.ndarray, coords: np.ndarray, *,
                 max_distance: float | None = None, bins: int = DISTANCE_BINS) -> float:
    """Distance (MoveSim): JSD in nats of the pooled squared consecutive-slot distances (deg²).

    Values: ``Δlat² + Δlon²`` between the stations of slots t and t+1 (no square root, zeros
    included; :func:`squared_step_distances`). Bins: :func:`fixed_histogram` over ``[0, D)`` with
    ``bins`` = 10,000 (9,999 bins of width D/10,000), ``D = max_distance`` or, by default, the
    squared diameter of the station table. Ours (:func:`mstdiff.metrics.trajectory.distance_jsd`):
    haversine km, a zero bin plus 50 quantile bins of the union, base 2. Lower is better.
    """
    D = _scale(coords, max_distance)
    return _fixed_jsd(squared_step_distances(real, coords), squared_step_distances(generated, coords),
                      0.0, D, bins)


def radius_jsd(real: np.ndarray, generated: np.ndarray, coords: np.ndarray, *,
               max_distance: float | None = None, bins: int = DISTANCE_BINS) -> float:
    """Radius (MoveSim): JSD in nats of per-sample radii of gyration without the square root (deg²).

    Values: :func:`squared_radius_of_gyration`. Bins: :func:`fixed_histogram` over ``[0, D²)`` with
    ``bins`` = 10,000, ``D`` as in :func:`distance_jsd` (MoveSim squares the distance range once
    more although the radius is already squared: with GeoLife's D = 247.3 a bin is 6.1 deg² wide,
    every radius within a city falls into the first one and any generator scores near 0; with a
    city table's own D the bins are so narrow that the value nears ln 2 for real data too). Ours
    (:func:`mstdiff.metrics.trajectory.radius_jsd`): ``sqrt`` of the mean squared haversine km, a
    zero bin plus 10 quantile bins of the union, base 2. Lower is better.
    """
    D = _scale(coords, max_distance)
    return _fixed_jsd(squared_radius_of_gyration(real, coords),
                      squared_radius_of_gyration(generated, coords), 0.0, D * D, bins)


def _window(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    r, g = _locations(real, "real"), _locations(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"real and generated windows differ in length: T = {r.shape[1]} vs {g.shape[1]}")
    return r, g, int(r.shape[1])


def duration_jsd(real: np.ndarray, generated: np.ndarray) -> float:
    """Duration (MoveSim): JSD in nats of the pooled stay lengths over T, **last stay excluded**.

    Values: ``d / T`` for every run length d (slots) of :func:`durations_without_last`. Bins:
    :func:`fixed_histogram` over ``[0, 1)`` with ``bins = T`` (width 1/T: one bin per length
    1..T−2; for T = 48 the lengths 46 and 47 share the last, closed bin; at other T a value at the
    last edge may be dropped by rounding, as in MoveSim). Ours
    (:func:`mstdiff.metrics.trajectory.duration_jsd`): the last run included, one bin per length,
    base 2. Lower is better.
    """
    r, g, T = _window(real, generated)
    if T < 2:
        return float("nan")
    return _fixed_jsd(durations_without_last(r) / T, durations_without_last(g) / T, 0.0, 1.0, T)


def dailyloc_jsd(real: np.ndarray, generated: np.ndarray, bin_minutes: int | None = None) -> float:
    """DailyLoc (MoveSim): JSD in nats of the number of distinct stations per day over the day's slots.

    Values: ``k / S`` per day (:func:`daily_distinct_locations`; ``S = 1440 / bin_minutes`` slots
    where the window is whole days, else the window is one day of ``S = T``). Bins:
    :func:`fixed_histogram` over ``[0, 1)`` with ``bins = S`` (width 1/S; a day at S distinct stations,
    value 1, is dropped). Ours (:func:`mstdiff.metrics.trajectory.distinctloc_jsd`): distinct stations
    of the whole window over T, one bin per value, base 2. Lower is better.
    """
    r, g, T = _window(real, generated)
    spd = MINUTES_PER_DAY // bin_minutes if bin_minutes and MINUTES_PER_DAY % bin_minutes == 0 else None
    S = day_length(T, spd)
    if S < 2:
        return float("nan")
    return _fixed_jsd(daily_distinct_locations(r, spd) / S, daily_distinct_locations(g, spd) / S,
                      0.0, 1.0, S)


def grank_jsd(real: np.ndarray, generated: np.ndarray, *, k: int = TOP_K, bins: int = RANK_BINS) -> float:
    """G-rank (MoveSim): JSD in nats of the histograms of the top-100 global visit shares.

    Values: the ``k`` = 100 shares of :func:`global_top_shares` (zeros where fewer than 100 stations
    are visited). Bins: :func:`fixed_histogram` over ``[0, 1)`` with ``bins`` = 100 (99 bins of
    width 0.01); the histogram counts how many of the top 100 have a share in each bin, it does not
    align the two sets rank by rank. Ours (:func:`mstdiff.metrics.trajectory.grank_jsd`): the share
    at each rank 1..ceil(10 % · N) plus one bin for the rest, compared rank by rank, base 2. Lower
    is better.
    """
    a, b = _locations(real, "real"), _locations(generated, "generated")
    if a.size == 0 or b.size == 0:
        return float("nan")
    return _fixed_jsd(global_top_shares(a, k), global_top_shares(b, k), 0.0, 1.0, bins)


def irank_jsd(real: np.ndarray, generated: np.ndarray, *, k: int = TOP_K, bins: int = RANK_BINS) -> float:
    """I-rank (MoveSim): JSD in nats of the histograms of the mean individual top-100 rank frequencies.

    Values: the ``k`` = 100 entries of :func:`individual_rank_shares`. Bins: :func:`fixed_histogram`
    over ``[0, 1)`` with ``bins`` = 100 (99 bins of width 0.01), so again the values are binned, not
    aligned by rank. Ours (:func:`mstdiff.metrics.trajectory.irank_jsd`): the mean profile over
    ranks 1..T compared rank by rank, base 2. Lower is better.
    """
    a, b = _locations(real, "real"), _locations(generated, "generated")
    if a.size == 0 or b.size == 0:
        return float("nan")
    return _fixed_jsd(individual_rank_shares(a, k), individual_rank_shares(b, k), 0.0, 1.0, bins)
