"""MoveSim-convention trajectory metrics (mstdiff.metrics.movesim) against slow references."""

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import entropy

from mstdiff.cli import cli
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.metrics import evaluate, get_metric, movesim, trajectory
from mstdiff.metrics.evaluate import MOVESIM_METRICS, metric_context

LN2 = math.log(2)


# --------------------------------------------------------------------------- slow references
def ref_jsd(p, q):
    """Natural-log JSD with scipy's entropy (normalises its arguments)."""
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2
    return 0.5 * entropy(p, m) + 0.5 * entropy(q, m)


def ref_hist(values, lo, hi, bins):
    """Edges lo + i·w below hi (as many as numpy.arange makes), bins [e_i, e_i+1), the last closed;
    values outside are dropped. Pure-Python loop."""
    w = (hi - lo) / bins
    edges = [lo + i * w for i in range(math.ceil((hi - lo) / w))]
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(counts)):
            last = i == len(counts) - 1
            if edges[i] <= v < edges[i + 1] or (last and v == edges[i + 1]):
                counts[i] += 1
                break
    return np.array(counts, float)


def ref_fixed_jsd(a, b, lo, hi, bins):
    return ref_jsd(ref_hist(a, lo, hi, bins), ref_hist(b, lo, hi, bins))


def ref_diameter(c):
    return max((c[i, 0] - c[j, 0]) ** 2 + (c[i, 1] - c[j, 1]) ** 2
               for i in range(len(c)) for j in range(len(c)))


def ref_steps(loc, c):
    return [(c[u[t], 0] - c[u[t + 1], 0]) ** 2 + (c[u[t], 1] - c[u[t + 1], 1]) ** 2
            for u in loc for t in range(len(u) - 1)]


def ref_radii(loc, c):
    out = []
    for u in loc:
        xs, ys = [c[s, 0] for s in u], [c[s, 1] for s in u]
        cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
        out.append(sum((x - cx) ** 2 + (y - cy) ** 2 for x, y in zip(xs, ys)) / len(xs))
    return out


def ref_durations(loc):
    out = []
    for u in loc:
        n = 1
        for t in range(1, len(u)):
            if u[t] == u[t - 1]:
                n += 1
            else:
                out.append(n)  # a run ends at a change; the run still open at the end is never added
                n = 1
    return out


def ref_daily(loc, S):
    return [len(set(u[d:d + S])) for u in loc for d in range(0, len(u), S)]


def ref_gtop(loc, k=100):
    c = Counter(int(x) for u in loc for x in u)
    total = sum(c.values())
    top = sorted((v / total for v in c.values()), reverse=True)[:k]
    return top + [0.0] * (k - len(top))


def ref_itop(loc, k=100):
    T = len(loc[0])
    acc = np.zeros(k)
    for u in loc:
        f = [n / T for _, n in Counter(int(x) for x in u).most_common(k)]
        acc += np.array(f + [0.0] * (k - len(f)))
    acc /= len(loc)
    return acc / acc.sum()


def random_pair(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(3, 40))
    T = int(rng.choice([6, 8, 12, 48]))
    coords = np.column_stack([rng.uniform(31.0, 31.4, N), rng.uniform(121.2, 121.7, N)])

    def one(U):  # sticky walks, so that stays of several slots occur
        loc = np.empty((U, T), dtype=np.int64)
        loc[:, 0] = rng.integers(0, N, U)
        for t in range(1, T):
            move = rng.random(U) < 0.3
            loc[:, t] = np.where(move, rng.integers(0, N, U), loc[:, t - 1])
        return loc

    return one(int(rng.integers(2, 15))), one(int(rng.integers(2, 15))), coords


SEEDS = range(12)


# --------------------------------------------------------------------------- conventions
def test_jsd_nats_matches_scipy_is_symmetric_and_at_most_ln2():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(7) * (rng.random(7) < 0.7), rng.random(7)
        assert movesim.jsd_nats(p, q) == pytest.approx(ref_jsd(p, q), abs=1e-12)
        assert movesim.jsd_nats(p, q) == pytest.approx(movesim.jsd_nats(q, p), abs=1e-15)
        assert 0.0 <= movesim.jsd_nats(p, q) <= LN2
    assert movesim.jsd_nats([1, 0], [0, 1]) == pytest.approx(LN2)
    assert movesim.jsd_nats([2, 3], [4, 6]) == pytest.approx(0.0, abs=1e-15)


