"""Discrete diffusion of locations on a station graph (D3PM with a knowledge-graph rate matrix).

Process (DESIGN.md §1; Austin et al. 2021 for D3PM; MSTDiff paper eqs. 5–8). ``R`` is the symmetric,
zero-row-sum rate matrix of the kNN graph (:func:`mstdiff.kg.graph.rate_matrix`), ``U = 11ᵀ/N`` and
``ε`` a uniform jump rate. Since ``R`` commutes with ``U − I``::

    Q̄_s = e^{−εᾱ_s} exp(ᾱ_s R) + (1 − e^{−εᾱ_s}) U        (marginal  q(l_s | l_0) = onehot(l_0) Q̄_s)
    Q_s = e^{−εα_s} exp(α_s R) + (1 − e^{−εα_s}) U          (one step, α_s = ᾱ_s − ᾱ_{s−1})
    q(l_{s−1} | l_s, l_0) ∝ Q_s[:, l_s] ⊙ Q̄_{s−1}[l_0, :]    (Bayes; Q_s symmetric)
    p_θ(l_{s−1} | l_s)   ∝ Q_s[:, l_s] ⊙ (softmax(z) Q̄_{s−1})

Default schedule (:func:`graph_schedule`): ``ε = 0.5`` and a cosine schedule on the probability
``g_s = e^{−εᾱ_s}`` that no uniform jump has happened yet,
``g_s = g_S + (1 − g_S) cos²(π s / 2S)`` with ``g_S = 0.005``, i.e. ``ᾱ_s = −ln(g_s)/ε``
(``ᾱ_S = 10.6`` expected graph jumps for S = 50). Because ``exp(ᾱR)`` is doubly stochastic,
``TV(Q̄_S[x], uniform) = g_S · TV(exp(ᾱ_S R)[x], uniform) ≤ g_S (1 − 1/N) < 0.005`` for every row and
every graph — disconnected or not — so sampling may start from ``l_S ~ Uniform``. With the rate
normalisation of ``R`` (mean exit rate 1), a station makes ``1/ε = 2`` graph jumps on average before
its first uniform jump: noise first moves a location to KG-similar stations, then anywhere.

How the exponentials are applied (eigenbasis, Chebyshev series, tiles, fused kernels, the
two-stage reverse draw) is the operator engineering of :mod:`mstdiff.diffusion.graph_ops`
(:class:`~mstdiff.diffusion.graph_ops.GraphOperator`, a base of :class:`GraphTransition`); this
module reads as the process: schedule, forward sample, marginal, posterior, reverse step, losses.
It is one of the location processes (:mod:`mstdiff.diffusion.location`): the paper's, kept for the
faithful "MSTDiff (paper)" configuration; the default is the absorbing process.

Float32 compute by default, float64 for building; tiny negatives from round-off are clamped and the
rows renormalised.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from mstdiff.diffusion.common import check_steps
from mstdiff.diffusion.graph_ops import (  # noqa: F401  (re-exported: the operator's names)
    CHEB_FLOP_COST,
    CHEB_TILE,
    EIG_MAX_N,
    GraphOperator,
    RowCache,
    _LocationLosses,
    _RowLinear,
    chebyshev_coefficients,
    spectral_bound,
)
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_bytes
from mstdiff.torchio import load_torch_file

logger = logging.getLogger(__name__)

TV_CHECK_MAX_N = 10000  # transition_dir computes the exact max TV of every row of Q̄_S up to this N
DEFAULT_EPS = 0.5
DEFAULT_TV_TARGET = 0.005
FORMAT = "mstdiff.GraphTransition"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------- schedule
def graph_schedule(
    num_steps: int = 50, eps: float = DEFAULT_EPS, tv_target: float = DEFAULT_TV_TARGET,
    kind: str = "cosine",
) -> np.ndarray:
    """Cumulative diffusion times ``ᾱ_0..ᾱ_S`` (float64, ``ᾱ_0 = 0``, strictly increasing).

    ``g_s = e^{−εᾱ_s}`` is the probability of no uniform jump by step s; ``g_S = tv_target`` bounds
    ``TV(Q̄_S[x], uniform)`` for every row x (module docstring).

    * ``"cosine"`` (default): ``g_s = g_S + (1 − g_S) cos²(π s / (2S))`` — little noise in the first
      steps, like the cosine schedules of discrete diffusion;
    * ``"linear"``: ``ᾱ_s = ᾱ_S s / S`` (constant ``α_s``; ``g_s`` decays geometrically).
    """
    if num_steps < 1:
        raise InputError(f"num_steps = {num_steps} must be at least 1", where="graph schedule")
    if not eps > 0:
        raise InputError(f"eps = {eps} must be positive", where="graph schedule",
                         fix="the uniform jump rate is what makes Q̄_S uniform; e.g. eps = 0.5")
    if not 0 < tv_target < 1:
        raise InputError(f"tv_target = {tv_target} must be in (0, 1)", where="graph schedule")
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if kind == "cosine":
        g = tv_target + (1.0 - tv_target) * np.cos(0.5 * np.pi * u) ** 2
        alpha_bar = -np.log(g) / eps
    elif kind == "linear":
        alpha_bar = u * (-math.log(tv_target) / eps)
    else:
        raise InputError(f"unknown schedule {kind!r}", where="graph schedule", fix="use 'cosine' or 'linear'")
    alpha_bar[0] = 0.0
    return alpha_bar


def categorical_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs (..., N)`` by inverse CDF (rows need not be normalised)."""
    cdf = probs.detach().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device, dtype=cdf.dtype)
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class GraphTransition(GraphOperator, nn.Module):
    """The forward process, its posterior and the model's reverse step on a station graph.

    Parameter-free: only buffers (``.to(device)`` moves them). Timesteps ``s ∈ 0..S`` with ``s = 0``
    the identity. Shapes: ``l0, l_s: Long[B, T]``, ``s: Long[B]``, outputs ``Float[B, T, N]``.
    """

    # buffers (declared for type checkers)
    alpha_bar: torch.Tensor  # (S+1,) ᾱ_s
    alpha: torch.Tensor  # (S+1,) α_s, α_0 = 0
    keep_bar: torch.Tensor  # (S+1,) e^{−εᾱ_s}
    keep_step: torch.Tensor  # (S+1,) e^{−εα_s}
    exit_rate: torch.Tensor  # (N,) float64 rowsum B
    b_crow: torch.Tensor  # CSR of B (off-diagonal rates) for q_sample
    b_col: torch.Tensor
    b_cum: torch.Tensor  # (nnz,) float64 cumulative rates
    # the operator's buffers (eigenbasis, Chebyshev tables) are declared on GraphOperator

    def __init__(
        self,
        rate: sparse.spmatrix,
        *,
        num_steps: int = 50,
        eps: float = DEFAULT_EPS,
        tv_target: float = DEFAULT_TV_TARGET,
        schedule: str = "cosine",
        alpha_bar: np.ndarray | None = None,
        method: str = "auto",
        tol: float = 1e-7,
        dtype: torch.dtype = torch.float32,
        reorder: bool = True,
        meta: dict[str, Any] | None = None,
        _eig: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        r = sparse.csr_matrix(rate, dtype=np.float64)
        r.sort_indices()
        n = r.shape[0]
        _check_rate(r)
        if alpha_bar is None:
            alpha_bar = graph_schedule(num_steps, eps, tv_target, schedule)
        alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
        if alpha_bar.ndim != 1 or alpha_bar.size < 2 or alpha_bar[0] != 0 or np.any(np.diff(alpha_bar) <= 0):
            raise InputError("alpha_bar must start at 0 and increase strictly", where="graph schedule")
        if method == "auto":
            method = "eig" if n <= EIG_MAX_N else "cheb"
        if method not in ("eig", "cheb"):
            raise InputError(f"unknown method {method!r}", where="GraphTransition",
                             fix="'auto', 'eig' or 'cheb'")
        self.method = method
        self.fused = True  # CPU: fused Numba kernels for the loss and the reverse draw (kernels.py)
        self.eps = float(eps)
        self.tol = float(tol)
        self.schedule = schedule
        self.meta = dict(meta or {})
        self._n = n
        self._S = alpha_bar.size - 1
        self._dtype = dtype

        alpha = np.concatenate([[0.0], np.diff(alpha_bar)])
        self._alpha_bar64 = alpha_bar
        self.register_buffer("alpha_bar", torch.tensor(alpha_bar, dtype=dtype))
        self.register_buffer("alpha", torch.tensor(alpha, dtype=dtype))
        self.register_buffer("keep_bar", torch.tensor(np.exp(-self.eps * alpha_bar), dtype=dtype))
        self.register_buffer("keep_step", torch.tensor(np.exp(-self.eps * alpha), dtype=dtype))

        # off-diagonal rates for exact forward sampling (CSR of B, cumulative weights in float64)
        b = r.copy()
        b.setdiag(0.0)
        b.eliminate_zeros()
        b.sort_indices()
        exit_rate = np.asarray(b.sum(1)).ravel()
        self.register_buffer("exit_rate", torch.tensor(exit_rate, dtype=torch.float64))
        self.register_buffer("b_crow", torch.tensor(b.indptr, dtype=torch.long))
        self.register_buffer("b_col", torch.tensor(b.indices, dtype=torch.long))
        self.register_buffer("b_cum", torch.tensor(np.cumsum(b.data), dtype=torch.float64))
        self._rate = r

        self._build_operator(r, alpha_bar, alpha, method=method, tol=tol, dtype=dtype,
                             reorder=reorder, eig=_eig)
        logger.info("GraphTransition: N=%d, S=%d, eps=%g, method=%s, alpha_bar_S=%.3g", n, self._S,
                    self.eps, method, alpha_bar[-1])

    # ------------------------------------------------------------------ properties
    @property
    def num_states(self) -> int:
        return self._n

    @property
    def num_steps(self) -> int:
        return self._S

    @property
    def rate(self) -> sparse.csr_matrix:
        """The rate matrix ``R`` (scipy CSR, float64)."""
        return self._rate

    def tv_bound(self, s: int | None = None) -> float:
        """Upper bound on ``max_x TV(Q̄_s[x], uniform)``: ``e^{−εᾱ_s} (1 − 1/N)``."""
        s = self._S if s is None else int(s)
        return float(math.exp(-self.eps * self._alpha_bar64[s]) * (1.0 - 1.0 / max(self._n, 1)))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _normalise(p: torch.Tensor) -> torch.Tensor:
        p = p.clamp_min(0.0)
        return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)

    def _check(self, loc: torch.Tensor, s: torch.Tensor, name: str, s_min: int = 0) -> torch.Tensor:
        return check_steps(loc, s, name, self._S, s_min)

    # ------------------------------------------------------------------ public API
    def propagate(self, probs: torch.Tensor, s: torch.Tensor, *, cumulative: bool = True) -> torch.Tensor:
        """``probs Q̄_s`` (or ``probs Q_s``) for ``probs: Float[B, T, N]``; differentiable."""
        b, t, n = probs.shape
        s = self._check(probs[..., 0], s, "probs")
        which = "bar" if cumulative else "step"
        x = probs.reshape(b * t, n).to(self.alpha.dtype)
        sf = s.repeat_interleave(t)
        fn: Callable[[torch.Tensor], torch.Tensor] = lambda z: self._apply_flat(z, sf, which)  # noqa: E731
        return _RowLinear.apply(x, fn).reshape(b, t, n)

    def marginal(self, l0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``q(l_s | l_0)``: rows ``Q̄_s[l_0, :]`` as ``Float[B, T, N]``."""
        s = self._check(l0, s, "l0")
        b, t = l0.shape
        rows = self._rows_flat(l0.reshape(-1), s.repeat_interleave(t), "bar")
        return self._normalise(rows).reshape(b, t, self._n)

    def _factors(
        self, x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_s[l_s, :], x0 Q̄_{s−1})`` as ``(B·T, N)`` rows, both non-negative."""
        b, t = l_s.shape
        sf = s.repeat_interleave(t)
        like = self._rows_flat(l_s.reshape(-1), sf, "step").clamp_min_(0.0)  # Q_s[l_s, :] = Q_s[:, l_s]ᵀ
        if x0.dtype in (torch.int32, torch.int64):
            if x0.shape != l_s.shape:
                raise ValueError(f"x0 shape {tuple(x0.shape)} differs from l_s shape {tuple(l_s.shape)}")
            prior = self._rows_flat(x0.reshape(-1), sf - 1, "bar").clamp_min_(0.0)
        else:
            if x0.shape != (b, t, self._n):
                raise ValueError(f"x0 must be Float[B, T, N={self._n}], got {tuple(x0.shape)}")
            prior = self.propagate(x0, s - 1).reshape(b * t, self._n).clamp_min(0.0)
        return like, prior

    def posterior(self, x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``q(l_{s−1} | l_s, x0) ∝ Q_s[:, l_s] ⊙ (x0 Q̄_{s−1})`` for ``s ≥ 1``.

        ``x0``: ``Long[B, T]`` (the clean locations) or ``Float[B, T, N]`` (probabilities over them;
        differentiable).
        """
        s = self._check(l_s, s, "l_s", s_min=1)
        like, prior = self._factors(x0, l_s, s)
        p = like * prior
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        return p.reshape(*l_s.shape, self._n)

    def reverse_probs(self, logits_x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``p_θ(l_{s−1} | l_s) ∝ Q_s[:, l_s] ⊙ (softmax(logits) Q̄_{s−1})``; differentiable."""
        probs = torch.softmax(logits_x0.to(self.alpha.dtype), dim=-1)
        return self.posterior(probs, l_s, s)

    def row_cache(self) -> RowCache:
        """An empty cache of rows for one sampling run of :meth:`sample_reverse`."""
        return RowCache()

    @torch.no_grad()
    def sample_reverse(
        self, logits_x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor,
        generator: torch.Generator | None = None, cache: RowCache | None = None,
    ) -> torch.Tensor:
        """``l_{s−1} ~ p_θ(· | l_s)`` exactly, without the dense rows ``softmax(z) Q̄_{s−1}``.

        ``p_θ(l_{s−1} = j | l_s) ∝ Σ_x π(x) Q̄_{s−1}[x, j] Q_s[j, l_s]`` with ``π = softmax(z)`` is the
        marginal of a joint law of ``(x, j)`` whose ``x``-marginal is ``∝ π(x) Q̄_s[x, l_s]``
        (Chapman–Kolmogorov). So draw in two stages:

        1. ``x ~ π ⊙ Q̄_s[l_s, :]`` (the model's ``l0`` reweighted by how well it explains ``l_s``);
        2. ``j ~ Q̄_{s−1}[x, :] ⊙ Q_s[:, l_s]`` (the process's own bridge from ``x`` to ``l_s``).

        Only rows of ``Q`` at single states are needed: one per distinct ``(l_s, s)`` and
        ``(x, s − 1)``, at most ``N`` per step whatever the batch size, against one propagated dense
        row per token for :meth:`reverse_probs`. ``cache`` (a :class:`RowCache` kept over the
        steps of one sampling run) reuses the rows ``Q̄_{s−1}[x, :]`` of stage 2 as the rows
        ``Q̄_{s−1}[l_{s−1}, :]`` of the next step's stage 1. Same law as drawing from
        :meth:`reverse_probs` (tested); a different use of the random stream.
        """
        s = self._check(l_s, s, "l_s", s_min=1)
        b, t = l_s.shape
        n = self._n
        sf = s.repeat_interleave(t)
        ls = l_s.reshape(-1)
        if logits_x0.shape != (b, t, n):
            raise ValueError(f"logits must be Float[B, T, N={n}], got {tuple(logits_x0.shape)}")
        probs = torch.softmax(logits_x0.reshape(b * t, n).to(self.alpha.dtype), dim=-1)  # (M, N)
        r1, i1 = self._row_table(ls, sf, "bar", cache)
        x = self._draw(probs, None, r1, i1, generator).to(ls.device)  # stage 1: l0 given l_s
        del probs, r1
        if int(s.max()) == 1:  # Q̄_0 = I: the bridge ends at x
            return x.reshape(b, t)
        r3, i3 = self._row_table(ls, sf, "step")
        r2, i2 = self._row_table(x, sf - 1, "bar", cache)
        return self._draw(r2, i2, r3, i3, generator).to(ls.device).reshape(b, t)

    def location_losses(
        self, l0: torch.Tensor, logits_x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token ``(KL(q(l_{s−1} | l_s, l0) ‖ p_θ(l_{s−1} | l_s)), CE(l0, z))``, ``Float[B, T]`` each.

        The two location losses of the joint objective, differentiable in ``logits_x0``. The KL has
        the value of :meth:`posterior_kl` and the CE that of ``F.cross_entropy``. On the CPU both
        come from one fused computation (:mod:`mstdiff.diffusion.kernels`): one softmax, the
        transition product forward and backward, one pass per row for the KL and its gradient, one
        for the gradient of the logits. Elsewhere they are the PyTorch operations.
        """
        s = self._check(l_s, s, "l_s", s_min=1)
        if l0.shape != l_s.shape:
            raise ValueError(f"l0 shape {tuple(l0.shape)} differs from l_s shape {tuple(l_s.shape)}")
        b, t = l_s.shape
        if not self._use_kernels(logits_x0):
            kl = self.posterior_kl(l0, logits_x0, l_s, s)
            ce = torch.nn.functional.cross_entropy(
                logits_x0.reshape(b * t, self._n).float(), l0.reshape(-1), reduction="none")
            return kl, ce.reshape(b, t)
        sf = s.repeat_interleave(t)
        with torch.no_grad():
            c, ic = self._row_table(l_s.reshape(-1), sf, "step")  # Q_s[l_s, :], distinct rows
            a, ia = self._row_table(l0.reshape(-1), sf - 1, "bar")  # Q̄_{s−1}[l0, :]
            log_a = a.clamp_min(torch.finfo(a.dtype).tiny).log()
        kl, ce = _LocationLosses.apply(logits_x0.reshape(b * t, self._n), self, sf,
                                       l0.reshape(-1).long().contiguous(), c, ic, a, ia, log_a)
        return kl.reshape(b, t), ce.reshape(b, t)

    def posterior_kl(
        self, l0: torch.Tensor, logits_x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """``KL(q(l_{s−1} | l_s, l0) ‖ p_θ(l_{s−1} | l_s))`` per token, ``Float[B, T]`` (the loss L_tj).

        Same value as the KL of :meth:`posterior` and :meth:`reverse_probs`, at less cost and memory:
        the factor ``Q_s[:, l_s]`` is computed once and cancels inside the log ratio,
        ``KL = Σ_j q_j (log a_j − log b_j) − log Σ_j c_j a_j + log Σ_j c_j b_j`` with
        ``c = Q_s[:, l_s]``, ``a = Q̄_{s−1}[l0, :]`` and ``b = softmax(z) Q̄_{s−1}``.
        """
        s = self._check(l_s, s, "l_s", s_min=1)
        if l0.shape != l_s.shape:
            raise ValueError(f"l0 shape {tuple(l0.shape)} differs from l_s shape {tuple(l_s.shape)}")
        b, t = l_s.shape
        sf = s.repeat_interleave(t)
        like = self._rows_flat(l_s.reshape(-1), sf, "step").clamp_min_(0.0)  # c, no gradient
        a = self._rows_flat(l0.reshape(-1), sf - 1, "bar").clamp_min_(0.0)
        tiny = torch.finfo(a.dtype).tiny
        q = like * a
        za = q.sum(-1)
        q.div_(za.clamp_min(tiny)[:, None])  # the true posterior
        q_log_a = (q * a.clamp_min(tiny).log()).sum(-1)  # = Σ xlogy(q, a): q = 0 wherever a = 0
        del a
        probs = torch.softmax(logits_x0.to(self.alpha.dtype), dim=-1)
        prior = self.propagate(probs, s - 1).reshape(b * t, self._n)  # b, differentiable
        zb = (like * prior).sum(-1)
        q_log_b = (q * prior.clamp_min(tiny).log()).sum(-1)
        kl = q_log_a - q_log_b - za.clamp_min(tiny).log() + zb.clamp_min(tiny).log()
        return kl.reshape(b, t)

    def step(
        self, logits_x0: torch.Tensor, l_s: torch.Tensor, s: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One ancestral step: ``l_{s−1} ~ p_θ(· | l_s)`` as ``Long[B, T]``."""
        with torch.no_grad():
            return categorical_sample(self.reverse_probs(logits_x0, l_s, s), generator)

    def stationary(self) -> torch.Tensor:
        """The stationary law the reverse process starts from: uniform over the N stations, ``Float[N]``
        (``Q̄_S`` is within ``tv_bound()`` of it for every row)."""
        return torch.full((self._n,), 1.0 / self._n, dtype=self.alpha.dtype, device=self.alpha.device)

    def sample_prior(
        self, shape: tuple[int, int], generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``l_S ~ Uniform{0..N−1}`` (the stationary distribution), ``Long[shape]``."""
        dev = device if device is not None else self.alpha.device
        return torch.randint(self._n, shape, generator=generator, device=dev)

    def q_sample(
        self, l0: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``l_s ~ Cat(onehot(l0) Q̄_s)`` by exact simulation of the jump process (no rows built)."""
        s = self._check(l0, s, "l0")
        dev = l0.device
        b, t = l0.shape
        loc = l0.reshape(-1).clone().long()
        time = self.alpha_bar.to(torch.float64)[s].repeat_interleave(t)  # (M,)
        keep = self.keep_bar.to(torch.float64)[s].repeat_interleave(t)
        m = loc.numel()
        # uniform jump by time ᾱ_s (probability 1 − g_s): the rest of the walk keeps it uniform
        u = torch.rand(m, generator=generator, device=dev, dtype=torch.float64)
        uniform = u >= keep
        # graph walk, uniformised at rate Λ: Poisson(Λ t) candidate events, each a real jump w.p. d_x/Λ
        exit_rate, cum = self.exit_rate.double(), self.b_cum.double()  # (no-ops unless cast by .to())
        lam_max = float(exit_rate.max()) if self._n else 0.0
        if lam_max > 0:
            events = torch.poisson(time * lam_max, generator=generator)
            events = torch.where(uniform, torch.zeros_like(events), events).long()
            n_rounds = int(events.max()) if m else 0
            row_start = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), cum])
            for r in range(n_rounds):
                active = events > r
                v = torch.rand(m, generator=generator, device=dev, dtype=torch.float64) * lam_max
                jump = active & (v < exit_rate[loc])
                if not bool(jump.any()):
                    continue
                x = loc[jump]
                base = row_start[self.b_crow[x]]
                j = torch.searchsorted(cum, base + v[jump], right=True)
                j = torch.minimum(torch.maximum(j, self.b_crow[x]), self.b_crow[x + 1] - 1)
                loc[jump] = self.b_col[j]
        draws = torch.randint(self._n, (m,), generator=generator, device=dev)
        loc = torch.where(uniform, draws, loc)
        return loc.reshape(b, t)

    # ------------------------------------------------------------------ files
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this object (tensors, numbers, strings)."""
        coo = self._rate.tocoo()
        st: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "num_states": self._n, "num_steps": self._S, "eps": self.eps, "tol": self.tol,
            "schedule": self.schedule, "method": self.method, "dtype": str(self._dtype).replace("torch.", ""),
            "alpha_bar": torch.tensor(self._alpha_bar64, dtype=torch.float64),
            "rate_row": torch.tensor(coo.row, dtype=torch.long),
            "rate_col": torch.tensor(coo.col, dtype=torch.long),
            "rate_val": torch.tensor(coo.data, dtype=torch.float64),
            "meta": self.meta,
        }
        if self.method == "eig":
            st["eig_lam"] = self.lam.detach().cpu()
            st["eig_vec"] = self.V.detach().cpu()
        return st

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.pt`` file (schedule, rate matrix, eigenbasis when used, meta), atomically."""
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, method: str | None = None) -> GraphTransition:
        """Read a file written by :meth:`save` (``method`` may override the saved one)."""
        path = Path(path)
        st = load_torch_file(path, what="transition file", fix="create it with `mstdiff kg transition`")
        if st.get("format") != FORMAT:
            raise InputError("not a GraphTransition file", where=str(path))
        n = int(st["num_states"])
        rate = sparse.csr_matrix((st["rate_val"].numpy(), (st["rate_row"].numpy(), st["rate_col"].numpy())),
                                 shape=(n, n))
        use = method or st["method"]
        eig = None
        if use == "eig" and "eig_vec" in st:
            eig = (st["eig_lam"].double().numpy(), st["eig_vec"].double().numpy())
        return cls(rate, alpha_bar=st["alpha_bar"].numpy(), eps=float(st["eps"]), tol=float(st["tol"]),
                   schedule=st["schedule"], method=use, dtype=getattr(torch, st["dtype"]),
                   meta=dict(st.get("meta", {})), _eig=eig)

    def extra_repr(self) -> str:
        return f"N={self._n}, S={self._S}, eps={self.eps}, method={self.method!r}, rho={self.rho:.3g}"


