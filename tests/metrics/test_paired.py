"""Paired scores against brute-force references on random inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mstdiff.metrics.paired import (
    crps,
    crps_per_slot,
    energy_score,
    interval_coverage,
    location_accuracy,
    location_distance_km,
    vote_ranks,
)


def crps_integral(x: np.ndarray, y: float) -> float:
    """∫ (F_ens(z) − 1{z ≥ y})² dz, exactly, with F_ens the empirical CDF of the draws."""
    pts = np.sort(np.concatenate([x, [y]]))
    total = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        z = 0.5 * (a + b)
        total += (np.mean(x <= z) - float(z >= y)) ** 2 * (b - a)
    return total


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(0, 10_000))
def test_crps_equals_the_integral_of_the_squared_cdf_difference(K, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, K, 3)) * rng.uniform(0.1, 5)
    y = rng.normal(size=(2, 3))
    got = crps_per_slot(x, y)
    for i in range(2):
        for t in range(3):
            assert got[i, t] == pytest.approx(crps_integral(x[i, :, t], y[i, t]), abs=1e-9)


def test_crps_of_one_draw_is_the_absolute_error_and_mask_selects_slots():
    x = np.array([[[1.0, 5.0, 2.0]]])
    y = np.array([[0.0, 5.0, 4.0]])
    assert crps(x, y) == pytest.approx((1 + 0 + 2) / 3)
    assert crps(x, y, mask=np.array([[True, False, False]])) == pytest.approx(1.0)


def test_energy_score_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 5))
    ref = np.mean([np.mean([np.linalg.norm(x[i, k] - y[i]) for k in range(4)])
                   - 0.5 * np.mean([np.linalg.norm(x[i, k] - x[i, j]) for k in range(4) for j in range(4)])
                   for i in range(3)])
    assert energy_score(x, y) == pytest.approx(ref)
    one = energy_score(x[:, :1], y)  # one draw: the mean Euclidean error
    assert one == pytest.approx(np.mean(np.linalg.norm(x[:, 0] - y, axis=1)))


def test_coverage_of_a_calibrated_ensemble_is_its_level():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 199, 1))
    y = rng.normal(size=(2000, 1))
    assert interval_coverage(x, y, 0.5) == pytest.approx(0.5, abs=0.03)
    assert interval_coverage(x, y, 0.9) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(x * 0.01, y, 0.9) < 0.05  # over-confident


def test_vote_ranks_and_accuracy():
    draws = np.array([[[3, 1], [3, 2], [5, 2], [5, 2], [3, 7]]])  # (1, K=5, T=2)
    top = vote_ranks(draws, 2)
    assert top[0, 0].tolist() == [3, 5] and top[0, 1].tolist() == [2, 1]
    truth = np.array([[5, 2]])
    assert location_accuracy(draws, truth, k=1) == pytest.approx(0.5)
    assert location_accuracy(draws, truth, k=2) == pytest.approx(1.0)


def test_distance_zero_when_right_and_positive_otherwise():
    lat, lon = np.array([31.0, 31.1]), np.array([121.0, 121.0])
    assert location_distance_km(np.zeros((1, 2, 3), int), np.zeros((1, 3), int), lat, lon) == 0.0
    d = location_distance_km(np.ones((1, 1, 1), int), np.zeros((1, 1), int), lat, lon)
    assert d == pytest.approx(11.1, abs=0.1)