def test_fixed_edges_are_arange_and_values_outside_are_dropped():
    e = movesim.fixed_edges(0.0, 1.0, 100)
    assert e.size == 100 and e[0] == 0.0 and e[-1] == pytest.approx(0.99)  # 99 bins of 0.01
    counts = movesim.fixed_histogram([0.0, 0.005, 0.5, 0.99, 0.995, 1.0, -0.1, np.nan], 0.0, 1.0, 100)
    assert counts.size == 99 and counts.sum() == 4  # 0.995, 1.0, -0.1 and NaN dropped
    assert counts[0] == 2 and counts[50] == 1 and counts[-1] == 1  # 0.99: the closed last edge
    assert movesim.fixed_histogram([3.0], 0.0, 247.3, 10_000).size == 9_999
    with pytest.raises(InputError):
        movesim.fixed_edges(0.0, 0.0, 10)


def test_squared_diameter_matches_all_pairs_and_survives_degenerate_tables():
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 60):
        c = rng.normal(size=(n, 2))
        assert movesim.squared_diameter(c) == pytest.approx(ref_diameter(c))
    line = np.column_stack([np.linspace(0, 1, 30), np.linspace(0, 2, 30)])  # collinear: no hull
    assert movesim.squared_diameter(line) == pytest.approx(5.0)
    assert movesim.squared_diameter(np.array([[1.0, 2.0], [np.nan, np.nan], [1.0, 5.0]])) == 9.0
    assert movesim.squared_diameter(np.ones((4, 2))) == 0.0


# --------------------------------------------------------------------------- metrics vs references
@pytest.mark.parametrize("seed", SEEDS)
def test_each_metric_matches_its_slow_reference(seed):
    real, gen, c = random_pair(seed)
    T = real.shape[1]
    D = ref_diameter(c)
    assert movesim.squared_diameter(c) == pytest.approx(D, rel=1e-12)

    def same(got, want):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)

    same(movesim.distance_jsd(real, gen, c),
         ref_fixed_jsd(ref_steps(real, c), ref_steps(gen, c), 0.0, D, 10_000))
    same(movesim.radius_jsd(real, gen, c),
         ref_fixed_jsd(ref_radii(real, c), ref_radii(gen, c), 0.0, D * D, 10_000))
    same(movesim.duration_jsd(real, gen),
         ref_fixed_jsd(np.array(ref_durations(real)) / T, np.array(ref_durations(gen)) / T, 0.0, 1.0, T))
    same(movesim.dailyloc_jsd(real, gen),
         ref_fixed_jsd(np.array(ref_daily(real, T)) / T, np.array(ref_daily(gen, T)) / T, 0.0, 1.0, T))
    same(movesim.grank_jsd(real, gen), ref_fixed_jsd(ref_gtop(real), ref_gtop(gen), 0.0, 1.0, 100))
    same(movesim.irank_jsd(real, gen), ref_fixed_jsd(ref_itop(real), ref_itop(gen), 0.0, 1.0, 100))
    # the quantities themselves
    np.testing.assert_allclose(movesim.squared_step_distances(real, c).ravel(), ref_steps(real, c))
    np.testing.assert_allclose(movesim.squared_radius_of_gyration(real, c), ref_radii(real, c), atol=1e-15)
    assert movesim.durations_without_last(real).tolist() == ref_durations(real)
    np.testing.assert_allclose(movesim.global_top_shares(real), ref_gtop(real))
    np.testing.assert_allclose(movesim.individual_rank_shares(real), ref_itop(real))


