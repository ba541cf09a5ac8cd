"""A seeded synthetic city: stations with POIs, user routines, and traffic with a planted coupling.

It produces the prepared-dataset format (:class:`~mstdiff.data.dataset.PreparedDataset`), so tests
and the offline demo run anywhere with no download, and it writes raw logs in the Tsinghua App
Usage trace format for benchmarking the preparation stage.

The model, in the order it is simulated (each stage draws from its own child of
``numpy.random.default_rng(seed)``, so e.g. changing a traffic parameter leaves the trajectories
unchanged):

**Stations.** ``n_districts`` district centres uniform in the lat/lon box; each station belongs to
a district (Dirichlet sizes) and lies at a Gaussian offset from its centre (10 % are scattered
uniformly instead: suburbs). Each district has its own mix of the place types
:data:`PLACE_TYPES` (a Dirichlet draw around :data:`PLACE_TYPE_SHARES`), and each station draws its
type from that mix. POI counts per category (:data:`POI_CATEGORIES`, the 17 categories of the
Tsinghua ``base_poi.txt``, as columns ``poi_<category>``) are Poisson with a mean profile set by
the place type (:data:`POI_PROFILE`) times a per-station density factor.

**Users.** A home (residential-leaning, anywhere), a work place for the employed share
(business-leaning, gravity ``exp(-d / 8 km)`` from home), ``n_favourites`` distinct favourite other
places (leisure-leaning, gravity ``exp(-d / 4 km)``), and the transport-type station nearest to
the midpoint of the commute as a transit stop (for commutes over 3 km). Habitual departure and
return times, an activity rate (Beta) and a log-normal traffic intensity are per user.

**Days** (in bins of ``bin_minutes``). Weekday of an employed user: home → (transit stop, 30 min,
in 70 % of the days of users with a stop) → work, with a lunch out at a neighbouring station in
20 % of days → (transit stop) → in ``evening_out_prob`` of days an other place for 1–3 h → home.
Weekend days and days of non-employed users: home, then in ``weekend_out_prob`` of days (60 % of
that for non-employed weekdays) an other place from about 10:30 for 1.5–4.5 h, in 40 % of those
days followed by a second other place for 1–3 h, then home. All times have per-user and per-day
jitter. Each visit to an "other" place explores (with the per-user probability around
``explore_prob``) a random one of the ``K = 8`` stations nearest a favourite; otherwise it returns
to a favourite with Zipf ``1/rank`` weights (preferential return). Nights are spent at home.
The *place* is the station of the place the user is at; the *observed* station differs from it by
a hand-over to the nearest station (within 1.5 km) in each slot with probability
``handover_prob``.

**Traffic** (unit MB per slot) — the PLANTED COUPLING, with ``s = coupling_strength``
(1: as below; 0: no coupling at all; the factors are raised to the power ``s``):

1. Activity. Slot ``t`` of a user with activity rate ``a_u`` at place type ``k`` is active with
   probability ``p = min(0.95, a_u · H_act(hour) · A[k]^s · E_act^s)`` where ``E_act = 1.3`` if the
   user is at their own home between 19:00 and 23:00 (home evening peak), else 1, and
   ``A = residential 1.0, business 0.8, leisure 1.5, transport 1.3, mixed 1.1``.
   Slots where the place changes (a move; hand-overs do not count) add an independent burst
   trigger with probability ``1 - 0.2^s``: ``p ← 1 - (1 - p)·0.2^s``. Sessions persist: after an
   active slot ``p ← 1 - (1 - p)·(1 - 0.3)``.
2. Volume of an active slot: ``v = I_u · H_vol(hour) · V[k]^s · E_vol^s · M^s · LogNormal(0, 1)``
   with ``V = residential 1.0, business 0.7, leisure 2.5, transport 1.6, mixed 1.2``,
   ``E_vol = 1.8`` for the home evening peak, ``M = 3`` on moves (else 1), and ``I_u`` the user's
   log-normal intensity (median ``traffic_median_mb``, log-sd ``intensity_sigma``: heavy tail).

``H_act`` / ``H_vol`` are piecewise-linear daily rhythms (:data:`HOUR_ACTIVITY`,
:data:`HOUR_VOLUME`): night low, evening high. With ``s = 1`` the expected daytime traffic at a
leisure place is about 3–4 times that at home, and move slots carry several times the traffic of
other slots. All of this is recorded in ``meta["planted_coupling"]``, with the observed means per
place type, so a joint metric can be checked against it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.special import ndtri

from mstdiff.data.dataset import PreparedDataset, check_T, normalisation_stats
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "PLACE_TYPES",
    "POI_CATEGORIES",
    "SyntheticCity",
    "SyntheticCityConfig",
    "simulate_city",
    "synthetic_city",
    "write_synthetic_raw_log",
]

# ----------------------------------------------------------------------------- model constants
PLACE_TYPES: tuple[str, ...] = ("residential", "business", "leisure", "transport", "mixed")
RES, BUS, LEI, TRA, MIX = range(len(PLACE_TYPES))
PLACE_TYPE_SHARES = np.array([0.42, 0.20, 0.15, 0.08, 0.15])  # city-wide share of each type

# The 17 POI categories of the Tsinghua App Usage ``base_poi.txt``, in its order, snake-cased.
POI_CATEGORIES: tuple[str, ...] = (
    "medical_care", "hotel", "business_affairs", "life_service", "transportation_hub", "culture",
    "sports", "residence", "entertainment_leisure", "scenic_spot", "government", "factory",
    "shopping", "restaurant", "education", "landmark", "other",
)
_POI_BASE = 0.5  # mean count of every category at every station, on top of the profile
# Mean POI counts per place type (categories not named get only the base).
_POI_MEANS: dict[int, dict[str, float]] = {
    RES: {"residence": 40, "life_service": 8, "restaurant": 8, "shopping": 5, "education": 3,
          "medical_care": 2, "other": 4},
    BUS: {"business_affairs": 35, "restaurant": 12, "life_service": 6, "shopping": 5, "hotel": 4,
          "government": 3, "transportation_hub": 1, "other": 4},
    LEI: {"entertainment_leisure": 20, "shopping": 25, "restaurant": 25, "scenic_spot": 4,
          "culture": 4, "sports": 4, "hotel": 4, "landmark": 2, "other": 3},
    TRA: {"transportation_hub": 12, "restaurant": 8, "shopping": 6, "hotel": 5,
          "business_affairs": 4, "life_service": 3, "landmark": 1, "other": 3},
    MIX: {"residence": 15, "business_affairs": 10, "restaurant": 12, "shopping": 10,
          "life_service": 6, "education": 2, "medical_care": 2, "factory": 1, "other": 4},
}
POI_PROFILE = np.array(
    [[_POI_BASE + _POI_MEANS[k].get(c, 0.0) for c in POI_CATEGORIES] for k in range(len(PLACE_TYPES))]
)  # (n_types, n_categories)

# Place-type affinities for choosing anchors (always > 0, so any station set works).
_HOME_AFFINITY = np.array([1.0, 0.03, 0.03, 0.02, 0.4])
_WORK_AFFINITY = np.array([0.03, 1.0, 0.15, 0.1, 0.25])
_OTHER_AFFINITY = np.array([0.1, 0.2, 1.0, 0.3, 0.6])
_WORK_SCALE_KM = 8.0
_OTHER_SCALE_KM = 4.0
_MIN_TRANSIT_KM = 3.0
_N_NEIGHBOURS = 8  # K nearest stations used for exploration and lunch
_HANDOVER_KM = 1.5

# Planted coupling (see the module docstring); factors are raised to ``coupling_strength``.
ACTIVITY_FACTOR = np.array([1.0, 0.8, 1.5, 1.3, 1.1])  # A[k], by PLACE_TYPES
VOLUME_FACTOR = np.array([1.0, 0.7, 2.5, 1.6, 1.2])  # V[k], by PLACE_TYPES
HOME_EVENING_HOURS = (19.0, 23.0)
HOME_EVENING_ACTIVITY = 1.3
HOME_EVENING_VOLUME = 1.8
MOVE_TRIGGER_PROB = 0.8
MOVE_VOLUME_FACTOR = 3.0
SESSION_PERSISTENCE = 0.3
MAX_ACTIVE_PROB = 0.95
SLOT_LOG_SD = 1.0
# Daily rhythms: (hour, factor) knots, linearly interpolated at bin centres.
HOUR_ACTIVITY: tuple[tuple[float, float], ...] = (
    (0, 0.45), (1, 0.25), (3, 0.08), (5, 0.06), (6.5, 0.3), (8, 0.8), (9.5, 1.0), (12, 1.1),
    (13.5, 0.95), (17, 1.0), (19, 1.2), (21.5, 1.45), (23, 1.0), (24, 0.45),
)
HOUR_VOLUME: tuple[tuple[float, float], ...] = (
    (0, 0.8), (3, 0.5), (6, 0.6), (9, 1.0), (12, 1.1), (18, 1.0), (21, 1.3), (24, 0.8),
)

RAW_LOG_START = "2016-04-20"  # the App Usage trace week: 2016-04-20 .. 2016-04-26
_RAW_BLOCK = 1 << 16  # records per fixed random block of the raw-log writer


# ----------------------------------------------------------------------------- config
@dataclass
class SyntheticCityConfig:
    """Parameters of the synthetic city. Every default is a plausible mid-size test city."""

    n_users: int = 200  # number of users; samples = n_users * days * bins_per_day / T
    n_stations: int = 300  # number of base stations (at least 12)
    days: int = 2  # simulated days; a multiple of the window length T * bin_minutes / 1440
    T: int = 48  # bins per sample window: 48 = one day at 30 min, 336 = one week; divisible by 8
    bin_minutes: int = 30  # bin length in minutes; must divide 1440
    seed: int = 0  # root seed of numpy.random.default_rng; same seed -> identical output
    start_date: str = "2016-04-20"  # first day (a Wednesday); weekends follow the calendar
    n_districts: int | None = None  # spatial clusters of stations; None: about n_stations / 30
    bbox: tuple[float, float, float, float] = (31.0, 31.4, 121.2, 121.7)  # lat_min, lat_max, lon_min, lon_max
    employed_share: float = 0.8  # share of users with a work place
    n_favourites: int = 4  # favourite "other" places per user (preferential return)
    explore_prob: float = 0.2  # mean probability that a visit to an other place explores a new station
    handover_prob: float = 0.05  # per-slot probability that the observed station is a neighbour
    evening_out_prob: float = 0.3  # weekday evenings spent at an other place (employed users)
    weekend_out_prob: float = 0.75  # weekend days with at least one outing
    activity_mean: float = 0.16  # mean per-user activity rate a_u (Beta, concentration 3)
    traffic_median_mb: float = 1.5  # median per-user intensity I_u in MB per active slot
    intensity_sigma: float = 1.0  # log-sd of I_u across users (heavy-tailed intensity)
    coupling_strength: float = 1.0  # exponent on the planted coupling factors; 0 = no coupling

    @property
    def bins_per_day(self) -> int:
        return 1440 // self.bin_minutes

    @property
    def window_days(self) -> int:
        return self.T * self.bin_minutes // 1440

    def validate(self) -> None:
        """Raise :class:`InputError` naming the bad field and a fix."""
        where = "synthetic city config"
        check_T(self.T, where=f"{where} (T)")
        if self.bin_minutes <= 0 or 1440 % self.bin_minutes != 0:
            raise InputError(f"bin_minutes = {self.bin_minutes} does not divide a day (1440 min)",
                             where=f"{where} (bin_minutes)", fix="use e.g. 15, 30 or 60")
        if (self.T * self.bin_minutes) % 1440 != 0:
            raise InputError(
                f"T = {self.T} bins of {self.bin_minutes} min is not a whole number of days",
                where=f"{where} (T)", fix=f"use a multiple of {self.bins_per_day} (one day) for T",
            )
        if self.days < 1 or self.days % self.window_days != 0:
            raise InputError(
                f"days = {self.days} is not a positive multiple of the window ({self.window_days} days)",
                where=f"{where} (days)", fix=f"use days = {self.window_days}, {2 * self.window_days}, ...",
            )
        if self.n_users < 1:
            raise InputError(f"n_users = {self.n_users}", where=f"{where} (n_users)", fix="use >= 1")
        if self.n_stations < self.n_favourites + _N_NEIGHBOURS:
            raise InputError(
                f"n_stations = {self.n_stations} is too small", where=f"{where} (n_stations)",
                fix=f"use at least {self.n_favourites + _N_NEIGHBOURS} stations",
            )
        if self.n_favourites < 1:
            raise InputError("n_favourites must be >= 1", where=f"{where} (n_favourites)")
        if self.n_districts is not None and self.n_districts < 1:
            raise InputError("n_districts must be >= 1 or None", where=f"{where} (n_districts)")
        lat0, lat1, lon0, lon1 = self.bbox
        if not (-90 <= lat0 < lat1 <= 90 and -180 <= lon0 < lon1 <= 180):
            raise InputError(f"bbox {self.bbox} is not (lat_min, lat_max, lon_min, lon_max)",
                             where=f"{where} (bbox)")
        for name in ("employed_share", "explore_prob", "handover_prob", "evening_out_prob",
                     "weekend_out_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} = {v} is not a probability", where=f"{where} ({name})",
                                 fix="use a value in [0, 1]")
        if not 0.0 < self.activity_mean < 1.0:
            raise InputError(f"activity_mean = {self.activity_mean}", where=f"{where} (activity_mean)",
                             fix="use a value in (0, 1)")
        if self.traffic_median_mb <= 0 or self.intensity_sigma < 0 or self.coupling_strength < 0:
            raise InputError("traffic_median_mb must be > 0, intensity_sigma and coupling_strength >= 0",
                             where=where)
        try:
            _dt.date.fromisoformat(self.start_date)
        except ValueError as exc:
            raise InputError(f"start_date {self.start_date!r} is not an ISO date",
                             where=f"{where} (start_date)", fix="e.g. 2016-04-20") from exc


def _resolve_config(config: SyntheticCityConfig | None, overrides: dict[str, Any]) -> SyntheticCityConfig:
    cfg = config if config is not None else SyntheticCityConfig()
    if overrides:
        names = {f.name for f in dataclasses.fields(SyntheticCityConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown synthetic city option(s) {unknown}", where="synthetic city config",
                             fix=f"valid options: {', '.join(sorted(names))}")
        cfg = dataclasses.replace(cfg, **overrides)
    if isinstance(cfg.bbox, list):
        cfg = dataclasses.replace(cfg, bbox=tuple(cfg.bbox))
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- result type
@dataclass
class SyntheticCity:
    """The generated dataset plus the ground truth behind it (for tests and demos)."""

    dataset: PreparedDataset
    users: pd.DataFrame  # one row per user: user, home, work (-1: none), transit_stop (-1), employed, ...
    favourites: np.ndarray  # (n_users, n_favourites) station indices
    place: np.ndarray  # (U, T) int32 station of the place the user is at (before hand-over)
    moves: np.ndarray  # (U, T) bool, place differs from the previous slot's place
    config: SyntheticCityConfig = field(default_factory=SyntheticCityConfig)

    @property
    def place_type(self) -> np.ndarray:
        """Place-type code (index into :data:`PLACE_TYPES`) of every station, ``(N,)``."""
        codes = {name: i for i, name in enumerate(PLACE_TYPES)}
        return self.dataset.stations["place_type"].map(codes).to_numpy(dtype=np.int64)


# ----------------------------------------------------------------------------- helpers
def _project_km(lat: np.ndarray, lon: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Equirectangular projection to km around the box centre, ``(N, 2)``."""
    lat_c = 0.5 * (bbox[0] + bbox[1])
    lon_c = 0.5 * (bbox[2] + bbox[3])
    x = (lon - lon_c) * 111.32 * np.cos(np.radians(lat_c))
    y = (lat - lat_c) * 110.57
    return np.stack([x, y], axis=1)


