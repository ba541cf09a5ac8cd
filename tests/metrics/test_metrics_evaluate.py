import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.metrics import (
    METRICS,
    compute_metrics,
    evaluate,
    evaluate_dirs,
    get_metric,
    location_classes,
    metric_context,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def station_table(N, rng, poi=True):
    df = pd.DataFrame({"station_id": [f"s{i}" for i in range(N)],
                       "lat": rng.uniform(31.0, 31.4, N), "lon": rng.uniform(121.2, 121.7, N)})
    if poi:
        kind = rng.integers(0, 3, N)
        for j, name in enumerate(["residential", "office", "leisure"]):
            df[f"poi_{name}"] = rng.poisson(1, N) + 5 * (kind == j)
    return df


def routine_city(U, N=60, T=48, seed=0, stations=None):
    """Hand-made mobility: home at night, work by day, some exploration; traffic by place and hour."""
    rng = np.random.default_rng(seed)
    st = stations if stations is not None else station_table(N, np.random.default_rng(1234))
    kind = st[["poi_residential", "poi_office", "poi_leisure"]].to_numpy().argmax(axis=1)
    homes, works, leisure = (np.flatnonzero(kind == j) for j in range(3))
    home = rng.choice(homes, U)
    work = rng.choice(works, U)
    hour = np.arange(T) * 0.5
    day = (hour >= 8.5 + rng.normal(0, 1, (U, 1))) & (hour < 17.5 + rng.normal(0, 1, (U, 1)))
    loc = np.where(day, work[:, None], home[:, None])
    explore = rng.random((U, T)) < 0.08
    loc = np.where(explore, rng.choice(leisure, (U, T)), loc)
    rate = np.where(kind[loc] == 1, 6.0, 2.0) * (0.3 + np.sin(np.pi * hour / 24) ** 2)
    traffic = rng.gamma(0.8, rate / 0.8) * (rng.random((U, T)) < 0.45)
    samples = pd.DataFrame({"user": [f"u{i}" for i in range(U)], "start": ["2014-06-14T00:00:00"] * U})
    return PreparedDataset(traffic, loc, st, samples, {"source": f"city{seed}", "bin_minutes": 30,
                                                       "traffic_unit": "minutes"})


def noise_set(real, U, seed):
    rng = np.random.default_rng(seed)
    traffic = rng.exponential(3.0, (U, real.T))
    loc = rng.integers(0, real.n_stations, (U, real.T))
    return real.with_series(traffic, loc, source="noise")


def test_registry_names_and_directions():
    names = [m.name for m in METRICS]
    assert names == ["traffic_volume_jsd", "traffic_diff_jsd", "traffic_periodic_rmse", "distance_jsd",
                     "radius_jsd", "distinctloc_jsd", "duration_jsd", "grank_jsd", "irank_jsd",
                     "home_cell_jsd", "joint_jsd", "joint_profile_rmse"]
    assert all(m.lower_is_better for m in METRICS)
    assert all(m.description for m in METRICS)
    assert get_metric("radius_jsd").needs == ("locations", "coords")
    with pytest.raises(KeyError):
        get_metric("nope")


def test_every_metric_is_zero_on_identical_sets_and_positive_on_noise():
    real = routine_city(300)
    ctx = metric_context(real)
    same = compute_metrics(real, real.subset(np.arange(300)), ctx)
    assert all(v == 0.0 for v in same.values()), same
    bad = compute_metrics(real, noise_set(real, 300, 1), ctx)
    assert all(v > 0.01 for v in bad.values()), bad


def test_floor_of_two_halves_is_near_zero_and_below_a_bad_generator(tmp_path):
    real = routine_city(1200, seed=0)
    good = routine_city(600, seed=7, stations=real.stations)  # another draw of the same process
    res = evaluate(real, {"good": good, "noise": noise_set(real, 600, 2)}, None, seed=0)
    floor = res.floor_rows["floor"]
    assert res.sizes["floor"] == {"n": 600, "draws": 5, "kind": "user-disjoint halves"}
    assert all(len(v) == 5 for v in res.draws["floor"].values())
    for name, v in floor.items():
        if name.endswith("_jsd"):
            assert v < 0.05, (name, v)
    assert floor["traffic_periodic_rmse"] < 0.02
    for name in floor:
        assert res.rows["noise"][name] > 2 * floor[name] + 1e-3, name
    # a fresh draw of the same process scores at about the floor
    for name in floor:
        if name.endswith("_jsd"):
            assert res.rows["good"][name] < floor[name] + 0.03, name
    assert res.floor_of == {"good": "floor", "noise": "floor"}


def test_evaluate_writes_json_markdown_and_plots(tmp_path):
    real = routine_city(300)
    gen = {"noise": noise_set(real, 100, 3), "other": routine_city(100, seed=5, stations=real.stations)}
    out = tmp_path / "report"
    res = evaluate(real, gen, out, seed=1)
    assert res.out == out
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "plots"]
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["class_profiles.png", "distributions.png", "series.png", "trajectories.png"]
    for p in (out / "plots").iterdir():
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["metrics"]) == {"noise", "other"}
    assert set(data["metrics"]["noise"]) == {m.name for m in METRICS}
    assert set(data["floor"]) == {"floor"}
    assert data["sizes"]["real"] == 300 and data["sizes"]["noise"]["n"] == 100
    assert data["sizes"]["noise"]["generated_total"] == 100
    assert set(data["ratio_to_floor"]["noise"]) == {m.name for m in METRICS}
    assert data["metric_info"]["joint_profile_rmse"]["unit"] == "minutes"
    assert data["metric_info"]["grank_jsd"]["lower_is_better"] is True
    assert data["location_classes"]["rule"] == "poi"
    assert data["config"]["seed"] == 1 and "mstdiff_version" in data["run_meta"]
    md = (out / "metrics.md").read_text()
    assert md == res.to_markdown()
    assert md.startswith("> **WARNING") and "noise:" in md.split("\n\n")[0]  # noise is out of range
    lines = md.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("| set |")):]
    assert lines[0].startswith("| set | n (real / gen) | traffic_volume_jsd ↓ [bits]")
    assert "joint_profile_rmse ↓ [minutes]" in lines[0] and "traffic_periodic_rmse ↓ [share]" in lines[0]
    assert lines[2].startswith("| noise | 100 / 100 |") and lines[3].startswith("| other | 100 / 100 |")
    assert lines[4].startswith("| **floor** | 100 / 100 |") and " ± " in lines[4]
    # the realistic set wins every trajectory column; the bold marks it
    other_cells = lines[3].split("|")[3:-1]
    assert sum(c.strip().startswith("**") for c in other_cells) >= 8
    assert "†" not in md  # 300 >= 2 × 100: disjoint random subsets, no footnote
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp dirs


