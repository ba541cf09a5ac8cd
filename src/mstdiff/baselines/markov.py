"""First-order Markov chain over stations, by time of day (a classic trajectory baseline).

Fitted from the training trajectories (windows are assumed to start at midnight, as prepared
windows do; slot ``t`` has time-of-day class ``c(t) = ⌊(t mod B) · K / B⌋`` with ``B`` bins per day
and ``K = tod_bins`` classes, ``K = B`` by default):

- the initial distribution ``π(i)`` = share of samples starting at station ``i``;
- counts ``C_c[i, j]`` of moves ``l_t = i → l_{t+1} = j`` with ``c(t) = c``, their sum over ``c``,
  ``C[i, j]``, and row totals ``n_c(i)``, ``n(i)``.

Transition probabilities, with additive (Dirichlet) smoothing of strength ``λ = smoothing`` that
backs off to the time-independent chain, which itself backs off to staying put::

    P(j | i)   = (C[i, j]   + λ · δ_ij)     / (n(i)   + λ)
    P_c(j | i) = (C_c[i, j] + λ · P(j | i)) / (n_c(i) + λ)

(with ``λ = 0`` a row without counts takes its back-off distribution instead of 0/0). Every row
sums to 1. Counts are sparse (CSR), memory ``O(#distinct transitions)``, so N = 5,000 is fine.
Sampling draws from the mixture exactly: the time-specific counts with probability
``n_c(i)/(n_c(i)+λ)``, else the global counts with probability ``n(i)/(n(i)+λ)``, else stay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mstdiff.baselines.base import Baseline, GeneratedSeries, register_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Markov", "MarkovConfig"]


@dataclass
class MarkovConfig:
    """Time-of-day Markov chain over stations."""

    tod_bins: int | None = None  # time-of-day classes per day; None: one per bin (1440 / bin_minutes)
    smoothing: float = 1.0  # λ: pseudo-count of the back-off distribution in every row (0: none)

    def validate(self) -> None:
        if self.tod_bins is not None and self.tod_bins < 1:
            raise InputError(f"tod_bins = {self.tod_bins}", where="baselines.markov.tod_bins",
                             fix="use a positive number or null")
        if self.smoothing < 0:
            raise InputError(f"smoothing = {self.smoothing}", where="baselines.markov.smoothing",
                             fix="use a non-negative pseudo-count")


class _SparseRows:
    """Row-wise categorical sampling from a CSR count matrix (vectorised over many rows)."""

    def __init__(self, m: sp.csr_matrix) -> None:
        m = sp.csr_matrix(m, dtype=np.float64)
        m.sum_duplicates()
        self.indptr = m.indptr.astype(np.int64)
        self.indices = m.indices.astype(np.int64)
        self.cum = np.cumsum(m.data)  # global running sum over the stored entries
        self.start = np.concatenate([[0.0], self.cum])[self.indptr[:-1]]  # running sum before each row
        self.total = np.asarray(m.sum(axis=1)).ravel()  # n(i)

    def draw(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Column drawn ∝ counts for each row (rows must have a positive total)."""
        target = self.start[rows] + u * self.total[rows]
        pos = np.searchsorted(self.cum, target, side="right")
        pos = np.clip(pos, self.indptr[rows], self.indptr[rows + 1] - 1)  # guard round-off at row ends
        return self.indices[pos]


