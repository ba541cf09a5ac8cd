import itertools
import math
from collections import Counter

import numpy as np
import pytest

from mstdiff.metrics.jsd import jsd
from mstdiff.metrics.trajectory import (
    EARTH_RADIUS_KM,
    distance_jsd,
    distinct_locations,
    distinctloc_jsd,
    duration_jsd,
    global_rank_profile,
    grank_jsd,
    haversine_km,
    irank_jsd,
    location_jsd,
    radius_jsd,
    radius_of_gyration,
    rank_profile,
    stay_durations,
    step_distances,
)

KM_PER_DEG = EARTH_RADIUS_KM * math.pi / 180  # 111.195 km


def test_haversine_known_distances():
    assert haversine_km(0, 0, 1, 0) == pytest.approx(KM_PER_DEG, rel=1e-12)  # 1° of meridian
    assert haversine_km(0, 0, 1, 0) == pytest.approx(111.19508, abs=1e-4)  # mean Earth radius
    assert haversine_km(0, 0, 0, 90) == pytest.approx(EARTH_RADIUS_KM * math.pi / 2, rel=1e-12)
    assert haversine_km(31.2304, 121.4737, 31.2304, 121.4737) == 0.0
    # Shanghai (People's Square) - Beijing (Tiananmen): about 1,067 km
    d = haversine_km(31.2304, 121.4737, 39.9042, 116.4074)
    assert d == pytest.approx(1067, rel=0.01)
    assert haversine_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(d, rel=1e-12)
    # at latitude 60°, 1° of longitude is about half as long as at the equator
    assert haversine_km(60, 0, 60, 1) == pytest.approx(KM_PER_DEG / 2, rel=1e-3)


def test_step_distances_hand_made():
    coords = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = step_distances(np.array([[0, 1, 1, 2]]), coords)
    np.testing.assert_allclose(d, [[KM_PER_DEG, 0.0, KM_PER_DEG]], rtol=1e-12)


def test_radius_of_gyration_hand_made():
    coords = np.array([[0.0, 0.0], [0.0, 0.02]])  # two stations on the equator, 0.02° apart
    r = radius_of_gyration(np.array([[0, 0, 1, 1], [1, 1, 1, 1]]), coords)
    # centre at lon 0.01: every slot is 0.01° of the equator away from it
    np.testing.assert_allclose(r, [0.01 * KM_PER_DEG, 0.0], rtol=1e-9)


def test_radius_of_gyration_brute_force():
    rng = np.random.default_rng(0)
    coords = np.column_stack([rng.uniform(31, 31.3, 20), rng.uniform(121, 121.5, 20)])
    loc = rng.integers(0, 20, (5, 12))
    got = radius_of_gyration(loc, coords)
    for u in range(5):
        pts = coords[loc[u]]
        c_lat, c_lon = pts[:, 0].mean(), pts[:, 1].mean()
        d2 = [haversine_km(la, lo, c_lat, c_lon) ** 2 for la, lo in pts]
        assert got[u] == pytest.approx(math.sqrt(sum(d2) / len(d2)), rel=1e-12)


def test_stay_durations_include_last_run_and_never_cross_samples():
    np.testing.assert_array_equal(stay_durations(np.array([[0, 0, 1, 1, 1, 2]])), [2, 3, 1])
    np.testing.assert_array_equal(stay_durations(np.array([[5, 5, 5]])), [3])
    np.testing.assert_array_equal(stay_durations(np.array([[0, 1, 1, 1]])), [1, 3])
    np.testing.assert_array_equal(stay_durations(np.array([[1, 1], [1, 1]])), [2, 2])


def test_per_sample_quantities_against_python_oracles():
    rng = np.random.default_rng(1)
    loc = rng.integers(0, 4, (50, 16)) * (rng.random((50, 16)) < 0.7)
    loc = np.where(rng.random((50, 16)) < 0.5, np.roll(loc, 1, axis=1), loc)  # more repeats
    runs = [len(list(g)) for row in loc for _, g in itertools.groupby(row.tolist())]
    np.testing.assert_array_equal(stay_durations(loc), runs)
    np.testing.assert_array_equal(distinct_locations(loc), [len(set(row)) for row in loc.tolist()])
    prof = np.zeros(16)
    for row in loc.tolist():
        counts = sorted(Counter(row).values(), reverse=True)
        prof[: len(counts)] += np.array(counts) / 16
    np.testing.assert_allclose(rank_profile(loc), prof / 50, atol=1e-12)