def test_small_real_set_subsamples_every_row_to_the_half_size():
    real = routine_city(150)
    res = evaluate(real, {"g": noise_set(real, 100, 4)}, None)
    assert res.sizes["floor"]["n"] == 75 and res.sizes["g"]["n"] == 75
    assert res.sizes["g"]["generated_total"] == 100
    md = res.to_markdown()
    assert "| **floor** | 75 / 75 |" in md and "subsampled to 75" in md and "| g | 75 / 75 |" in md


def test_a_fresh_draw_of_the_real_process_is_not_below_the_floor():
    real = routine_city(500)
    fresh = routine_city(250, seed=11, stations=real.stations)
    r = evaluate(real, {"fresh": fresh}, None, seed=4)
    wins = sum(r.rows["fresh"][k] < v for k, v in r.floor_rows["floor"].items())
    assert wins < len(r.floor_rows["floor"])
    ratio = r.ratio()["fresh"]
    want = r.rows["fresh"]["radius_jsd"] / r.floor_rows["floor"]["radius_jsd"]
    assert ratio["radius_jsd"] == pytest.approx(want)


def test_one_floor_for_sets_of_different_sizes():
    real = routine_city(400)
    res = evaluate(real, {"a": noise_set(real, 50, 1), "b": noise_set(real, 120, 2)}, None, plots=False)
    assert set(res.floor_rows) == {"floor"}
    assert res.floor_of == {"a": "floor", "b": "floor"}
    assert res.sizes["a"]["n"] == res.sizes["b"]["n"] == res.sizes["floor"]["n"] == 50
    assert res.table().loc["floor", "n"] == 50


def test_user_halves_and_user_subsets_never_split_a_user():
    from mstdiff.metrics.evaluate import user_halves, user_subset

    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 300).astype(str)
    for _ in range(5):
        a, b = user_halves(users, rng)
        assert not set(users[a]) & set(users[b])
        assert sorted(np.r_[a, b].tolist()) == list(range(300))
        assert abs(a.size - 150) < 40
        sub = user_subset(users, 100, rng)
        assert sub.size == 100 and len(set(sub.tolist())) == 100
        # all users but the last taken are complete
        taken, counts = np.unique(users[sub], return_counts=True)
        full = {u: int((users == u).sum()) for u in taken}
        assert sum(c < full[u] for u, c in zip(taken, counts)) <= 1


