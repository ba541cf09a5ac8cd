"""kNN graph of stations in embedding space and the rate matrix of the location diffusion.

MSTDiff (paper §III-C; DESIGN.md §1): for each station, its top-K nearest neighbours in the TuckER
embedding space within a distance threshold form a binary ``A`` (``A[i, j] = 1``: j is a neighbour of
i); ``B = (A + Aᵀ) / (2K)`` and the rate matrix ``R = B − diag(rowsum B)`` is symmetric with zero row
sums. With this normalisation the mean total jump rate of a station is 1, so the diffusion time
``ᾱ`` counts expected graph jumps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from mstdiff.errors import InputError

logger = logging.getLogger(__name__)


def knn_graph(
    embeddings: np.ndarray,
    k: int = 8,
    *,
    metric: str = "cosine",
    max_dist: float | None = None,
    dist_quantile: float | None = 0.95,
    block: int = 2048,
) -> sparse.csr_matrix:
    """Binary directed kNN graph ``A`` (``(N, N)`` CSR, no self-loops) in embedding space.

    Row i holds the ``k`` nearest other stations of i whose distance is at most the threshold.
    ``metric``: ``"cosine"`` (``1 − cos``; the default, insensitive to the embedding scale) or
    ``"euclidean"``. Threshold: ``max_dist`` when given, else the ``dist_quantile`` quantile of all
    kNN distances (default 0.95: the 5 % longest kNN edges, typically from outlying stations, are
    dropped), else none. Exact ties are broken by station index. Distances are computed in row
    blocks of at most ``block`` stations and ~32 MB, so memory stays ``O(N·k)`` beyond that.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InputError("embeddings must be a finite 2-D array (N, d)", where="kNN graph")
    n = x.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k = {k} must be in [1, N-1] for N = {n} stations", where="kNN graph")
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norm, 1e-12)
    elif metric != "euclidean":
        raise InputError(f"unknown metric {metric!r}", where="kNN graph", fix="use 'cosine' or 'euclidean'")
    sq = (x * x).sum(1)
    block = max(1, min(block, (1 << 22) // max(n, 1)))  # at most ~32 MB of float64 distances per block
    nbr = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k))
    for b0 in range(0, n, block):
        xb = x[b0:b0 + block]
        d2 = sq[b0:b0 + block, None] + sq[None, :] - 2.0 * xb @ x.T  # (b, N)
        d2[np.arange(xb.shape[0]), np.arange(b0, b0 + xb.shape[0])] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        dp = np.take_along_axis(d2, part, 1)
        order = np.lexsort((part, dp), axis=1)  # by distance, then index
        nbr[b0:b0 + block] = np.take_along_axis(part, order, 1)
        dist[b0:b0 + block] = np.take_along_axis(dp, order, 1)
    dist = np.sqrt(np.maximum(dist, 0.0))
    if metric == "cosine":
        dist = dist**2 / 2.0  # 1 − cos from the chord length of unit vectors
    if max_dist is not None:
        thr = float(max_dist)
    elif dist_quantile is not None:
        thr = float(np.quantile(dist, dist_quantile))
    else:
        thr = np.inf
    keep = dist <= thr
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    cols = nbr.ravel()[keep.ravel()]
    a = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    logger.info("kNN graph: N=%d, k=%d, %s threshold %.4g keeps %.1f%% of kNN edges", n, k, metric, thr,
                100.0 * keep.mean())
    return a


def rate_matrix(adjacency: sparse.spmatrix, k: int) -> sparse.csr_matrix:
    """``R = B − diag(rowsum B)`` with ``B = (A + Aᵀ) / (2k)``: symmetric, zero row sums (float64)."""
    a = sparse.csr_matrix(adjacency, dtype=np.float64)
    a.setdiag(0.0)
    a.eliminate_zeros()
    b = (a + a.T) / (2.0 * k)
    b = sparse.csr_matrix(b)
    deg = np.asarray(b.sum(1)).ravel()
    r = (b - sparse.diags(deg)).tocsr()
    r.sort_indices()
    return r


def graph_stats(adjacency: sparse.spmatrix, rate: sparse.spmatrix | None = None) -> dict[str, Any]:
    """Degrees, components and rates of a kNN graph, for ``meta.json`` and logs."""
    a = sparse.csr_matrix(adjacency)
    sym = ((a + a.T) > 0).astype(np.float64)
    deg = np.asarray(sym.sum(1)).ravel()
    n_comp, labels = connected_components(sym, directed=False)
    sizes = np.bincount(labels)
    out: dict[str, Any] = {
        "n": int(a.shape[0]),
        "edges_directed": int(a.nnz),
        "edges_undirected": int(sym.nnz // 2),
        "degree_mean": float(deg.mean()) if deg.size else 0.0,
        "degree_max": int(deg.max()) if deg.size else 0,
        "isolated": int((deg == 0).sum()),
        "components": int(n_comp),
        "largest_component": int(sizes.max()) if sizes.size else 0,
    }
    if rate is not None:
        exit_rate = -sparse.csr_matrix(rate).diagonal()
        out["exit_rate_mean"] = float(exit_rate.mean())
        out["exit_rate_max"] = float(exit_rate.max())
    return out


def synthetic_knn_rate(
    n: int, k: int = 8, *, dim: int = 16, seed: int = 0, dist_quantile: float | None = 0.95
) -> sparse.csr_matrix:
    """Rate matrix of a kNN graph on ``n`` random clustered embeddings (tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 1), dim))
    x = centres[rng.integers(0, centres.shape[0], n)] + 0.5 * rng.normal(size=(n, dim))
    return rate_matrix(knn_graph(x, k, dist_quantile=dist_quantile), k)