def _check_rate(r: sparse.csr_matrix) -> None:
    if r.shape[0] != r.shape[1]:
        raise InputError(f"rate matrix must be square, got {r.shape}", where="GraphTransition")
    if r.shape[0] == 0:
        raise InputError("rate matrix is empty", where="GraphTransition")
    diff = abs(r - r.T)
    if diff.nnz and diff.max() > 1e-10 * max(1.0, abs(r).max()):
        raise InputError("rate matrix is not symmetric", where="GraphTransition",
                         fix="build it with mstdiff.kg.graph.rate_matrix")
    off = r - sparse.diags(r.diagonal())
    if off.nnz and off.min() < 0:
        raise InputError("rate matrix has negative off-diagonal rates", where="GraphTransition")
    rows = np.abs(np.asarray(r.sum(1)).ravel())
    if rows.size and rows.max() > 1e-9 * max(1.0, abs(r).max()):
        raise InputError("rate matrix rows do not sum to 0", where="GraphTransition")


# ---------------------------------------------------------------------------------------- stage
def max_tv_to_uniform(trans: GraphTransition, s: int | None = None, *, block: int = 512) -> float:
    """Exact ``max_x TV(Q̄_s[x], uniform)`` over all rows, in blocks (``O(N²·r)``; for checks)."""
    s = trans.num_steps if s is None else int(s)
    n = trans.num_states
    worst = 0.0
    with torch.no_grad():
        for b0 in range(0, n, block):
            states = torch.arange(b0, min(b0 + block, n), device=trans.alpha.device)
            rows = trans.marginal(states[None, :], torch.tensor([s], device=states.device))[0]
            worst = max(worst, float(0.5 * (rows.double() - 1.0 / n).abs().sum(-1).max()))
    return worst


