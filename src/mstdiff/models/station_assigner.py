"""The stations that realise a day pattern (``model.pattern``): :class:`StationAssigner`.

A day pattern (:mod:`mstdiff.models.day_pattern`) says when the day is at its first, second, ...
place; the assigner draws the stations of those places, label by label in time order, from counts
of the training days (the knowledge a first-order Markov chain has, conditioned on what the pattern
says of each place):

* the first label: ``p(j) ∝ π(j) ρ_j(r)``, ``π`` the share of training days starting at j;
* a new label at slot t, after station i at slot t−1, with the day's stations so far B banned::

      p(j) ∝ ρ_j(r) · (C_t[i, j] + λ q_i(j)) / (n_t(i) + λ),
      q_i(j) = (C[i, j] + λ K_i(j)) / (n(i) + λ),

  ``C_t[i, j]`` the training moves from i at slot t to a station j *new to that day* (``C`` over
  all slots; ``n_t``, ``n`` row sums; banned columns removed first); ``K_i`` a back-off kernel
  (``pattern.kernel``, normalised over the stations it holds):

  - ``"nearest"``: the ``neighbours`` stations nearest to i on the map, ∝ ``f_j + ε·mean f`` (f the
    first-visit arrivals), or the transition graph's neighbours of i without coordinates;
  - ``"gravity"``: every station, ∝ ``(f_j + ε·mean f) · h_r(d_ij)``, ``d_ij`` the distance from i
    on the map and ``h_r`` a profile over distance bins for the label's class of slots, fitted by
    iterative proportional fitting so that the moves this level draws have the length
    distribution of the training moves it stands in for: each training move weighted by the
    share the back-off gives the kernel when that move is left out of the counts,
    ``λ/(n_t(i) − 1 + λ) · λ/(n(i) − 1 + λ)``. A source seen once or never in training then moves as
    far as such sources do, to the stations popular in the label's role, instead of to its
    nearest neighbours;
* the role ``r`` of a label = its class of slots in the day (1, 2, 3–4, 5–8, 9–16, 17+) × whether
  the day comes back to it; ``ρ_j(r) = (c_j(r) + α P(r)) / ((c_j + α) P(r))`` says how much more
  often station j plays role r than stations on average (α = ``role_smoothing``): the places of
  long stays and returns are the popular ones (home, work), the one-slot cells of a trip are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from mstdiff.errors import InputError
from mstdiff.models.day_pattern import (
    KM_PER_DEGREE,
    N_ROLES,
    ROLE_EDGES,
    DayPatternConfig,
    day_patterns,
    label_roles,
)

__all__ = ["StationAssigner", "fit_gravity_profile", "gravity_edges"]

GRAVITY_BINS = 60  # distance bins of h_r (log-spaced; the first from 0)
GRAVITY_MIN_KM = 0.05
GRAVITY_SAMPLE = 800  # training moves per class of slots in the fit of h_r
GRAVITY_MIN_MOVES = 200  # a class with fewer moves uses the profile of all classes
GRAVITY_ITERATIONS = 50


def gravity_edges(xy: np.ndarray) -> np.ndarray:
    """Bin edges (km) of the gravity profile: 0, then log-spaced up to the map's diagonal."""
    span = float(np.hypot(*np.ptp(np.asarray(xy, dtype=np.float64), axis=0))) if len(xy) else 0.0
    return np.concatenate([[0.0], np.geomspace(GRAVITY_MIN_KM, max(span, 2 * GRAVITY_MIN_KM) * 1.001,
                                               GRAVITY_BINS)])


def _bins(xy: np.ndarray, i: int, edges2: np.ndarray) -> np.ndarray:
    """Distance bin of every station from station i (``edges2``: squared edges)."""
    dx, dy = xy[:, 0] - xy[i, 0], xy[:, 1] - xy[i, 1]
    return np.searchsorted(edges2, dx * dx + dy * dy, side="right") - 1