def _interp_hours(knots: tuple[tuple[float, float], ...], hours: np.ndarray) -> np.ndarray:
    k = np.asarray(knots, dtype=np.float64)
    return np.interp(hours, k[:, 0], k[:, 1])


def _categorical_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of a row-stochastic (unnormalised) matrix ``(n, k)``."""
    cum = np.cumsum(probs, axis=1)
    r = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum < r[:, None]).sum(axis=1), probs.shape[1] - 1)


def _gravity_topk(
    rng: np.random.Generator, xy: np.ndarray, origin: np.ndarray, affinity: np.ndarray,
    scale_km: float | None, k: int, exclude: list[np.ndarray], chunk: int = 2048,
) -> np.ndarray:
    """``k`` distinct stations per origin, drawn without replacement with weight
    ``affinity[station] * exp(-d(origin, station) / scale_km)`` (Gumbel top-k), ``(n, k)``."""
    n = origin.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    log_aff = np.log(affinity)[None, :]
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        keys = np.broadcast_to(log_aff, (b - a, xy.shape[0])).copy()
        if scale_km is not None:
            d = np.linalg.norm(xy[None, :, :] - origin[a:b, None, :], axis=2)
            keys -= d / scale_km
        keys += rng.gumbel(size=keys.shape)
        rows = np.arange(b - a)
        for ex in exclude:
            keys[rows, ex[a:b]] = -np.inf
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        out[a:b] = np.take_along_axis(top, order, axis=1)
    return out


# ----------------------------------------------------------------------------- stations
def _build_stations(cfg: SyntheticCityConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    N = cfg.n_stations
    lat0, lat1, lon0, lon1 = cfg.bbox
    n_d = cfg.n_districts if cfg.n_districts is not None else int(np.clip(round(N / 30), 2, 40))
    margin = 0.1
    c_lat = rng.uniform(lat0 + margin * (lat1 - lat0), lat1 - margin * (lat1 - lat0), n_d)
    c_lon = rng.uniform(lon0 + margin * (lon1 - lon0), lon1 - margin * (lon1 - lon0), n_d)
    spread = rng.uniform(0.008, 0.025, n_d)  # degrees
    sizes = rng.dirichlet(np.full(n_d, 3.0))
    district = rng.choice(n_d, size=N, p=sizes)
    lat = c_lat[district] + rng.normal(0.0, 1.0, N) * spread[district]
    lon = c_lon[district] + rng.normal(0.0, 1.0, N) * spread[district] * 1.15
    scattered = rng.random(N) < 0.10
    lat = np.where(scattered, rng.uniform(lat0, lat1, N), lat)
    lon = np.where(scattered, rng.uniform(lon0, lon1, N), lon)
    lat = np.clip(lat, lat0, lat1)
    lon = np.clip(lon, lon0, lon1)
    mix = rng.dirichlet(PLACE_TYPE_SHARES * 6.0, size=n_d)  # (n_d, n_types) district character
    ptype = _categorical_rows(rng, mix[district])
    density = rng.lognormal(0.0, 0.5, N)
    poi = rng.poisson(POI_PROFILE[ptype] * density[:, None]).astype(np.int64)  # (N, n_categories)
    stations = pd.DataFrame(
        {
            "station_id": [str(i) for i in range(N)],
            "lat": np.round(lat, 6),
            "lon": np.round(lon, 6),
            "place_type": np.asarray(PLACE_TYPES, dtype=object)[ptype],
            "district": district.astype(np.int64),
        }
    )
    for j, c in enumerate(POI_CATEGORIES):
        stations[f"poi_{c}"] = poi[:, j]
    return stations, ptype


# ----------------------------------------------------------------------------- users
def _build_users(
    cfg: SyntheticCityConfig, rng: np.random.Generator, xy: np.ndarray, ptype: np.ndarray
) -> dict[str, np.ndarray]:
    n = cfg.n_users
    w_home = _HOME_AFFINITY[ptype]
    home = rng.choice(ptype.size, size=n, p=w_home / w_home.sum())
    employed = rng.random(n) < cfg.employed_share
    work = _gravity_topk(rng, xy, xy[home], _WORK_AFFINITY[ptype], _WORK_SCALE_KM, 1, [home])[:, 0]
    work = np.where(employed, work, -1)
    fav = _gravity_topk(
        rng, xy, xy[home], _OTHER_AFFINITY[ptype], _OTHER_SCALE_KM, cfg.n_favourites,
        [home, np.where(employed, work, home)],
    )
    # transit stop: the transport-type station nearest the midpoint of a long enough commute
    stop = np.full(n, -1, dtype=np.int64)
    tra = np.flatnonzero(ptype == TRA)
    if tra.size and employed.any():
        e = np.flatnonzero(employed)
        mid = 0.5 * (xy[home[e]] + xy[work[e]])
        _, j = cKDTree(xy[tra]).query(mid)
        far = np.linalg.norm(xy[home[e]] - xy[work[e]], axis=1) >= _MIN_TRANSIT_KM
        stop[e[far]] = tra[j[far]]
    conc = 3.0
    activity = rng.beta(cfg.activity_mean * conc, (1.0 - cfg.activity_mean) * conc, n)
    intensity = np.exp(np.log(cfg.traffic_median_mb) + cfg.intensity_sigma * rng.standard_normal(n))
    # per-user exploration probability: Beta(2, b) with mean explore_prob
    if 0.0 < cfg.explore_prob < 1.0:
        explore = rng.beta(2.0, 2.0 * (1.0 - cfg.explore_prob) / cfg.explore_prob, n)
    else:
        explore = np.full(n, cfg.explore_prob)
    leave = np.clip(rng.normal(8.0, 0.6, n), 6.0, 10.5)  # habitual departure (hours)
    back = np.clip(rng.normal(17.8, 0.8, n), 15.0, 21.0)  # habitual end of work (hours)
    return {
        "home": home.astype(np.int64), "work": work.astype(np.int64), "employed": employed,
        "favourites": fav.astype(np.int64), "transit_stop": stop, "activity": activity,
        "intensity_mb": intensity, "explore_prob": explore, "leave_h": leave, "back_h": back,
    }


# ----------------------------------------------------------------------------- mobility
def _simulate_places(
    cfg: SyntheticCityConfig, rng: np.random.Generator, users: dict[str, np.ndarray],
    nbr: np.ndarray, weekend: np.ndarray,
) -> np.ndarray:
    """Place (station index) of every user and bin, ``(n_users, days, bins_per_day)``."""
    n, D, B = cfg.n_users, cfg.days, cfg.bins_per_day
    bph = 60.0 / cfg.bin_minutes
    bins = np.arange(B)[None, None, :]
    shape = (n, D)

    def to_bin(hours: np.ndarray) -> np.ndarray:
        return np.clip(np.round(hours * bph), 0, B).astype(np.int64)

    def paint(start: np.ndarray, end: np.ndarray, value: np.ndarray, cond: np.ndarray) -> None:
        mask = cond[..., None] & (bins >= start[..., None]) & (bins < end[..., None])
        np.copyto(place, value[..., None], where=mask)

    fav = users["favourites"]
    zipf = 1.0 / np.arange(1, fav.shape[1] + 1)

    def pick_other() -> np.ndarray:
        """Preferential return to a favourite, or exploration of a station near one."""
        rank = rng.choice(fav.shape[1], size=shape, p=zipf / zipf.sum())
        base = np.take_along_axis(fav, rank, axis=1)
        explore = rng.random(shape) < users["explore_prob"][:, None]
        new = nbr[base, rng.integers(0, nbr.shape[1], size=shape)]
        return np.where(explore, new, base)

    work = np.broadcast_to(users["work"][:, None], shape)
    stop = np.broadcast_to(users["transit_stop"][:, None], shape)
    place = np.broadcast_to(users["home"][:, None, None], (n, D, B)).copy()
    wk = np.broadcast_to(~weekend[None, :], shape)
    commuting = wk & users["employed"][:, None]

    # weekday of an employed user
    tr_bins = max(1, int(round(0.5 * bph)))
    transit = commuting & (stop >= 0) & (rng.random(shape) < 0.7)
    leave = to_bin(users["leave_h"][:, None] + rng.normal(0.0, 0.35, shape))
    arrive = leave + np.where(transit, tr_bins, 0)
    end = np.maximum(to_bin(users["back_h"][:, None] + rng.normal(0.0, 0.5, shape)), arrive + int(2 * bph))
    end = np.minimum(end, B - tr_bins - 1)
    paint(leave, arrive, stop, transit)
    paint(arrive, end, work, commuting)
    lunch = commuting & (rng.random(shape) < 0.2)
    l0 = to_bin(np.full(shape, 12.0) + rng.integers(0, 2, shape) * 0.5)
    l1 = l0 + np.maximum(1, to_bin(rng.uniform(0.5, 1.0, shape)))
    paint(l0, np.minimum(l1, end), nbr[np.maximum(work, 0), rng.integers(0, nbr.shape[1], shape)],
          lunch & (l0 >= arrive))
    home_at = end + np.where(transit, tr_bins, 0)
    paint(end, home_at, stop, transit)
    evening = commuting & (rng.random(shape) < cfg.evening_out_prob)
    e1 = home_at + to_bin(rng.uniform(1.0, 3.0, shape))
    paint(home_at, e1, pick_other(), evening)

    # weekend day, or any day of a non-employed user
    free = ~commuting
    p_out = np.where(wk, 0.6 * cfg.weekend_out_prob, cfg.weekend_out_prob)
    out = free & (rng.random(shape) < p_out)
    s1 = to_bin(np.clip(users["leave_h"][:, None] + 2.5 + rng.normal(0.0, 1.5, shape), 7.0, 18.0))
    f1 = s1 + to_bin(rng.uniform(1.5, 4.5, shape))
    paint(s1, f1, pick_other(), out)
    second = out & (rng.random(shape) < 0.4)
    f2 = f1 + to_bin(rng.uniform(1.0, 3.0, shape))
    paint(f1, f2, pick_other(), second)
    # home is painted first and never overwritten at night: all segments end by midnight
    return place


def _handover(
    rng: np.random.Generator, place: np.ndarray, handover_nbr: np.ndarray, prob: float
) -> np.ndarray:
    swap = rng.random(place.shape) < prob
    return np.where(swap, handover_nbr[place], place)


# ----------------------------------------------------------------------------- traffic
def _simulate_traffic(
    cfg: SyntheticCityConfig, rng: np.random.Generator, users: dict[str, np.ndarray],
    place: np.ndarray, ptype: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Traffic (MB) and move mask on the user timeline ``(n_users, days * bins_per_day)``."""
    n, L = place.shape
    B = cfg.bins_per_day
    s = cfg.coupling_strength
    hours = (np.arange(L) % B + 0.5) * cfg.bin_minutes / 60.0
    h_act = _interp_hours(HOUR_ACTIVITY, hours)[None, :]
    h_vol = _interp_hours(HOUR_VOLUME, hours)[None, :]
    kind = ptype[place]  # (n, L)
    evening = (hours >= HOME_EVENING_HOURS[0]) & (hours < HOME_EVENING_HOURS[1])
    home_evening = (place == users["home"][:, None]) & evening[None, :]
    moves = np.zeros((n, L), dtype=bool)
    moves[:, 1:] = place[:, 1:] != place[:, :-1]

    p = users["activity"][:, None] * h_act * ACTIVITY_FACTOR[kind] ** s
    p = np.where(home_evening, p * HOME_EVENING_ACTIVITY**s, p)
    p = np.minimum(p, MAX_ACTIVE_PROB)
    miss = (1.0 - MOVE_TRIGGER_PROB) ** s  # probability that a move's burst trigger does not fire
    p = np.where(moves, 1.0 - (1.0 - p) * miss, p)
    u = rng.random((n, L))
    active = np.empty((n, L), dtype=bool)
    active[:, 0] = u[:, 0] < p[:, 0]
    for t in range(1, L):
        pt = np.where(active[:, t - 1], 1.0 - (1.0 - p[:, t]) * (1.0 - SESSION_PERSISTENCE), p[:, t])
        active[:, t] = u[:, t] < pt

    vol = users["intensity_mb"][:, None] * h_vol * VOLUME_FACTOR[kind] ** s
    vol = np.where(home_evening, vol * HOME_EVENING_VOLUME**s, vol)
    vol = np.where(moves, vol * MOVE_VOLUME_FACTOR**s, vol)
    vol = vol * np.exp(SLOT_LOG_SD * rng.standard_normal((n, L)))
    traffic = np.where(active, np.maximum(vol, 1e-3), 0.0).astype(np.float32)
    return traffic, moves


