"""Trajectory metrics over base-station sequences (MoveSim conventions; DESIGN §3).

Inputs are location arrays ``[U, T]`` of station indices (rows of the shared station table) of the
real and the generated set, and for the spatial metrics the station coordinates ``coords`` ``[N, 2]``
as (lat, lon) degrees. Each slot counts once (time-weighted), so a stay of 3 slots weighs 3.

Definitions of the per-sample / pooled quantities (MoveSim: Feng et al., KDD 2020; scikit-mobility
``measures.individual`` for the radius of gyration):

- Distance: great-circle (haversine) distance in km between the stations of consecutive slots,
  ``d_t = hav(l_t, l_{t+1})``, pooled over samples and t (zeros included: a stay is a 0 km step).
- Radius: radius of gyration in km per sample, ``r = sqrt(mean_t hav(l_t, c)^2)`` with ``c`` the
  mean (lat, lon) of the sample's slots.
- DistinctLoc: number of distinct stations in the sample divided by T.
- Duration: lengths (in slots) of the maximal runs of equal consecutive locations, pooled; the last
  run of every sample is included even though it is cut by the window end.
- G-rank (global rank): the global visit frequency (share of all slots) of the set's most visited
  station, its second most visited, ... down to rank ``k = ceil(10 % · N)``, plus one bin for the
  share of all other stations; each set is ranked by its own counts. JSD of the two vectors.
- I-rank (individual rank): per sample, the visit frequency (visits / T) of its most visited
  station, its second most visited, ...; averaged over samples this is a distribution over ranks
  1..T; JSD of the two.
- Home cell (added; G-rank and I-rank ignore *which* places are popular): each sample's main
  station (its most visited one) falls in one cell of a ``HOME_GRID × HOME_GRID`` grid whose lat and
  lon cuts are the quantiles of the REAL set's visited coordinates (cells of about equal real
  visits); JSD of the two sets' distributions of samples over cells. One value per sample, so a
  generator that spreads its visits (i.i.d. slots from the visit distribution) cannot beat the floor.
- :func:`location_jsd` (not a headline metric): JSD of the global visit distributions over the N
  stations. At Shanghai size (≈ 200 samples over 2,000 stations) two real halves differ by 0.77
  because each user visits a few stations; i.i.d. slot draws from the training visits score 0.60,
  below that floor, so it rewards noise (issue 13) and is kept only as a diagnostic.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mstdiff.metrics.jsd import discrete_jsd, histogram_jsd, jsd

logger = logging.getLogger(__name__)

__all__ = [
    "EARTH_RADIUS_KM",
    "haversine_km",
    "step_distances",
    "radius_of_gyration",
    "distinct_locations",
    "stay_durations",
    "visit_counts",
    "top_count",
    "rank_profile",
    "global_rank_profile",
    "distance_jsd",
    "radius_jsd",
    "distinctloc_jsd",
    "duration_jsd",
    "grank_jsd",
    "irank_jsd",
    "location_jsd",
    "home_cells",
    "home_cell_jsd",
]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius
DEFAULT_BINS = 50
RADIUS_BINS = 10  # one value per sample: at n ≈ 400, 10 bins show a 25 % radius error above the floor
HOME_GRID = 4  # home_cell_jsd: 4 × 4 cells
TOP_FRACTION = 0.10


def top_count(n_stations: int, top_fraction: float = TOP_FRACTION) -> int:
    """Number of top-ranked stations of G-rank: ``ceil(top_fraction · N)``, at least 1 (0.1 · 30 → 3)."""
    return max(1, math.ceil(round(top_fraction * n_stations, 9)))


def haversine_km(lat1: np.ndarray | float, lon1: np.ndarray | float,
                 lat2: np.ndarray | float, lon2: np.ndarray | float) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)::

        h = sin²(Δφ/2) + cos φ1 cos φ2 sin²(Δλ/2),   d = 2 R asin(√h),   R = 6371.0088 km
    """
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _locations(x: np.ndarray, name: str = "locations") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [U, T] array, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer station indices, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


def _coords(coords: np.ndarray) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be an [N, 2] array of (lat, lon), got shape {c.shape}")
    return c