@register_baseline
class Markov(Baseline):
    """First-order chain ``P_{c(t)}(l_{t+1} | l_t)`` by time of day; see the module docstring.

    Fitted: the initial distribution and the (sparse) transition counts, per time-of-day class and
    in total. No free parameter is tuned; ``smoothing`` and ``tod_bins`` are set by the config.
    """

    name: ClassVar[str] = "markov"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = MarkovConfig

    def __init__(self, config: MarkovConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.bins_per_day: int | None = None
        self.n_tod: int | None = None
        self.initial: np.ndarray | None = None  # (N,) counts of l_0
        self.counts: list[sp.csr_matrix] = []  # K matrices (N, N)
        self.global_counts: sp.csr_matrix | None = None  # (N, N)

    # ------------------------------------------------------------------ fitting
    def tod_class(self, t: np.ndarray | int) -> np.ndarray:
        """Time-of-day class of slot ``t`` (of the window)."""
        assert self.bins_per_day is not None and self.n_tod is not None
        return (np.asarray(t) % self.bins_per_day) * self.n_tod // self.bins_per_day

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> Markov:
        self._remember_shape(train)
        N, T = train.n_stations, train.T
        if 1440 % train.bin_minutes:
            raise InputError(f"bin_minutes = {train.bin_minutes} does not divide a day",
                             where="baselines.markov.fit")
        self.bins_per_day = 1440 // train.bin_minutes
        self.n_tod = self.config.tod_bins or self.bins_per_day
        if self.n_tod > self.bins_per_day:
            raise InputError(f"tod_bins = {self.n_tod} exceeds the {self.bins_per_day} bins of a day",
                             where="baselines.markov.tod_bins", fix=f"use at most {self.bins_per_day}")
        loc = train.locations.astype(np.int64)
        self.initial = np.bincount(loc[:, 0], minlength=N).astype(np.float64)
        src, dst = loc[:, :-1].ravel(), loc[:, 1:].ravel()
        cls = np.broadcast_to(self.tod_class(np.arange(T - 1))[None, :], loc[:, :-1].shape).ravel()
        ones = np.ones(src.size)
        self.counts = []
        for c in tqdm(range(self.n_tod), desc="fit markov", disable=not progress, leave=False):
            m = cls == c
            self.counts.append(sp.csr_matrix((ones[m], (src[m], dst[m])), shape=(N, N)))
        self.global_counts = sp.csr_matrix((ones, (src, dst)), shape=(N, N))
        logger.info("markov: %d transitions, %d distinct, %d time-of-day classes",
                    src.size, self.global_counts.nnz, self.n_tod)
        return self

    # ------------------------------------------------------------------ probabilities
    def transition_matrix(self, c: int) -> sp.csr_matrix:
        """``P_c`` as a sparse ``(N, N)`` matrix (rows sum to 1); see the module docstring."""
        self._check_fitted()
        assert self.global_counts is not None and self.n_stations is not None
        lam = self.config.smoothing
        N = self.n_stations
        eye = sp.identity(N, format="csr")
        n = np.asarray(self.global_counts.sum(axis=1)).ravel()
        w_g = np.divide(1.0, n + lam, out=np.zeros(N), where=(n + lam) > 0)
        w_stay = np.where(n + lam > 0, lam * w_g, 1.0)  # no counts and λ = 0: stay
        p_global = sp.diags(w_g) @ self.global_counts + sp.diags(w_stay) @ eye
        cc = self.counts[c]
        nc = np.asarray(cc.sum(axis=1)).ravel()
        w_c = np.divide(1.0, nc + lam, out=np.zeros(N), where=(nc + lam) > 0)
        w_back = np.where(nc + lam > 0, lam * w_c, 1.0)
        return sp.csr_matrix(sp.diags(w_c) @ cc + sp.diags(w_back) @ p_global)

    # ------------------------------------------------------------------ sampling
    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        self._check_fitted()
        self._check_n(n)
        assert self.initial is not None and self.global_counts is not None and self.T is not None
        rng = np.random.default_rng(seed)
        lam = self.config.smoothing
        glob = _SparseRows(self.global_counts)
        per = [_SparseRows(m) for m in self.counts]
        out = np.empty((n, self.T), dtype=np.int32)
        p0 = self.initial / self.initial.sum()
        cur = rng.choice(p0.size, size=n, p=p0).astype(np.int64)
        out[:, 0] = cur
        for t in tqdm(range(self.T - 1), desc="generate markov", disable=not progress, leave=False):
            rows = per[int(self.tod_class(t))]
            u_mix, u_draw = rng.random(n), rng.random(n)
            nc, ng = rows.total[cur], glob.total[cur]
            p_c = np.divide(nc, nc + lam, out=np.zeros(n), where=(nc + lam) > 0)
            p_g = np.divide(ng, ng + lam, out=np.zeros(n), where=(ng + lam) > 0)
            use_c = u_mix < p_c
            use_g = ~use_c & (rng.random(n) < p_g)
            nxt = cur.copy()  # stay put unless a count row is chosen
            if use_c.any():
                nxt[use_c] = rows.draw(cur[use_c], u_draw[use_c])
            if use_g.any():
                nxt[use_g] = glob.draw(cur[use_g], u_draw[use_g])
            cur = nxt
            out[:, t + 1] = cur
        return GeneratedSeries(locations=out)

    # ------------------------------------------------------------------ state
    @staticmethod
    def _pack(m: sp.csr_matrix) -> dict[str, np.ndarray]:
        return {"data": m.data, "indices": m.indices, "indptr": m.indptr}

    def _unpack(self, d: dict[str, np.ndarray]) -> sp.csr_matrix:
        assert self.n_stations is not None
        N = self.n_stations
        return sp.csr_matrix((d["data"], d["indices"], d["indptr"]), shape=(N, N))

    def _get_state(self) -> dict[str, Any]:
        assert self.global_counts is not None
        return {"bins_per_day": self.bins_per_day, "n_tod": self.n_tod, "initial": self.initial,
                "counts": [self._pack(m) for m in self.counts], "global": self._pack(self.global_counts)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.bins_per_day = int(state["bins_per_day"])
        self.n_tod = int(state["n_tod"])
        self.initial = np.asarray(state["initial"], dtype=np.float64)
        self.counts = [self._unpack(d) for d in state["counts"]]
        self.global_counts = self._unpack(state["global"])
