import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

from mstdiff.metrics.jsd import discrete_jsd, histogram_counts, histogram_jsd, jsd, shared_edges


def test_jsd_identical_is_zero_and_disjoint_is_one():
    p = np.array([1.0, 2.0, 3.0, 0.0])
    assert jsd(p, p) == 0.0
    assert jsd(p, 10 * p) == 0.0  # counts are normalised
    assert jsd([1, 1, 0, 0], [0, 0, 2, 5]) == pytest.approx(1.0, abs=1e-12)


def test_jsd_known_value_by_hand():
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4)
    expected = 0.5 * (1.0 * math.log2(1 / 0.75)) + 0.5 * (
        0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert jsd([1, 0], [1, 1]) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.3112781, abs=1e-6)


def test_jsd_matches_scipy_oracle():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(7) * (rng.random(7) < 0.7), rng.random(7)
        assert jsd(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-10)


def test_jsd_empty_histogram_is_nan_and_bad_input_raises():
    assert math.isnan(jsd([0, 0], [1, 2]))
    with pytest.raises(ValueError):
        jsd([1, -1], [1, 1])
    with pytest.raises(ValueError):
        jsd([1, 2, 3], [1, 2])


hist = st.lists(st.floats(0, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(hist, st.data())
def test_jsd_symmetric_and_bounded(p, data):
    q = data.draw(st.lists(st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
                           min_size=len(p), max_size=len(p)))
    a, b = np.array(p), np.array(q)
    if a.sum() == 0 or b.sum() == 0:
        assert math.isnan(jsd(a, b))
        return
    v = jsd(a, b)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(jsd(b, a), abs=1e-12)
    assert jsd(a, a) == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
       st.sampled_from(["quantile", "linear"]), st.booleans())
def test_histogram_jsd_bounded_and_symmetric(a, b, method, zero_bin):
    v = histogram_jsd(np.array(a), np.array(b), bins=8, method=method, zero_bin=zero_bin)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(histogram_jsd(np.array(b), np.array(a), bins=8, method=method,
                                            zero_bin=zero_bin), abs=1e-12)


def test_histogram_jsd_known_shift():
    a = np.repeat([0, 1, 2, 3], 25).astype(float)
    b = a + 1
    # bins one per integer: P = (¼,¼,¼,¼,0), Q = (0,¼,¼,¼,¼), M = (⅛,¼,¼,¼,⅛)
    # JSD = ½·¼·log2(¼ / ⅛) + ½·¼·log2(¼ / ⅛) = 0.25
    assert histogram_jsd(a, b, edges=np.arange(-0.5, 5.0)) == pytest.approx(0.25, abs=1e-12)


def test_histogram_jsd_brute_force_against_numpy_histogram():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.5, 1.3, 3000)
    u = np.concatenate([a, b])
    ha, edges = np.histogram(a, bins=30, range=(u.min(), u.max()))
    hb, _ = np.histogram(b, bins=edges)
    expected = jensenshannon(ha, hb, base=2) ** 2
    assert histogram_jsd(a, b, bins=30, method="linear") == pytest.approx(expected, abs=1e-10)
    assert expected > 0.05


def test_histogram_jsd_identical_and_disjoint():
    rng = np.random.default_rng(2)
    a = rng.gamma(0.5, 3, 1000) * (rng.random(1000) < 0.5)
    for method in ("quantile", "linear"):
        for zb in (False, True):
            assert histogram_jsd(a, a.copy(), method=method, zero_bin=zb) == 0.0
        lo, hi = rng.uniform(0, 1, 500), rng.uniform(2, 3, 500)
        assert histogram_jsd(lo, hi, bins=20, method=method) == pytest.approx(1.0, abs=1e-12)


def test_shared_edges_come_from_the_union():
    a, b = np.array([0.0, 1.0, 2.0]), np.array([5.0, 10.0])
    for method in ("quantile", "linear"):
        e = shared_edges(a, b, 4, method=method)
        assert e[0] == 0.0 and e[-1] == 10.0
        assert np.all(np.diff(e) > 0)
    np.testing.assert_allclose(shared_edges(a, b, 5, method="linear"), [0, 2, 4, 6, 8, 10])
    assert shared_edges(np.ones(3), np.ones(2), 10).size == 1  # constant: one bin


def test_quantile_binning_is_invariant_to_log1p():
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 2, 4000), rng.lognormal(0.3, 1.5, 3000)
    v = histogram_jsd(a, b, method="quantile")
    assert v == pytest.approx(histogram_jsd(np.log1p(a), np.log1p(b), method="quantile"), abs=1e-12)
    assert v > 0.01


def test_zero_bin_known_value():
    # half zeros vs all zeros: P = (½, positives ½), Q = (1, 0) -> same value as jsd([1,0],[1,1])
    a = np.concatenate([np.zeros(50), np.arange(1.0, 51.0)])
    b = np.zeros(30)
    assert histogram_jsd(a, b, zero_bin=True, method="quantile") == pytest.approx(jsd([1, 0], [1, 1]))


def test_values_outside_edges_go_to_outer_bins():
    x = np.array([-5.0, 0.5, 1.0, 2.0, 10.0])
    np.testing.assert_array_equal(histogram_counts(x, np.array([0, 1, 2])), [2, 3])


def test_discrete_jsd():
    assert discrete_jsd([1, 2, 3], [3, 2, 1]) == 0.0
    assert discrete_jsd([1, 1], [2, 2]) == pytest.approx(1.0)
    assert discrete_jsd([1, 2], [1, 1]) == pytest.approx(jsd([1, 1], [2, 0]))
    assert math.isnan(discrete_jsd([], [1]))
    assert math.isnan(histogram_jsd(np.array([]), np.array([1.0])))