def fit_gravity_profile(xy: np.ndarray, weight: np.ndarray, src: np.ndarray, dst: np.ndarray,
                        role: np.ndarray, share: np.ndarray, edges: np.ndarray, *,
                        iterations: int = GRAVITY_ITERATIONS) -> np.ndarray:
    """The profile ``h (B,)`` over distance bins that makes ``p(j | i) ∝ weight[j, r] · h[bin(d_ij)]``
    (``j ≠ i``) reproduce the length distribution of the moves ``src → dst`` (entering roles
    ``role``), each counted with ``share``: iterative proportional fitting (``h ← h · target /
    model``, the model's bin shares averaged over the moves with the same weights). ``weight (N,
    R)``: the stations' weights by role. Bins that no station of any source falls in keep ``h = 1``; a bin
    that holds stations but no move gets a small share (1e-3 of a move spread over the bins)."""
    xy = np.asarray(xy, dtype=np.float64)
    B = edges.size
    edges2 = edges ** 2
    share = np.asarray(share, dtype=np.float64)
    share = share / share.sum()
    d = np.hypot(*(xy[src] - xy[dst]).T)
    target = np.bincount(np.searchsorted(edges, d, side="right") - 1, weights=share, minlength=B)
    W = np.empty((src.size, B))
    for k, i in enumerate(src):
        w = weight[:, role[k]].astype(np.float64, copy=True)
        w[i] = 0.0  # the current station is banned when a new place is drawn
        W[k] = np.bincount(_bins(xy, int(i), edges2), weights=w, minlength=B)
    possible = (W * share[:, None]).sum(0) > 0
    target = np.where(possible, target + 1e-3 / B, 0.0).astype(np.float64)
    target = target / target.sum()
    h = np.ones(B)
    for _ in range(iterations):
        m = W * h
        m /= np.maximum(m.sum(1, keepdims=True), 1e-300)
        model = share @ m
        h = np.where(model > 0, h * target / np.maximum(model, 1e-300), h)
        h /= h.max()
    return h