def test_rank_profile_and_distinct_hand_made():
    np.testing.assert_allclose(rank_profile(np.array([[0, 0, 0, 1]])), [0.75, 0.25, 0, 0])
    assert distinct_locations(np.array([[0, 1, 0, 2]]))[0] == 3
    assert rank_profile(np.random.default_rng(2).integers(0, 9, (30, 8))).sum() == pytest.approx(1.0)


def test_trajectory_jsds_identical_and_extreme():
    rng = np.random.default_rng(3)
    N, T = 30, 24
    coords = np.column_stack([rng.uniform(31, 31.3, N), rng.uniform(121, 121.5, N)])
    loc = np.repeat(rng.integers(0, N, (100, 6)), 4, axis=1)
    for f in (distinctloc_jsd, duration_jsd, irank_jsd):
        assert f(loc, loc.copy()) == 0.0
    for f in (distance_jsd, radius_jsd):
        assert f(loc, loc.copy(), coords) == 0.0
    assert grank_jsd(loc, loc.copy(), N) == 0.0
    assert location_jsd(loc, loc.copy(), N) == 0.0
    stay = np.repeat(rng.integers(0, N, (40, 1)), T, axis=1)  # one station all day
    move = np.tile(np.arange(T), (40, 1)) % N  # a new station every slot
    assert distance_jsd(stay, move, coords) == pytest.approx(1.0)
    assert radius_jsd(stay, move, coords) == pytest.approx(1.0)
    assert distinctloc_jsd(stay, move) == pytest.approx(1.0)
    assert duration_jsd(stay, move) == pytest.approx(1.0)
    # I-rank: all mass at rank 1 vs uniform over T ranks
    assert irank_jsd(stay, move) == pytest.approx(jsd(np.eye(T)[0], np.full(T, 1 / T)), abs=1e-12)


def test_grank_known_values():
    N = 10  # top 10 % = 1 station
    real = np.array([[0, 0, 0, 3]])  # shares (top station, others) = (3/4, 1/4)
    gen = np.array([[0, 4, 5, 6]])  # (1/4, 3/4)
    expected = 0.75 * math.log2(1.5) + 0.25 * math.log2(0.5)  # JSD of (¾,¼) vs (¼,¾)
    assert grank_jsd(real, gen, N) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.1887219, abs=1e-6)
    two, skewed = np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]])
    assert grank_jsd(two, skewed, 5) == pytest.approx(jsd([2, 2], [3, 1]))
    # each set is ranked by its own counts: relabelling the stations changes nothing
    relabelled = (real + 5) % N
    assert grank_jsd(real, relabelled, N) == 0.0
    assert location_jsd(real, relabelled, N) == pytest.approx(1.0)  # ... but the location metric sees it


def test_global_rank_profile_against_sorting_oracle():
    rng = np.random.default_rng(4)
    N = 40
    loc = rng.zipf(1.6, (30, 12)) % N
    counts = sorted(Counter(loc.ravel().tolist()).values(), reverse=True)
    head = (counts + [0] * 4)[:4]  # top 10 % of 40 stations
    expected = np.array(head + [loc.size - sum(head)]) / loc.size
    np.testing.assert_allclose(global_rank_profile(loc, N), expected, atol=1e-12)


def test_location_jsd_is_per_station():
    N = 6
    a = np.array([[0, 1, 2, 3]])
    assert location_jsd(a, a[:, ::-1].copy(), N) == 0.0
    expected = jsd([1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1])
    assert location_jsd(a, np.array([[0, 1, 4, 5]]), N) == pytest.approx(expected)


def test_top_count_is_robust_to_float_rounding():
    from mstdiff.metrics.trajectory import top_count

    assert [top_count(n) for n in (1, 5, 10, 30, 31, 2000, 3042)] == [1, 1, 1, 3, 4, 200, 305]


