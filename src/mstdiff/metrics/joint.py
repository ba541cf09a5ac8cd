"""Joint trajectory–traffic metrics (not in the paper; DESIGN §3 "Joint").

A joint model should reproduce *which* traffic happens *where*: the same marginal traffic and the
same marginal trajectories can be combined in a wrong way (e.g. heavy traffic at home stations at
night). Two metrics look at the pairs ``(l_t, m_t)`` of the same sample and slot:

- ``joint_jsd``: JSD (base 2) of the joint histogram of (location class of ``l_t``, traffic level of
  ``m_t``) pooled over samples and slots.
- ``joint_profile_rmse``: RMSE between the traffic profiles per location class, i.e. the mean
  traffic per (class, hour of day), cells weighted by their slot counts.

Location class of a station (:func:`location_classes`), first rule that applies:

1. ``place_type``: the station table has a ``place_type`` column → its values are the classes.
2. ``poi``: the table has ``poi_*`` columns → the dominant POI category (argmax of the counts, ties
   to the first column); stations with no POI at all form the class ``none``.
3. ``density``: the stations have coordinates → tertiles of the number of stations within 1 km of
   each station (``sparse`` / ``medium`` / ``dense``). It depends on the station table only.
4. ``popularity`` (stations without coordinates): tertiles of the stations' visit counts (slots)
   in the REAL set among the stations the real set visits (``low`` ≤ q(1/3) < ``mid`` ≤ q(2/3) <
   ``high``), plus the class ``unvisited`` for stations the real set never visits.

Why density before popularity: where each user visits few of many stations (e.g. Shanghai Telecom,
N ≈ 2,000), visit counts mostly reflect *which* users are in the set, so popularity classes drawn
from one real subset differ from another's and the joint JSD of two real halves is high (about 0.16
there, vs 0.0004 with density classes).

Traffic level of a slot (:func:`traffic_levels`): level 0 is exactly zero traffic; positive
traffic is cut at the quantiles ``1/n, ..., (n-1)/n`` of the REAL set's positive traffic
(:func:`level_edges`) into levels ``1..n`` (default n = 4, so 5 levels in all).

Hour of day of slot t: ``floor(t · bin_minutes / 60) mod 24``; windows are assumed to start at
midnight (as prepared datasets do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mstdiff.errors import InputError
from mstdiff.metrics.jsd import jsd

logger = logging.getLogger(__name__)

__all__ = [
    "N_LEVELS",
    "LocationClasses",
    "location_classes",
    "level_edges",
    "traffic_levels",
    "joint_histogram",
    "class_hour_profile",
    "joint_jsd",
    "joint_profile_rmse",
]

N_LEVELS = 4  # quantile levels of positive traffic (plus the zero level)

JointArrays = tuple[np.ndarray, np.ndarray]  # (traffic [U, T], locations [U, T])


@dataclass(frozen=True)
class LocationClasses:
    """Class of every station: ``codes[i]`` indexes ``names``; ``rule`` says how they were made."""

    codes: np.ndarray  # (N,) int64
    names: tuple[str, ...]
    rule: str  # one of CLASS_RULES

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, object]:
        counts = np.bincount(self.codes, minlength=self.n_classes)
        return {"rule": self.rule, "names": list(self.names),
                "stations_per_class": {n: int(c) for n, c in zip(self.names, counts)}}


CLASS_RULES = ("place_type", "poi", "popularity", "density")
DENSITY_RADIUS_KM = 1.0


def _poi_columns(stations: pd.DataFrame) -> list[str]:
    return [str(c) for c in stations.columns
            if str(c).startswith("poi_") and pd.api.types.is_numeric_dtype(stations[c])]


def location_classes(stations: pd.DataFrame, real_locations: np.ndarray | None = None, *,
                     rule: str | None = None) -> LocationClasses:
    """Station classes by ``rule``, or by the first applicable rule (``place_type``, ``poi``,
    ``density``, ``popularity``; see the module docstring).

    ``real_locations`` (``[U, T]`` station indices of the REAL set) is needed only for the
    popularity rule.
    """
    if rule is not None and rule not in CLASS_RULES:
        raise InputError(f"unknown location-class rule {rule!r}", where="class_rule",
                         fix=f"use one of {list(CLASS_RULES)} or leave it unset (automatic)")
    n = len(stations)
    poi_cols = _poi_columns(stations)
    if rule is None:
        has_coords = bool(np.isfinite(stations[["lat", "lon"]].to_numpy(dtype=float)).all()) and n > 0
        rule = ("place_type" if "place_type" in stations.columns else "poi" if poi_cols
                else "density" if has_coords else "popularity")
    if rule == "place_type":
        if "place_type" not in stations.columns:
            raise InputError("the station table has no place_type column", where="class_rule",
                             fix="choose another rule")
        values = stations["place_type"].fillna("unknown").astype(str).to_numpy()
        uniq, inverse = np.unique(values, return_inverse=True)
        return LocationClasses(inverse.astype(np.int64), tuple(str(x) for x in uniq), "place_type")

    if rule == "poi":
        if not poi_cols:
            raise InputError("the station table has no numeric poi_* columns", where="class_rule",
                             fix="choose another rule")
        counts = np.nan_to_num(stations[poi_cols].to_numpy(dtype=np.float64), nan=0.0)
        dominant = counts.argmax(axis=1)
        has_poi = counts.max(axis=1) > 0
        labels = [c[len("poi_"):] for c in poi_cols]
        used = np.unique(dominant[has_poi])
        names: list[str] = [labels[i] for i in used]
        remap = np.full(len(poi_cols), -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        codes = remap[dominant]
        if not has_poi.all():  # stations without any POI
            codes[~has_poi] = len(names)
            names.append("none")
        return LocationClasses(codes, tuple(names), "poi")

    if rule == "density":
        from scipy.spatial import cKDTree

        lat = np.radians(stations["lat"].to_numpy(dtype=np.float64))
        lon = np.radians(stations["lon"].to_numpy(dtype=np.float64))
        # equirectangular projection around the mean latitude: adequate at city scale
        xy = np.column_stack([lon * np.cos(lat.mean() if n else 0.0), lat]) * 6371.0088
        within = np.asarray(cKDTree(xy).query_ball_point(xy, DENSITY_RADIUS_KM, return_length=True))
        q1, q2 = np.quantile(within, [1 / 3, 2 / 3]) if n else (0.0, 0.0)
        codes = np.where(within <= q1, 0, np.where(within <= q2, 1, 2)).astype(np.int64)
        return LocationClasses(codes, ("sparse", "medium", "dense"), "density")

    if real_locations is None:
        raise ValueError("the popularity rule needs the real set's locations")
    visits = np.bincount(np.asarray(real_locations, dtype=np.int64).ravel(), minlength=n)[:n]
    visited = visits > 0
    codes = np.full(n, 3, dtype=np.int64)  # unvisited
    if visited.any():
        q1, q2 = np.quantile(visits[visited], [1 / 3, 2 / 3])
        v = visits[visited]
        codes[visited] = np.where(v <= q1, 0, np.where(v <= q2, 1, 2))
    return LocationClasses(codes, ("low", "mid", "high", "unvisited"), "popularity")


def level_edges(real_traffic: np.ndarray, n_levels: int = N_LEVELS) -> np.ndarray:
    """Cut points of positive traffic: quantiles ``1/n..(n-1)/n`` of the real positive values.

    De-duplicated, so ties can merge levels. Empty if the real set has no positive traffic.
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    x = np.asarray(real_traffic, dtype=np.float64).ravel()
    pos = x[x > 0]
    if pos.size == 0 or n_levels == 1:
        return np.zeros(0)
    return np.unique(np.quantile(pos, np.arange(1, n_levels) / n_levels))


