"""TimeGeo: a mechanistic model of when and where individuals travel.

Re-implemented from Jiang, Yang, Gupta, Veneziano, Athavale & González, "The TimeGeo modeling
framework for urban mobility without travel surveys", PNAS 113 (37), 2016, on station sequences.

**Home and work** (inferred per training user, all their windows pooled). Home: the station most
often observed in the night hours (``night_hours``, default 22:00-06:00). Work: the non-home station
most often observed in weekday work hours (``work_hours``, default 09:00-17:00), kept if it holds at
least ``min_work_share`` of the user's weekday work-hour slots; users without one are non-commuters.
Weekdays come from the samples' start dates (a window whose start does not parse counts as
weekdays). For every weekday of a commuter with an observation at work, the arrival (first slot
at work) and departure (after the last slot at work) are recorded.

**Temporal choice** (the paper's time-inhomogeneous Markov chain, per slot ``t``). The *anchor*
``a(t)`` is the work place during a commuter's work window on a working day, else home. With the
circadian travel probability ``P(t)`` (``Σ_t P(t) = 1`` over a day) and the tour rate per day
``n = n_w / 7``:

- when the anchor switches (going to / leaving work) an agent at the old anchor moves to the new one;
- at the anchor: leave for an "other" place with probability ``n P(t)``;
- at an other place: move with probability ``β1 n P(t)`` (dwell rate ``β1``); a move goes to
  another other place with probability ``β2 n P(t)`` (burst rate ``β2``), else back to the anchor.

**Spatial choice** (rank-based exploration and preferential return, r-EPR): going to an other
place, the agent explores a new station with probability ``P_new = ρ S^{-γ}`` (``S`` distinct
stations visited so far), else returns to a visited one with probability proportional to its visit
count. An exploration from station ``o`` picks the ``k``-th nearest unvisited station with
probability ``∝ k^{-α}``.

**Fitted from the training data**:

- ``P(t)``: the population's departure hazard at the anchor by time of day (departures / agents
  at their anchor, shrunk to the mean with one pseudo-observation), normalised to sum to 1;
- per user, ``n`` (hence ``n_w = 7 n``), ``β1``, ``β2``: moment (first-order maximum-likelihood)
  estimators of the chain above, ``n = D_a / Σ_{at anchor} P(t)``,
  ``β1 = M_o / (n Σ_{at other} P(t))``, ``β2 = O_o / (n Σ_{moves from other} P(t))`` with ``D_a``
  departures from the anchor, ``M_o`` moves from other places, ``O_o`` of those to another other
  place. With few days per user these are noisy, so each is shrunk to the pooled estimate
  ``Σ_u num / Σ_u den``: ``(num_u + κ d̄ · pooled) / (den_u + κ d̄)`` with ``d̄`` the mean exposure
  per user and ``κ = shrinkage`` (0: raw per-user estimates); a user without exposure gets the
  pooled estimate, and the paper's value (``n_w = 6.1``, ``β1 = 3.67``, ``β2 = 10``) is used where
  even that is not possible;
- ``ρ, γ``: Bernoulli maximum likelihood of "the destination is new" given ``S`` over the moves to
  non-anchor stations (each user's windows in date order, home and work known from the start);
- ``α``: maximum likelihood of the truncated power law ``k^{-α} / Σ_{j≤K} j^{-α}`` over the
  distance ranks ``k`` of the observed explorations (``K`` unvisited stations);
- home, work, work windows, the share of working days with a visit to work, and each user's visit
  counts of other stations (the agent's memory at the start of generation).

``ρ, γ, α`` fall back to the paper's values (0.6, 0.21, 0.86) with fewer than ``min_events``
events. **Generation**: each agent copies a training sample's user (home, work, ``n``, ``β1``,
``β2``, work windows, memory) and the weekday of the window start, starts at its anchor and runs
the chain for ``T`` slots.

Notes on this re-implementation: the paper works on extracted stays at 10-min resolution with
weeks of data per user; here slots are the dataset's bins and every change of station is a trip,
so hand-over ping-pong in cellular data counts as short trips and the fitted ``n_w``, ``β1`` come
out higher than the paper's. Treating work as the anchor inside the observed work window is our
reading of how the paper handles commuters' work activity.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from tqdm.auto import tqdm

from mstdiff.baselines.base import Baseline, GeneratedSeries, register_baseline
from mstdiff.baselines.difftraj import StationSnapper
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["TimeGeo", "TimeGeoConfig"]

PAPER = {"n_w": 6.1, "beta1": 3.67, "beta2": 10.0, "rho": 0.6, "gamma": 0.21, "alpha": 0.86}


@dataclass
class TimeGeoConfig:
    """TimeGeo; parameters marked "default" are used only where a fit is off or impossible."""

    night_hours: tuple[float, float] = (22.0, 6.0)  # home = most frequent station in [start, end) (wraps)
    work_hours: tuple[float, float] = (9.0, 17.0)  # work = most frequent non-home station here, weekdays
    min_work_share: float = 0.3  # work kept if it holds this share of the weekday work-hour slots
    fit_temporal: bool = True  # fit P(t), n_w, beta1, beta2 (else uniform P(t) and the defaults)
    per_user: bool = True  # per-user n_w, beta1, beta2 (else the pooled estimates for everyone)
    shrinkage: float = 1.0  # per-user estimates shrunk to the pooled one by this many users' exposure
    fit_spatial: bool = True  # fit rho, gamma, alpha (else the defaults)
    min_events: int = 30  # fewer observed choice events than this: keep the default
    max_rank_events: int = 20_000  # exploration events used for the alpha fit (seeded subsample)
    memory_from_user: bool = True  # agents start with their training user's visited stations
    n_w: float = PAPER["n_w"]  # default weekly home-based tours (paper: 6.1)
    beta1: float = PAPER["beta1"]  # default dwell rate (paper: 3.67)
    beta2: float = PAPER["beta2"]  # default burst rate (paper: 10)
    rho: float = PAPER["rho"]  # default exploration scale (paper: 0.6)
    gamma: float = PAPER["gamma"]  # default exploration exponent (paper: 0.21)
    alpha: float = PAPER["alpha"]  # default distance-rank exponent (paper: 0.86)
    seed: int = 0  # seed of the subsampling in fitting

    def validate(self) -> None:
        where = "baselines.timegeo"
        for key in ("night_hours", "work_hours"):
            a, b = getattr(self, key)
            if not (0 <= a <= 24 and 0 <= b <= 24 and a != b):
                raise InputError(f"{key} = {(a, b)}", where=f"{where}.{key}",
                                 fix="use two different hours in [0, 24], e.g. [22, 6]")
        if not 0.0 <= self.min_work_share <= 1.0:
            raise InputError(f"min_work_share = {self.min_work_share}", where=f"{where}.min_work_share",
                             fix="use a share in [0, 1]")
        for key in ("n_w", "beta1", "beta2", "rho", "gamma", "alpha"):
            if getattr(self, key) < 0:
                raise InputError(f"{key} = {getattr(self, key)}", where=f"{where}.{key}", fix="use >= 0")
        if self.shrinkage < 0:
            raise InputError(f"shrinkage = {self.shrinkage}", where=f"{where}.shrinkage", fix="use >= 0")
        if self.min_events < 1 or self.max_rank_events < 1:
            raise InputError("min_events and max_rank_events must be >= 1", where=where)


def _hour_mask(hours: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    a, b = window
    return (hours >= a) & (hours < b) if a < b else (hours >= a) | (hours < b)


def _mode_per_group(group: np.ndarray, value: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent ``value`` per ``group`` (ties: smallest value) and its count; -1 / 0 if empty."""
    mode = np.full(n_groups, -1, dtype=np.int64)
    count = np.zeros(n_groups, dtype=np.int64)
    if group.size == 0:
        return mode, count
    pairs, cnt = np.unique(np.stack([group, value], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -cnt, pairs[:, 0]))  # by group, count desc, value asc
    pairs, cnt = pairs[order], cnt[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    mode[pairs[first, 0]] = pairs[first, 1]
    count[pairs[first, 0]] = cnt[first]
    return mode, count


def _zeta_cdf(alpha: float, n: int) -> np.ndarray:
    """``cumsum(k^{-α})`` for ``k = 1..n``."""
    return np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** (-alpha))