def _coupling_record(cfg: SyntheticCityConfig) -> dict[str, Any]:
    s = cfg.coupling_strength
    return {
        "description": (
            "traffic of a slot depends on the type of the place the user is at, on moves and on "
            "being at home in the evening: active with p = min(0.95, a_u * H_act(hour) * "
            "A[type]^s * E_act^s), a move adds a burst trigger (p <- 1 - (1-p)(1-move_trigger)^s), "
            "an active slot is followed by p <- 1 - (1-p)(1-persistence); volume = I_u * "
            "H_vol(hour) * V[type]^s * E_vol^s * M^s * LogNormal(0, slot_log_sd)"
        ),
        "coupling_strength": s,
        "place_types": list(PLACE_TYPES),
        "activity_factor": dict(zip(PLACE_TYPES, ACTIVITY_FACTOR.tolist())),
        "volume_factor": dict(zip(PLACE_TYPES, VOLUME_FACTOR.tolist())),
        "home_evening": {"hours": list(HOME_EVENING_HOURS), "activity_factor": HOME_EVENING_ACTIVITY,
                         "volume_factor": HOME_EVENING_VOLUME},
        "move_burst": {"trigger_prob": MOVE_TRIGGER_PROB, "volume_factor": MOVE_VOLUME_FACTOR,
                       "note": "a move is a change of place; hand-overs between stations do not count"},
        "session_persistence": SESSION_PERSISTENCE,
        "max_active_prob": MAX_ACTIVE_PROB,
        "slot_log_sd": SLOT_LOG_SD,
        "hour_activity_knots": [list(k) for k in HOUR_ACTIVITY],
        "hour_volume_knots": [list(k) for k in HOUR_VOLUME],
        "type_of": "the place the user is at (before hand-over), given by stations.place_type",
    }


