"""Operator engineering of the graph process: applying ``exp(tR)`` to rows fast and exactly.

Never a dense ``(S, N, N)`` table. Two exact methods (both to ``tol`` = 1e-7 per
entry of ``Q``; the graph part enters ``Q`` weighted by ``e^{−εt}``, so its series is cut at
``tol · e^{εt}``), chosen by ``method="auto"``:

* ``"eig"`` (N ≤ :data:`EIG_MAX_N` = 1000): one float64 eigendecomposition ``R = V diag(λ) Vᵀ``;
  then ``X exp(tR) = ((X V) ⊙ e^{tλ}) Vᵀ``, truncated to the eigenvalues with ``e^{tλ} > tol``
  (with the default schedule this keeps ~99 % of them). Build ``O(N³)``, memory ``N²``; per call
  three GEMMs of ``(B·T) × N × N``.
* ``"cheb"`` (larger N): Chebyshev expansion on the sparse ``R``:
  ``exp(tR) = Σ_k c_k(t) T_k(I + 2R/ρ)``, ``c_0 = I_0(z)e^{−z}``, ``c_k = 2 I_k(z)e^{−z}``,
  ``z = tρ/2``, ρ ≥ spectral radius of ``R`` (Lanczos + 2 %, capped by Gershgorin); the series is
  cut when the coefficient tail (an error bound, since ``|T_k| ≤ 1`` on the spectrum) is below
  ``tol``: ≤ 24 terms for the default schedule on kNN graphs (ρ ≈ 3). Build ``O(nnz)`` (< 1 s);
  per call ``O(m(t) · B·T · nnz)`` with ``m(t) ≈ sqrt(tρ ln(1/tol))``, one fused sparse
  ``addmm`` and one ``addcmul`` per term.

Rule (``benchmarks/transition.py``, CPU, batch 64 × 48, CPU seconds on one core): the methods cost
the same at N = 500 (``reverse_probs`` 0.12 s vs 0.14 s); from N = 2000 Chebyshev is cheaper
(0.56 vs 0.61 s; 1.7 vs 3.3 s at N = 5000) and builds at once, where the eigendecomposition takes
~1.5 min at N = 5000 and is out of reach at 10,000. On a GPU the eigenbasis GEMMs are fast:
``method="eig"`` is worth trying there up to a few thousand states (the build stays on the CPU).

Both process the rows sorted by cost, so cheap rows (small ``s``) don't pay for the most expensive
one. On the CPU the Chebyshev path runs in tiles of :data:`CHEB_TILE` rows with ``Y`` stored in
reverse Cuthill–McKee order (banded): a tile's recurrence then stays in cache. This is memory-bound
work, and the two together measured 1.5–3x faster than one pass over all rows per term at N = 2,000
(``benchmarks/profile_step.py``). ``q_sample`` never builds rows: it simulates the continuous-time
walk exactly
(uniform jump with probability ``1 − g_s``, else uniformised graph jumps with ``Poisson(Λ ᾱ_s)``
candidate events, ``Λ`` = largest exit rate): ``O(B·T·Λ ᾱ_s)``. Gradients (w.r.t. the logits) go
through a custom autograd function: each map is a per-row symmetric linear operator, so its
backward pass is the same map, with no activations stored.

Reverse draw in sampling (:meth:`GraphTransition.sample_reverse`): instead of building
``p_θ(l_{s−1} | l_s)`` over all N stations for every token (one propagated dense row per token), draw
``x ~ softmax(z) ⊙ Q̄_s[l_s, :]`` and then ``l_{s−1} ~ Q̄_{s−1}[x, :] ⊙ Q_s[:, l_s]``: the same law
(Chapman–Kolmogorov), with rows of ``Q`` at single states only, at most N per step whatever the
batch size. Loss in training (:meth:`GraphTransition.location_losses`): the KL and the CE share one
softmax, and the per-token passes over N run as fused Numba kernels on the CPU
(:mod:`mstdiff.diffusion.kernels`; PyTorch operations on GPUs and with ``fused = False``).

The class :class:`GraphOperator` is a base of :class:`~mstdiff.diffusion.discrete.GraphTransition`
(which holds the process mathematics); it uses that class's attributes ``_n`` (N), ``eps``,
``method``, ``fused``, ``tol`` and its schedule buffers ``alpha``, ``keep_bar``, ``keep_step``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special
import torch
from scipy import sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee

if TYPE_CHECKING:
    from mstdiff.diffusion.discrete import GraphTransition

logger = logging.getLogger(__name__)

EIG_MAX_N = 1000  # "auto": eigenbasis up to this many states, Chebyshev above (benchmarks/transition.py)
CHEB_FLOP_COST = 15.0  # sparse-flop cost in dense flops (measured: 1.15 vs 17 GFLOP/s, 2 CPU cores)
CHEB_TILE = 128  # CPU: rows per Chebyshev tile, so that a tile's recurrence stays in cache (0: no tiling)


def chebyshev_coefficients(t: float, rho: float, tol: float) -> np.ndarray:
    """Coefficients ``c_k`` of ``exp(tR) = Σ c_k T_k(I + 2R/ρ)`` (float64), tail below ``tol``."""
    z = 0.5 * t * rho
    if z <= 0:
        return np.ones(1)
    kmax = int(math.ceil(z + 12.0 * math.sqrt(z) + 40.0))
    c = 2.0 * scipy.special.ive(np.arange(kmax + 1), z)
    c[0] *= 0.5
    tail = np.cumsum(c[::-1])[::-1]  # tail[k] = Σ_{j ≥ k} c_j
    m = int(np.argmax(tail < tol)) if (tail < tol).any() else kmax + 1
    return c[:max(m, 1)]


def spectral_bound(rate: sparse.spmatrix) -> float:
    """An upper bound ρ on the spectral radius of ``−R`` (Lanczos estimate + 2 %, ≤ Gershgorin)."""
    r = sparse.csr_matrix(rate)
    gersh = float(2.0 * np.max(-r.diagonal())) if r.shape[0] else 0.0
    if gersh <= 0:
        return 1.0
    if r.shape[0] < 3:
        return gersh
    try:
        from scipy.sparse.linalg import eigsh

        lam = float(eigsh(-r, k=1, which="LA", tol=1e-6, return_eigenvectors=False,
                          v0=np.ones(r.shape[0]) + np.arange(r.shape[0]) % 7)[0])
        return min(gersh, 1.02 * lam + 1e-9)
    except Exception:  # ARPACK no-convergence: the Gershgorin bound is always safe
        return gersh


class _RowLinear(torch.autograd.Function):
    """``Y = X M_row`` for per-row symmetric matrices: the backward pass is the same map."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.fn = fn
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.fn(grad), None