@pytest.mark.parametrize("seed", SEEDS)
def test_identical_sets_give_zero_and_every_value_is_symmetric_and_at_most_ln2(seed):
    real, gen, c = random_pair(seed)
    fns = {
        "distance": lambda a, b: movesim.distance_jsd(a, b, c),
        "radius": lambda a, b: movesim.radius_jsd(a, b, c),
        "duration": movesim.duration_jsd,
        "dailyloc": movesim.dailyloc_jsd,
        "grank": movesim.grank_jsd,
        "irank": movesim.irank_jsd,
    }
    for name, fn in fns.items():
        same = fn(real, real[::-1].copy())  # same samples, other order
        assert math.isnan(same) or same == 0.0, name
        ab, ba = fn(real, gen), fn(gen, real)
        assert (math.isnan(ab) and math.isnan(ba)) or ab == pytest.approx(ba, abs=1e-15), name
        assert math.isnan(ab) or 0.0 <= ab <= LN2 + 1e-15, name


def test_disjoint_histograms_give_ln2():
    c = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    stay = np.zeros((3, 4), dtype=np.int64)  # every step 0
    hop = np.tile([0, 2, 0, 2], (3, 1))  # every step 4 = D: beyond the last edge, dropped ...
    walk = np.tile([0, 1, 0, 1], (3, 1))  # ... so compare with steps of 1
    assert movesim.distance_jsd(stay, walk, c) == pytest.approx(LN2)
    assert math.isnan(movesim.distance_jsd(stay, hop, c))  # all of hop's values dropped


# --------------------------------------------------------------------------- the conventions themselves
def test_distance_uses_no_square_root():
    c = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert movesim.squared_step_distances([[0, 1, 1]], c).tolist() == [[25.0, 0.0]]  # not 5
    real, gen, coords = random_pair(1)
    for k in (0.5, 3.0):
        np.testing.assert_allclose(movesim.squared_step_distances(real, k * coords),
                                   k**2 * movesim.squared_step_distances(real, coords), rtol=1e-12)
        assert movesim.squared_diameter(k * coords) == pytest.approx(k**2 * movesim.squared_diameter(coords))
    # values and range both scale by k², so the JSD does not change
    assert movesim.distance_jsd(real, gen, 2 * coords) == pytest.approx(
        movesim.distance_jsd(real, gen, coords), abs=1e-12)


def test_radius_uses_no_square_root():
    c = np.array([[0.0, 0.0], [4.0, 0.0]])
    # half the slots at each end: centre (2, 0), squared distance 4 in every slot; sqrt would give 2
    assert movesim.squared_radius_of_gyration([[0, 1, 0, 1]], c).tolist() == [4.0]
    assert movesim.squared_radius_of_gyration([[1, 1, 1, 1]], c).tolist() == [0.0]
    real, _, coords = random_pair(2)
    np.testing.assert_allclose(movesim.squared_radius_of_gyration(real, 3 * coords),
                               9 * movesim.squared_radius_of_gyration(real, coords), rtol=1e-9, atol=1e-15)
    ours = trajectory.radius_of_gyration(real, coords)  # km, with the square root
    assert not np.allclose(ours, movesim.squared_radius_of_gyration(real, coords))


def test_duration_excludes_the_last_stay():
    assert movesim.durations_without_last([[0, 0, 1, 1, 1, 2]]).tolist() == [2, 3]
    assert movesim.durations_without_last([[5, 5, 5, 5]]).tolist() == []  # never moves: no stay
    assert movesim.durations_without_last([[0, 1], [2, 2]]).tolist() == [1]  # runs never span samples
    # two sets that differ only in their last stays: 0 for MoveSim, > 0 for ours (last run included)
    real = np.array([[0, 0, 1, 1, 1, 1]])  # stays 2, (4)
    gen = np.array([[0, 0, 1, 1, 2, 2]])  # stays 2, 2, (2)
    assert movesim.duration_jsd(real, gen) == 0.0
    assert trajectory.duration_jsd(real, gen) > 0.1
    # stays of d slots are binned as d / T in bins of 1/T
    a = np.array([[0, 1, 1, 2, 2, 2, 2, 2]])  # stays 1, 2, (5)
    b = np.array([[0, 0, 0, 1, 2, 2, 2, 2]])  # stays 3, 1, (4)
    assert movesim.duration_jsd(a, b) == pytest.approx(ref_jsd([1, 1, 0], [1, 0, 1]))