def traffic_levels(traffic: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Level of every value: 0 if exactly 0, else ``1 + #{edges <= value}`` (1..len(edges)+1)."""
    x = np.asarray(traffic, dtype=np.float64)
    lev = 1 + np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right")
    return np.where(x == 0, 0, lev)


def _check_pair(pair: JointArrays, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"{name} must be a (traffic, locations) pair of [U, T] arrays")
    m = np.asarray(pair[0], dtype=np.float64)
    loc = np.asarray(pair[1], dtype=np.int64)
    if m.ndim != 2 or m.shape != loc.shape:
        raise ValueError(f"{name}: traffic {m.shape} and locations {loc.shape} must be equal-shape [U, T]")
    return m, loc


def joint_histogram(traffic: np.ndarray, locations: np.ndarray, station_class: np.ndarray,
                    n_classes: int, edges: np.ndarray) -> np.ndarray:
    """Counts of (class of ``l_t``, level of ``m_t``) pooled over samples and slots, ``[C, L]``."""
    n_lev = np.asarray(edges).size + 2
    cls = np.asarray(station_class, dtype=np.int64)[np.asarray(locations, dtype=np.int64)]
    lev = traffic_levels(traffic, edges)
    flat = (cls * n_lev + lev).ravel()
    return np.bincount(flat, minlength=n_classes * n_lev).reshape(n_classes, n_lev).astype(np.float64)


def joint_jsd(real: JointArrays, generated: JointArrays, location_class: np.ndarray, *,
              n_levels: int = N_LEVELS) -> float:
    """JSD (base 2) of the joint histograms of (location class of ``l_t``, traffic level of ``m_t``).

    ``real`` and ``generated`` are ``(traffic, locations)`` pairs; ``location_class`` maps each
    station index to its class (:func:`location_classes`). Bins: the C × (n_levels + 1) cells of
    class × level, levels from :func:`level_edges` of the REAL argument (zero its own level).
    Lower is better.
    """
    rm, rl = _check_pair(real, "real")
    gm, gl = _check_pair(generated, "generated")
    codes = np.asarray(location_class, dtype=np.int64)
    n_classes = int(codes.max()) + 1 if codes.size else 1
    edges = level_edges(rm, n_levels)
    return jsd(joint_histogram(rm, rl, codes, n_classes, edges),
               joint_histogram(gm, gl, codes, n_classes, edges))


def class_hour_profile(traffic: np.ndarray, locations: np.ndarray, location_class: np.ndarray,
                       bin_minutes: int = 30, n_classes: int | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Mean traffic per (location class, hour of day) and the number of slots behind each cell.

    Returns ``(mean [C, 24], count [C, 24])``; cells without slots have mean NaN. Slot t has hour
    ``floor(t · bin_minutes / 60) mod 24``.
    """
    m = np.asarray(traffic, dtype=np.float64)
    loc = np.asarray(locations, dtype=np.int64)
    codes = np.asarray(location_class, dtype=np.int64)
    C = int(n_classes) if n_classes is not None else (int(codes.max()) + 1 if codes.size else 1)
    hour = (np.arange(m.shape[1]) * int(bin_minutes) // 60) % 24  # (T,)
    cell = (codes[loc] * 24 + hour[None, :]).ravel()
    count = np.bincount(cell, minlength=C * 24).reshape(C, 24).astype(np.float64)
    total = np.bincount(cell, weights=m.ravel(), minlength=C * 24).reshape(C, 24)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    return mean, count


def joint_profile_rmse(real: JointArrays, generated: JointArrays, location_class: np.ndarray, *,
                       bin_minutes: int = 30) -> float:
    """Weighted RMSE between the mean traffic per (location class, hour of day) of the two sets.

    ``P[c, h] = mean of m_t over slots with class(l_t) = c and hour(t) = h``
    (:func:`class_hour_profile`, ``n[c, h]`` slots behind it). Over the cells observed in both sets::

        w = n_real · n_gen / (n_real + n_gen)          (inverse sampling-variance factor of P_r - P_g)
        RMSE = sqrt( Σ w (P_real - P_gen)² / Σ w )

    in the traffic unit. The weights keep a cell seen in a handful of slots from dominating the
    value with its noise. Cells that one set never visits are left out (the joint JSD measures that
    mismatch). NaN if no cell is observed in both. Lower is better.
    """
    rm, rl = _check_pair(real, "real")
    gm, gl = _check_pair(generated, "generated")
    codes = np.asarray(location_class, dtype=np.int64)
    C = int(codes.max()) + 1 if codes.size else 1
    pr, cr = class_hour_profile(rm, rl, codes, bin_minutes, C)
    pg, cg = class_hour_profile(gm, gl, codes, bin_minutes, C)
    both = (cr > 0) & (cg > 0)
    if not both.any():
        return float("nan")
    missing = int(((cr > 0) & ~both).sum())
    if missing:
        logger.debug("%d (class, hour) cells of the real set are never visited by the generated set", missing)
    w = cr[both] * cg[both] / (cr[both] + cg[both])
    return float(np.sqrt(np.sum(w * (pr[both] - pg[both]) ** 2) / np.sum(w)))
