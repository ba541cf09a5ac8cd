"""Tests of the synthetic city generator and the synthetic raw-log writer."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import (
    PLACE_TYPES,
    POI_CATEGORIES,
    SyntheticCity,
    SyntheticCityConfig,
    simulate_city,
    synthetic_city,
    write_synthetic_raw_log,
)
from mstdiff.errors import InputError

LEISURE = PLACE_TYPES.index("leisure")


@pytest.fixture(scope="module")
def week_city() -> SyntheticCity:
    """300 users over one week (Wed 2016-04-20 .. Tue 04-26), user-day samples."""
    return simulate_city(n_users=300, n_stations=250, days=7, seed=11)


def _slot_hours(T: int, bin_minutes: int = 30) -> np.ndarray:
    return (np.arange(T) % (1440 // bin_minutes) + 0.5) * bin_minutes / 60.0


def _daytime_ratio_leisure_vs_home(city: SyntheticCity) -> float:
    """Mean traffic at leisure stations over mean traffic at the user's home, 09-18 h, observed."""
    ds = city.dataset
    W = ds.n_samples // len(city.users)
    home = np.repeat(city.users["home"].to_numpy(), W)[:, None]
    hours = _slot_hours(ds.T)
    day = ((hours >= 9) & (hours < 18))[None, :]
    kind = city.place_type[ds.locations]
    at_leisure = (kind == LEISURE) & day & (ds.locations != home)
    at_home = (ds.locations == home) & day
    assert at_leisure.sum() > 200 and at_home.sum() > 200
    return float(ds.traffic[at_leisure].mean() / ds.traffic[at_home].mean())


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_output_different_seed_differs() -> None:
    a = synthetic_city(n_users=40, n_stations=60, seed=5)
    b = synthetic_city(n_users=40, n_stations=60, seed=5)
    c = synthetic_city(n_users=40, n_stations=60, seed=6)
    np.testing.assert_array_equal(a.traffic, b.traffic)
    np.testing.assert_array_equal(a.locations, b.locations)
    pd.testing.assert_frame_equal(a.stations, b.stations)
    pd.testing.assert_frame_equal(a.samples, b.samples)
    assert not np.array_equal(a.traffic, c.traffic)
    assert not np.array_equal(a.locations, c.locations)
    assert not np.allclose(a.stations["lat"], c.stations["lat"])


def test_no_global_seeding() -> None:
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global generator must stay untouched)
    synthetic_city(n_users=10, n_stations=30)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_config_object_and_overrides_agree() -> None:
    cfg = SyntheticCityConfig(n_users=20, n_stations=40, seed=2)
    a = synthetic_city(cfg)
    b = synthetic_city(n_users=20, n_stations=40, seed=2)
    c = synthetic_city(cfg, seed=3)
    np.testing.assert_array_equal(a.traffic, b.traffic)
    assert not np.array_equal(a.traffic, c.traffic)
    assert cfg.seed == 2  # the caller's config is not mutated


# ----------------------------------------------------------------------------- format
def test_shapes_dtypes_ranges_and_tables() -> None:
    ds = synthetic_city(n_users=50, n_stations=80, days=2, seed=1)
    assert isinstance(ds, PreparedDataset)
    assert ds.traffic.shape == ds.locations.shape == (100, 48)
    assert ds.traffic.dtype == np.float32 and ds.locations.dtype == np.int32
    assert ds.locations.min() >= 0 and ds.locations.max() < 80
    assert np.isfinite(ds.traffic).all() and (ds.traffic >= 0).all()
    ds.validate()

    stn = ds.stations
    assert len(stn) == 80 and stn["station_id"].is_unique
    assert all(isinstance(s, str) for s in stn["station_id"])
    assert stn["lat"].between(31.0, 31.4).all() and stn["lon"].between(121.2, 121.7).all()
    assert set(stn["place_type"]) <= set(PLACE_TYPES)
    for c in POI_CATEGORIES:
        col = stn[f"poi_{c}"]
        assert np.issubdtype(col.dtype, np.integer) and (col >= 0).all()

    assert list(ds.samples.columns[:2]) == ["user", "start"]
    assert ds.samples["user"].iloc[0] == "u00001"
    assert ds.samples["user"].str.fullmatch(r"u\d{5}").all()
    assert list(ds.samples["start"].iloc[:2]) == ["2016-04-20T00:00:00", "2016-04-21T00:00:00"]
    assert ds.samples["user"].nunique() == 50

    m = ds.meta
    assert m["source"] == "synthetic" and m["bin_minutes"] == 30 and m["T"] == 48
    assert m["traffic_unit"] == "MB"
    assert m["counts"] == {"samples": 100, "users": 50, "stations": 80, "days": 2, "windows_per_user": 2}
    assert m["config"]["seed"] == 1 and m["config"]["n_users"] == 50
    assert m["normalisation"]["active_share"] == pytest.approx(float((ds.traffic > 0).mean()))
    assert isinstance(m["notes"], str) and m["notes"]


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds = synthetic_city(n_users=15, n_stations=40, seed=4)
    ds.save(tmp_path / "city")
    back = PreparedDataset.load(tmp_path / "city")
    np.testing.assert_array_equal(back.traffic, ds.traffic)
    np.testing.assert_array_equal(back.locations, ds.locations)
    assert list(back.stations["place_type"]) == list(ds.stations["place_type"])
    assert back.meta["planted_coupling"]["volume_factor"]["leisure"] == 2.5