def test_dailyloc_counts_distinct_stations_per_day():
    T = 96  # two days of 30-min slots
    loc = np.zeros((1, T), dtype=np.int64)
    loc[0, 48:] = 1  # station 0 on day 1, station 1 on day 2
    assert movesim.daily_distinct_locations(loc, 48).tolist() == [1, 1]
    assert movesim.daily_distinct_locations(loc, None).tolist() == [2]  # the window as one day
    assert movesim.daily_distinct_locations(loc[:, 40:90], 48).tolist() == [2]  # 50 slots: one "day"
    assert movesim.day_length(40, 48) == 40 and movesim.day_length(96, 48) == 48
    other = np.zeros((1, T), dtype=np.int64)
    other[0, 10] = 1  # two stations on day 1, one on day 2
    assert movesim.dailyloc_jsd(loc, loc * 0, bin_minutes=30) == 0.0  # 1 per day either way
    assert movesim.dailyloc_jsd(loc, other, bin_minutes=30) == pytest.approx(ref_jsd([2, 0], [1, 1]))
    # the whole window: loc has 2 distinct stations, all-zero 1: different bins
    assert movesim.dailyloc_jsd(loc, loc * 0) == pytest.approx(LN2)


def test_grank_top100_with_fewer_than_100_locations():
    real = np.array([[0, 1, 0, 1], [1, 0, 1, 0]])  # 2 stations, share 0.5 each
    gen = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])  # 4 stations, share 0.25 each
    top = movesim.global_top_shares(real)
    assert top.size == 100 and top[:2].tolist() == [0.5, 0.5] and not top[2:].any()
    # 98 zeros + 2 at 0.5 against 96 zeros + 4 at 0.25, in bins of 0.01
    p, q = np.zeros(99), np.zeros(99)
    p[0], p[50], q[0], q[25] = 98, 2, 96, 4
    assert movesim.grank_jsd(real, gen) == pytest.approx(ref_jsd(p, q))
    # a set at one station: share 1.0 lies beyond the last edge 0.99 and is dropped (MoveSim's edges)
    one = np.zeros((2, 4), dtype=np.int64)
    assert movesim.fixed_histogram(movesim.global_top_shares(one), 0, 1, 100).sum() == 99


def test_irank_bins_the_mean_rank_frequencies():
    real = np.array([[0, 0, 0, 1]])  # own ranks: 0.75, 0.25
    gen = np.array([[2, 2, 3, 3]])  # 0.5, 0.5
    assert movesim.individual_rank_shares(real)[:3].tolist() == [0.75, 0.25, 0.0]
    p, q = np.zeros(99), np.zeros(99)
    p[0], p[75], p[25], q[0], q[50] = 98, 1, 1, 98, 2
    assert movesim.irank_jsd(real, gen) == pytest.approx(ref_jsd(p, q))
    assert movesim.irank_jsd(real, np.array([[5, 5, 5, 6]])) == 0.0  # which stations does not matter


def test_docstrings_say_how_each_differs_from_ours():
    for fn in (movesim.distance_jsd, movesim.radius_jsd, movesim.duration_jsd, movesim.dailyloc_jsd,
               movesim.grank_jsd, movesim.irank_jsd):
        doc = fn.__doc__ or ""
        assert "nats" in doc and "Ours" in doc and "Bins" in doc, fn.__name__


