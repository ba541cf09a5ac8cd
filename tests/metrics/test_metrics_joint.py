import numpy as np
import pandas as pd
import pytest

from mstdiff.metrics.joint import (
    class_hour_profile,
    joint_histogram,
    joint_jsd,
    joint_profile_rmse,
    level_edges,
    location_classes,
    traffic_levels,
)
from mstdiff.metrics.jsd import jsd
from mstdiff.metrics.traffic import traffic_volume_jsd


def stations(n, **cols):
    df = pd.DataFrame({"station_id": [f"s{i}" for i in range(n)], "lat": np.linspace(31, 31.1, n),
                       "lon": np.linspace(121, 121.1, n)})
    for k, v in cols.items():
        df[k] = v
    return df


def test_location_classes_place_type_rule_wins():
    st = stations(4, place_type=["home", "work", "home", None], poi_food=[1, 2, 3, 4])
    c = location_classes(st)
    assert c.rule == "place_type"
    assert [c.names[i] for i in c.codes] == ["home", "work", "home", "unknown"]


def test_location_classes_dominant_poi_with_none_class():
    st = stations(4, poi_food=[5, 0, 1, 0], poi_office=[1, 3, 1, 0], poi_park=[0, 0, 0, 0], name=list("abcd"))
    c = location_classes(st)
    assert c.rule == "poi"
    # station 2 ties food/office: first column wins; station 3 has no POI
    assert [c.names[i] for i in c.codes] == ["food", "office", "food", "none"]
    assert "park" not in c.names  # never dominant


def test_location_classes_popularity_tertiles_of_real_visits():
    st = stations(7).assign(lat=np.nan, lon=np.nan)  # no coordinates: density is unavailable
    visits = [1, 2, 3, 4, 5, 6, 0]  # station 6 never visited
    loc = np.repeat(np.arange(7), visits)[None, :]
    c = location_classes(st, loc)
    assert c.rule == "popularity"
    assert [c.names[i] for i in c.codes] == ["low", "low", "mid", "mid", "high", "high", "unvisited"]
    with pytest.raises(ValueError):
        location_classes(st)
    assert location_classes(stations(7)).rule == "density"  # coordinates: density comes first


def test_traffic_levels_zero_is_its_own_level():
    real = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    e = level_edges(real, 2)  # median of the positive values
    np.testing.assert_allclose(e, [2.5])
    np.testing.assert_array_equal(traffic_levels(np.array([0.0, 1e-9, 2.5, 100.0]), e), [0, 1, 2, 2])
    assert level_edges(np.zeros(5)).size == 0


def brute_joint_hist(m, loc, cls, edges):
    n_lev = len(edges) + 2
    h = np.zeros((cls.max() + 1, n_lev))
    for u in range(m.shape[0]):
        for t in range(m.shape[1]):
            lev = 0 if m[u, t] == 0 else 1 + sum(1 for e in edges if e <= m[u, t])
            h[cls[loc[u, t]], lev] += 1
    return h


def coupled_city(U=200, T=48, seed=0):
    """Stations 0-4 'home', 5-9 'work'; high traffic at work, little at home."""
    rng = np.random.default_rng(seed)
    cls = np.array([0] * 5 + [1] * 5)
    day = (np.arange(T) >= 18) & (np.arange(T) < 36)
    loc = np.where(day, rng.integers(5, 10, (U, 1)), rng.integers(0, 5, (U, 1)))
    idle = rng.random((U, T)) < 0.7
    m = np.where(cls[loc] == 1, rng.gamma(2.0, 5.0, (U, T)), rng.gamma(0.5, 1.0, (U, T)) * ~idle)
    return m, loc, cls


def test_joint_histogram_matches_brute_force():
    m, loc, cls = coupled_city(U=20, T=16)
    e = level_edges(m)
    np.testing.assert_array_equal(joint_histogram(m, loc, cls, 2, e), brute_joint_hist(m, loc, cls, e))


