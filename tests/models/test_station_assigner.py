"""The station assigner of ``model.pattern`` (mstdiff.models.station_assigner)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from test_day_pattern import patterns_oracle

from mstdiff.errors import InputError
from mstdiff.models.day_pattern import ROLE_EDGES, DayPatternConfig, day_patterns, label_roles
from mstdiff.models.station_assigner import StationAssigner, fit_gravity_profile, gravity_edges


def _days(seed=0, U=200, T=12, N=25):
    """Random days of stays: each day a few places, each held for a few slots."""
    rng = np.random.default_rng(seed)
    out = np.empty((U, T), dtype=np.int64)
    for u in range(U):
        t, here = 0, int(rng.integers(N))
        while t < T:
            d = int(rng.integers(1, 5))
            out[u, t:t + d] = here
            t += d
            here = int(rng.integers(N)) if rng.random() < 0.7 else int(out[u, 0])
    return out


def _coords(N, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([31.0 + rng.random(N) * 0.2, 121.0 + rng.random(N) * 0.2], axis=1)


def test_assigned_stations_realise_the_pattern():
    loc = _days()
    a = StationAssigner.fit(loc, 25, DayPatternConfig(enabled=True), coords=_coords(25))
    z = day_patterns(_days(seed=1, U=60))
    s = a.assign(z, np.random.default_rng(0))
    assert s.dtype == np.int32 and s.min() >= 0 and s.max() < 25
    np.testing.assert_array_equal(day_patterns(s), z)  # distinct labels get distinct stations
    np.testing.assert_array_equal(s, a.assign(z, np.random.default_rng(0)))  # same seed, same draw
    assert not np.array_equal(s, a.assign(z, np.random.default_rng(1)))


def _dense_oracle(a: StationAssigner, loc, i, t, role, banned, lam, floor, coords, k):
    """The module docstring's formula with dense vectors over all stations."""
    N, T = a.N, loc.shape[1]
    z = patterns_oracle(loc)
    Ct, C = np.zeros(N), np.zeros(N)
    for u in range(loc.shape[0]):
        for s in range(1, T):
            if z[u, s] > z[u, :s].max() and loc[u, s - 1] == i:
                C[loc[u, s]] += 1
                if s == t:
                    Ct[loc[u, s]] += 1
    f = np.zeros(N)
    for u in range(loc.shape[0]):
        for s in range(1, T):
            if z[u, s] > z[u, :s].max():
                f[loc[u, s]] += 1
    scale = np.cos(np.deg2rad(np.median(coords[:, 0])))
    xy = np.stack([coords[:, 0] * 111.2, coords[:, 1] * 111.2 * scale], 1)
    near = np.argsort(np.hypot(*(xy - xy[i]).T), kind="stable")[:k]
    K = np.zeros(N)
    K[near] = f[near] + floor * f.mean()
    for v in (Ct, C, K):
        v[banned] = 0
    K = K / K.sum()
    q = (C + lam * K) / (C.sum() + lam)
    p = (Ct + lam * q) / (Ct.sum() + lam) * a.role_weight[:, role]
    return p


@pytest.mark.parametrize("t", [1, 4, 9])
def test_candidates_equal_the_dense_formula(t):
    loc, coords = _days(seed=2), _coords(25, seed=2)
    cfg = DayPatternConfig(enabled=True, move_smoothing=0.7, neighbours=6, floor=0.1)
    a = StationAssigner.fit(loc, 25, cfg, coords=coords)
    rng = np.random.default_rng(t)
    for _ in range(5):
        i, role = int(rng.integers(25)), int(rng.integers(len(ROLE_EDGES) * 2))
        banned = rng.choice(25, 3, replace=False)
        banned = banned[banned != i]
        d, p = a.candidates(i, t, role, np.append(banned, i))
        got = np.bincount(d, weights=p, minlength=25)
        want = _dense_oracle(a, loc, i, t, role, np.append(banned, i), 0.7, 0.1, coords, 6)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_role_weights_average_to_one_over_the_roles():
    loc = _days(seed=3)
    a = StationAssigner.fit(loc, 25, DayPatternConfig(enabled=True, role_smoothing=0.5), coords=_coords(25))
    z = day_patterns(loc)
    r = label_roles(z)
    share = np.bincount(r[r >= 0], minlength=a.role_weight.shape[1]) / (r >= 0).sum()
    # Σ_r P(r) ρ_j(r) = 1 for every station: ρ reweights the roles, it does not favour a station
    np.testing.assert_allclose(a.role_weight @ share, 1.0, rtol=1e-9)


def test_a_deterministic_route_is_reproduced_in_the_limit_of_no_smoothing():
    T = 6
    loc = np.tile(np.array([3, 3, 7, 7, 1, 1]), (50, 1))
    cfg = DayPatternConfig(enabled=True, move_smoothing=1e-9, role_smoothing=1e-9)
    a = StationAssigner.fit(loc, 10, cfg, coords=_coords(10))
    s = a.assign(day_patterns(loc[:20]), np.random.default_rng(0))
    np.testing.assert_array_equal(s, loc[:20])
    assert a.T == T


