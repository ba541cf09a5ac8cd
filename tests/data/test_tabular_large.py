"""Preparation of a generated records table (source ``csv``) through the real code path.

In the spirit of test_prepare_large.py: ~50k records with a station table go through
``prepare("csv", ...)``; the result is checked against an independent pandas computation (samples,
traffic, locations, stations, the counts of dropped records per reason), and DuckDB's query profile
shows that no hash join builds its table on the records (the station table is joined onto rows
already reduced to one per user, window, slot and station) and that no per-record-sized result
reaches Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mstdiff.data.tabular as tabular
from duckdb_recorder import assert_records_stay_in_duckdb, recording
from mstdiff.data.prepare import prepare
from mstdiff.errors import InputError

N_RECORDS = 50_000
N_USERS = 40
N_STATIONS = 80
ORIGIN = "2021-03-01 00:00"
UNKNOWN = "zz9"  # a station id missing from the station table
ONLY_BEFORE = "c999"  # a station id seen only in records before the origin


def _write(folder: Path, seed: int = 5) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    """Records CSV + station table CSV; returns both paths, the records and the table's ids."""
    rng = np.random.default_rng(seed)
    table_ids = [f"c{k:03d}" for k in rng.permutation(N_STATIONS)]  # table order != id order
    users = np.array([f"u{k:02d}" for k in range(N_USERS)])
    homes = rng.integers(0, N_STATIONS, size=(N_USERS, 2))  # each user moves between two stations
    u = rng.integers(0, N_USERS, N_RECORDS)
    station = np.array(table_ids, dtype=object)[homes[u, rng.integers(0, 2, N_RECORDS)]]
    day = rng.integers(0, 2, N_RECORDS)  # 2021-03-01 or 2021-03-02
    sec = rng.integers(8 * 3600, 20 * 3600, N_RECORDS)  # 08:00 .. 20:00 (24 slots a day)
    ts = pd.Timestamp(ORIGIN) + pd.to_timedelta(day * 86400 + sec, unit="s")
    before = rng.random(N_RECORDS) < 0.02
    ts = ts.where(~before, ts - pd.Timedelta(days=3))  # dropped: before the origin
    station[~before & (rng.random(N_RECORDS) < 0.01)] = UNKNOWN  # dropped: unknown station
    station[np.flatnonzero(before)[:3]] = ONLY_BEFORE
    traffic = rng.integers(1, 200, N_RECORDS)  # whole bytes: ties between stations occur
    df = pd.DataFrame({"user_id": users[u], "timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"),
                       "station_id": station, "traffic": traffic})
    rec = folder / "records.csv"
    df.to_csv(rec, index=False)
    st = folder / "stations.csv"
    pd.DataFrame({"station_id": table_ids, "lat": 31.0 + np.arange(N_STATIONS) / 100,
                  "lon": 121.0 + np.arange(N_STATIONS) / 100,
                  "kind": [f"k{i % 7}" for i in range(N_STATIONS)]}).to_csv(st, index=False)
    return rec, st, df, table_ids


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    return _write(tmp_path_factory.mktemp("tabular_large"))