def test_floor_is_user_disjoint_two_days_of_one_user_stay_on_one_side():
    real = routine_city(200)
    # every user has two identical days: a sample split would put copies on both sides (floor 0)
    doubled = PreparedDataset(np.r_[real.traffic, real.traffic], np.r_[real.locations, real.locations],
                              real.stations, pd.concat([real.samples, real.samples], ignore_index=True),
                              real.meta)
    res = evaluate(doubled, {"g": routine_city(200, seed=3, stations=real.stations)}, None, plots=False)
    assert res.floor_rows["floor"]["duration_jsd"] > 0.001


def test_reference_set_floor_uses_the_whole_real_set():
    real = routine_city(120, seed=0)
    reference = routine_city(600, seed=1, stations=real.stations)
    reference.samples["user"] = [f"r{i}" for i in range(600)]
    gen = {"fresh": routine_city(120, seed=2, stations=real.stations), "noise": noise_set(real, 120, 3)}
    res = evaluate(real, gen, None, reference=reference, plots=False)
    assert res.sizes["floor"] == {"n": 120, "draws": 5, "kind": "real vs reference"}
    assert res.sizes["fresh"]["n"] == 120
    assert all(v == 0 for v in res.sd["fresh"].values())  # whole real vs whole generated every draw
    assert all(v > 0 for k, v in res.floor_sd["floor"].items() if k != "distinctloc_jsd")
    assert "without ±" in res.to_markdown()
    # users of the real set are left out of the reference
    both = PreparedDataset(np.r_[reference.traffic, real.traffic[:10]],
                           np.r_[reference.locations, real.locations[:10]], real.stations,
                           pd.concat([reference.samples, real.samples.iloc[:10]], ignore_index=True),
                           real.meta)
    res2 = evaluate(real, gen, None, reference=both, plots=False)
    assert any("10 reference sample(s)" in n for n in res2.notes)


def test_bold_only_beyond_the_spread_and_with_two_sets():
    from mstdiff.metrics.evaluate import EvaluationResult, get_metric
    from mstdiff.metrics.report import bold_cells

    m = (get_metric("radius_jsd"),)

    def res(rows, sd, floor_sd=0.01):
        return EvaluationResult(rows={k: {"radius_jsd": v} for k, v in rows.items()},
                                sd={k: {"radius_jsd": v} for k, v in sd.items()},
                                floor_rows={"floor": {"radius_jsd": 0.01}},
                                floor_sd={"floor": {"radius_jsd": floor_sd}}, draws={}, sizes={}, metrics=m)

    assert bold_cells(res({"a": 0.10, "b": 0.20}, {"a": 0.01, "b": 0.01})) == {"radius_jsd": "a"}
    assert bold_cells(res({"a": 0.10, "b": 0.11}, {"a": 0.01, "b": 0.01})) == {}  # within the spread
    assert bold_cells(res({"a": 0.10}, {"a": 0.001})) == {}  # one set: nothing to beat
    # a deterministic row (sd 0) borrows the floor's spread
    assert bold_cells(res({"a": 0.10, "b": 0.12}, {"a": 0.0, "b": 0.0}, floor_sd=0.02)) == {}
    sharp = res({"a": 0.10, "b": 0.12}, {"a": 0.0, "b": 0.0}, floor_sd=0.005)
    assert bold_cells(sharp) == {"radius_jsd": "a"}


def test_train_set_adds_memorisation_and_tstr_and_flags_a_copy():
    train = routine_city(400, seed=0)
    real = routine_city(150, seed=1, stations=train.stations)
    real.samples["user"] = [f"t{i}" for i in range(150)]
    copy = train.subset(np.arange(150))
    other = routine_city(150, seed=2, stations=train.stations)
    other.samples["user"] = [f"o{i}" for i in range(150)]
    res = evaluate(real, {"copy": copy, "other": other}, None, train=train, plots=False)
    assert res.memorisation["copy"]["flagged"] and not res.memorisation["other"]["flagged"]
    assert any("copy: memorises" in w for w in res.warnings)
    assert not any("other: memorises" in w for w in res.warnings)
    assert set(res.utility) == {"TRTR (real train)", "copy", "other"}
    md = res.to_markdown()
    assert "## Memorisation" in md and "**COPIES**" in md and "TSTR" in md


def test_evaluate_is_deterministic_and_respects_max_samples():
    real = routine_city(400)
    gen = {"g": routine_city(300, seed=3, stations=real.stations)}
    a = evaluate(real, gen, None, seed=5, max_samples=100)
    b = evaluate(real, gen, None, seed=5, max_samples=100)
    assert a.rows == b.rows and a.floor_rows == b.floor_rows
    assert a.sizes["real"] == 100 and a.sizes["g"]["n"] == 50 and a.sizes["real_total"] == 400
    c = evaluate(real, gen, None, seed=6, max_samples=100)
    assert c.rows != a.rows
    assert evaluate(real, gen, None, floor=False).floor_rows == {}