class RowCache:
    """Rows of ``Q`` already computed in one sampling run (see :meth:`GraphTransition.sample_reverse`)."""

    def __init__(self) -> None:
        self.keys: dict[str, torch.Tensor] = {}  # which -> sorted keys s·N + state
        self.rows: dict[str, torch.Tensor] = {}  # which -> (K, N) rows in key order


class _LocationLosses(torch.autograd.Function):
    """Fused ``(KL, CE)`` per token from the logits (CPU; see :meth:`GraphTransition.location_losses`)."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, trans: GraphTransition, sf: torch.Tensor, target: torch.Tensor,
        c: torch.Tensor, ic: torch.Tensor, a: torch.Tensor, ia: torch.Tensor, log_a: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from mstdiff.diffusion import kernels

        z = logits.detach().to(trans.alpha.dtype)
        p = torch.softmax(z, dim=-1)  # (M, N)
        prior = trans._apply_flat(p, sf - 1, "bar")  # softmax(z) Q̄_{s−1}, a new tensor
        kl = kernels.kl_rows(prior.numpy(), c.numpy(), ic.numpy(), a.numpy(), ia.numpy(), log_a.numpy(),
                             out_grad=prior.numpy())  # prior now holds ∂KL/∂prior
        # CE = −log p[target]; from the logits where p[target] underflows
        pt = p.gather(1, target[:, None]).squeeze(1).double()
        ce = -pt.clamp_min(1e-300).log()
        low = pt < 1e-30
        if bool(low.any()):
            zl = z[low].double()
            ce[low] = torch.logsumexp(zl, -1) - zl.gather(1, target[low][:, None]).squeeze(1)
        ctx.trans = trans
        ctx.logits_dtype = logits.dtype
        ctx.save_for_backward(p, prior, sf, target)
        return torch.from_numpy(kl).to(p.dtype), ce.to(p.dtype)  # in the process's dtype, as the PyTorch path

    @staticmethod
    def backward(
        ctx: Any, g_kl: torch.Tensor | None, g_ce: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        from mstdiff.diffusion import kernels

        p, grad_prior, sf, target = ctx.saved_tensors
        m = p.shape[0]
        scale = (torch.zeros(m) if g_kl is None else g_kl).to(p.dtype).contiguous()
        g_ce_ = (torch.zeros(m) if g_ce is None else g_ce).to(p.dtype).contiguous()
        g_p = ctx.trans._apply_flat(grad_prior, sf - 1, "bar")  # the map is self-adjoint
        out = kernels.softmax_ce_backward(p.numpy(), g_p.numpy(), scale.numpy(), target.numpy(),
                                          g_ce_.numpy(), out=g_p.numpy())
        return (torch.from_numpy(out).to(ctx.logits_dtype), None, None, None, None, None, None, None, None)


def _chunks(cost: torch.Tensor, max_chunks: int = 4, min_rows: int = 256) -> list[torch.Tensor | None]:
    """Row indices sorted by decreasing cost, split into at most ``max_chunks`` pieces.

    ``[None]`` means "all rows in their order, one piece" (equal costs or few rows): no copies.
    """
    m = cost.numel()
    n_chunks = max(1, min(max_chunks, m // max(min_rows, 1)))
    if m == 0 or n_chunks == 1 or bool(cost.min() == cost.max()):
        return [None]
    order = torch.argsort(cost, descending=True, stable=True)
    return list(torch.tensor_split(order, n_chunks))


class GraphOperator:
    """Rows of ``Q̄_s`` / ``Q_s`` and products with them, without dense ``(S, N, N)`` tables."""

    # attributes and buffers of the process class (declared for type checkers)
    _n: int
    eps: float
    tol: float
    method: str
    fused: bool
    rho: float
    cheb_tile: int
    alpha: torch.Tensor
    alpha_bar: torch.Tensor
    keep_bar: torch.Tensor
    keep_step: torch.Tensor
    lam: torch.Tensor  # eig: (N,) float64 eigenvalues, descending (0 first)
    V: torch.Tensor  # eig: (N, N) eigenvectors (columns)
    exp_bar: torch.Tensor  # eig: (S+1, N) e^{ᾱ_s λ}
    exp_step: torch.Tensor  # eig: (S+1, N) e^{α_s λ}
    rank_bar: torch.Tensor  # eig: (S+1,) eigenpairs kept (e^{ᾱ_s λ} > tol)
    rank_step: torch.Tensor
    cheb_perm: torch.Tensor  # cheb: reverse Cuthill–McKee order of the states (Y is stored permuted)
    cheb_inv: torch.Tensor  # its inverse
    y_crow: torch.Tensor  # cheb: CSR of Y = I + 2R/ρ
    y_col: torch.Tensor
    y_val: torch.Tensor
    coef_bar: torch.Tensor  # cheb: (S+1, m) Chebyshev coefficients for ᾱ_s
    coef_step: torch.Tensor  # cheb: (S+1, m') for α_s
    nterms_bar: torch.Tensor  # cheb: (S+1,) terms used
    nterms_step: torch.Tensor
    register_buffer: Callable[..., None]

    def _build_operator(
        self, r: sparse.csr_matrix, alpha_bar: np.ndarray, alpha: np.ndarray, *, method: str,
        tol: float, dtype: torch.dtype, reorder: bool, eig: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """Buffers of both exact methods for ``exp(tR)`` at every ``ᾱ_s`` and ``α_s`` (module docstring)."""
        n = r.shape[0]
        _eig = eig
        if method == "eig":
            if _eig is None:
                lam, vec = np.linalg.eigh(r.toarray())  # LAPACK syevd, float64
            else:
                lam, vec = _eig
            lam = np.minimum(np.asarray(lam, dtype=np.float64), 0.0)
            order = np.argsort(-lam, kind="stable")  # λ = 0 first: rank truncation keeps a prefix
            lam, vec = lam[order], np.asarray(vec)[:, order]
            e_bar = np.exp(alpha_bar[:, None] * lam[None, :])  # (S+1, N) float64
            e_step = np.exp(alpha[:, None] * lam[None, :])
            self.register_buffer("lam", torch.tensor(lam, dtype=torch.float64))
            self.register_buffer("V", torch.tensor(vec, dtype=dtype))
            self.register_buffer("exp_bar", torch.tensor(e_bar, dtype=dtype))
            self.register_buffer("exp_step", torch.tensor(e_step, dtype=dtype))
            self.register_buffer("rank_bar", torch.tensor((e_bar > tol).sum(1), dtype=torch.long))
            self.register_buffer("rank_step", torch.tensor((e_step > tol).sum(1), dtype=torch.long))
            self.rho = float(-lam.min()) if n else 0.0
        else:
            self.rho = spectral_bound(r)
        # the sparse Chebyshev path is built for both methods: in "eig" mode it serves dense
        # probability rows whenever its cost model says it is cheaper (see _use_cheb)
        rho = spectral_bound(r)
        y = (sparse.identity(n, format="csr") + (2.0 / rho) * r).tocsr()
        # Reverse Cuthill–McKee order: Y becomes banded, so the rows a sparse product gathers are
        # close together in memory (Y is stored permuted; _cheb_apply permutes in and out)
        perm = reverse_cuthill_mckee(y, symmetric_mode=True) if reorder else np.arange(n)
        perm = np.asarray(perm, dtype=np.int64)
        y = y[perm][:, perm].tocsr()
        y.sort_indices()
        self.register_buffer("cheb_perm", torch.tensor(perm, dtype=torch.long))
        self.register_buffer("cheb_inv", torch.tensor(np.argsort(perm), dtype=torch.long))
        self.cheb_tile = CHEB_TILE
        self.register_buffer("y_crow", torch.tensor(y.indptr, dtype=torch.long))
        self.register_buffer("y_col", torch.tensor(y.indices, dtype=torch.long))
        self.register_buffer("y_val", torch.tensor(y.data, dtype=dtype))
        for name, times in (("bar", alpha_bar), ("step", alpha)):
            # the graph part of Q enters weighted by keep = e^{−εt}: a tail below tol / keep keeps
            # every entry of Q within tol
            coefs = [chebyshev_coefficients(float(t), rho, tol * math.exp(self.eps * float(t)))
                     for t in times]
            m = max(c.size for c in coefs)
            table = np.zeros((times.size, m))
            for i, c in enumerate(coefs):
                table[i, :c.size] = c
            self.register_buffer(f"coef_{name}", torch.tensor(table, dtype=dtype))
            nterms = torch.tensor([c.size for c in coefs], dtype=torch.long)
            self.register_buffer(f"nterms_{name}", nterms)

    # ------------------------------------------------------------------ core linear maps
    def _graph_apply(self, x: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        """``x[i] exp(t_i R)`` for rows ``x (M, N)``, ``t_i = ᾱ_{s_i}`` ("bar") or ``α_{s_i}`` ("step")."""
        if self._eig_rows(s, which):
            return self._eig_apply(x, s, which)
        return self._cheb_apply(x, s, which)

    def _eig_rows(self, s: torch.Tensor, which: str) -> bool:
        """Whether dense rows at steps ``s`` go through the eigenbasis (else the Chebyshev series)."""
        return self.method == "eig" and not self._use_cheb(s, which)

    def _use_cheb(self, s: torch.Tensor, which: str) -> bool:
        """Cost model for dense rows: eigenbasis ``4·N·r`` flops per row against Chebyshev
        ``m·2·nnz(Y)`` sparse flops, weighted by :data:`CHEB_FLOP_COST` (sparse products reach far
        fewer flop/s than dense ones). At N = 2,047 (Shanghai) Chebyshev wins at every step."""
        nterms = (self.nterms_bar if which == "bar" else self.nterms_step)[s].double().mean()
        rank = (self.rank_bar if which == "bar" else self.rank_step)[s].double().mean()
        cheb = CHEB_FLOP_COST * 2.0 * self.y_val.numel() * float(nterms)
        return cheb < 4.0 * self._n * float(rank)

    def _eig_apply(self, x: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        expo = self.exp_bar if which == "bar" else self.exp_step
        rank = (self.rank_bar if which == "bar" else self.rank_step)[s]

        def part(xs: torch.Tensor, ss: torch.Tensor, r: int) -> torch.Tensor:
            v = self.V[:, :r]
            return ((xs @ v) * expo[ss, :r]) @ v.t()  # (m, r) -> (m, N)

        return self._chunked(rank, x.shape, x.dtype, lambda idx, r: part(
            x if idx is None else x[idx], s if idx is None else s[idx], r))

    def _one_hot_rows(self, states: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        """Rows ``exp(t_i R)[states_i, :]`` as ``(M, N)``."""
        if self.method == "eig":
            expo = self.exp_bar if which == "bar" else self.exp_step
            rank = (self.rank_bar if which == "bar" else self.rank_step)[s]

            def part(st: torch.Tensor, ss: torch.Tensor, r: int) -> torch.Tensor:
                v = self.V[:, :r]
                return (v[st] * expo[ss, :r]) @ v.t()

            return self._chunked(rank, (states.numel(), self._n), self.V.dtype, lambda idx, r: part(
                states if idx is None else states[idx], s if idx is None else s[idx], r))
        x = torch.zeros(states.numel(), self._n, dtype=self.y_val.dtype, device=self.y_val.device)
        x[torch.arange(states.numel(), device=x.device), states] = 1.0
        return self._cheb_apply(x, s, which)

    def _chunked(
        self, cost: torch.Tensor, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype,
        part: Callable[[torch.Tensor | None, int], torch.Tensor],
    ) -> torch.Tensor:
        """Run ``part(rows, max cost of rows)`` on cost-sorted chunks and reassemble ``(M, N)``."""
        chunks = _chunks(cost)
        if chunks[0] is None:
            return part(None, int(cost.max()) if cost.numel() else 0)
        out = torch.empty(tuple(shape), dtype=dtype, device=cost.device)
        for idx in chunks:
            assert idx is not None
            out[idx] = part(idx, int(cost[idx].max()))
        return out

    def _y_sparse(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(self.y_crow, self.y_col, self.y_val, size=(self._n, self._n),
                                           check_invariants=False)

    @staticmethod
    def _series(y: torch.Tensor, t0: torch.Tensor, c: torch.Tensor, m: int) -> torch.Tensor:
        """``Σ_k c_k T_k(Y) t0`` for a block ``t0 (N, w)`` in permuted state order, ``c (m, w)``."""
        acc = t0 * c[0]
        if m > 1:
            t1 = y @ t0
            acc.addcmul_(t1, c[1])
            for k in range(2, m):
                t2 = torch.addmm(t0, y, t1, beta=-1.0, alpha=2.0)  # T_k = 2 Y T_{k-1} − T_{k-2}
                acc.addcmul_(t2, c[k])
                t0, t1 = t1, t2
        return acc

    def _cheb_apply(self, x: torch.Tensor, s: torch.Tensor, which: str, mix: bool = False) -> torch.Tensor:
        """``x[i] exp(t_i R)`` by the Chebyshev recurrence on the (RCM-permuted) sparse ``Y``.

        On the CPU the rows are sorted by their number of terms and processed in tiles of
        ``cheb_tile`` rows: the recurrence's three ``(N, tile)`` blocks then stay in cache across
        all terms, which measured 2–3x faster than one pass over all rows per term at N = 2,000
        (``benchmarks/profile_step.py``). On a GPU, or with ``cheb_tile = 0``, rows go in at most
        four cost-sorted chunks (large kernels).

        ``mix``: return ``x[i] Q(s_i)`` instead (the uniform part added, as :meth:`_mix`). With the
        fused kernels a tile moves in and out of the recurrence's layout in one pass each, with the
        mixing done on the way out.
        """
        coef = self.coef_bar if which == "bar" else self.coef_step
        nterms = (self.nterms_bar if which == "bar" else self.nterms_step)[s]
        y = self._y_sparse()
        perm, inv = self.cheb_perm, self.cheb_inv

        def recurrence(xs: torch.Tensor, ss: torch.Tensor, m: int) -> torch.Tensor:
            """Rows ``xs (w, N)`` in the original order → ``(w, N)``, every row with ``m`` terms."""
            c = coef[ss, :m].t().contiguous()  # (m, w)
            t0 = xs.index_select(1, perm).t().contiguous()  # (N, w), permuted state order
            return self._series(y, t0, c, m).t().index_select(1, inv)  # (w, N), original state order

        def mixed(out: torch.Tensor) -> torch.Tensor:
            if not mix:
                return out
            keep = (self.keep_bar if which == "bar" else self.keep_step)[s]
            return self._mix(out, x.sum(-1), keep)

        tile = self.cheb_tile if x.device.type == "cpu" else 0
        if x.shape[0] == 0:
            return x.clone()
        if tile > 0 and self._use_kernels(x):
            from mstdiff.diffusion import kernels

            xn, pn = x.detach().contiguous().numpy(), perm.numpy()
            return self._cheb_tiles(s, which, mix, x.dtype,
                                    lambda rows: kernels.gather_tile(xn, rows.numpy(), pn, mass=mix))
        if tile <= 0:
            return mixed(self._chunked(nterms, x.shape, x.dtype, lambda idx, m: recurrence(
                x if idx is None else x[idx], s if idx is None else s[idx], m)).contiguous())
        if x.shape[0] <= tile:
            return mixed(recurrence(x, s, int(nterms.max()) if nterms.numel() else 0))
        order = torch.argsort(nterms, descending=True, stable=True)
        m_sorted = nterms[order].tolist()
        out = torch.empty_like(x)
        for a in range(0, x.shape[0], tile):
            rows = order[a:a + tile]
            out[rows] = recurrence(x[rows], s[rows], m_sorted[a])
        return mixed(out)

    def _cheb_tiles(
        self, s: torch.Tensor, which: str, mix: bool, dtype: torch.dtype,
        tile_in: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray | None]],
    ) -> torch.Tensor:
        """Fused CPU path of the recurrence: rows in cost-sorted tiles of ``cheb_tile``.

        ``tile_in(rows)`` gives a tile's input block ``(N, w)`` in permuted state order and the
        rows' sums (``None`` when ``mix`` is off); the output rows are written in station order,
        mixed with the uniform part when ``mix``, in one pass per tile
        (:func:`mstdiff.diffusion.kernels.scatter_tile_mix`).
        """
        from mstdiff.diffusion import kernels

        coef = self.coef_bar if which == "bar" else self.coef_step
        nterms = (self.nterms_bar if which == "bar" else self.nterms_step)[s]
        keep_all = (self.keep_bar if which == "bar" else self.keep_step)[s].to(dtype)
        y, inv = self._y_sparse(), self.cheb_inv.numpy()
        order = torch.argsort(nterms, descending=True, stable=True)
        m_sorted = nterms[order].tolist()
        out = torch.empty(s.numel(), self._n, dtype=dtype)
        for a in range(0, s.numel(), self.cheb_tile):
            rows = order[a:a + self.cheb_tile]
            m = m_sorted[a]
            t0, mass = tile_in(rows)
            acc = self._series(y, torch.from_numpy(t0), coef[s[rows], :m].t().contiguous(), m)
            if mix:
                assert mass is not None
                keep = keep_all[rows]
                add = ((1.0 - keep.double()) * torch.from_numpy(mass) / self._n).to(dtype)
            else:
                keep, add = torch.ones(rows.numel(), dtype=dtype), torch.zeros(rows.numel(), dtype=dtype)
            kernels.scatter_tile_mix(acc.numpy(), rows.numpy(), inv, keep.numpy(), add.numpy(), out.numpy())
        return out

    def _one_hot_tiles(self, states: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        """Rows ``Q(s_i)[states_i, :]`` (mixed) by the fused tiles, each tile's input built in place."""
        inv = self.cheb_inv[states]
        dtype = self.y_val.dtype

        def tile_in(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            t0 = torch.zeros(self._n, rows.numel(), dtype=dtype)
            t0[inv[rows], torch.arange(rows.numel())] = 1.0
            return t0.numpy(), np.ones(rows.numel())

        return self._cheb_tiles(s, which, True, dtype, tile_in)

    def _mix(self, graph: torch.Tensor, mass: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``keep · graph + (1 − keep) · mass / N`` (the uniform part of Q acting on rows), in place."""
        return graph.mul_(keep[:, None]).add_(((1.0 - keep) * mass / self._n)[:, None])

    def _apply_flat(self, x: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        """``x[i] Q(s_i)`` for ``x (M, N)``; rows with time 0 are returned unchanged."""
        if self._use_kernels(x) and self.cheb_tile > 0 and not self._eig_rows(s, which):
            # one fused pass in and out per tile; a row with time 0 has the single coefficient 1
            # and keep = 1, so it comes out unchanged
            return self._cheb_apply(x, s, which, mix=True)
        times = (self.alpha_bar if which == "bar" else self.alpha)[s]
        keep = (self.keep_bar if which == "bar" else self.keep_step)[s]
        moving = times > 0
        if bool(moving.all()):
            return self._mix(self._graph_apply(x, s, which), x.sum(-1), keep)
        out = x.clone()
        if bool(moving.any()):
            idx = moving.nonzero().squeeze(1)
            xi = x[idx]
            out[idx] = self._mix(self._graph_apply(xi, s[idx], which), xi.sum(-1), keep[idx])
        return out

    def _rows_flat(self, states: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        """Rows ``Q(s_i)[states_i, :]`` as ``(M, N)``, exactly one-hot for time 0.

        Each distinct ``(state, step)`` pair is computed once: a user stays at few stations, so a
        batch of B·T tokens holds far fewer distinct pairs (about 14x fewer for ``l0`` on Shanghai).
        """
        key = s.long() * self._n + states.long()
        uniq, inverse = torch.unique(key, return_inverse=True)
        if uniq.numel() < key.numel():
            return self._rows_flat_unique(uniq % self._n, uniq // self._n, which)[inverse]
        return self._rows_flat_unique(states, s, which)

    def _rows_flat_unique(self, states: torch.Tensor, s: torch.Tensor, which: str) -> torch.Tensor:
        if self.method == "cheb" and self.cheb_tile > 0 and self._use_kernels(states):
            # time 0: the single coefficient 1 and keep = 1 give the exact one-hot row
            return self._one_hot_tiles(states, s, which)
        times = (self.alpha_bar if which == "bar" else self.alpha)[s]
        keep = (self.keep_bar if which == "bar" else self.keep_step)[s]
        out = torch.zeros(states.numel(), self._n, dtype=self.alpha.dtype, device=self.alpha.device)
        out[torch.arange(states.numel(), device=out.device), states] = 1.0
        moving = times > 0
        if bool(moving.any()):
            idx = moving.nonzero().squeeze(1)
            g = self._one_hot_rows(states[idx], s[idx], which)
            out[idx] = self._mix(g, torch.ones_like(keep[idx]), keep[idx])
        return out

    def _row_table(
        self, states: torch.Tensor, s: torch.Tensor, which: str, cache: RowCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct rows ``Q(s_i)[states_i, :]`` (clamped at 0) and each token's index into them.

        ``cache`` (sampling): rows of ``Q̄`` computed by earlier calls are reused, and rows of steps
        above the largest ``s`` asked for are dropped (the reverse process only goes down).
        """
        key = s.long() * self._n + states.long()
        uniq, inverse = torch.unique(key, return_inverse=True)
        if cache is None:
            return self._rows_flat_unique(uniq % self._n, uniq // self._n, which).clamp_min_(0.0), inverse
        if which not in cache.rows:
            cache.keys[which] = uniq[:0]
            cache.rows[which] = torch.empty(0, self._n, dtype=self.alpha.dtype, device=self.alpha.device)
        keys, rows = cache.keys[which], cache.rows[which]
        keep = keys // self._n <= int(uniq.max()) // self._n
        keys, rows = keys[keep], rows[keep]
        pos = torch.searchsorted(keys, uniq).clamp_(max=max(keys.numel() - 1, 0))
        hit = keys[pos] == uniq if keys.numel() else torch.zeros_like(uniq, dtype=torch.bool)
        miss = uniq[~hit]
        if miss.numel():
            new = self._rows_flat_unique(miss % self._n, miss // self._n, which).clamp_min_(0.0)
            keys, order = torch.sort(torch.cat([keys, miss]))
            rows = torch.cat([rows, new])[order]
        cache.keys[which], cache.rows[which] = keys, rows
        return rows, torch.searchsorted(keys, uniq)[inverse]

    def _use_kernels(self, *tensors: torch.Tensor) -> bool:
        """The fused Numba kernels serve CPU tensors (PyTorch operations everywhere else)."""
        return self.fused and all(t.device.type == "cpu" for t in tensors)

    def _draw(
        self, a: torch.Tensor, ia: torch.Tensor | None, b: torch.Tensor, ib: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One draw per token ``i`` from ``Cat(a[ia_i] ⊙ b[ib_i])`` (``ia = None``: row ``i`` of ``a``).

        Inverse CDF with one float64 uniform per token drawn from ``generator`` (on its device), so
        the Numba kernel and the PyTorch path draw the same states from the same seed.
        """
        m = ib.numel()
        gen_device = generator.device if generator is not None else b.device
        u = torch.rand(m, generator=generator, device=gen_device, dtype=torch.float64)
        if self._use_kernels(a, b):
            from mstdiff.diffusion import kernels

            ia_ = torch.arange(m) if ia is None else ia
            idx = kernels.draw_product(a.detach().contiguous().numpy(), ia_.contiguous().numpy(),
                                       b.detach().contiguous().numpy(), ib.contiguous().numpy(),
                                       u.cpu().numpy())
            return torch.from_numpy(idx)
        w = (a if ia is None else a[ia]).double() * b[ib].double()
        cdf = w.cumsum(-1)
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=self._n - 1)