@register_baseline
class TimeGeo(Baseline):
    """TimeGeo trajectory generator; see the module docstring for the model and what is fitted."""

    name: ClassVar[str] = "timegeo"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = TimeGeoConfig

    def __init__(self, config: TimeGeoConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.bins_per_day: int | None = None
        self.P: np.ndarray | None = None  # (B,) circadian travel probability, sums to 1
        self.xy: np.ndarray | None = None  # (N, 2) projected station coordinates (km)
        self.users: dict[str, np.ndarray] = {}  # per-user profile arrays (see _fit_users)
        self.sample_user: np.ndarray | None = None  # (U,) user index of every training sample
        self.sample_wd0: np.ndarray | None = None  # (U,) weekday of the window start (-1: unknown)
        self.params: dict[str, Any] = {}  # fitted global parameters and summaries

    # ================================================================== fitting
    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> TimeGeo:
        cfg: TimeGeoConfig = self.config
        self._remember_shape(train)
        if 1440 % train.bin_minutes:
            raise InputError(f"bin_minutes = {train.bin_minutes} does not divide a day",
                             where="baselines.timegeo.fit")
        B = self.bins_per_day = 1440 // train.bin_minutes
        U, T = train.n_samples, train.T
        loc = train.locations.astype(np.int64)
        codes, _ = pd.factorize(train.samples["user"].astype(str))
        n_users = int(codes.max()) + 1
        starts = pd.to_datetime(train.samples["start"].astype(str), errors="coerce")
        wd0 = np.where(starts.isna(), -1, starts.dt.day_of_week.fillna(-1)).astype(np.int64)
        self.sample_user, self.sample_wd0 = codes.astype(np.int64), wd0
        self.xy = StationSnapper(train.coords).xy

        t = np.arange(T)
        tod = t % B
        day = t // B
        hours = (tod + 0.5) * train.bin_minutes / 60.0
        wd = np.where(wd0[:, None] >= 0, (wd0[:, None] + day[None, :]) % 7, -1)  # (U, T)
        weekday = wd < 5  # unknown dates count as weekdays
        user_of = np.broadcast_to(codes[:, None], (U, T))

        # ---- home and work
        night = np.broadcast_to(_hour_mask(hours, cfg.night_hours)[None, :], (U, T))
        home, _ = _mode_per_group(user_of[night], loc[night], n_users)
        any_home, _ = _mode_per_group(user_of.ravel(), loc.ravel(), n_users)
        home = np.where(home >= 0, home, any_home)
        work_slots = _hour_mask(hours, cfg.work_hours)[None, :] & weekday
        away = work_slots & (loc != home[codes][:, None])
        work, wcount = _mode_per_group(user_of[away], loc[away], n_users)
        wtotal = np.bincount(user_of[work_slots], minlength=n_users)
        share = np.divide(wcount, wtotal, out=np.zeros(n_users), where=wtotal > 0)
        work = np.where((work >= 0) & (share >= cfg.min_work_share) & (share > 0), work, -1)

        # ---- work windows per (sample, day)
        D = math.ceil(T / B)
        pad = D * B - T
        locp = np.pad(loc, ((0, 0), (0, pad)), constant_values=-2).reshape(U, D, B)
        wdp = np.pad(wd, ((0, 0), (0, pad)), constant_values=7).reshape(U, D, B)[:, :, 0]
        valid_day = np.pad(np.ones(T, bool), (0, pad)).reshape(D, B)[:, 0]
        wk_day = ((wdp < 5) & valid_day[None, :])  # (U, D)
        is_work = (locp == work[codes][:, None, None]) & (work[codes] >= 0)[:, None, None]
        has_work = is_work.any(axis=2) & wk_day
        arrive = np.argmax(is_work, axis=2)
        leave = B - np.argmax(is_work[:, :, ::-1], axis=2)
        anchor = np.broadcast_to(home[codes][:, None, None], (U, D, B)).copy()
        bins = np.arange(B)[None, None, :]
        in_win = has_work[:, :, None] & (bins >= arrive[:, :, None]) & (bins < leave[:, :, None])
        anchor[in_win] = np.broadcast_to(work[codes][:, None, None], (U, D, B))[in_win]
        anchor = anchor.reshape(U, D * B)[:, :T]
        su, sd = np.nonzero(has_work)
        pair_user = codes[su]
        order = np.argsort(pair_user, kind="stable")
        pairs = np.stack([arrive[su, sd], leave[su, sd]], axis=1)[order]
        pair_ptr = np.concatenate([[0], np.cumsum(np.bincount(pair_user, minlength=n_users))])
        n_wk_days = np.bincount(codes, weights=wk_day.sum(axis=1), minlength=n_users)
        n_work_days = np.bincount(codes, weights=has_work.sum(axis=1), minlength=n_users)
        work_day_share = np.divide(n_work_days, n_wk_days, out=np.zeros(n_users), where=n_wk_days > 0)

        # ---- temporal parameters
        P, temporal = self._fit_temporal(loc, anchor, tod, codes, n_users)
        self.P = P

        # ---- spatial parameters (and each user's memory)
        rng = np.random.default_rng(cfg.seed)
        spatial, mem_ptr, mem_loc, mem_cnt = self._fit_spatial(loc, codes, home, work, train, rng, progress)

        self.users = {
            "home": home, "work": work, "pair_ptr": pair_ptr, "pairs": pairs.astype(np.int64),
            "work_day_share": work_day_share, "mem_ptr": mem_ptr, "mem_loc": mem_loc, "mem_cnt": mem_cnt,
            **{k: temporal[k] for k in ("n", "beta1", "beta2")},
        }
        self.params = {
            **spatial,
            "n_w_pooled": temporal["n_pooled"] * 7, "beta1_pooled": temporal["beta1_pooled"],
            "beta2_pooled": temporal["beta2_pooled"],
            "n_w_median": float(np.median(temporal["n"]) * 7),
            "beta1_median": float(np.median(temporal["beta1"])),
            "beta2_median": float(np.median(temporal["beta2"])),
            "fitted": {**temporal["fitted"], **spatial["fitted"]},
            "users": n_users, "commuters": int((work >= 0).sum()),
        }
        logger.info("timegeo: %d users (%d commuters); n_w %.2f, beta1 %.2f, beta2 %.2f (medians); "
                    "rho %.3f, gamma %.3f, alpha %.3f", n_users, self.params["commuters"],
                    self.params["n_w_median"], self.params["beta1_median"], self.params["beta2_median"],
                    spatial["rho"], spatial["gamma"], spatial["alpha"])
        return self

    def _fit_temporal(self, loc: np.ndarray, anchor: np.ndarray, tod: np.ndarray, codes: np.ndarray,
                      n_users: int) -> tuple[np.ndarray, dict[str, Any]]:
        """``P(t)`` and per-user ``n``, ``β1``, ``β2`` (see the module docstring)."""
        cfg: TimeGeoConfig = self.config
        B = self.bins_per_day
        assert B is not None
        prev, nxt = loc[:, :-1], loc[:, 1:]
        a_prev, a_now = anchor[:, :-1], anchor[:, 1:]
        tod_t = np.broadcast_to(tod[1:][None, :], prev.shape)
        commute = (a_now != a_prev) & (prev == a_prev)
        at_anchor = ~commute & (prev == a_now)
        other = ~commute & ~at_anchor
        moved = nxt != prev
        n_default = cfg.n_w / 7.0
        fitted = {"P": False, "n_w": False, "beta1": False, "beta2": False}
        if not cfg.fit_temporal:
            P = np.full(B, 1.0 / B)
            ones = np.ones(n_users)
            return P, {"n": ones * n_default, "beta1": ones * cfg.beta1, "beta2": ones * cfg.beta2,
                       "n_pooled": n_default, "beta1_pooled": cfg.beta1, "beta2_pooled": cfg.beta2,
                       "fitted": fitted}
        dep = np.bincount(tod_t[at_anchor & moved], minlength=B).astype(np.float64)
        expo = np.bincount(tod_t[at_anchor], minlength=B).astype(np.float64)
        rate = dep.sum() / expo.sum() if expo.sum() > 0 else 0.0
        if dep.sum() > 0:
            h = (dep + rate) / (expo + 1.0)  # hazard, shrunk to the mean rate by one pseudo-observation
            P = h / h.sum()
            fitted["P"] = True
        else:
            P = np.full(B, 1.0 / B)
        Pt = P[tod_t]  # (U, T-1)
        user = np.broadcast_to(codes[:, None], prev.shape)

        def per_user(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            w = None if weights is None else weights[mask]
            return np.bincount(user[mask], weights=w, minlength=n_users).astype(np.float64)

        E_a, D_a = per_user(at_anchor, Pt), per_user(at_anchor & moved)
        E_o, M_o = per_user(other, Pt), per_user(other & moved)
        E_b, O_o = per_user(other & moved, Pt), per_user(other & moved & (nxt != a_now))

        def ratio(num: np.ndarray, den: np.ndarray, default: float, key: str) -> tuple[np.ndarray, float]:
            pooled = float(num.sum() / den.sum()) if den.sum() > 0 and num.sum() > 0 else default
            fitted[key] = bool(den.sum() > 0 and num.sum() > 0)
            if not cfg.per_user:
                return np.full(n_users, pooled), pooled
            # shrink to the pooled value by kappa average users' worth of exposure
            prior = cfg.shrinkage * float(den[den > 0].mean()) if (den > 0).any() else 0.0
            tot = den + prior
            per = np.divide(num + prior * pooled, tot, out=np.full(n_users, pooled), where=tot > 0)
            return per, pooled

        n, n_pooled = ratio(D_a, E_a, n_default, "n_w")
        n = np.clip(n, 0.0, B)  # at most one tour per slot
        b1, b1_pooled = ratio(M_o, n * E_o, cfg.beta1, "beta1")
        b2, b2_pooled = ratio(O_o, n * E_b, cfg.beta2, "beta2")
        return P, {"n": n, "beta1": np.clip(b1, 0.0, 1e4), "beta2": np.clip(b2, 0.0, 1e4),
                   "n_pooled": n_pooled, "beta1_pooled": b1_pooled, "beta2_pooled": b2_pooled,
                   "fitted": fitted}

    def _fit_spatial(self, loc: np.ndarray, codes: np.ndarray, home: np.ndarray, work: np.ndarray,
                     train: PreparedDataset, rng: np.random.Generator, progress: bool,
                     ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
        """``ρ, γ`` (P_new = ρ S^-γ), ``α`` (distance-rank exponent) and each user's memory."""
        cfg: TimeGeoConfig = self.config
        assert self.xy is not None
        N = train.n_stations
        n_users = home.size
        start = train.samples["start"].astype(str).to_numpy()
        order = np.lexsort((start, codes))  # each user's windows in date order
        S_list: list[int] = []
        new_list: list[bool] = []
        explore: list[tuple[int, int, int]] = []  # (event id, origin, destination)
        explore_visited: list[np.ndarray] = []
        mem_loc: list[np.ndarray] = []
        mem_cnt: list[np.ndarray] = []
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for grp in tqdm(np.split(order, bounds), desc="fit timegeo", disable=not progress, leave=False):
            u = int(codes[grp[0]])
            anchors = {int(home[u])} | ({int(work[u])} if work[u] >= 0 else set())
            visited: set[int] = set(anchors)
            counts: dict[int, int] = {}
            for i in grp:
                seq = loc[i]
                first = int(seq[0])
                visited.add(first)
                if first not in anchors:
                    counts[first] = counts.get(first, 0) + 1
                for t in np.flatnonzero(seq[1:] != seq[:-1]) + 1:
                    o, d = int(seq[t - 1]), int(seq[t])
                    if d not in anchors:
                        is_new = d not in visited
                        S_list.append(len(visited))
                        new_list.append(is_new)
                        if is_new:
                            explore.append((len(explore), o, d))
                            explore_visited.append(np.fromiter(visited, dtype=np.int64))
                        counts[d] = counts.get(d, 0) + 1
                    visited.add(d)
            keys = np.array(sorted(counts), dtype=np.int64)
            mem_loc.append(keys)
            mem_cnt.append(np.array([counts[k] for k in keys], dtype=np.float64))
        # users appear in order of codes: rebuild the ragged arrays indexed by user
        user_order = [int(codes[g[0]]) for g in np.split(order, bounds)]
        by_user_loc = [np.zeros(0, np.int64)] * n_users
        by_user_cnt = [np.zeros(0, np.float64)] * n_users
        for u, lo, c in zip(user_order, mem_loc, mem_cnt):
            by_user_loc[u], by_user_cnt[u] = lo, c
        mem_ptr = np.concatenate([[0], np.cumsum([a.size for a in by_user_loc])]).astype(np.int64)
        mem_l = np.concatenate(by_user_loc) if n_users else np.zeros(0, np.int64)
        mem_c = np.concatenate(by_user_cnt) if n_users else np.zeros(0, np.float64)

        out: dict[str, Any] = {"rho": cfg.rho, "gamma": cfg.gamma, "alpha": cfg.alpha,
                               "choice_events": len(S_list), "exploration_events": len(explore),
                               "fitted": {"rho": False, "gamma": False, "alpha": False}}
        if not cfg.fit_spatial:
            return out, mem_ptr, mem_l, mem_c
        S = np.asarray(S_list, dtype=np.float64)
        y = np.asarray(new_list, dtype=np.float64)
        if S.size >= cfg.min_events and 0 < y.sum() < y.size:
            out["rho"], out["gamma"] = self._fit_rho_gamma(S, y, cfg.rho, cfg.gamma)
            out["fitted"].update(rho=True, gamma=True)
        if len(explore) >= cfg.min_events:
            idx = np.arange(len(explore))
            if idx.size > cfg.max_rank_events:
                idx = np.sort(rng.choice(idx.size, size=cfg.max_rank_events, replace=False))
            ranks = np.empty(idx.size, dtype=np.int64)
            K = np.empty(idx.size, dtype=np.int64)
            mask = np.zeros(N, dtype=bool)
            for j, e in enumerate(idx):
                _, o, d = explore[e]
                vis = explore_visited[e]
                mask[vis] = True
                dist = np.hypot(*(self.xy - self.xy[o]).T)
                cand = ~mask
                ranks[j] = int(np.count_nonzero(cand & (dist < dist[d]))) + 1
                K[j] = int(cand.sum())
                mask[vis] = False
            out["alpha"] = self._fit_alpha(ranks, K)
            out["fitted"]["alpha"] = True
        return out, mem_ptr, mem_l, mem_c

    @staticmethod
    def _fit_rho_gamma(S: np.ndarray, y: np.ndarray, rho0: float, gamma0: float) -> tuple[float, float]:
        """Maximise ``Σ y log p + (1−y) log(1−p)``, ``p = min(1, ρ S^{-γ})``, ρ ∈ (0, 1], γ ∈ [0, 3]."""
        logS = np.log(S)

        def nll(theta: np.ndarray) -> float:
            p = np.clip(np.exp(theta[0] - theta[1] * logS), 1e-9, 1 - 1e-9)
            return -float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))

        x0 = np.array([math.log(max(min(rho0, 1.0), 1e-3)), min(max(gamma0, 0.0), 3.0)])
        res = minimize(nll, x0, method="L-BFGS-B", bounds=[(math.log(1e-4), 0.0), (0.0, 3.0)])
        return float(math.exp(res.x[0])), float(res.x[1])

    @staticmethod
    def _fit_alpha(ranks: np.ndarray, K: np.ndarray) -> float:
        """Maximise ``Σ_e [−α log k_e − log Σ_{j≤K_e} j^{-α}]`` over α ∈ [0, 5]."""
        Kmax = int(K.max())
        sum_log_k = float(np.log(ranks).sum())

        def nll(a: float) -> float:
            H = _zeta_cdf(a, Kmax)
            return a * sum_log_k + float(np.log(H[K - 1]).sum())

        return float(minimize_scalar(nll, bounds=(0.0, 5.0), method="bounded").x)

    # ================================================================== generation
    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        return self.simulate(n, seed=seed, progress=progress)[0]

    def simulate(self, n: int, *, seed: int,
                 progress: bool = True) -> tuple[GeneratedSeries, dict[str, np.ndarray]]:
        """Generate ``n`` trajectories; also return each agent's ``user`` (training user index),
        ``home`` and ``work`` (-1: none) for inspection."""
        self._check_fitted()
        self._check_n(n)
        assert self.T is not None and self.P is not None and self.xy is not None
        assert self.sample_user is not None and self.sample_wd0 is not None and self.bins_per_day is not None
        cfg: TimeGeoConfig = self.config
        rng = np.random.default_rng(seed)
        T, B, N = self.T, self.bins_per_day, self.n_stations
        assert N is not None
        us = self.users
        rho, gamma, alpha = self.params["rho"], self.params["gamma"], self.params["alpha"]
        xy = self.xy

        pick = rng.integers(0, self.sample_user.size, size=n)
        user = self.sample_user[pick]
        wd0 = self.sample_wd0[pick]
        home, work = us["home"][user], us["work"][user]
        n_rate, b1, b2 = us["n"][user], us["beta1"][user], us["beta2"][user]

        # anchors: work during a drawn observed work window on working days
        t = np.arange(T)
        tod, day = t % B, t // B
        D = math.ceil(T / B)
        anchor = np.broadcast_to(home[:, None], (n, T)).copy()
        n_pairs = us["pair_ptr"][user + 1] - us["pair_ptr"][user]
        u_day = rng.random((n, D))
        u_pair = rng.random((n, D))
        for d in range(D):
            wdd = np.where(wd0 >= 0, (wd0 + d) % 7, 0)
            works = (wdd < 5) & (work >= 0) & (n_pairs > 0) & (u_day[:, d] < us["work_day_share"][user])
            idx = us["pair_ptr"][user] + np.minimum((u_pair[:, d] * n_pairs).astype(np.int64),
                                                    np.maximum(n_pairs - 1, 0))
            idx = np.where(works, idx, 0)
            arr = np.where(works, us["pairs"][idx, 0] if us["pairs"].size else 0, B)
            lv = np.where(works, us["pairs"][idx, 1] if us["pairs"].size else 0, B)
            slots = (day == d)[None, :]
            win = works[:, None] & slots & (tod[None, :] >= arr[:, None]) & (tod[None, :] < lv[:, None])
            anchor[win] = np.broadcast_to(work[:, None], (n, T))[win]

        # per-agent memory (visit counts of other stations) and anchors
        memory: list[dict[int, float]] = []
        for i in range(n):
            if cfg.memory_from_user:
                a, b = us["mem_ptr"][user[i]], us["mem_ptr"][user[i] + 1]
                memory.append(dict(zip(us["mem_loc"][a:b].tolist(), us["mem_cnt"][a:b].tolist())))
            else:
                memory.append({})
        zcdf = _zeta_cdf(alpha, N)

        def choose_other(i: int, cur: int) -> int:
            mem = memory[i]
            anchors = {int(home[i])} | ({int(work[i])} if work[i] >= 0 else set())
            S = len(anchors | mem.keys())
            p_new = min(1.0, rho * S ** (-gamma)) if S > 0 else 1.0
            cands = [k for k in mem if k != cur and k not in anchors]
            if cands and rng.random() >= p_new:  # preferential return
                w = np.array([mem[k] for k in cands])
                dest = cands[int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))]
            else:  # rank-based exploration
                excluded = np.fromiter(anchors | mem.keys() | {cur}, dtype=np.int64)
                dist = np.hypot(*(xy - xy[cur]).T)
                dist[excluded] = np.inf
                K = N - np.unique(excluded).size
                if K <= 0:
                    return cur
                k = int(np.searchsorted(zcdf[:K], rng.random() * zcdf[K - 1], side="right"))
                k = min(k, K - 1)  # 0-based rank
                dest = int(np.argpartition(dist, k)[k])
            mem[dest] = mem.get(dest, 0.0) + 1.0
            return dest

        out = np.empty((n, T), dtype=np.int32)
        cur = anchor[:, 0].copy()
        out[:, 0] = cur
        for s in tqdm(range(1, T), desc="generate timegeo", disable=not progress, leave=False):
            a_prev, a_now = anchor[:, s - 1], anchor[:, s]
            p = self.P[tod[s]] * n_rate
            u1, u2 = rng.random(n), rng.random(n)
            commute = (a_now != a_prev) & (cur == a_prev)
            at_anchor = ~commute & (cur == a_now)
            other = ~commute & ~at_anchor
            leave = at_anchor & (u1 < np.minimum(1.0, p))
            move = other & (u1 < np.minimum(1.0, b1 * p))
            to_other = move & (u2 < np.minimum(1.0, b2 * p))
            back = move & ~to_other
            nxt = cur.copy()
            nxt[commute] = a_now[commute]
            nxt[back] = a_now[back]
            for j in np.flatnonzero(leave | to_other).tolist():
                nxt[j] = choose_other(j, int(cur[j]))
            cur = nxt
            out[:, s] = cur
        agents = {"user": user, "home": home.copy(), "work": work.copy()}
        return GeneratedSeries(locations=out), agents

    # ================================================================== state
    def _get_state(self) -> dict[str, Any]:
        return {"bins_per_day": self.bins_per_day, "P": self.P, "xy": self.xy, "users": dict(self.users),
                "sample_user": self.sample_user, "sample_wd0": self.sample_wd0, "params": dict(self.params)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.bins_per_day = int(state["bins_per_day"])
        self.P = np.asarray(state["P"], dtype=np.float64)
        self.xy = np.asarray(state["xy"], dtype=np.float64)
        self.users = {k: np.asarray(v) for k, v in state["users"].items()}
        self.sample_user = np.asarray(state["sample_user"], dtype=np.int64)
        self.sample_wd0 = np.asarray(state["sample_wd0"], dtype=np.int64)
        self.params = dict(state["params"])