def test_the_state_round_trips_and_holds_only_tensors():
    loc = _days(seed=4)
    cfg = DayPatternConfig(enabled=True)
    a = StationAssigner.fit(loc, 25, cfg, coords=_coords(25))
    state = a.to_state()
    assert all(isinstance(v, torch.Tensor | int) for v in state.values())
    b = StationAssigner.from_state(state, cfg)
    z = day_patterns(_days(seed=5, U=30))
    np.testing.assert_array_equal(a.assign(z, np.random.default_rng(3)),
                                  b.assign(z, np.random.default_rng(3)))
    with pytest.raises(InputError, match="lacks"):
        StationAssigner.from_state({k: v for k, v in state.items() if k != "pi"}, cfg)


def test_without_coordinates_the_kernel_is_the_graph_neighbourhood():
    loc = _days(seed=6)
    N = 25
    rows = np.repeat(np.arange(N), 2)
    cols = np.stack([(np.arange(N) + 1) % N, (np.arange(N) - 1) % N], 1).ravel()
    g = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(N, N))
    a = StationAssigner.fit(loc, N, DayPatternConfig(enabled=True), graph=g)
    assert sorted(a._kernel(5).tolist()) == [4, 6]
    z = day_patterns(_days(seed=7, U=20))
    np.testing.assert_array_equal(day_patterns(a.assign(z, np.random.default_rng(0))), z)
    with pytest.raises(InputError, match="no coordinates"):
        StationAssigner.fit(loc, N, DayPatternConfig(enabled=True))


def test_a_pattern_with_more_places_than_stations_still_gets_stations():
    a = StationAssigner.fit(_days(N=5, T=12), 5, DayPatternConfig(enabled=True), coords=_coords(5))
    z = np.arange(12)[None, :]  # twelve places, five stations
    s = a.assign(z, np.random.default_rng(0))
    assert s.min() >= 0 and s.max() < 5 and len(set(s[0, :5].tolist())) == 5


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError, match="outside"):
        StationAssigner.fit(np.array([[0, 30]]), 25, DayPatternConfig(enabled=True), coords=_coords(25))
    a = StationAssigner.fit(_days(), 25, DayPatternConfig(enabled=True), coords=_coords(25))
    with pytest.raises(InputError, match="T = 5"):
        a.assign(np.zeros((2, 5), dtype=np.int64), np.random.default_rng(0))
    with pytest.raises(InputError, match="below T"):
        DayPatternConfig(enabled=True, tokens="labels", labels=8).validate_for(12)


# ----------------------------------------------------------------------------- kernel "gravity"


def _gravity_oracle(a: StationAssigner, loc, i, t, role, banned, lam, floor, coords):
    """The module docstring's formula, dense, with K_i(j) ∝ (f_j + ε mean f) h_r(bin(d_ij))."""
    N, T = a.N, loc.shape[1]
    z = patterns_oracle(loc)
    Ct, C, f = np.zeros(N), np.zeros(N), np.zeros(N)
    for u in range(loc.shape[0]):
        for s in range(1, T):
            if z[u, s] > z[u, :s].max():
                f[loc[u, s]] += 1
                if loc[u, s - 1] == i:
                    C[loc[u, s]] += 1
                    Ct[loc[u, s]] += s == t
    scale = np.cos(np.deg2rad(np.median(coords[:, 0])))
    xy = np.stack([coords[:, 0] * 111.2, coords[:, 1] * 111.2 * scale], 1)
    K = np.zeros(N)
    for j in range(N):
        d = float(np.hypot(*(xy[j] - xy[i])))
        b = max(k for k, e in enumerate(a.state["gravity_edges"]) if d >= e)
        K[j] = (f[j] + floor * f.mean()) * a.gravity_h[role, b]
    for v in (Ct, C, K):
        v[banned] = 0
    K = K / K.sum()
    q = (C + lam * K) / (C.sum() + lam)
    return (Ct + lam * q) / (Ct.sum() + lam) * a.role_weight[:, role]


@pytest.mark.parametrize("t", [1, 5])
def test_gravity_candidates_equal_the_dense_formula(t):
    loc, coords = _days(seed=2), _coords(25, seed=2)
    cfg = DayPatternConfig(enabled=True, kernel="gravity", move_smoothing=0.7, floor=0.1)
    a = StationAssigner.fit(loc, 25, cfg, coords=coords)
    assert a.gravity_h.shape == (a.role_weight.shape[1], a.state["gravity_edges"].size)
    rng = np.random.default_rng(t)
    for _ in range(5):
        i, role = int(rng.integers(25)), int(rng.integers(len(ROLE_EDGES) * 2))
        banned = rng.choice(25, 3, replace=False)
        banned = np.append(banned[banned != i], i)
        d, p = a.candidates(i, t, role, banned)
        got = np.bincount(d, weights=p, minlength=25)
        np.testing.assert_allclose(got, _gravity_oracle(a, loc, i, t, role, banned, 0.7, 0.1, coords),
                                   rtol=1e-9, atol=1e-12)
        if a.role_weight[:, role].any():  # a role the training days hold: every other station can be drawn
            assert (got[np.setdiff1d(np.arange(25), banned)] > 0).all()