def step_distances(locations: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Haversine km between consecutive slots' stations, shape ``[U, T-1]``."""
    loc = _locations(locations)
    c = _coords(coords)
    a, b = loc[:, :-1], loc[:, 1:]
    return haversine_km(c[a, 0], c[a, 1], c[b, 0], c[b, 1])


def radius_of_gyration(locations: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Radius of gyration in km per sample, shape ``[U]``.

    ``r_u = sqrt( (1/T) Σ_t hav(l_{u,t}, c_u)² )`` with the centre ``c_u`` the mean latitude and
    longitude of the sample's T slots (time-weighted; adequate at city scale). A sample that stays
    at one station is exactly 0 (the float mean of equal values can differ from them by 1e-15°).
    """
    loc = _locations(locations)
    c = _coords(coords)
    if loc.shape[1] == 0:
        return np.zeros(loc.shape[0])
    lat, lon = c[loc, 0], c[loc, 1]  # (U, T)
    clat = lat.mean(axis=1, keepdims=True)
    clon = lon.mean(axis=1, keepdims=True)
    d = haversine_km(lat, lon, clat, clon)
    r = np.sqrt(np.mean(d**2, axis=1))
    r[(loc == loc[:, :1]).all(axis=1)] = 0.0
    return r


def _row_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of equal consecutive values per row: (row index, run length) of every run."""
    U, T = values.shape
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start = np.ones((U, T), dtype=bool)
    start[:, 1:] = values[:, 1:] != values[:, :-1]  # a run starts at t = 0 of every row
    flat = np.flatnonzero(start.ravel())
    lengths = np.diff(np.append(flat, values.size))
    return flat // T, lengths


def stay_durations(locations: np.ndarray) -> np.ndarray:
    """Lengths (slots) of the maximal runs of equal consecutive locations, pooled; last run included.

    ``[[0, 0, 1, 1, 1, 2]]`` → ``[2, 3, 1]``. Runs never span two samples.
    """
    return _row_runs(_locations(locations))[1]


def distinct_locations(locations: np.ndarray) -> np.ndarray:
    """Number of distinct stations per sample, shape ``[U]`` (divide by T for DistinctLoc)."""
    loc = _locations(locations)
    if loc.size == 0:
        return np.zeros(loc.shape[0], dtype=np.int64)
    s = np.sort(loc, axis=1)
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)


def visit_counts(locations: np.ndarray, n_stations: int | None = None) -> np.ndarray:
    """Global number of slots spent at each station, shape ``[N]``."""
    loc = _locations(locations).ravel()
    n = int(n_stations) if n_stations is not None else (int(loc.max()) + 1 if loc.size else 0)
    return np.bincount(loc, minlength=n).astype(np.float64)


def rank_profile(locations: np.ndarray) -> np.ndarray:
    """Mean per-sample visit frequency by own rank, shape ``[T]`` (sums to 1).

    For each sample, the visit counts of its stations sorted in decreasing order, divided by T
    (``f_u[r]`` = share of slots at its r-th most visited station, 0 beyond its distinct count);
    returns ``mean_u f_u``.
    """
    loc = _locations(locations)
    U, T = loc.shape
    if loc.size == 0:
        return np.zeros(T)
    rows, counts = _row_runs(np.sort(loc, axis=1))  # runs of a sorted row = per-station counts
    order = np.lexsort((-counts, rows))  # by row, then decreasing count
    rows, counts = rows[order], counts[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
    return np.bincount(rank, weights=counts, minlength=T) / float(U * T)


def distance_jsd(real: np.ndarray, generated: np.ndarray, coords: np.ndarray, *,
                 bins: int = DEFAULT_BINS) -> float:
    """Distance: JSD (base 2) of pooled consecutive-slot haversine distances (km).

    Binning: zero (staying at the station) is its own bin; positive distances at ``bins``
    quantile edges of the union of both sets' positive distances. Lower is better.
    """
    return histogram_jsd(step_distances(real, coords), step_distances(generated, coords),
                         bins=bins, method="quantile", zero_bin=True)


def radius_jsd(real: np.ndarray, generated: np.ndarray, coords: np.ndarray, *,
               bins: int = RADIUS_BINS) -> float:
    """Radius: JSD (base 2) of per-sample radii of gyration (km; :func:`radius_of_gyration`).

    Binning: zero radius (one station all window) is its own bin; positive radii at ``bins``
    (default 10) quantile edges of the union of both sets. One value per sample, so the JSD floor
    is ≈ bins / (4 n ln 2): with 50 bins at n ≈ 400 it hides a 25 % radius error, with 10 it does
    not (tests/metrics/test_metrics_trajectory.py). Lower is better.
    """
    return histogram_jsd(radius_of_gyration(real, coords), radius_of_gyration(generated, coords),
                         bins=bins, method="quantile", zero_bin=True)


def distinctloc_jsd(real: np.ndarray, generated: np.ndarray) -> float:
    """DistinctLoc: JSD (base 2) of per-sample (distinct stations / T).

    Binning: one bin per value k / T, k = 1..T (exact; :func:`discrete_jsd` over the distinct
    counts, which requires equal T — enforced by :func:`mstdiff.metrics.evaluate`). Lower is better.
    """
    r, g = _locations(real, "real"), _locations(generated, "generated")
    return discrete_jsd(distinct_locations(r) / r.shape[1], distinct_locations(g) / g.shape[1])


def duration_jsd(real: np.ndarray, generated: np.ndarray) -> float:
    """Duration: JSD (base 2) of pooled stay lengths in slots (:func:`stay_durations`).

    Binning: one bin per length 1..T occurring in either set (exact). Lower is better.
    """
    return discrete_jsd(stay_durations(real), stay_durations(generated))


def global_rank_profile(locations: np.ndarray, n_stations: int, *,
                        top_fraction: float = TOP_FRACTION) -> np.ndarray:
    """Global visit frequency by the set's own station rank, top ``k`` plus the rest, shape ``[k + 1]``.

    ``f_(r)`` = share of all slots spent at the r-th most visited station of the set (r = 1..k,
    ``k = ceil(top_fraction · N)``, zeros where fewer stations are visited); the last entry is
    ``1 - Σ_r f_(r)``. Sums to 1.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    n = int(n_stations)
    c = visit_counts(locations, n)
    if c.size != n:
        raise ValueError(f"location index out of range for n_stations = {n}")
    k = top_count(n, top_fraction)
    head = -np.sort(-c)[:k]
    total = max(c.sum(), 1.0)
    return np.append(head, c.sum() - head.sum()) / total


def grank_jsd(real: np.ndarray, generated: np.ndarray, n_stations: int, *,
              top_fraction: float = TOP_FRACTION) -> float:
    """G-rank: JSD (base 2) of the global visit frequency by global rank (:func:`global_rank_profile`).

    Bins: ranks 1..k of the ``k = ceil(top_fraction · N)`` most visited stations of each set (ranked
    by its own counts, as I-rank ranks each sample's own stations) plus one bin for all other
    stations. It compares how concentrated the visits are on popular stations, not which stations
    those are (see :func:`location_jsd`). Lower is better.
    """
    return jsd(global_rank_profile(real, n_stations, top_fraction=top_fraction),
               global_rank_profile(generated, n_stations, top_fraction=top_fraction))


def location_jsd(real: np.ndarray, generated: np.ndarray, n_stations: int) -> float:
    """Location: JSD (base 2) of the global visit distributions over stations.

    ``p_l = slots at station l / all slots``; bins: one per station 0..N-1 (shared station table).
    Catches a generator that visits the wrong stations with the right rank profile. Lower is better.
    """
    n = int(n_stations)
    cr, cg = visit_counts(real, n), visit_counts(generated, n)
    if cr.size != n or cg.size != n:
        raise ValueError(f"location index out of range for n_stations = {n}")
    return jsd(cr, cg)


def home_cells(locations: np.ndarray, coords: np.ndarray, lat_cuts: np.ndarray,
               lon_cuts: np.ndarray) -> np.ndarray:
    """Grid cell (``i_lat · (len(lon_cuts) + 1) + i_lon``) of every sample's most visited station.

    Ties between equally visited stations go to the smallest station index.
    """
    loc = _locations(locations)
    c = _coords(coords)
    if loc.size == 0:
        return np.zeros(loc.shape[0], dtype=np.int64)
    srt = np.sort(loc, axis=1)
    rows, counts = _row_runs(srt)
    # station of each run of the sorted rows, then the first run of maximal length per row
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    station = srt[first]
    order = np.lexsort((-counts, rows))  # stable: equal counts keep increasing station order
    take = order[np.r_[True, np.diff(rows[order]) != 0]]
    main = station[take]
    ilat = np.searchsorted(np.asarray(lat_cuts), c[main, 0], side="right")
    ilon = np.searchsorted(np.asarray(lon_cuts), c[main, 1], side="right")
    return (ilat * (len(lon_cuts) + 1) + ilon).astype(np.int64)


def home_cell_jsd(real: np.ndarray, generated: np.ndarray, coords: np.ndarray, *,
                  grid: int = HOME_GRID) -> float:
    """Home cell: JSD (base 2) of where the samples' main stations lie (:func:`home_cells`).

    Bins: the ``grid × grid`` cells cut at the quantiles ``1/grid, ..., (grid-1)/grid`` of the REAL
    argument's visited latitudes and longitudes (each slot counts once). One value per sample:
    unlike the per-station visit JSD (:func:`location_jsd`), spreading visits over many stations
    does not lower it. Lower is better.
    """
    r, g = _locations(real, "real"), _locations(generated, "generated")
    c = _coords(coords)
    if r.size == 0 or g.size == 0:
        return float("nan")
    q = np.arange(1, grid) / grid
    lat_cuts = np.unique(np.quantile(c[r.ravel(), 0], q))
    lon_cuts = np.unique(np.quantile(c[r.ravel(), 1], q))
    n_cells = (lat_cuts.size + 1) * (lon_cuts.size + 1)
    return jsd(np.bincount(home_cells(r, c, lat_cuts, lon_cuts), minlength=n_cells),
               np.bincount(home_cells(g, c, lat_cuts, lon_cuts), minlength=n_cells))


def irank_jsd(real: np.ndarray, generated: np.ndarray) -> float:
    """I-rank: JSD (base 2) of the mean visit-frequency-by-own-rank profiles (:func:`rank_profile`).

    Bins: ranks 1..T (the profiles are padded with zeros to a common length). Lower is better.
    """
    a, b = rank_profile(real), rank_profile(generated)
    n = max(a.size, b.size)
    return jsd(np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size)))
