"""kNN graph in embedding space and the rate matrix R = B − diag(rowsum B)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from mstdiff.errors import InputError
from mstdiff.kg.graph import graph_stats, knn_graph, rate_matrix, synthetic_knn_rate


def test_knn_on_points_on_a_line():
    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    a = knn_graph(x, 2, metric="euclidean", dist_quantile=None).toarray()
    expected = np.zeros((5, 5))
    for i, nbrs in enumerate([(1, 2), (0, 2), (1, 0), (2, 1), (3, 2)]):
        expected[i, list(nbrs)] = 1
    np.testing.assert_array_equal(a, expected)
    capped = knn_graph(x, 2, metric="euclidean", max_dist=4.5).toarray()
    assert capped[4].sum() == 0 and capped[3].tolist() == [0, 0, 1, 0, 0]  # 8 and 12 > 4.5
    assert capped[0].tolist() == [0, 1, 1, 0, 0]


def test_knn_rows_have_at_most_k_neighbours_and_no_self_loops():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    for metric in ("cosine", "euclidean"):
        a = knn_graph(x, 7, metric=metric, block=64)
        deg = np.asarray(a.sum(1)).ravel()
        assert deg.max() == 7 and a.diagonal().sum() == 0
        assert 0.94 <= a.nnz / (300 * 7) <= 0.96  # the 5 % longest edges are cut by default
    full = knn_graph(x, 7, dist_quantile=None)
    assert (np.asarray(full.sum(1)).ravel() == 7).all()
    # cosine ignores the scale of each embedding
    scaled = x * rng.uniform(0.1, 10.0, size=(300, 1))
    assert (knn_graph(scaled, 7, dist_quantile=None) != full).nnz == 0


def test_rate_matrix_is_symmetric_with_zero_row_sums():
    a = sparse.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=float))
    r = rate_matrix(a, 2).toarray()
    b = (a.toarray() + a.toarray().T) / 4.0
    np.testing.assert_allclose(r, b - np.diag(b.sum(1)))
    np.testing.assert_allclose(r, r.T)
    np.testing.assert_allclose(r.sum(1), 0.0, atol=1e-15)
    assert r[0, 1] == pytest.approx(0.5) and r[0, 2] == pytest.approx(0.25)


def test_mean_exit_rate_is_one_for_a_full_knn_graph():
    rng = np.random.default_rng(1)
    a = knn_graph(rng.normal(size=(200, 5)), 8, dist_quantile=None)
    r = rate_matrix(a, 8)
    # rowsum B = (out-degree + in-degree) / 2k, and in-degrees average k
    assert -r.diagonal().mean() == pytest.approx(1.0)
    stats = graph_stats(a, r)
    assert stats["n"] == 200 and stats["edges_directed"] == 1600
    assert stats["exit_rate_mean"] == pytest.approx(1.0) and stats["isolated"] == 0


def test_synthetic_graph_and_bad_inputs():
    r = synthetic_knn_rate(120, 6, seed=2)
    assert r.shape == (120, 120) and abs(r - r.T).max() < 1e-15
    with pytest.raises(InputError):
        knn_graph(np.zeros((5, 2)), 5)
    with pytest.raises(InputError):
        knn_graph(np.array([[np.nan, 0.0], [1.0, 1.0]]), 1)
    with pytest.raises(InputError):
        knn_graph(np.zeros((5, 2)), 2, metric="manhattan")