def test_the_gravity_profile_gives_the_moves_their_lengths():
    rng = np.random.default_rng(0)
    N, M, R = 60, 300, 3
    xy = rng.random((N, 2)) * 30.0
    weight = rng.random((N, R)) + 0.1
    src = rng.integers(N, size=M)
    dst = (src + rng.integers(1, N, size=M)) % N
    role = rng.integers(R, size=M)
    share = rng.random(M) + 0.5
    edges = gravity_edges(xy)
    h = fit_gravity_profile(xy, weight, src, dst, role, share, edges, iterations=300)
    B = edges.size

    def bin_of(d):
        return np.searchsorted(edges, d, side="right") - 1

    model, target = np.zeros(B), np.zeros(B)
    for k in range(M):  # brute force: each move's law over the other stations, by bins
        d = np.hypot(*(xy - xy[src[k]]).T)
        p = weight[:, role[k]] * h[bin_of(d)]
        p[src[k]] = 0
        model += share[k] * np.bincount(bin_of(d), weights=p / p.sum(), minlength=B)
        target[bin_of(np.hypot(*(xy[dst[k]] - xy[src[k]])))] += share[k]
    model, target = model / share.sum(), target / share.sum()
    assert 0.5 * np.abs(model - target).sum() < 0.01  # total variation (target smoothed by 1e-3)
    flat = np.ones(B)  # without the profile, the lengths are off
    base = np.zeros(B)
    for k in range(M):
        d = np.hypot(*(xy - xy[src[k]]).T)
        p = weight[:, role[k]] * flat[bin_of(d)]
        p[src[k]] = 0
        base += share[k] * np.bincount(bin_of(d), weights=p / p.sum(), minlength=B)
    assert 0.5 * np.abs(base / share.sum() - target).sum() > 0.1


def test_gravity_moves_as_far_as_the_training_moves_where_nearest_stays_close():
    """Training days move 8–10 km at every new place; with the back-off dominant (large λ) the
    gravity kernel draws moves of that length, the nearest-neighbours kernel short ones."""
    rng = np.random.default_rng(1)
    g = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2).astype(float)
    coords = np.stack([31.0 + g[:, 0] * 0.009, 121.0 + g[:, 1] * 0.0105], 1)  # ≈ 1 km cells
    N, T = len(g), 8
    km = np.hypot(*(g[:, None] - g[None]).transpose(2, 0, 1))
    days = np.empty((300, T), dtype=np.int64)
    for u in range(300):
        here = int(rng.integers(N))
        for t in range(0, T, 2):
            days[u, t:t + 2] = here
            far = np.flatnonzero((km[here] >= 8) & (km[here] <= 10) & ~np.isin(np.arange(N), days[u, :t + 2]))
            here = int(rng.choice(far))
    z = day_patterns(days[:150])
    medians = {}
    for kernel in ("gravity", "nearest"):
        cfg = DayPatternConfig(enabled=True, kernel=kernel, move_smoothing=1e4, neighbours=8)
        s = StationAssigner.fit(days, N, cfg, coords=coords).assign(z, np.random.default_rng(0))
        step = km[s[:, 1:], s[:, :-1]]
        medians[kernel] = float(np.median(step[step > 0]))
    assert 7.0 <= medians["gravity"] <= 11.0
    assert medians["nearest"] < 3.0


def test_gravity_needs_coordinates_and_its_fitted_state():
    loc = _days(seed=8)
    N = 25
    g = sp.csr_matrix((np.ones(N), (np.arange(N), (np.arange(N) + 1) % N)), shape=(N, N))
    with pytest.raises(InputError, match="coordinates"):
        StationAssigner.fit(loc, N, DayPatternConfig(enabled=True, kernel="gravity"), graph=g)
    nearest = StationAssigner.fit(loc, N, DayPatternConfig(enabled=True), coords=_coords(N))
    with pytest.raises(InputError, match="gravity_h"):  # a model fitted without it
        StationAssigner.from_state(nearest.to_state(), DayPatternConfig(enabled=True, kernel="gravity"))
    cfg = DayPatternConfig(enabled=True, kernel="gravity")
    a = StationAssigner.fit(loc, N, cfg, coords=_coords(N))
    b = StationAssigner.from_state(a.to_state(), cfg)
    z = day_patterns(_days(seed=9, U=30))
    np.testing.assert_array_equal(a.assign(z, np.random.default_rng(2)),
                                  b.assign(z, np.random.default_rng(2)))
    again = StationAssigner.fit(loc, N, cfg, coords=_coords(N))  # the fit is deterministic
    np.testing.assert_array_equal(a.gravity_h, again.gravity_h)