def test_other_station_tables_are_matched_and_bad_shapes_are_input_errors():
    real = routine_city(100)
    table = station_table(61, np.random.default_rng(5))
    table["station_id"] = [f"x{i}" for i in range(61)]  # ids the real table lacks
    other = routine_city(50, N=61, seed=2, stations=table)
    res = evaluate(real, {"g": other}, None, plots=False)
    assert res.stations["added"]["g"] == 61 and res.stations["unknown_slots"]["g"] == 50 * 48
    assert any("unknown to the real set" in n for n in res.notes)
    short = real.with_series(real.traffic[:, :24], real.locations[:, :24], source="x")
    with pytest.raises(InputError, match="T = 24"):
        evaluate(real, {"g": short}, None)
    with pytest.raises(InputError, match="no generated set"):
        evaluate(real, {}, None)
    with pytest.raises(InputError, match="reserved"):
        evaluate(real, {"floor": real}, None)


def test_out_directory_rules(tmp_path):
    real = routine_city(100)
    gen = {"g": noise_set(real, 40, 1)}
    (tmp_path / "empty").mkdir()
    evaluate(real, gen, tmp_path / "empty", plots=False)  # an empty directory is fine
    assert (tmp_path / "empty" / "metrics.json").exists()
    with pytest.raises(InputError, match="already exists"):
        evaluate(real, gen, tmp_path / "empty", plots=False)
    evaluate(real, gen, tmp_path / "empty", plots=False, overwrite=True)
    assert not (tmp_path / "empty" / "plots").exists()


def test_density_classes_without_poi_columns_popularity_without_coordinates():
    real = routine_city(200)
    plain = real.stations[["station_id", "lat", "lon"]]
    real2 = PreparedDataset(real.traffic, real.locations, plain, real.samples, real.meta)
    gen = real2.with_series(real.traffic[:100], real.locations[:100], source="copy")
    dens = evaluate(real2, {"g": gen}, None)
    assert dens.location_classes["rule"] == "density"
    assert math.isfinite(dens.rows["g"]["joint_jsd"])
    nocoord = plain.assign(lat=np.nan, lon=np.nan)
    c = location_classes(nocoord, real.locations)
    assert c.rule == "popularity" and list(c.names) == ["low", "mid", "high", "unvisited"]
    pop = evaluate(real2, {"g": gen}, None, class_rule="popularity")
    assert pop.location_classes["rule"] == "popularity" and pop.config["class_rule"] == "popularity"



def test_evaluate_dirs_names_rows(tmp_path):
    real = routine_city(120)
    real.save(tmp_path / "real")
    noise_set(real, 40, 1).save(tmp_path / "gen1")
    res = evaluate_dirs(tmp_path / "real", ["mine=" + str(tmp_path / "gen1"), str(tmp_path / "gen1")],
                        tmp_path / "out", plots=False)
    assert set(res.rows) == {"mine", "gen1"}
    with pytest.raises(InputError, match="two generated sets"):
        evaluate_dirs(tmp_path / "real", [str(tmp_path / "gen1")] * 2, None)


def test_evaluation_time_3000_samples_2000_stations(tmp_path):
    rng = np.random.default_rng(0)
    N, U, T = 2000, 3000, 48
    st = station_table(N, rng)
    samples = pd.DataFrame({"user": [str(i) for i in range(U)], "start": [""] * U})
    real = PreparedDataset(rng.gamma(0.5, 5, (U, T)) * (rng.random((U, T)) < 0.4),
                           rng.integers(0, N, (U, T)), st, samples, {"bin_minutes": 30})
    gen = real.with_series(rng.gamma(0.5, 5, (U, T)), rng.integers(0, N, (U, T)), source="random")
    t0 = time.perf_counter()
    evaluate(real, {"random": gen}, tmp_path / "report")
    assert time.perf_counter() - t0 < 30


def test_windows_shorter_than_a_day_leave_the_periodic_metric_out(tmp_path):
    real = routine_city(60, T=8)  # 4 hours: no daily frequency
    res = evaluate(real, {"g": noise_set(real, 20, 1)}, tmp_path / "r")
    assert math.isnan(res.rows["g"]["traffic_periodic_rmse"])
    assert math.isfinite(res.rows["g"]["traffic_volume_jsd"])
    assert any("traffic_periodic_rmse" in n for n in res.notes)
    assert "| – |" in res.to_markdown()
    assert (tmp_path / "r" / "plots" / "distributions.png").exists()