def _observed_summary(
    traffic: np.ndarray, kind: np.ndarray, moves: np.ndarray, hours: np.ndarray
) -> dict[str, Any]:
    """Mean traffic per place type (daytime 09-18 h) and at moves vs other slots, as generated."""
    day = (hours >= 9.0) & (hours < 18.0)
    out: dict[str, Any] = {"daytime_mean_mb_by_place_type": {}, "daytime_active_share_by_place_type": {}}
    for k, name in enumerate(PLACE_TYPES):
        m = (kind == k) & day[None, :]
        out["daytime_mean_mb_by_place_type"][name] = float(traffic[m].mean()) if m.any() else None
        out["daytime_active_share_by_place_type"][name] = float((traffic[m] > 0).mean()) if m.any() else None
    out["mean_mb_at_moves"] = float(traffic[moves].mean()) if moves.any() else None
    out["mean_mb_elsewhere"] = float(traffic[~moves].mean()) if (~moves).any() else None
    return out


# ----------------------------------------------------------------------------- public API
def simulate_city(config: SyntheticCityConfig | None = None, **overrides: Any) -> SyntheticCity:
    """Generate the synthetic city and return the dataset with its ground truth.

    ``config`` (default :class:`SyntheticCityConfig`) updated by ``overrides`` (its field names).
    Samples are user-windows of ``T`` bins (``T * bin_minutes / 1440`` days), ordered user-major,
    so sample ``i`` is user ``i // windows_per_user``. See the module docstring for the model.
    """
    cfg = _resolve_config(config, overrides)
    t0 = time.perf_counter()
    root = np.random.default_rng(cfg.seed)
    rng_st, rng_us, rng_mob, rng_ho, rng_tr = root.spawn(5)

    stations, ptype = _build_stations(cfg, rng_st)
    xy = _project_km(stations["lat"].to_numpy(), stations["lon"].to_numpy(), cfg.bbox)
    tree = cKDTree(xy)
    dist, idx = tree.query(xy, k=_N_NEIGHBOURS + 1)
    nbr = idx[:, 1:].astype(np.int64)  # (N, K) nearest other stations
    handover_nbr = np.where(dist[:, 1] <= _HANDOVER_KM, nbr[:, 0], np.arange(cfg.n_stations))

    users = _build_users(cfg, rng_us, xy, ptype)
    start = _dt.date.fromisoformat(cfg.start_date)
    dates = [start + _dt.timedelta(days=d) for d in range(cfg.days)]
    weekend = np.array([d.weekday() >= 5 for d in dates])
    place3 = _simulate_places(cfg, rng_mob, users, nbr, weekend)
    n, D, B = place3.shape
    place = place3.reshape(n, D * B)
    observed = _handover(rng_ho, place, handover_nbr, cfg.handover_prob)
    traffic, moves = _simulate_traffic(cfg, rng_tr, users, place, ptype)

    T, W = cfg.T, cfg.days // cfg.window_days
    U = n * W
    user_ids = [f"u{i + 1:05d}" for i in range(n)]
    samples = pd.DataFrame(
        {
            "user": np.repeat(np.asarray(user_ids, dtype=object), W),
            "start": np.tile(
                np.asarray([_dt.datetime.combine(dates[w * cfg.window_days], _dt.time()).isoformat()
                            for w in range(W)], dtype=object), n),
        }
    )
    hours = (np.arange(D * B) % B + 0.5) * cfg.bin_minutes / 60.0
    meta: dict[str, Any] = {
        "source": "synthetic",
        "bin_minutes": cfg.bin_minutes,
        "T": T,
        "traffic_unit": "MB",
        "window_days": cfg.window_days,
        "start_date": cfg.start_date,
        "counts": {"samples": U, "users": n, "stations": cfg.n_stations, "days": cfg.days,
                   "windows_per_user": W},
        "normalisation": normalisation_stats(traffic),
        "config": dataclasses.asdict(cfg),
        "planted_coupling": dict(
            _coupling_record(cfg), observed=_observed_summary(traffic, ptype[place], moves, hours)
        ),
        "notes": (
            "synthetic city from mstdiff.data.synthetic: districts of stations with place types and "
            "POI counts, users with home/work/favourite places and daily routines (exploration, "
            "preferential return, hand-overs), traffic in MB per slot with a planted coupling to "
            "the place type, moves and home evenings (see planted_coupling)"
        ),
    }
    ds = PreparedDataset(
        traffic=traffic.reshape(U, T),
        locations=observed.reshape(U, T).astype(np.int32),
        stations=stations,
        samples=samples,
        meta=meta,
    )
    users_df = pd.DataFrame(
        {
            "user": user_ids,
            "home": users["home"], "work": users["work"], "transit_stop": users["transit_stop"],
            "employed": users["employed"], "activity": users["activity"],
            "intensity_mb": users["intensity_mb"], "explore_prob": users["explore_prob"],
        }
    )
    logger.info("synthetic city: %d users x %d days, %d stations, %d samples of T=%d in %.2fs",
                n, cfg.days, cfg.n_stations, U, T, time.perf_counter() - t0)
    return SyntheticCity(
        dataset=ds, users=users_df, favourites=users["favourites"],
        place=place.reshape(U, T).astype(np.int32), moves=moves.reshape(U, T), config=cfg,
    )