def _row_totals(key: np.ndarray, cnt: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Sum of ``cnt`` over the rows of ``key`` equal to each ``query`` (``key`` sorted)."""
    csum = np.concatenate([[0.0], np.cumsum(cnt)])
    return csum[np.searchsorted(key, query, side="right")] - csum[np.searchsorted(key, query, side="left")]


def _popularity(arrivals: np.ndarray, floor: float) -> np.ndarray:
    """``f_j + ε·mean f``: a station's weight in the back-off kernel (ε = ``pattern.floor``)."""
    return arrivals + floor * max(float(arrivals.mean()), 1e-12)


def _sorted_counts(key: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(key, dst)`` pairs sorted by key, with their counts."""
    pair = np.stack([key, dst.astype(np.int64)], axis=1)
    uniq, counts = np.unique(pair, axis=0, return_counts=True)  # lexicographic: by key, then dst
    return uniq[:, 0].copy(), uniq[:, 1].copy(), counts.astype(np.float64)


class StationAssigner:
    """Draws the stations of day patterns from training counts (module docstring)."""

    def __init__(self, state: dict[str, Any], config: DayPatternConfig) -> None:
        self.config = config
        self.state = state
        self.N = int(state["n_stations"])
        self.T = int(state["T"])
        self.pi = np.asarray(state["pi"], dtype=np.float64)
        self.arrivals = np.asarray(state["arrivals"], dtype=np.float64)
        self.role_weight = np.asarray(state["role_weight"], dtype=np.float64)
        self.slot_key, self.slot_dst, self.slot_cnt = (np.asarray(state[k]) for k in
                                                       ("slot_key", "slot_dst", "slot_cnt"))
        self.all_key, self.all_dst, self.all_cnt = (np.asarray(state[k]) for k in
                                                    ("all_key", "all_dst", "all_cnt"))
        xy = np.asarray(state["xy"], dtype=np.float64)
        self._tree = cKDTree(xy) if xy.size else None
        self._xy = xy
        self.kernel_idx = np.asarray(state.get("kernel_idx", np.zeros((0, 0), np.int64)))
        self.gravity_h = np.asarray(state.get("gravity_h", np.zeros((0, 0))), dtype=np.float64)
        self._edges2 = np.asarray(state.get("gravity_edges", np.zeros(0)), dtype=np.float64) ** 2
        self._popularity = _popularity(self.arrivals, config.floor)

    # --------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, locations: np.ndarray, n_stations: int, config: DayPatternConfig, *,
            coords: np.ndarray | None = None, graph: Any = None) -> StationAssigner:
        """Count the training days ``locations (U, T)``; ``coords (N, 2)`` (lat, lon) for the
        back-off kernel, else the neighbours of ``graph`` (a CSR matrix over the stations)."""
        loc = np.asarray(locations, dtype=np.int64)
        U, T = loc.shape
        N = int(n_stations)
        if U == 0:
            raise InputError("the training set is empty", where="model.pattern")
        if loc.min() < 0 or loc.max() >= N:
            raise InputError(f"station ids outside 0..{N - 1}", where="model.pattern")
        z = day_patterns(loc)
        seen = np.maximum.accumulate(z, axis=1)
        new = np.zeros((U, T), dtype=bool)
        new[:, 1:] = z[:, 1:] > seen[:, :-1]  # slot t enters a station new to the day
        uu, tt = np.nonzero(new)
        src, dst = loc[uu, tt - 1], loc[uu, tt]
        slot_key, slot_dst, slot_cnt = _sorted_counts((tt - 1).astype(np.int64) * N + src, dst)
        all_key, all_dst, all_cnt = _sorted_counts(src, dst)
        pi = np.bincount(loc[:, 0], minlength=N).astype(np.float64)
        arrivals = np.bincount(dst, minlength=N).astype(np.float64)
        # role counts: every (day, label) once, at the label's station
        roles = label_roles(z)
        label_station = np.full((U, T), -1, dtype=np.int64)
        label_station[np.arange(U)[:, None], z] = loc  # every slot of a label holds its station
        du, dk = np.nonzero(roles >= 0)
        station = label_station[du, dk]
        c = np.zeros((N, N_ROLES))
        np.add.at(c, (station, roles[du, dk]), 1.0)
        share = c.sum(0) / c.sum()
        a = config.role_smoothing
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(share > 0, (c + a * share) / ((c.sum(1, keepdims=True) + a) * share), 0.0)
        state: dict[str, Any] = {
            "n_stations": N, "T": T, "pi": pi / pi.sum(), "arrivals": arrivals, "role_weight": rho,
            "slot_key": slot_key, "slot_dst": slot_dst, "slot_cnt": slot_cnt,
            "all_key": all_key, "all_dst": all_dst, "all_cnt": all_cnt,
        }
        if coords is not None and np.isfinite(coords).all() and np.ptp(coords, axis=0).max() > 0:
            c0 = np.asarray(coords, dtype=np.float64)
            scale = np.cos(np.deg2rad(np.median(c0[:, 0])))
            state["xy"] = np.stack([c0[:, 0] * KM_PER_DEGREE, c0[:, 1] * KM_PER_DEGREE * scale], axis=1)
            if config.kernel == "gravity":
                roles_in = roles[uu, z[uu, tt]]  # the role of the label each move enters
                state["gravity_edges"] = gravity_edges(state["xy"])
                state["gravity_h"] = _fit_gravity(state, config, tt, src, dst, roles_in)
        else:
            state["xy"] = np.zeros((0, 2))
            if config.kernel == "gravity":
                raise InputError("model.pattern.kernel = 'gravity' needs station coordinates",
                                 where="model.pattern.kernel",
                                 fix="give the stations lat / lon, or use kernel: nearest")
            if graph is None:
                raise InputError("the stations have no coordinates and no transition graph is given",
                                 where="model.pattern",
                                 fix="give the stations lat / lon, or build the transition "
                                     "(`mstdiff kg transition`)")
            g = graph.tocsr()
            k = min(config.neighbours, max(int(np.diff(g.indptr).max()), 1))
            idx = np.full((N, k), -1, dtype=np.int64)
            for i in range(N):
                row = g.indices[g.indptr[i]:g.indptr[i + 1]][:k]
                idx[i, :row.size] = row
            state["kernel_idx"] = idx
        return cls(state, config)

    # --------------------------------------------------------------- state
    def to_state(self) -> dict[str, Tensor | int]:
        """Tensors and ints only (a model file holds no pickled objects)."""
        out: dict[str, Tensor | int] = {}
        for k, v in self.state.items():
            out[k] = v if isinstance(v, int) else torch.from_numpy(np.ascontiguousarray(v))
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any], config: DayPatternConfig) -> StationAssigner:
        need = {"n_stations", "T", "pi", "arrivals", "role_weight", "slot_key", "slot_dst", "slot_cnt",
                "all_key", "all_dst", "all_cnt", "xy"}
        if config.kernel == "gravity":
            need |= {"gravity_h", "gravity_edges"}
        missing = sorted(need - set(state))
        if missing:
            raise InputError(f"the station assigner lacks {missing}", where="model file",
                             fix="re-train the model with this version (or refit its assigner: "
                                 "MSTDiff.refit_assigner)")
        return cls({k: (v.numpy() if isinstance(v, Tensor) else v) for k, v in state.items()}, config)

    # --------------------------------------------------------------- drawing
    @property
    def n_stations(self) -> int:
        return self.N

    @staticmethod
    def _row(key: np.ndarray, dst: np.ndarray, cnt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.searchsorted(key, [k, k + 1])
        return dst[a:b], cnt[a:b]

    def _kernel(self, i: int) -> np.ndarray:
        if self._tree is not None:
            k = min(self.config.neighbours, self.N)
            _, j = self._tree.query(self._xy[i], k)
            return np.atleast_1d(np.asarray(j, dtype=np.int64))
        row = self.kernel_idx[i]
        return row[row >= 0]

    def candidates(self, i: int, t: int, role: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stations and their (unnormalised) probabilities for a new label of ``role`` entered at
        slot ``t ≥ 1`` from station ``i``, ``banned`` excluded; a station may appear more than once
        (its probability is the sum)."""
        lam = self.config.move_smoothing
        d1, c1 = self._row(self.slot_key, self.slot_dst, self.slot_cnt, (t - 1) * self.N + i)
        d2, c2 = self._row(self.all_key, self.all_dst, self.all_cnt, i)
        keep1, keep2 = (~np.isin(d, banned) for d in (d1, d2))
        d1, c1, d2, c2 = d1[keep1], c1[keep1], d2[keep2], c2[keep2]
        if self.config.kernel == "gravity":  # every station, by popularity × the profile of lengths
            d3 = np.arange(self.N)
            c3 = self._popularity * self.gravity_h[role, _bins(self._xy, i, self._edges2)]
            c3[banned] = 0.0
        else:
            d3 = self._kernel(i)
            d3 = d3[~np.isin(d3, banned)]
            c3 = self._popularity[d3]
        n1, n2, n3 = c1.sum(), c2.sum(), c3.sum()
        w1 = 1.0 / (n1 + lam)
        w2 = lam / (n1 + lam) / (n2 + lam)
        w3 = lam / (n1 + lam) * lam / (n2 + lam) / n3 if n3 > 0 else 0.0
        d = np.concatenate([d1, d2, d3])
        p = np.concatenate([c1 * w1, c2 * w2, c3 * w3]) * self.role_weight[d, role]
        return d, p

    def _fallback(self, role: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All stations by first-visit arrivals × role weight, then uniformly, ``banned`` excluded
        (unless a pattern has more places than there are stations: then a place is reused)."""
        p = self.arrivals * self.role_weight[:, role]
        p[banned] = 0.0
        if p.sum() <= 0:
            p = np.ones(self.N)
            if banned.size < self.N:
                p[banned] = 0.0
        return np.arange(self.N), p

    def assign(self, patterns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stations ``(U, T)`` int32 for day patterns ``(U, T)`` (any labels: they are put in
        first-appearance order first)."""
        z = day_patterns(patterns)
        U, T = z.shape
        if T != self.T:
            raise InputError(f"patterns have T = {T}, the assigner T = {self.T}", where="model.pattern")
        roles = label_roles(z)
        seen = np.maximum.accumulate(z, axis=1)
        out = np.empty((U, T), dtype=np.int64)
        first_p = self.pi[:, None] * self.role_weight  # (N, roles)
        for u in range(U):
            zu = z[u]
            labels = np.empty(int(seen[u, -1]) + 1, dtype=np.int64)
            # the first label
            p = first_p[:, roles[u, 0]]
            if p.sum() <= 0:
                _, p = self._fallback(int(roles[u, 0]), np.zeros(0, np.int64))
            labels[0] = rng.choice(self.N, p=p / p.sum())
            for t in np.flatnonzero(zu[1:] > seen[u, :-1]) + 1:
                k = int(zu[t])
                banned = labels[:k]
                d, p = self.candidates(int(labels[zu[t - 1]]), int(t), int(roles[u, k]), banned)
                if p.size == 0 or p.sum() <= 0:
                    d, p = self._fallback(int(roles[u, k]), banned)
                labels[k] = d[rng.choice(d.size, p=p / p.sum())]
            out[u] = labels[zu]
        return out.astype(np.int32)


def _fit_gravity(state: dict[str, Any], config: DayPatternConfig, tt: np.ndarray, src: np.ndarray,
                 dst: np.ndarray, role: np.ndarray) -> np.ndarray:
    """``h (roles, bins)``: :func:`fit_gravity_profile` for each class of slots (module docstring),
    from the training moves ``src → dst`` into a new place at slots ``tt`` entering labels of ``role``."""
    N = int(state["n_stations"])
    lam = config.move_smoothing
    n1 = _row_totals(state["slot_key"], state["slot_cnt"], (tt - 1).astype(np.int64) * N + src) - 1
    n2 = _row_totals(state["all_key"], state["all_cnt"], src) - 1
    share = lam / (n1 + lam) * lam / (n2 + lam)  # the kernel's share with the move left out
    popularity = _popularity(np.asarray(state["arrivals"], dtype=np.float64), config.floor)
    weight = popularity[:, None] * state["role_weight"]  # (N, roles)
    xy, edges = state["xy"], state["gravity_edges"]
    rng = np.random.default_rng(0)  # a fixed sample: the same training days fit the same profile

    def fit(sel: np.ndarray, size: int) -> np.ndarray:
        idx = np.flatnonzero(sel)
        if idx.size > size:  # drawn ∝ share, then counted alike
            idx = rng.choice(idx, size, replace=False, p=share[idx] / share[idx].sum())
            w = np.ones(idx.size)
        else:
            w = share[idx]
        return fit_gravity_profile(xy, weight, src[idx], dst[idx], role[idx], w, edges)

    pooled = fit(np.ones(src.size, dtype=bool), 2 * GRAVITY_SAMPLE)
    h = np.tile(pooled, (N_ROLES, 1))
    cls = role // 2
    for c in range(ROLE_EDGES.size):
        sel = cls == c
        if sel.sum() >= GRAVITY_MIN_MOVES:
            h[2 * c:2 * c + 2] = fit(sel, GRAVITY_SAMPLE)
    return h