def _expected(df: pd.DataFrame, station_ids: list[str], min_active: int) -> tuple[pd.DataFrame, dict]:
    """Per (user, day, slot): traffic summed and the station with most traffic (ties: first in
    ``station_ids``), by pandas; plus the counts of dropped and kept records."""
    ts = pd.to_datetime(df["timestamp"])
    before = ts < pd.Timestamp(ORIGIN)
    unknown = ~before & ~df["station_id"].isin(station_ids)
    keep = ~before & ~unknown
    d = df[keep].assign(start=ts[keep].dt.normalize(),
                        slot=((ts[keep] - ts[keep].dt.normalize()) // pd.Timedelta(minutes=30)).astype(int))
    d["idx"] = d["station_id"].map({s: i for i, s in enumerate(station_ids)})
    per_station = d.groupby(["user_id", "start", "slot", "idx"], as_index=False)["traffic"].sum()
    per_station = per_station.sort_values(["user_id", "start", "slot", "traffic", "idx"],
                                          ascending=[True, True, True, False, True])
    loc = per_station.drop_duplicates(["user_id", "start", "slot"]).set_index(
        ["user_id", "start", "slot"])["idx"]
    slots = d.groupby(["user_id", "start", "slot"])["traffic"].sum().to_frame("traffic")
    slots["idx"] = loc
    slots = slots.reset_index()
    active = slots.groupby(["user_id", "start"]).size()
    kept = active[active >= min_active].index
    slots = slots.set_index(["user_id", "start"]).loc[kept].reset_index()
    counts = {"records_read": len(df), "records_kept": int(keep.sum()),
              "records_dropped": {"before_origin": int(before.sum()), "unknown_station": int(unknown.sum())},
              "samples_before_filter": len(active), "samples": len(kept), "active_slots": len(slots)}
    return slots, counts


def _check_against_oracle(ds: Any, df: pd.DataFrame, station_ids: list[str]) -> dict:
    slots, counts = _expected(df, station_ids, min_active=5)
    c = ds.meta["counts"]
    for key, value in counts.items():
        assert c[key] == value, key
    assert ds.T == 48 and len(ds.samples) == counts["samples"]
    starts = slots.drop_duplicates(["user_id", "start"])
    assert list(ds.samples["user"]) == list(starts["user_id"])
    assert list(ds.samples["start"]) == list(starts["start"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
    row = {(u, s): i for i, (u, s) in enumerate(zip(ds.samples["user"], ds.samples["start"]))}
    iso = slots["start"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    r = np.array([row[key] for key in zip(slots["user_id"], iso)])
    t = slots["slot"].to_numpy()
    np.testing.assert_array_equal(ds.traffic[r, t], slots["traffic"].to_numpy().astype(np.float32))
    assert float(ds.traffic.sum()) == float(slots["traffic"].sum())
    used = sorted(set(slots["idx"]))  # the stations of the kept samples' slots, in table order
    assert list(ds.stations["station_id"]) == [station_ids[i] for i in used]
    sid = ds.stations["station_id"].to_numpy()[ds.locations[r, t]]
    np.testing.assert_array_equal(sid, np.array(station_ids, dtype=object)[slots["idx"].to_numpy()])
    return c


def test_prepare_csv_matches_pandas_and_no_join_builds_on_records(generated, tmp_path, monkeypatch):
    rec_path, st_path, df, table_ids = generated
    with recording(monkeypatch, tabular) as recs:
        ds = prepare("csv", rec_path, tmp_path / "out", stations=st_path, origin=ORIGIN,
                     unknown_stations="drop", threads=2, memory_limit="512MB")
    assert (tmp_path / "out" / "meta.json").is_file()
    c = _check_against_oracle(ds, df, table_ids)
    assert c["records_dropped"]["before_origin"] > 0 and c["records_dropped"]["unknown_station"] > 0
    assert c["stations_in_table"] == N_STATIONS
    assert list(ds.stations.columns) == ["station_id", "lat", "lon", "kind"]

    # the per-record data never reaches Python, and no hash table is built on it
    assert_records_stay_in_duckdb(recs, c["active_slots"], N_STATIONS, N_RECORDS)


def test_prepare_csv_without_station_table(generated, monkeypatch):
    """Stations are then the ids of all records, those before the origin included (table order:
    numeric ids first, then text ids sorted)."""
    rec_path, _, df, _ = generated
    ids = sorted(set(df["station_id"]))
    with recording(monkeypatch, tabular) as recs:
        ds = prepare("csv", rec_path, None, origin=ORIGIN, threads=2)
    c = _check_against_oracle(ds, df, ids)
    assert c["records_dropped"]["unknown_station"] == 0
    assert c["stations_in_table"] == len(ids) and ONLY_BEFORE in ids and UNKNOWN in ids
    assert ds.stations["lat"].isna().all()
    rec = recs[0]
    assert max(rec.fetched_rows) <= c["active_slots"] and max(rec.registered_rows) <= len(ids)
    assert max(rec.join_build_rows, default=0) < N_RECORDS / 5, rec.join_build_rows


def test_unknown_station_error_names_first_line_and_count(generated):
    rec_path, st_path, df, _ = generated
    ts = pd.to_datetime(df["timestamp"])
    bad = (df["station_id"] == UNKNOWN) & (ts >= pd.Timestamp(ORIGIN))
    line = int(np.flatnonzero((df["station_id"] == UNKNOWN).to_numpy())[0]) + 2  # header = line 1
    assert bad.iloc[line - 2]  # the first such line is after the origin
    with pytest.raises(InputError, match=(
        rf"records\.csv, line {line}: station id not in the station table stations\.csv: "
        rf"station_id = '{UNKNOWN}' \({int(bad.sum())} rows like this in all\)")):
        prepare("csv", rec_path, None, stations=st_path, origin=ORIGIN, threads=2)