def synthetic_city(config: SyntheticCityConfig | None = None, **overrides: Any) -> PreparedDataset:
    """A seeded synthetic city in the prepared-dataset format.

    Example: ``synthetic_city(n_users=200, n_stations=300, days=2, T=48, bin_minutes=30, seed=0)``
    gives 400 user-day samples; ``synthetic_city(days=7, T=336)`` gives one user-week per user.
    Options are the fields of :class:`SyntheticCityConfig`; an invalid option (e.g. ``T`` not
    divisible by 8) raises :class:`~mstdiff.errors.InputError`. The stations table has
    ``station_id, lat, lon, place_type, district, poi_<category>...``; ``meta`` records the config,
    ``traffic_unit = "MB"`` and the planted coupling. Use :func:`simulate_city` for the ground truth
    (homes, work places, true places, moves).
    """
    return simulate_city(config, **overrides).dataset


# ----------------------------------------------------------------------------- raw log writer
def _day_codes(start: str, days: int) -> np.ndarray:
    d0 = _dt.date.fromisoformat(start)
    return np.array([int((d0 + _dt.timedelta(days=d)).strftime("%Y%m%d")) for d in range(days)],
                    dtype=np.int64)


def _block_uniforms(seed: int, a: int, b: int, k: int) -> np.ndarray:
    """Uniforms ``(b - a, k)`` for global record positions ``a..b-1``.

    Drawn from fixed blocks of :data:`_RAW_BLOCK` records, each with its own seed, so the values of
    a record do not depend on how the records are chunked.
    """
    if b <= a:
        return np.empty((0, k))
    first, last = a // _RAW_BLOCK, (b - 1) // _RAW_BLOCK
    parts = []
    for blk in range(first, last + 1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x52415700, blk)))
        parts.append(rng.random((_RAW_BLOCK, k)))
    allu = np.concatenate(parts) if len(parts) > 1 else parts[0]
    off = first * _RAW_BLOCK
    return allu[a - off: b - off]


