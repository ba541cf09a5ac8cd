"""Rows pooled over several generated sets of one model (mstdiff.metrics.pooled)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.metrics import evaluate, evaluate_dirs
from mstdiff.metrics.pooled import concat_sets, parse_generated, pooled_stats


def _stations(N=40, seed=1234):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"station_id": [f"s{i}" for i in range(N)],
                         "lat": rng.uniform(31.0, 31.4, N), "lon": rng.uniform(121.2, 121.7, N)})


def routine_city(U, seed=0, stations=None, T=48):
    """Home at night, work by day, a few random visits; traffic by hour."""
    rng = np.random.default_rng(seed)
    st = stations if stations is not None else _stations(seed=1234 + 7 * seed)
    N = len(st)
    home, work = rng.integers(0, N // 2, U), rng.integers(N // 2, N, U)
    hour = np.arange(T) * 0.5
    day = (hour >= 8.5 + rng.normal(0, 1, (U, 1))) & (hour < 17.5 + rng.normal(0, 1, (U, 1)))
    loc = np.where(day, work[:, None], home[:, None])
    loc = np.where(rng.random((U, T)) < 0.08, rng.integers(0, N, (U, T)), loc)
    traffic = rng.gamma(0.8, 2.0, (U, T)) * (rng.random((U, T)) < 0.45)
    samples = pd.DataFrame({"user": [f"u{seed}_{i}" for i in range(U)], "start": [""] * U})
    return PreparedDataset(traffic, loc, st, samples, {"source": f"city{seed}", "bin_minutes": 30,
                                                       "traffic_unit": "minutes"})


def noise_set(real, U, seed):
    rng = np.random.default_rng(seed)
    return real.with_series(rng.exponential(3.0, (U, real.T)), rng.integers(0, real.n_stations, (U, real.T)),
                            source="noise")


def _sets():
    real = routine_city(120, seed=0)
    reference = routine_city(400, seed=1, stations=real.stations)
    members = [routine_city(120, seed=s, stations=real.stations) for s in (2, 3, 4)]
    return real, reference, members


def test_pooled_row_is_the_mean_of_its_sets_with_their_sd():
    real, reference, members = _sets()
    singles = evaluate(real, {f"m{k}": g for k, g in enumerate(members)}, None, reference=reference,
                       plots=False, draws=2)
    pooled = evaluate(real, {"m": members}, None, reference=reference, plots=False, draws=2)
    for metric, v in pooled.rows["m"].items():
        each = np.array([singles.rows[f"m{k}"][metric] for k in range(3)])
        if not np.isfinite(each).all():
            assert not math.isfinite(v) or metric in pooled.not_applicable.get("m", {})
            continue
        # whole real vs whole generated set in every draw (reference floor): the same per-set values
        assert v == pytest.approx(each.mean(), rel=1e-9, abs=1e-12)
        assert pooled.sd["m"][metric] == pytest.approx(each.std(ddof=1), rel=1e-9, abs=1e-12)
        assert [p[metric] for p in pooled.pooled["m"]["per_set"]] == pytest.approx(list(each))
    assert pooled.pooled["m"]["sets"] == 3 and pooled.pooled["m"]["generated_totals"] == [120] * 3
    # the floor does not depend on how the generated rows are grouped
    assert pooled.floor_rows == singles.floor_rows
    # plain statistics read the sets concatenated
    assert pooled.sanity["m"]["n"] == 360
    md = pooled.to_markdown()
    assert "Pooled row(s) m: 3 generated sets" in md


def test_pooled_and_plain_rows_side_by_side_and_a_single_set_unchanged():
    real, reference, members = _sets()
    noise = noise_set(real, 120, 9)
    alone = evaluate(real, {"noise": noise}, None, reference=reference, plots=False, draws=3, seed=5)
    both = evaluate(real, {"noise": [noise], "m": members[:2]}, None, reference=reference, plots=False,
                    draws=3, seed=5)
    assert both.rows["noise"] == alone.rows["noise"]
    assert "noise" not in both.pooled and both.pooled["m"]["sets"] == 2
    assert both.rows["m"]["distance_jsd"] < both.rows["noise"]["distance_jsd"]


def test_halves_floor_pooled_values_average_the_sets_draw_by_draw():
    real, _, members = _sets()
    res = evaluate(real, {"m": members}, None, plots=False, draws=3)
    d = res.draws["m"]["duration_jsd"]
    per = [p["duration_jsd"] for p in res.pooled["m"]["per_set"]]
    assert len(d) == 3
    assert np.mean(d) == pytest.approx(np.mean(per))
    assert res.sd["m"]["duration_jsd"] == pytest.approx(np.std(per, ddof=1))


def test_pooled_stats_against_a_hand_computation():
    per_set = [{"a": [1.0, 3.0], "b": [math.nan, math.nan]}, {"a": [5.0, 5.0], "b": [2.0, math.nan]}]
    mean, sd, each = pooled_stats(per_set)
    assert each == [{"a": 2.0, "b": pytest.approx(math.nan, nan_ok=True)}, {"a": 5.0, "b": 2.0}]
    assert mean["a"] == 3.5 and sd["a"] == pytest.approx(math.sqrt(4.5))
    assert mean["b"] == 2.0 and sd["b"] == 0.0  # one set with a value: no spread to give


def test_concat_sets_checks_its_members():
    real, _, members = _sets()
    other = routine_city(50, seed=7)  # its own station table
    with pytest.raises(InputError, match="station table differs"):
        concat_sets("m", [members[0], other])
    with pytest.raises(InputError, match="no samples"):
        concat_sets("m", [members[0], members[1].subset([])])
    with pytest.raises(InputError, match="empty list"):
        evaluate(real, {"m": []}, None, plots=False)
    both = concat_sets("m", members[:2])
    assert both.n_samples == 240 and both.meta["pooled_sets"] == 2
    assert np.array_equal(both.locations[120:], members[1].locations)
    assert both.samples["user"].nunique() == 240


def test_parse_generated_entries(tmp_path):
    (tmp_path / "a,b").mkdir()
    assert parse_generated("x=d0,d1,d2") == ("x", ["d0", "d1", "d2"])
    assert parse_generated(f"x={tmp_path / 'a,b'}") == ("x", [str(tmp_path / "a,b")])
    assert parse_generated("runs/gen") == ("gen", ["runs/gen"])
    with pytest.raises(InputError, match="without a row name"):
        parse_generated("d0,d1")
    with pytest.raises(InputError, match="empty directory"):
        parse_generated("x=d0,,d1")


def test_evaluate_dirs_pools_a_comma_list(tmp_path):
    real, reference, members = _sets()
    real.save(tmp_path / "real")
    reference.save(tmp_path / "ref")
    for k, g in enumerate(members):
        g.save(tmp_path / f"g{k}")
    dirs = ",".join(str(tmp_path / f"g{k}") for k in range(3))
    res = evaluate_dirs(tmp_path / "real", [f"model={dirs}"], tmp_path / "out", reference=tmp_path / "ref",
                        plots=False, draws=2)
    assert res.pooled["model"]["sets"] == 3
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["pooled"]["model"]["sets"] == 3
    assert saved["metrics_sd"]["model"]["distance_jsd"] > 0
