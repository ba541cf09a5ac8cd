"""Preparation of a synthetic raw App Usage log through the real code path (prepare -> DuckDB).

Checks the result against an independent pandas computation, and that the per-record data stays in
DuckDB: no query result or registered table that reaches Python has one row per record, and no hash
join builds its table from the records (a build side is held in memory, so it must be bounded by
the number of slot cells, not by the log's length). See benchmarks/prepare_large.py for the scale
measurement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mstdiff.data.appusage as appusage
from duckdb_recorder import assert_records_stay_in_duckdb, recording
from mstdiff.data.prepare import prepare
from mstdiff.data.synthetic import write_synthetic_raw_log
from mstdiff.errors import InputError

N_RECORDS = 50_000
N_USERS = 60
N_STATIONS = 80


@pytest.fixture(scope="module")
def raw_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "App_usage_trace.txt"
    write_synthetic_raw_log(path, N_RECORDS, n_users=N_USERS, n_stations=N_STATIONS, seed=3)
    return path


def _expected(path: Path, min_active: int) -> tuple[pd.DataFrame, list[str]]:
    """Per (user, slot): bytes summed and the station with most bytes (ties: smallest id), by pandas."""
    df = pd.read_csv(path, sep=" ", header=None, names=["user", "ts", "station", "app", "bytes"],
                     dtype="int64")
    ts = pd.to_datetime(df["ts"].astype(str), format="%Y%m%d%H%M%S")
    df["slot"] = ((ts - pd.Timestamp("2016-04-20")) // pd.Timedelta(minutes=30)).astype(int)
    per_station = df.groupby(["user", "slot", "station"], as_index=False)["bytes"].sum()
    per_station = per_station.sort_values(["user", "slot", "bytes", "station"],
                                          ascending=[True, True, False, True])
    loc = per_station.drop_duplicates(["user", "slot"]).set_index(["user", "slot"])["station"]
    slots = df.groupby(["user", "slot"])["bytes"].sum().to_frame("traffic")
    slots["station"] = loc
    active = slots.groupby(level="user").size()
    kept_users = sorted(str(u) for u in active[active >= min_active].index)
    return slots.reset_index(), kept_users


def test_prepare_synthetic_log_matches_pandas_and_stays_in_duckdb(raw_log, tmp_path, monkeypatch):
    with recording(monkeypatch, appusage) as recs:
        ds = prepare("app-usage", raw_log, tmp_path / "out", use_poi=False, threads=2,
                     memory_limit="512MB")
    assert (tmp_path / "out").is_dir()
    c = ds.meta["counts"]
    assert c["records_read"] == c["records_kept"] == N_RECORDS
    assert c["records_dropped"] == {"outside_period": 0}
    assert c["days_with_records"] == 7
    assert ds.meta["options"]["memory_limit"] == "512MB"

    slots, kept_users = _expected(raw_log, min_active=5)
    assert list(ds.samples["user"]) == kept_users and ds.T == 336
    assert c["samples"] == len(kept_users)
    slots = slots[slots["user"].astype(str).isin(kept_users)]
    assert c["active_slots"] == len(slots)
    row = {u: i for i, u in enumerate(ds.samples["user"])}
    r = slots["user"].astype(str).map(row).to_numpy()
    t = slots["slot"].to_numpy()
    np.testing.assert_array_equal(ds.traffic[r, t], slots["traffic"].to_numpy().astype(np.float32))
    assert float(ds.traffic.sum()) == pytest.approx(float(slots["traffic"].sum()), rel=1e-6)
    sid = ds.stations["station_id"].to_numpy()[ds.locations[r, t]]
    np.testing.assert_array_equal(sid, slots["station"].astype(str).to_numpy())

    # the per-record data never reaches Python, and no hash table is built on it
    assert_records_stay_in_duckdb(recs, c["active_slots"], N_STATIONS, N_RECORDS)


def test_period_counts_days_and_shifted_windows(raw_log, tmp_path):
    """A study period inside the log, with day windows starting at 06:00: the reduction keeps the
    period's records only, counts the rest, and counts the days of the kept records."""
    ds = prepare("app-usage", raw_log, None, use_poi=False, window="day", start="2016-04-22 06:00",
                 end="2016-04-24 06:00", min_active_slots=1)
    df = pd.read_csv(raw_log, sep=" ", header=None, names=["user", "ts", "station", "app", "bytes"],
                     dtype="int64")
    ts = pd.to_datetime(df["ts"].astype(str), format="%Y%m%d%H%M%S")
    keep = (ts >= pd.Timestamp("2016-04-22 06:00")) & (ts < pd.Timestamp("2016-04-24 06:00"))
    c = ds.meta["counts"]
    assert c["records_read"] == N_RECORDS
    assert c["records_kept"] == int(keep.sum()) and 0 < c["records_kept"] < N_RECORDS
    assert c["records_dropped"] == {"outside_period": N_RECORDS - int(keep.sum())}
    assert c["days_with_records"] == ts[keep].dt.date.nunique() == 3
    assert set(ds.samples["start"]) == {"2016-04-22T06:00:00", "2016-04-23T06:00:00"}
    assert float(ds.traffic.sum()) == pytest.approx(float(df.loc[keep, "bytes"].sum()), rel=1e-6)
    empty = tmp_path / "App_usage_trace.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="no rows"):
        prepare("app-usage", empty, None, use_poi=False, record_format="trace")
