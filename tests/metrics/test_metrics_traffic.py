import numpy as np
import pytest

from mstdiff.errors import InputError
from mstdiff.metrics.traffic import (
    daily_frequency_index,
    daily_periodic_rmse,
    periodic_strength,
    quantile_rmse,
    traffic_diff_jsd,
    traffic_differences,
    traffic_volume_jsd,
)


def zero_inflated(U, T, seed):
    rng = np.random.default_rng(seed)
    return rng.gamma(0.6, 4.0, (U, T)) * (rng.random((U, T)) < 0.4)


def test_volume_identical_permuted_and_disjoint():
    x = zero_inflated(200, 48, 0)
    assert traffic_volume_jsd(x, x.copy()) == 0.0
    perm = np.random.default_rng(1).permutation(x.size)
    assert traffic_volume_jsd(x, x.ravel()[perm].reshape(x.shape)) == 0.0  # pooled values only
    lo = np.random.default_rng(2).uniform(1, 2, (100, 48))
    assert traffic_volume_jsd(lo, lo + 100) == pytest.approx(1.0)
    assert traffic_volume_jsd(np.zeros((10, 48)), lo) == pytest.approx(1.0)  # zero bin vs positives


def test_volume_detects_scale_change_and_is_bounded():
    x, y = zero_inflated(300, 48, 3), zero_inflated(300, 48, 4)
    same = traffic_volume_jsd(x, y)
    scaled = traffic_volume_jsd(x, 3 * y)
    assert same < 0.01 < scaled <= 1.0


def test_differences_and_diff_jsd():
    m = np.array([[0.0, 1.0, 3.0, 3.0]])
    np.testing.assert_array_equal(traffic_differences(m), [[1.0, 2.0, 0.0]])
    flat = np.ones((20, 48))
    alternating = np.tile([0.0, 1.0], (20, 24))
    assert traffic_diff_jsd(flat, flat * 5) == 0.0  # all differences zero in both
    assert traffic_diff_jsd(flat, alternating) == pytest.approx(1.0)
    x = zero_inflated(100, 48, 5)
    assert traffic_diff_jsd(x, x[::-1].copy()) == 0.0
    # same values, smoother order: the volume JSD is blind to it, the difference JSD is not
    smooth = np.sort(x, axis=1)
    assert traffic_volume_jsd(x, smooth) == 0.0
    assert traffic_diff_jsd(x, smooth) > 0.1


def test_daily_frequency_index():
    assert daily_frequency_index(48, 30) == 1
    assert daily_frequency_index(336, 30) == 7
    assert daily_frequency_index(24, 60) == 1
    with pytest.raises(InputError, match="daily"):
        daily_frequency_index(8, 30)


def test_periodic_strength_known_values():
    t = np.arange(48)
    sine = 1 + np.sin(2 * np.pi * t / 48)  # |F0| = 48, |F1| = 24, others 0 -> 24 / 72
    np.testing.assert_allclose(periodic_strength(sine[None]), [1 / 3], atol=1e-12)
    week = 1 + np.cos(2 * np.pi * np.arange(336) / 48)  # daily cycle at k = 7 in a 7-day window
    np.testing.assert_allclose(periodic_strength(week[None], 30), [1 / 3], atol=1e-12)
    np.testing.assert_allclose(periodic_strength(np.array([[2.0] * 48, [0.0] * 48])), [0.0, 0.0])
    half_day = 1 + np.sin(2 * np.pi * t / 24)  # energy at k = 2, none at the daily frequency
    assert periodic_strength(half_day[None])[0] == pytest.approx(0.0, abs=1e-12)
    v = periodic_strength(zero_inflated(50, 48, 6))
    assert np.all((v >= 0) & (v <= 0.5))


def test_daily_periodic_rmse_unequal_sizes():
    t = np.arange(48)
    sine = np.tile(1 + np.sin(2 * np.pi * t / 48), (30, 1))  # strength 1/3 each
    flat = np.ones((70, 48))  # strength 0 each
    assert daily_periodic_rmse(sine, flat) == pytest.approx(1 / 3, abs=1e-12)
    assert daily_periodic_rmse(sine, sine[:7]) == pytest.approx(0.0, abs=1e-12)


def test_quantile_rmse_equal_sizes_is_sorted_rmse():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=101), rng.gamma(2.0, size=101)
    brute = np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2))
    assert quantile_rmse(a, b) == pytest.approx(brute, abs=1e-12)
    assert quantile_rmse(a, rng.permutation(a)) == pytest.approx(0.0, abs=1e-12)
    assert quantile_rmse(a, a + 0.25) == pytest.approx(0.25, abs=1e-12)


def test_quantile_rmse_unequal_sizes_matches_quantile_functions():
    fine, coarse = (np.arange(1000) + 0.5) / 1000, (np.arange(10) + 0.5) / 10  # both ~ Uniform(0, 1)
    assert quantile_rmse(fine, coarse) < 0.02
    assert quantile_rmse(fine, coarse + 0.3) == pytest.approx(0.3, abs=0.02)
    assert quantile_rmse(coarse, fine) == pytest.approx(quantile_rmse(fine, coarse))