def test_week_windows_T336() -> None:
    ds = synthetic_city(n_users=12, n_stations=40, days=14, T=336, seed=0)
    assert ds.traffic.shape == (24, 336)
    assert ds.meta["window_days"] == 7 and ds.meta["counts"]["windows_per_user"] == 2
    assert list(ds.samples["start"].iloc[:2]) == ["2016-04-20T00:00:00", "2016-04-27T00:00:00"]
    # the week windows are the day timeline cut differently: same content as T = 48
    days = synthetic_city(n_users=12, n_stations=40, days=14, T=48, seed=0)
    np.testing.assert_array_equal(ds.traffic.reshape(-1), days.traffic.reshape(-1))


def test_other_bin_size() -> None:
    ds = synthetic_city(n_users=10, n_stations=40, days=1, T=96, bin_minutes=15)
    assert ds.traffic.shape == (10, 96) and ds.meta["bin_minutes"] == 15


@pytest.mark.parametrize(
    "bad",
    [
        {"T": 44},  # not divisible by 8
        {"T": 12, "bin_minutes": 120},  # one day, but 12 bins is not divisible by 8
        {"T": 40},  # divisible by 8 but not a whole number of days
        {"T": 336, "days": 3},  # days not a multiple of the 7-day window
        {"bin_minutes": 7},
        {"explore_prob": 1.5},
        {"start_date": "20/04/2016"},
        {"no_such_option": 1},
    ],
)
def test_invalid_options_raise_input_error(bad: dict) -> None:
    with pytest.raises(InputError):
        synthetic_city(n_users=5, n_stations=40, **bad)


def test_too_few_stations_raise_input_error() -> None:
    with pytest.raises(InputError, match="n_stations"):
        synthetic_city(n_users=5, n_stations=5)


def test_T_not_divisible_by_8_message() -> None:
    with pytest.raises(InputError, match="divisible by 8"):
        synthetic_city(T=44)