def test_radius_is_exactly_zero_for_one_station_samples():
    # issue 13: the float mean of 48 equal latitudes differs from the latitude by ~1e-15°
    coords = np.array([[31.237872, 121.470259], [31.246946, 121.513919]])
    a, b = np.zeros((5, 48), dtype=int), np.ones((5, 48), dtype=int)
    assert (radius_of_gyration(a, coords) == 0).all() and (radius_of_gyration(b, coords) == 0).all()
    assert radius_jsd(a, b, coords) == 0.0
    mixed = np.array([[0] * 47 + [1]])
    assert radius_of_gyration(mixed, coords)[0] > 0


def test_home_cells_hand_made():
    from mstdiff.metrics.trajectory import home_cells

    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    loc = np.array([[0, 0, 1, 1, 1], [2, 2, 1, 1, 0], [3, 3, 3, 1, 1]])
    # main stations 1, 1 (tie 1 vs 2 → smaller index), 3; one cut at 1.5 in lat and lon
    np.testing.assert_array_equal(home_cells(loc, coords, np.array([1.5]), np.array([1.5])), [0, 0, 3])


def _clustered_city(U, N, rng):
    """Each user at one of a few personal stations; station popularity heavy-tailed."""
    coords = np.column_stack([rng.uniform(31, 31.4, N), rng.uniform(121, 121.5, N)])
    pop = rng.pareto(1.2, N) + 0.1
    home = rng.choice(N, U, p=pop / pop.sum())
    other = rng.choice(N, U, p=pop / pop.sum())
    T = 48
    day = rng.random((U, T)) < np.where(np.arange(T) % 48 > 18, 0.5, 0.05)
    return np.where(day, other[:, None], home[:, None]), coords


def test_iid_visits_generator_does_not_beat_the_floor_on_home_cell_jsd():
    """issue 13: slots drawn i.i.d. from the training visits beat the real floor on the per-station
    visit JSD (location_jsd), not on home_cell_jsd."""
    from mstdiff.metrics.trajectory import home_cell_jsd

    rng = np.random.default_rng(0)
    N = 400
    loc, coords = _clustered_city(1200, N, rng)
    train, test = loc[:800], loc[800:]
    visits = np.bincount(train.ravel(), minlength=N) / train.size
    old_floor, old_iid, new_floor, new_iid = [], [], [], []
    for _ in range(5):
        perm = rng.permutation(400)
        a, b = test[perm[:200]], test[perm[200:]]
        iid = rng.choice(N, size=b.shape, p=visits)
        old_floor.append(location_jsd(a, b, N))
        old_iid.append(location_jsd(a, iid, N))
        new_floor.append(home_cell_jsd(a, b, coords))
        new_iid.append(home_cell_jsd(a, iid, coords))
    assert np.mean(old_iid) < np.mean(old_floor)  # the old metric is gamed ...
    assert np.mean(new_iid) > np.mean(new_floor) + np.std(new_floor)  # ... the new one is not
    assert home_cell_jsd(test, test.copy(), coords) == 0.0


def test_radius_bins_show_a_25_percent_error_at_n_400():
    """issue 13: one value per sample, so the JSD floor is ≈ bins / (4 n ln 2); with the default bins a
    25 % radius error sits above the floor (mean + sd) at n = 400, with 50 bins it is lost in it."""
    from mstdiff.metrics.jsd import histogram_jsd
    from mstdiff.metrics.trajectory import RADIUS_BINS

    rng = np.random.default_rng(1)

    def radii(n):  # Shanghai train split: 18 % stay at one station; log km mean 0.86, sd 1.26
        return np.where(rng.random(n) < 0.18, 0.0, rng.lognormal(0.86, 1.26, n))

    def gap(bins):  # (wrong - floor) / floor sd, the real side fixed as in the reference protocol
        out = []
        for _ in range(20):
            real = radii(400)
            floor = [histogram_jsd(real, radii(400), bins=bins, method="quantile", zero_bin=True)
                     for _ in range(30)]
            wrong = [histogram_jsd(real, 1.25 * radii(400), bins=bins, method="quantile", zero_bin=True)
                     for _ in range(30)]
            out.append((np.mean(wrong) - np.mean(floor)) / np.std(floor))
        return float(np.mean(out))

    assert RADIUS_BINS == 10
    g10, g50 = gap(RADIUS_BINS), gap(50)
    assert g10 > 0.9 and g50 < g10 - 0.3, (g10, g50)
