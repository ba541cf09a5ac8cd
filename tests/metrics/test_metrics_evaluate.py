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
                     "location_jsd", "joint_jsd", "joint_profile_rmse"]
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
    assert res.sizes["floor"] == {"n": 600, "generated_n": 600, "halves": False}
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
    assert data["sizes"]["real"] == 300 and data["sizes"]["noise"] == 100
    assert data["metric_info"]["grank_jsd"]["lower_is_better"] is True
    assert data["location_classes"]["rule"] == "poi"
    assert data["config"]["seed"] == 1 and "mstdiff_version" in data["run_meta"]
    md = (out / "metrics.md").read_text()
    assert md == res.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| set | n | traffic_volume_jsd ↓")
    assert lines[2].startswith("| noise | 100 |") and lines[3].startswith("| other | 100 |")
    assert lines[4].startswith("| **floor** | 100 |")
    # the realistic set wins every trajectory column; the bold marks it
    other_cells = lines[3].split("|")[3:-1]
    assert sum(c.strip().startswith("**") for c in other_cells) >= 8
    assert "†" not in md  # 300 >= 2 × 100: disjoint random subsets, no footnote
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp dirs


def test_floor_uses_halves_with_a_footnote_when_real_is_small():
    real = routine_city(150)
    res = evaluate(real, {"g": noise_set(real, 100, 4)}, None)
    assert res.sizes["floor"] == {"n": 75, "generated_n": 100, "halves": True}
    assert res.sizes["g"] == 75 and res.sizes["reference"] == {"g": 75}  # matched to the floor
    md = res.to_markdown()
    assert "| **floor** † | 75 |" in md and "two disjoint halves" in md and "| g | 75 |" in md
    unmatched = evaluate(real, {"g": noise_set(real, 100, 4)}, None, match_floor=False)
    assert unmatched.sizes["g"] == 100 and unmatched.sizes["reference"] == {"g": 150}


def test_model_rows_are_matched_to_their_floor_subset():
    real = routine_city(500)
    gen = {"a": noise_set(real, 60, 1), "b": noise_set(real, 200, 2)}
    res = evaluate(real, gen, None, seed=3)
    assert res.sizes["reference"] == {"a": 60, "b": 200}
    assert res.sizes["floor (n=60)"]["n"] == 60 and res.sizes["floor (n=200)"]["n"] == 200
    # with a fresh draw of the real process, the model row is not systematically below the floor
    fresh = routine_city(250, seed=11, stations=real.stations)
    r = evaluate(real, {"fresh": fresh}, None, seed=4)
    wins = sum(r.rows["fresh"][k] < v for k, v in r.floor_rows["floor"].items())
    assert wins < len(r.floor_rows["floor"])


def test_one_floor_row_per_generated_size():
    real = routine_city(400)
    res = evaluate(real, {"a": noise_set(real, 50, 1), "b": noise_set(real, 120, 2)}, None, plots=False)
    assert set(res.floor_rows) == {"floor (n=50)", "floor (n=120)"}
    assert res.floor_of == {"a": "floor (n=50)", "b": "floor (n=120)"}
    assert res.table().loc["floor (n=120)", "n"] == 120


def test_evaluate_is_deterministic_and_respects_max_samples():
    real = routine_city(400)
    gen = {"g": routine_city(300, seed=3, stations=real.stations)}
    a = evaluate(real, gen, None, seed=5, max_samples=100)
    b = evaluate(real, gen, None, seed=5, max_samples=100)
    assert a.rows == b.rows and a.floor_rows == b.floor_rows
    assert a.sizes["real"] == 100 and a.sizes["g"] == 100 and a.sizes["real_total"] == 400
    c = evaluate(real, gen, None, seed=6, max_samples=100)
    assert c.rows != a.rows
    assert evaluate(real, gen, None, floor=False).floor_rows == {}


def test_station_table_mismatch_is_an_input_error():
    real = routine_city(100)
    other = routine_city(50, N=61, seed=2, stations=station_table(61, np.random.default_rng(5)))
    with pytest.raises(InputError, match="N = 61 stations .* N = 60"):
        evaluate(real, {"g": other}, None)
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