# ----------------------------------------------------------------------------- realism
def test_active_share_realistic(week_city: SyntheticCity) -> None:
    share = float((week_city.dataset.traffic > 0).mean())
    assert 0.15 <= share <= 0.30
    # heavy-tailed per-user totals: the top 10 % of users carry far more than 10 % of the traffic
    per_user = week_city.dataset.traffic.reshape(len(week_city.users), -1).sum(axis=1)
    top = np.sort(per_user)[::-1][: len(per_user) // 10].sum() / per_user.sum()
    assert top > 0.3


def test_night_is_low_and_evening_high(week_city: SyntheticCity) -> None:
    tr = week_city.dataset.traffic
    hours = _slot_hours(tr.shape[1])
    night = tr[:, (hours >= 2) & (hours < 5)].mean()
    evening = tr[:, (hours >= 19) & (hours < 23)].mean()
    assert evening > 4 * night


def test_home_at_night(week_city: SyntheticCity) -> None:
    ds, users = week_city.dataset, week_city.users
    W = ds.n_samples // len(users)
    hours = _slot_hours(ds.T)
    night = hours < 6
    hits = 0
    for u, home in enumerate(users["home"].to_numpy()):
        loc = ds.locations[u * W:(u + 1) * W][:, night].ravel()
        hits += int(np.bincount(loc).argmax() == home)
    assert hits / len(users) >= 0.95
    # homes lean residential, work places lean business
    types = week_city.dataset.stations["place_type"].to_numpy()
    assert (types[users["home"]] == "residential").mean() > 0.7
    work = users["work"][users["employed"]].to_numpy()
    assert (types[work] == "business").mean() > 0.5


def test_weekday_weekend_difference(week_city: SyntheticCity) -> None:
    ds, users = week_city.dataset, week_city.users
    starts = pd.to_datetime(ds.samples["start"])
    weekend = (starts.dt.day_of_week >= 5).to_numpy()
    assert weekend.any() and (~weekend).any()
    work = np.repeat(users["work"].to_numpy(), ds.n_samples // len(users))
    employed = work >= 0
    hours = _slot_hours(ds.T)
    office = (hours >= 10) & (hours < 16)
    at_work = (week_city.place[:, office] == work[:, None]).mean(axis=1)
    assert at_work[employed & ~weekend].mean() > 0.8
    assert at_work[employed & weekend].mean() < 0.05


def test_poi_counts_reflect_place_type() -> None:
    stn = synthetic_city(n_users=5, n_stations=600, days=1, seed=2).stations
    by = stn.groupby("place_type")[[f"poi_{c}" for c in POI_CATEGORIES]].mean()
    assert by.loc["residential", "poi_residence"] > 3 * by.loc["business", "poi_residence"]
    assert by.loc["business", "poi_business_affairs"] > 3 * by.loc["residential", "poi_business_affairs"]
    assert by["poi_entertainment_leisure"].idxmax() == "leisure"
    assert by["poi_transportation_hub"].idxmax() == "transport"


def _share_of_new_places(explore_prob: float) -> float:
    """Share of slots away from the routine places (home, work, transit stop, and for employed
    users the 12:00-14:00 lunch window) that are not at one of the user's favourites."""
    city = simulate_city(n_users=150, n_stations=200, days=7, explore_prob=explore_prob,
                         handover_prob=0.0, seed=9)
    users = city.users
    W = city.dataset.n_samples // len(users)
    lunch = (_slot_hours(city.dataset.T) >= 12) & (_slot_hours(city.dataset.T) < 14)
    new = total = 0
    for u in range(len(users)):
        place = city.place[u * W:(u + 1) * W]
        if users["employed"][u]:
            place = place[:, ~lunch]
        place = place.ravel()
        routine = [users["home"][u], users["work"][u], users["transit_stop"][u]]
        away = place[~np.isin(place, routine)]
        total += away.size
        new += int((~np.isin(away, city.favourites[u])).sum())
    assert total > 1000
    return new / total


def test_preferential_return_and_exploration() -> None:
    assert _share_of_new_places(0.0) == 0.0  # no exploration: only favourites away from routine
    assert _share_of_new_places(0.8) > 0.4


def test_handover_only_changes_observed_station() -> None:
    clean = simulate_city(n_users=100, n_stations=200, days=2, handover_prob=0.0, seed=3)
    np.testing.assert_array_equal(clean.dataset.locations, clean.place)
    noisy = simulate_city(n_users=100, n_stations=200, days=2, handover_prob=0.1, seed=3)
    np.testing.assert_array_equal(noisy.place, clean.place)  # hand-overs draw from their own stream
    np.testing.assert_array_equal(noisy.dataset.traffic, clean.dataset.traffic)
    share = float((noisy.dataset.locations != noisy.place).mean())
    assert 0.05 < share <= 0.1


# ----------------------------------------------------------------------------- planted coupling
def test_planted_coupling_is_detectable(week_city: SyntheticCity) -> None:
    assert _daytime_ratio_leisure_vs_home(week_city) > 2.0
    ds = week_city.dataset
    assert ds.traffic[week_city.moves].mean() > 4 * ds.traffic[~week_city.moves].mean()
    pc = ds.meta["planted_coupling"]
    assert pc["coupling_strength"] == 1.0
    assert pc["volume_factor"]["leisure"] > pc["volume_factor"]["residential"]
    obs = pc["observed"]["daytime_mean_mb_by_place_type"]
    assert obs["leisure"] > 1.5 * obs["residential"]


def test_no_coupling_control() -> None:
    """With coupling_strength = 0 the same measurement finds no place effect and no move burst."""
    city = simulate_city(n_users=300, n_stations=250, days=7, seed=11, coupling_strength=0.0)
    assert 0.6 < _daytime_ratio_leisure_vs_home(city) < 1.5
    ds = city.dataset
    assert ds.traffic[city.moves].mean() < 2 * ds.traffic[~city.moves].mean()
    assert ds.meta["planted_coupling"]["coupling_strength"] == 0.0


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 30),
    n_stations=st.integers(12, 80),
    days=st.integers(1, 3),
)
def test_any_small_city_is_valid(seed: int, n_users: int, n_stations: int, days: int) -> None:
    ds = synthetic_city(n_users=n_users, n_stations=n_stations, days=days, seed=seed)
    assert ds.traffic.shape == (n_users * days, 48)
    assert ds.locations.max() < n_stations
    ds.validate()