def test_joint_jsd_sees_coupling_that_marginals_miss():
    m, loc, cls = coupled_city()
    assert joint_jsd((m, loc), (m.copy(), loc.copy()), cls) == 0.0
    shuffled = np.random.default_rng(1).permutation(m.ravel()).reshape(m.shape)
    assert traffic_volume_jsd(m, shuffled) == 0.0  # same pooled traffic, same trajectories
    v = joint_jsd((m, loc), (shuffled, loc), cls)
    e = level_edges(m)
    assert v == pytest.approx(jsd(brute_joint_hist(m, loc, cls, e), brute_joint_hist(shuffled, loc, cls, e)))
    assert v > 0.1
    assert joint_profile_rmse((m, loc), (shuffled, loc), cls) > 1.0


def test_class_hour_profile_hand_made():
    cls = np.array([0, 1])
    loc = np.array([[0, 0, 1, 1], [1, 0, 1, 1]])
    m = np.array([[1.0, 3.0, 10.0, 20.0], [5.0, 7.0, 0.0, 4.0]])
    mean, count = class_hour_profile(m, loc, cls, bin_minutes=30)  # slots -> hours 0, 0, 1, 1
    assert mean.shape == (2, 24)
    np.testing.assert_allclose(mean[0, :2], [(1 + 3 + 7) / 3, np.nan])
    np.testing.assert_allclose(mean[1, :2], [5.0, (10 + 20 + 0 + 4) / 4])
    np.testing.assert_array_equal(count[:, :2], [[3, 0], [1, 4]])
    assert np.isnan(mean[:, 2:]).all()


def test_joint_profile_rmse_known_shift_and_hours():
    m, loc, cls = coupled_city(U=50, T=48)
    assert joint_profile_rmse((m, loc), (m, loc), cls) == 0.0
    assert joint_profile_rmse((m, loc), (m + 2.5, loc), cls) == pytest.approx(2.5)
    # 60-min bins: T = 24 slots are 24 different hours
    mean, _ = class_hour_profile(m[:, :24], loc[:, :24], cls, bin_minutes=60)
    assert np.isfinite(mean).sum() == 24


def test_joint_profile_rmse_weights_cells_by_their_slots():
    cls = np.array([0, 1])
    T = 2  # both slots in hour 0
    loc_r = np.array([[0, 0]] * 9 + [[1, 0]])  # class 0: 19 slots, class 1: 1 slot
    m_r = np.zeros((10, T))
    m_g = m_r.copy()
    m_g[9, 0] = 6.0  # the class-1 cell differs by 6, the class-0 cell by 0
    # weights: class 0: 19·19/38 = 9.5; class 1: 1·1/2 = 0.5 -> sqrt(0.5 · 36 / 10)
    v = joint_profile_rmse((m_r, loc_r), (m_g, loc_r), cls)
    assert v == pytest.approx(np.sqrt(0.5 * 36 / 10.0))


def test_location_classes_density_rule_uses_the_station_table_only():
    from mstdiff.errors import InputError

    km = 1 / 111.195  # degrees of latitude per km
    lat = [0, 10 * km, 20 * km, 30 * km,  # isolated: 1 station within 1 km
           50 * km, 50.3 * km, 60 * km, 60.3 * km,  # two pairs: 2 each
           80 * km, 80.2 * km, 80.4 * km, 80.6 * km]  # a cluster of 4
    st = pd.DataFrame({"station_id": [f"s{i}" for i in range(12)], "lat": lat, "lon": [121.0] * 12,
                       "poi_food": [1] * 12})
    c = location_classes(st, rule="density")
    assert c.rule == "density"
    assert [c.names[i] for i in c.codes] == ["sparse"] * 4 + ["medium"] * 4 + ["dense"] * 4
    assert location_classes(st).rule == "poi"  # density is never chosen automatically
    with pytest.raises(InputError, match="unknown location-class rule"):
        location_classes(st, rule="nope")
    with pytest.raises(InputError, match="place_type"):
        location_classes(st, rule="place_type")
