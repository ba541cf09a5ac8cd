import numpy as np
import pandas as pd
import pytest

from mstdiff.data.dataset import PreparedDataset
from mstdiff.metrics.privacy import distance_to_closest, memorisation, mia_auc
from mstdiff.metrics.utility import (
    fit_markov,
    fit_mlp,
    fit_ridge,
    next_location_accuracy,
    next_traffic_mae,
    tstr,
)


def city(U, seed, N=80, T=48):
    """Users with a home and a work station, minutes of traffic that depend on the hour."""
    rng = np.random.default_rng(seed)
    st = pd.DataFrame({"station_id": [f"s{i}" for i in range(N)],
                       "lat": np.random.default_rng(0).uniform(31, 31.4, N),
                       "lon": np.random.default_rng(1).uniform(121, 121.5, N)})
    home, work = rng.integers(0, N // 2, U), rng.integers(N // 2, N, U)
    hour = np.arange(T) / 2
    day = (hour >= 9 + rng.integers(-1, 2, (U, 1))) & (hour < 18)
    loc = np.where(day, work[:, None], home[:, None])
    m = np.round(np.clip(rng.gamma(1.0, 4 + 8 * day), 0, 30)) * (rng.random((U, T)) < 0.5)
    samples = pd.DataFrame({"user": [f"u{seed}_{i}" for i in range(U)], "start": [""] * U})
    return PreparedDataset(m, loc, st, samples, {"bin_minutes": 30, "traffic_unit": "minutes"})


def test_distance_to_closest_and_auc_against_brute_force():
    rng = np.random.default_rng(0)
    ql, rl = rng.integers(0, 4, (7, 6)), rng.integers(0, 4, (9, 6))
    qm, rm = rng.random((7, 6)), rng.random((9, 6))
    want = [min((ql[i] != rl[j]).mean() + np.abs(qm[i] - rm[j]).mean() / 2.0 for j in range(9))
            for i in range(7)]
    np.testing.assert_allclose(distance_to_closest(ql, qm, rl, rm, 2.0), want, rtol=1e-5)
    a, b = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    pairs = [(x < y) + 0.5 * (x == y) for x in a for y in b]
    assert mia_auc(a, b) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_memorisation_flags_a_copying_generator_and_not_other_real_users():
    train, heldout, other = city(400, 1), city(150, 2), city(150, 3)
    rng = np.random.default_rng(0)
    copy = train.subset(np.sort(rng.choice(400, 150, replace=False)))
    res = memorisation(train, heldout, {"copy": copy, "other real users": other}, rng=rng)
    assert res["copy"]["flagged"] and res["copy"]["copy_share"] == 1.0
    assert res["copy"]["dcr_p5"] == 0.0 and res["copy"]["dcr_p5_ratio"] == 0.0
    assert res["copy"]["mia_auc"] > 0.6  # 150 of 400 members copied
    assert not res["other real users"]["flagged"]
    assert 0.7 < res["other real users"]["dcr_median_ratio"] < 1.3
    assert abs(res["other real users"]["mia_auc"] - 0.5) < 0.1
    assert not res["heldout"]["flagged"]


def test_markov_predictor_on_a_deterministic_cycle_and_tstr_ratios():
    loc = np.tile(np.arange(6), (10, 8))  # 0 1 2 3 4 5 0 1 ...
    mk = fit_markov(loc, 6)
    assert next_location_accuracy(mk, loc) == {"acc1": 1.0, "acc5": 1.0}
    reversed_model = fit_markov(loc[:, ::-1].copy(), 6)
    assert next_location_accuracy(reversed_model, loc)["acc1"] == 0.0
    train, test = city(150, 4), city(100, 5)
    res = tstr(train, test, {"itself": train, "other": city(150, 6)})
    assert res["itself"]["markov_acc1_ratio"] == 1.0 and res["itself"]["ridge_mae_ratio"] == 1.0
    assert 0.8 < res["other"]["markov_acc1_ratio"] < 1.2
    assert res["itself"]["mlp_mae_ratio"] == 1.0  # deterministic: the same fit twice


def test_ridge_next_slot_model_learns_a_linear_rule():
    rng = np.random.default_rng(7)
    m = np.zeros((200, 48))
    m[:, :3] = rng.random((200, 3)) * 10
    for t in range(3, 48):
        m[:, t] = 0.5 * m[:, t - 1] + 2.0
    coef = fit_ridge(m, ridge=1e-9)
    assert next_traffic_mae(coef, m) < 1e-3
    shuffled = rng.permuted(m, axis=1)
    assert next_traffic_mae(fit_ridge(shuffled), m) > 0.1
    # persistent traffic: the next slot repeats the last one 70 % of the time
    p = rng.gamma(1, 5, (300, 48)) * (rng.random((300, 48)) < 0.5)
    for t in range(1, 48):
        p[:, t] = np.where(rng.random(300) < 0.7, p[:, t - 1], p[:, t])
    constant = np.abs(p[:, 3:] - np.median(p[:, 3:])).mean()
    mlp = fit_mlp(p)
    assert mlp(p) < 0.7 * constant and next_traffic_mae(fit_ridge(p), p) < 0.8 * constant
    assert mlp(p) == fit_mlp(p)(p)  # deterministic