# ----------------------------------------------------------------------------- raw log
def _read_raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=" ", header=None, names=["user", "ts", "station", "app", "bytes"],
                       dtype="int64")


def test_raw_log_well_formed(tmp_path: Path) -> None:
    out = tmp_path / "raw" / "App_usage_trace.txt"
    info = write_synthetic_raw_log(out, 20_000, n_users=30, n_stations=60, seed=1, chunk_records=7_000)
    assert info["records"] == 20_000 and info["chunks"] == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 20_000
    assert all(len(line.split(" ")) == 5 for line in lines)
    df = _read_raw(out)
    assert df["user"].between(0, 29).all()
    assert df["station"].between(0, 59).all()
    assert (df["bytes"] > 0).all()
    assert df["app"].between(0, 1999).all()
    stamps = pd.to_datetime(df["ts"].astype(str), format="%Y%m%d%H%M%S")  # raises if malformed
    assert stamps.min() >= pd.Timestamp("2016-04-20") and stamps.max() < pd.Timestamp("2016-04-27")
    # sorted by user, then time
    key = df["user"].to_numpy() * 10**14 + df["ts"].to_numpy()
    assert (np.diff(key) >= 0).all()
    stations = pd.read_csv(out.parent / "stations.csv")
    assert list(stations.columns) == ["station_id", "lat", "lon"] and len(stations) == 60
    assert set(df["station"]) <= set(stations["station_id"])
    assert info["total_bytes"] == int(df["bytes"].sum())


def test_raw_log_chunking_does_not_change_content(tmp_path: Path) -> None:
    def digest(name: str, chunk: int, seed: int = 0) -> str:
        path = tmp_path / name / "log.txt"
        write_synthetic_raw_log(path, 150_000, n_users=40, n_stations=60, seed=seed, chunk_records=chunk)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = digest("a", 1_000_000)
    assert digest("b", 9_999) == a  # chunk boundaries inside the fixed random blocks
    assert digest("c", 70_000) == a
    assert digest("d", 1_000_000, seed=1) != a


def test_raw_log_follows_the_city(tmp_path: Path) -> None:
    """Per-slot records land at the city's stations: each user's most frequent night station is home."""
    path = tmp_path / "log.txt"
    write_synthetic_raw_log(path, 60_000, n_users=40, n_stations=80, seed=2)
    df = _read_raw(path)
    city = simulate_city(n_users=40, n_stations=80, days=7, seed=2, start_date="2016-04-20")
    hour = (df["ts"] // 10_000) % 100
    night = df[hour < 6]
    top = night.groupby("user")["station"].agg(lambda s: s.value_counts().index[0])
    home = city.users["home"].to_numpy()[top.index.to_numpy()]
    assert (top.to_numpy() == home).mean() > 0.9
    assert dt.date(2016, 4, 20).weekday() == 2  # the trace week starts on a Wednesday


def test_raw_log_zero_records_and_bad_chunk(tmp_path: Path) -> None:
    info = write_synthetic_raw_log(tmp_path / "empty.txt", 0, n_users=5, n_stations=30)
    assert info["records"] == 0 and (tmp_path / "empty.txt").read_text() == ""
    with pytest.raises(InputError):
        write_synthetic_raw_log(tmp_path / "x.txt", 10, n_users=5, n_stations=30, chunk_records=0)