def _validate_transition(path: Path) -> None:
    st = load_torch_file(path / "transition.pt", what="transition file",
                         fix="create it with `mstdiff kg transition`")
    if st.get("format") != FORMAT:
        raise ValueError("transition.pt is not a GraphTransition file")


def transition_dir(
    embed_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    k: int = 8,
    metric: str = "cosine",
    max_dist: float | None = None,
    dist_quantile: float | None = 0.95,
    num_steps: int = 50,
    eps: float = DEFAULT_EPS,
    tv_target: float = DEFAULT_TV_TARGET,
    schedule: str = "cosine",
    method: str = "auto",
    check_tv: bool = True,
    overwrite: bool = False,
) -> Path:
    """``mstdiff kg transition``: kNN graph, rate matrix and :class:`GraphTransition` of embeddings.

    Reads ``embed_dir/station_embeddings.npy`` (written by :func:`mstdiff.kg.stages.embed_kg_dir`);
    writes ``transition.pt`` (load with :meth:`GraphTransition.load`), ``knn.npz`` (the binary kNN
    graph, ``scipy.sparse.save_npz``) and ``meta.json`` (graph statistics, schedule, the TV bound and,
    with ``check_tv`` and N ≤ :data:`TV_CHECK_MAX_N`, the exact max TV of ``Q̄_S`` from uniform).
    """
    from mstdiff.io import atomic_dir, read_json, run_meta, write_json
    from mstdiff.kg.graph import graph_stats, knn_graph, rate_matrix
    from mstdiff.kg.stages import EMBEDDINGS_FILE, file_sha256, stage_is_current

    embed_dir, out = Path(embed_dir), Path(out_dir)
    emb_path = embed_dir / EMBEDDINGS_FILE
    if not emb_path.exists():
        raise InputError(f"no {EMBEDDINGS_FILE}", where=str(embed_dir),
                         fix="create the embeddings with `mstdiff kg embed`")
    embed_meta = read_json(embed_dir / "meta.json") if (embed_dir / "meta.json").exists() else {}
    params = {
        "stage": "kg_transition",
        "embeddings_sha256": file_sha256(emb_path),
        "stations_sha256": embed_meta.get("params", {}).get("stations_sha256"),
        "k": k, "metric": metric, "max_dist": max_dist, "dist_quantile": dist_quantile,
        "num_steps": num_steps, "eps": eps, "tv_target": tv_target, "schedule": schedule,
        "method": method,
    }
    if stage_is_current(out, params, overwrite=overwrite, validate=_validate_transition):
        return out
    emb = np.load(emb_path)
    adj = knn_graph(emb, k, metric=metric, max_dist=max_dist, dist_quantile=dist_quantile)
    rate = rate_matrix(adj, k)
    stats = graph_stats(adj, rate)
    trans = GraphTransition(rate, num_steps=num_steps, eps=eps, tv_target=tv_target, schedule=schedule,
                            method=method, meta={"stations_sha256": params["stations_sha256"], "k": k})
    tv_exact = max_tv_to_uniform(trans) if check_tv and trans.num_states <= TV_CHECK_MAX_N else None
    if tv_exact is not None and tv_exact >= 0.01:
        raise RuntimeError(f"max TV(Q̄_S, uniform) = {tv_exact:.4f} is not below 0.01")  # cannot happen
    with atomic_dir(out, overwrite=True) as tmp:
        trans.save(tmp / "transition.pt")
        sparse.save_npz(tmp / "knn.npz", sparse.csr_matrix(adj, dtype=np.float32))
        write_json(tmp / "meta.json", run_meta(
            stage="kg_transition", params=params, embed_dir=str(embed_dir.resolve()),
            n_states=trans.num_states, graph=stats, method=trans.method, rho=trans.rho,
            alpha_bar=trans._alpha_bar64.tolist(), tv_bound=trans.tv_bound(), tv_max_exact=tv_exact))
    logger.info("transition written to %s (N=%d, %s)", out, trans.num_states, trans.method)
    return out