# --------------------------------------------------------------------------- evaluate and the CLI
def tiny_city(U, seed, N=30, T=48):
    rng = np.random.default_rng(seed)
    st = pd.DataFrame({"station_id": [f"s{i}" for i in range(N)],
                       "lat": np.random.default_rng(7).uniform(31.0, 31.4, N),
                       "lon": np.random.default_rng(8).uniform(121.2, 121.7, N)})
    home, work = rng.integers(0, N // 2, U), rng.integers(N // 2, N, U)
    hour = np.arange(T) * 0.5
    day = (hour >= 9 + rng.normal(0, 1, (U, 1))) & (hour < 17 + rng.normal(0, 1, (U, 1)))
    loc = np.where(day, work[:, None], home[:, None])
    loc = np.where(rng.random((U, T)) < 0.05, rng.integers(0, N, (U, T)), loc)
    traffic = rng.gamma(0.8, 3.0, (U, T)) * (rng.random((U, T)) < 0.5)
    samples = pd.DataFrame({"user": [f"u{seed}_{i}" for i in range(U)], "start": ["2014-06-14T00:00:00"] * U})
    return PreparedDataset(traffic, loc.astype(np.int64), st, samples,
                           {"source": f"tiny{seed}", "bin_minutes": 30, "traffic_unit": "minutes"})


def test_registry_replaces_the_trajectory_group_and_keeps_the_others():
    names = [m.name for m in MOVESIM_METRICS]
    assert names == ["traffic_volume_jsd", "traffic_diff_jsd", "traffic_periodic_rmse",
                     "movesim_distance_jsd", "movesim_radius_jsd", "movesim_duration_jsd",
                     "movesim_dailyloc_jsd", "movesim_grank_jsd", "movesim_irank_jsd",
                     "joint_jsd", "joint_profile_rmse"]
    assert get_metric("movesim_radius_jsd").unit == "nats"
    real = tiny_city(40, 0)
    ctx = metric_context(real)  # max_distance None: taken from the coordinates
    for m in MOVESIM_METRICS:
        if m.name.startswith("movesim_"):
            assert m.compute(real, real.subset(np.arange(40)), ctx) == 0.0, m.name


def test_evaluate_movesim_floor_draws_and_report(tmp_path):
    real, gen = tiny_city(60, 0), tiny_city(30, 1)
    res = evaluate(real, {"g": gen}, tmp_path / "r", draws=2, plots=False, conventions="movesim")
    assert res.config["conventions"] == "movesim"
    assert res.config["movesim_max_distance"] == pytest.approx(movesim.squared_diameter(real.coords))
    assert "distance_jsd" not in res.rows["g"] and "home_cell_jsd" not in res.rows["g"]
    for name in ("g", "floor"):
        assert len(res.draws[name]["movesim_dailyloc_jsd"]) == 2
    for k, v in res.floor_rows["floor"].items():
        if k.startswith("movesim_"):
            assert 0 <= v <= LN2, k
    info = json.loads((tmp_path / "r" / "metrics.json").read_text())["metric_info"]
    assert info["movesim_distance_jsd"]["unit"] == "nats" and info["traffic_volume_jsd"]["unit"] == "bits"
    md = (tmp_path / "r" / "metrics.md").read_text()
    assert "Conventions: **movesim**" in md and "movesim_grank_jsd ↓ [nats]" in md and "[nats]:" in md
    assert "MoveSim conventions" in md  # the note with the bins and D
    fixed = evaluate(real, {"g": gen}, None, draws=1, plots=False, conventions="movesim",
                     movesim_max_distance=247.3)
    assert fixed.config["movesim_max_distance"] == 247.3
    default = evaluate(real, {"g": gen}, None, draws=1, plots=False)
    assert default.config["conventions"] == "mstdiff" and "movesim_distance_jsd" not in default.rows["g"]
    assert "Conventions: mstdiff" in default.to_markdown()
    with pytest.raises(InputError, match="conventions"):
        evaluate(real, {"g": gen}, None, conventions="geolife")
    with pytest.raises(InputError, match="movesim_max_distance"):
        evaluate(real, {"g": gen}, None, conventions="movesim", movesim_max_distance=0.0)


def test_cli_conventions_flag_end_to_end(tmp_path):
    tiny_city(60, 0).save(tmp_path / "real")
    tiny_city(30, 1).save(tmp_path / "gen")
    r = CliRunner()
    res = r.invoke(cli, ["evaluate", "--real", str(tmp_path / "real"), "--generated", f"g={tmp_path / 'gen'}",
                         "--out", str(tmp_path / "e"), "--no-plots", "--draws", "2",
                         "--conventions", "movesim"])
    assert res.exit_code == 0, res.output
    assert "movesim_distance_jsd" in res.output and "Conventions: **movesim**" in res.output
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert data["config"]["conventions"] == "movesim"
    assert set(data["metrics"]["g"]) >= {"movesim_irank_jsd", "traffic_volume_jsd", "joint_jsd"}
    assert "floor" in data["floor"]
    bad = r.invoke(cli, ["evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"),
                         "--out", str(tmp_path / "e2"), "--conventions", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output
