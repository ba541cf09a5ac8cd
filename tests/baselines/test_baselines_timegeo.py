"""TimeGeo: home/work inference, fitted parameters, nights at home, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from mstdiff.baselines import Baseline, TimeGeo
from mstdiff.baselines.timegeo import PAPER, _zeta_cdf
from mstdiff.data.synthetic import simulate_city

NIGHT = (np.arange(48) + 0.5) / 2  # hours of the 48 slots
NIGHT = (NIGHT < 5) | (NIGHT >= 23)


@pytest.fixture(scope="module")
def city():
    return simulate_city(n_users=80, n_stations=60, days=2, seed=5)


@pytest.fixture(scope="module")
def fitted(city):
    return TimeGeo().fit(city.dataset, progress=False)


def test_home_and_work_match_ground_truth(fitted, city):
    home_true = city.users["home"].to_numpy()
    assert (fitted.users["home"] == home_true).mean() >= 0.9
    work_true = city.users["work"].to_numpy()
    employed = work_true >= 0
    assert (fitted.users["work"][employed] == work_true[employed]).mean() >= 0.8
    assert (fitted.users["work"][~employed] == -1).mean() >= 0.8


def test_parameters_are_fitted_and_valid(fitted):
    assert fitted.P.shape == (48,) and fitted.P.sum() == pytest.approx(1.0) and (fitted.P > 0).all()
    # people leave in the day, not at 3 am
    assert fitted.P[6] < fitted.P[20]
    assert all(fitted.params["fitted"].values())
    assert 0 < fitted.params["rho"] <= 1 and 0 <= fitted.params["gamma"] <= 3
    assert 0 <= fitted.params["alpha"] <= 5
    for k in ("n", "beta1", "beta2"):
        v = fitted.users[k]
        assert np.isfinite(v).all() and (v >= 0).all()


def test_defaults_when_fitting_is_off(city):
    m = TimeGeo({"fit_temporal": False, "fit_spatial": False}).fit(city.dataset, progress=False)
    assert m.params["rho"] == PAPER["rho"] and m.params["alpha"] == PAPER["alpha"]
    assert np.allclose(m.users["n"], PAPER["n_w"] / 7) and np.allclose(m.users["beta1"], PAPER["beta1"])
    assert np.allclose(m.P, 1 / 48)


def test_generated_nights_at_home(fitted, city):
    gen, agents = fitted.simulate(300, seed=0, progress=False)
    at_home = gen.locations[:, NIGHT] == agents["home"][:, None]
    assert at_home.mean() >= 0.8
    assert set(np.unique(agents["home"])) <= set(fitted.users["home"].tolist())
    # commuters spend the middle of weekdays mostly at work
    work = agents["work"]
    mid = gen.locations[work >= 0, 22:30] == work[work >= 0, None]
    assert mid.mean() >= 0.5


def test_rho_gamma_recovered_from_simulated_choices():
    rng = np.random.default_rng(0)
    S = rng.integers(1, 60, size=20000).astype(float)
    y = (rng.random(S.size) < 0.6 * S**-0.21).astype(float)
    rho, gamma = TimeGeo._fit_rho_gamma(S, y, 0.5, 0.5)
    assert rho == pytest.approx(0.6, abs=0.05) and gamma == pytest.approx(0.21, abs=0.04)


def test_alpha_recovered_from_simulated_ranks():
    rng = np.random.default_rng(1)
    K = rng.integers(50, 400, size=5000)
    cdf = _zeta_cdf(0.86, 400)
    ranks = np.array([np.searchsorted(cdf[:k], rng.random() * cdf[k - 1], side="right") + 1 for k in K])
    assert TimeGeo._fit_alpha(ranks, K) == pytest.approx(0.86, abs=0.05)


def test_shapes_reproducibility_and_save_load(fitted, city, tmp_path):
    a = fitted.generate(40, seed=2, progress=False)
    assert a.locations.shape == (40, 48) and a.locations.dtype == np.int32 and a.traffic is None
    assert 0 <= a.locations.min() and a.locations.max() < city.dataset.n_stations
    assert np.array_equal(a.locations, fitted.generate(40, seed=2, progress=False).locations)
    assert not np.array_equal(a.locations, fitted.generate(40, seed=3, progress=False).locations)
    fitted.save(tmp_path / "tg.pt")
    loaded = TimeGeo.load(tmp_path / "tg.pt")
    assert np.array_equal(a.locations, loaded.generate(40, seed=2, progress=False).locations)
    assert isinstance(Baseline.load(tmp_path / "tg.pt"), TimeGeo)


def test_week_windows(city):
    week = simulate_city(n_users=15, n_stations=40, days=7, T=336, seed=2).dataset
    m = TimeGeo().fit(week, progress=False)
    gen = m.generate(10, seed=0, progress=False).locations
    assert gen.shape == (10, 336) and gen.max() < week.n_stations


def test_per_user_estimates_and_shrinkage(city):
    raw = TimeGeo({"shrinkage": 0.0}).fit(city.dataset, progress=False)
    pooled = TimeGeo({"per_user": False}).fit(city.dataset, progress=False)
    strong = TimeGeo({"shrinkage": 1e6}).fit(city.dataset, progress=False)
    assert np.unique(raw.users["n"]).size > 5
    assert np.allclose(pooled.users["n"], pooled.params["n_w_pooled"] / 7)
    assert np.allclose(strong.users["n"], pooled.users["n"], rtol=1e-3)
    # shrinkage only pulls towards the pooled value
    dist_raw = np.abs(raw.users["n"] - pooled.users["n"])
    dist_mid = np.abs(TimeGeo().fit(city.dataset, progress=False).users["n"] - pooled.users["n"])
    assert (dist_mid <= dist_raw + 1e-12).all()