def write_synthetic_raw_log(
    path: str | os.PathLike[str],
    n_records: int,
    n_users: int = 1000,
    n_stations: int = 1000,
    seed: int = 0,
    chunk_records: int = 1_000_000,
    **city_overrides: Any,
) -> dict[str, Any]:
    """Write a raw log in the Tsinghua App Usage trace format, from the synthetic city's routines.

    ``path`` gets ``n_records`` lines ``user_id timestamp base_station_id app_id traffic_bytes``
    (space-separated, no header, timestamp ``YYYYMMDDhhmmss``) over one week from 2016-04-20,
    sorted by user and time; ``stations.csv`` (``station_id,lat,lon``) and ``poi.csv``
    (``station_id,place_type,poi_*``) are written next to it. The city is
    ``simulate_city(n_users=..., n_stations=..., days=7, T=48, bin_minutes=30, seed=...,
    start_date="2016-04-20", **city_overrides)``; the records are spread over its active slots
    (multinomial, weights ``sqrt(traffic)``), at the slot's observed station (or, for 5 % of the
    records, its nearest neighbour: a hand-over within the slot), with stratified times inside the
    slot, a per-user favourite-app mix and bytes ``traffic / records_in_slot * LogNormal`` (mean 1),
    so that preparing the log gives back a dataset close to the city's.

    Records are produced ``chunk_records`` at a time (memory ~ chunk size + users x slots); the
    per-record randomness comes from fixed blocks keyed by record position, so the chunk size does
    not change the file. Writes atomically (temp file + rename). Returns counts.
    """
    if n_records < 0:
        raise InputError(f"n_records = {n_records} is negative", where="write_synthetic_raw_log")
    if chunk_records < 1:
        raise InputError(f"chunk_records = {chunk_records}", where="write_synthetic_raw_log",
                         fix="use a positive chunk size, e.g. 1_000_000")
    import pyarrow as pa
    import pyarrow.csv as pacsv

    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    city = simulate_city(n_users=n_users, n_stations=n_stations, days=7, T=48, bin_minutes=30,
                         seed=seed, start_date=RAW_LOG_START, **city_overrides)
    ds = city.dataset
    B = ds.T
    traffic = ds.traffic.reshape(n_users, -1)  # (n_users, 336) user timeline
    loc = ds.locations.reshape(n_users, -1)
    L = traffic.shape[1]

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x52415701,)))
    w = np.sqrt(traffic.astype(np.float64)).ravel()
    total_w = w.sum()
    if n_records > 0 and total_w <= 0:
        raise InputError("the synthetic city has no active slot", where="write_synthetic_raw_log",
                         fix="use more users or a larger activity_mean")
    counts = rng.multinomial(n_records, w / total_w) if n_records > 0 else np.zeros(w.size, np.int64)
    slots = np.flatnonzero(counts)
    c = counts[slots].astype(np.int64)
    ends = np.cumsum(c)
    starts = ends - c
    s_user = slots // L
    s_t = slots % L
    s_loc = loc.ravel()[slots].astype(np.int64)
    s_bytes = traffic.ravel()[slots].astype(np.float64) * 1e6

    # per-user favourite apps: 20 distinct of 2,000 app ids, Zipf popularity (Gumbel top-k)
    n_apps, n_fav_apps = 2000, 20
    log_pop = -1.1 * np.log(np.arange(1, n_apps + 1))
    user_apps = np.empty((n_users, n_fav_apps), dtype=np.int64)
    for a in range(0, n_users, 2048):
        b = min(a + 2048, n_users)
        keys = log_pop[None, :] + rng.gumbel(size=(b - a, n_apps))
        top = np.argpartition(-keys, n_fav_apps - 1, axis=1)[:, :n_fav_apps]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        user_apps[a:b] = np.take_along_axis(top, order, axis=1)

    xy = _project_km(ds.stations["lat"].to_numpy(), ds.stations["lon"].to_numpy(), city.config.bbox)
    _, nn = cKDTree(xy).query(xy, k=2)
    nearest = nn[:, 1].astype(np.int64)
    day_codes = _day_codes(RAW_LOG_START, 7)
    slot_s = ds.bin_minutes * 60
    geo_q = 0.35  # per-rank stop probability of the favourite-app rank (geometric)

    schema = pa.schema([(name, pa.int64()) for name in ("user", "ts", "station", "app", "bytes")])
    opts = pacsv.WriteOptions(include_header=False, delimiter=" ", quoting_style="none")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    total_bytes = 0
    n_chunks = 0
    try:
        with pacsv.CSVWriter(str(tmp), schema, write_options=opts) as writer:
            for a in range(0, n_records, chunk_records):
                b = min(a + chunk_records, n_records)
                rec = np.arange(a, b, dtype=np.int64)
                si = np.searchsorted(ends, rec, side="right")
                k = rec - starts[si]
                u = _block_uniforms(seed, a, b, 4)
                offset = np.floor((k + u[:, 0]) / c[si] * slot_s).astype(np.int64)
                st = np.where(u[:, 1] < 0.05, nearest[s_loc[si]], s_loc[si])
                rank = np.minimum(np.floor(np.log1p(-u[:, 2]) / np.log1p(-geo_q)).astype(np.int64),
                                  n_fav_apps - 1)
                user = s_user[si]
                app = user_apps[user, rank]
                z = ndtri(np.clip(u[:, 3], 1e-12, 1 - 1e-12))
                share = s_bytes[si] / c[si] * np.exp(0.8 * z - 0.32)  # LogNormal(-0.32, 0.8): mean 1
                nbytes = np.maximum(1, np.round(share)).astype(np.int64)
                t = s_t[si]
                sec = (t % B) * slot_s + offset
                hhmmss = (sec // 3600) * 10_000 + (sec % 3600 // 60) * 100 + sec % 60
                ts = day_codes[t // B] * 1_000_000 + hhmmss
                writer.write_table(pa.table([user, ts, st, app, nbytes], schema=schema))
                total_bytes += int(nbytes.sum())
                n_chunks += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    stations_path = path.parent / "stations.csv"
    poi_path = path.parent / "poi.csv"
    st_df = ds.stations
    atomic_write_text(stations_path, st_df[["station_id", "lat", "lon"]].to_csv(index=False))
    poi_cols = ["station_id", "place_type", *[f"poi_{c}" for c in POI_CATEGORIES]]
    atomic_write_text(poi_path, st_df[poi_cols].to_csv(index=False))
    elapsed = time.perf_counter() - t0
    logger.info("raw log: %d records of %d users in %d chunk(s) -> %s in %.2fs",
                n_records, n_users, n_chunks, path, elapsed)
    return {
        "path": str(path),
        "stations_path": str(stations_path),
        "poi_path": str(poi_path),
        "records": int(n_records),
        "users": int(n_users),
        "users_with_records": int(np.unique(s_user).size),
        "stations": int(n_stations),
        "start": RAW_LOG_START,
        "days": 7,
        "total_bytes": total_bytes,
        "chunks": n_chunks,
        "seconds": round(elapsed, 3),
    }
