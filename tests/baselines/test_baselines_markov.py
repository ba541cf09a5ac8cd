"""Markov chain baseline: probabilities, an exact cycle, sampling, sparsity, reproducibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mstdiff.baselines import Baseline, Markov, make_baseline
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import synthetic_city


def _dataset(locations: np.ndarray, n_stations: int) -> PreparedDataset:
    U, T = locations.shape
    rng = np.random.default_rng(0)
    stations = pd.DataFrame({"station_id": [str(i) for i in range(n_stations)],
                             "lat": 31.0 + rng.random(n_stations) * 0.3,
                             "lon": 121.2 + rng.random(n_stations) * 0.4})
    samples = pd.DataFrame({"user": [f"u{i}" for i in range(U)], "start": ["2016-04-20T00:00:00"] * U})
    return PreparedDataset(np.zeros((U, T), np.float32), locations, stations, samples, {"bin_minutes": 30})


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=40, n_stations=40, days=2, seed=3)


@pytest.fixture(scope="module")
def fitted(city):
    return Markov().fit(city, progress=False)


@pytest.mark.parametrize("smoothing", [0.0, 1.0, 5.0])
def test_rows_sum_to_one(city, smoothing):
    m = Markov({"smoothing": smoothing, "tod_bins": 12}).fit(city, progress=False)
    for c in range(12):
        P = m.transition_matrix(c)
        assert P.shape == (40, 40)
        assert np.allclose(np.asarray(P.sum(axis=1)).ravel(), 1.0)
        assert P.min() >= 0


def test_unvisited_state_stays_put(city):
    m = Markov({"smoothing": 0.0}).fit(city, progress=False)
    unseen = np.setdiff1d(np.arange(city.n_stations), city.locations[:, :-1])
    for i in unseen:
        assert m.transition_matrix(5)[i, i] == pytest.approx(1.0)


def test_deterministic_cycle_reproduced_exactly():
    T, N = 48, 7
    cycle = np.array([0, 1, 2, 3, 4], dtype=np.int32)
    row = cycle[np.arange(T) % cycle.size]
    ds = _dataset(np.tile(row, (6, 1)), N)
    m = Markov({"smoothing": 0.0}).fit(ds, progress=False)
    gen = m.generate(25, seed=1, progress=False).locations
    assert np.array_equal(gen, np.tile(row, (25, 1)))


def test_smoothing_backs_off_to_the_global_chain_then_stay():
    # station 0 -> 1 only at t = 0; at other times of day station 0 has no time-specific counts
    T = 48
    loc = np.zeros((4, T), dtype=np.int32)
    loc[:, 1:] = 1
    m = Markov({"smoothing": 1.0}).fit(_dataset(loc, 3), progress=False)
    P0 = m.transition_matrix(0).toarray()
    assert P0[0, 1] == pytest.approx((4 + 1 * 4 / 5) / 5)  # (C_c + λ P_global) / (n_c + λ)
    P7 = m.transition_matrix(7).toarray()
    assert P7[0, 1] == pytest.approx(4 / 5) and P7[0, 0] == pytest.approx(1 / 5)
    assert P7[2, 2] == pytest.approx(1.0)  # never seen: stay


def test_sampling_matches_transition_matrix(city):
    m = Markov({"smoothing": 2.0}).fit(city, progress=False)
    # start every chain at the most common first station and check the first step's frequencies
    m.initial = np.zeros_like(m.initial)
    i0 = int(np.bincount(city.locations[:, 0]).argmax())
    m.initial[i0] = 1.0
    n = 20000
    gen = m.generate(n, seed=0, progress=False).locations
    freq = np.bincount(gen[:, 1], minlength=city.n_stations) / n
    want = m.transition_matrix(0).toarray()[i0]
    assert np.abs(freq - want).max() < 0.02


def test_shapes_ranges_and_reproducibility(fitted, city, tmp_path):
    a = fitted.generate(30, seed=5, progress=False)
    assert a.traffic is None and a.locations.shape == (30, city.T) and a.locations.dtype == np.int32
    assert a.locations.min() >= 0 and a.locations.max() < city.n_stations
    assert np.array_equal(a.locations, fitted.generate(30, seed=5, progress=False).locations)
    assert not np.array_equal(a.locations, fitted.generate(30, seed=6, progress=False).locations)
    fitted.save(tmp_path / "m.pt")
    loaded = Baseline.load(tmp_path / "m.pt")
    assert isinstance(loaded, Markov)
    assert np.array_equal(a.locations, loaded.generate(30, seed=5, progress=False).locations)
    assert fitted.generate(0, seed=1, progress=False).locations.shape == (0, city.T)


def test_large_station_set_stays_sparse():
    rng = np.random.default_rng(1)
    N, U, T = 5000, 40, 48
    walk = rng.integers(0, N, size=(U, 1)) + np.cumsum(rng.random((U, T)) < 0.2, axis=1)
    m = make_baseline("markov").fit(_dataset((walk % N).astype(np.int32), N), progress=False)
    assert sum(c.nnz for c in m.counts) <= U * (T - 1)
    gen = m.generate(50, seed=0, progress=False).locations
    assert gen.max() < N and np.asarray(m.transition_matrix(3).sum(axis=1)).ravel() == pytest.approx(1.0)
