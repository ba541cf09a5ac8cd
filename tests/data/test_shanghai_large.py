"""Preparation of generated Shanghai Telecom day files through the real code path.

In the spirit of test_prepare_large.py: ~50k sessions (with zero, out-of-box and unknown coordinates,
zero-length sessions and sessions crossing midnight) go through ``prepare_shanghai``; the result is
checked against an independent numpy computation (union minutes per slot, the station with most
session minutes, the counts), and DuckDB's query profile shows that no hash join builds its table on
the records (the station table is joined onto distinct coordinates and per-slot rows, never onto the
records) and that no per-record-sized result reaches Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mstdiff.data.shanghai as shanghai
from duckdb_recorder import assert_records_stay_in_duckdb, recording
from mstdiff.errors import InputError

N_RECORDS = 50_000
N_USERS = 50
N_STATIONS = 3000  # as many as in the real table (3,042): most are not used
N_USED = 60  # the users' stations
DAYS = {"data_6_14.txt": "2014-06-14", "data_6_15.txt": "2014-06-15"}
UNKNOWN = ("31.5", "121.5")  # inside the box, but no station there


def _hm(minutes: np.ndarray) -> np.ndarray:
    return np.array([f"{m // 60}.{m % 60:02d}" for m in minutes], dtype=object)


def _write(folder: Path, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Day files + station table under ``folder``; returns the records (with their day) and stations."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(100, 100 + N_STATIONS))  # ids not in coordinate order
    lat = np.round(31.0 + rng.random(N_STATIONS) * 0.4, 6)
    lon = np.round(121.2 + rng.random(N_STATIONS) * 0.4, 6)
    st = pd.DataFrame({"index": np.arange(N_STATIONS), "latitude": lat, "longitude": lon,
                       "address": "x", "id": ids})
    st.to_csv(folder / "base_stations_all.csv")
    homes = rng.choice(N_STATIONS, N_USED, replace=False)[rng.integers(0, N_USED, size=(N_USERS, 2))]
    u = rng.integers(0, N_USERS, N_RECORDS)
    k = homes[u, rng.integers(0, 2, N_RECORDS)]
    s = rng.integers(360, 1380, N_RECORDS)
    dur = np.where(rng.random(N_RECORDS) < 0.1, 0, rng.integers(1, 90, N_RECORDS))
    late = rng.random(N_RECORDS) < 0.02  # sessions crossing midnight
    s[late] = rng.integers(1380, 1440, late.sum())
    dur[late] = rng.integers(61, 120, late.sum())
    e = s + dur
    e = np.where(e > 1440, e - 1440, e)
    lat_txt = np.array([f"{v:.6f}" for v in lat], dtype=object)[k]
    lon_txt = np.array([f"{v:.6f}" for v in lon], dtype=object)[k]
    what = rng.random(N_RECORDS)
    lat_txt[what < 0.01], lon_txt[what < 0.01] = "0", "0"  # missing coordinates
    out = (what >= 0.01) & (what < 0.02)
    lat_txt[out] = "40.0"  # outside the box
    unk = (what >= 0.02) & (what < 0.03)
    lat_txt[unk], lon_txt[unk] = UNKNOWN
    df = pd.DataFrame({"start": _hm(s), "end": _hm(e), "lat": lat_txt, "lon": lon_txt,
                       "user": np.array([f"u{i:02d}" for i in range(N_USERS)])[u],
                       "file": np.array(list(DAYS))[rng.integers(0, len(DAYS), N_RECORDS)],
                       "s": s, "e": e, "k": k, "reason": np.select(
                           [what < 0.01, out, unk], ["zero_coordinates", "outside_bbox", "unknown_station"],
                           "kept")})
    for name, part in df.groupby("file"):
        part[["start", "end", "lat", "lon", "user"]].to_csv(folder / str(name), sep="\t", header=False,
                                                            index=False)
    return df, st


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("shanghai_large")
    df, st = _write(folder)
    return folder, df, st


def _expected(df: pd.DataFrame, st: pd.DataFrame, min_active: int) -> tuple[pd.DataFrame, list[str], dict]:
    """Per (user, day, slot) of the kept user-days: union minutes and the station (index into the
    table sorted by id) with most session minutes; plus the counts."""
    order = np.argsort(st["id"].to_numpy())  # station table sorted by id
    idx_of_row = np.empty(N_STATIONS, dtype=np.int64)
    idx_of_row[order] = np.arange(N_STATIONS)
    kept = df[df["reason"] == "kept"]
    e = np.where(kept["e"] < kept["s"], 1440, kept["e"])
    amounts: dict[tuple[str, str, int, int], float] = {}
    covered: dict[tuple[str, str], np.ndarray] = {}
    for user, day, s0, e0, k in zip(kept["user"], kept["file"].map(DAYS), kept["s"], e, kept["k"]):
        mark = covered.setdefault((user, day), np.zeros(1440, dtype=bool))
        mark[s0:e0] = True
        for slot in range(s0 // 30, max(s0, e0 - 1) // 30 + 1):
            key = (user, day, slot, int(idx_of_row[k]))
            amounts[key] = amounts.get(key, 0.0) + max(0, min(e0, (slot + 1) * 30) - max(s0, slot * 30))
    cells = pd.DataFrame([(*key, a) for key, a in amounts.items()],
                         columns=["user", "day", "slot", "idx", "amount"])
    cells = cells.sort_values(["user", "day", "slot", "amount", "idx"],
                              ascending=[True, True, True, False, True])
    slots = cells.drop_duplicates(["user", "day", "slot"]).drop(columns="amount").reset_index(drop=True)
    slots["traffic"] = [covered[(u, d)][t * 30:(t + 1) * 30].sum()
                        for u, d, t in zip(slots["user"], slots["day"], slots["slot"])]
    active = slots.groupby(["user", "day"]).size()
    keep = active[active >= min_active].index
    slots = slots.set_index(["user", "day"]).loc[keep].reset_index()
    counts = {
        "records_read": len(df), "records_kept": len(kept),
        "records_dropped": {r: int((df["reason"] == r).sum())
                            for r in ("zero_coordinates", "outside_bbox", "unknown_station")},
        "midnight_crossing_clipped": int((kept["e"] < kept["s"]).sum()),
        "zero_length_sessions": int((kept["e"] == kept["s"]).sum()),
        "samples_before_filter": len(active), "samples": len(keep), "active_slots": len(slots),
    }
    ids = [str(i) for i in np.sort(st["id"].to_numpy())]
    return slots, ids, counts


def test_prepare_shanghai_matches_numpy_and_no_join_builds_on_records(generated, monkeypatch):
    folder, df, st = generated
    with recording(monkeypatch, shanghai) as recs:
        ds = shanghai.prepare_shanghai(folder, unknown_stations="drop", threads=2, memory_limit="512MB")
    slots, ids, counts = _expected(df, st, min_active=5)
    c = ds.meta["counts"]
    for key, value in counts.items():
        assert c[key] == value, key
    assert all(v > 0 for v in c["records_dropped"].values())
    assert c["midnight_crossing_clipped"] > 0 and c["zero_length_sessions"] > 0
    starts = slots.drop_duplicates(["user", "day"])
    assert list(ds.samples["user"]) == list(starts["user"])
    assert list(ds.samples["start"]) == [f"{d}T00:00:00" for d in starts["day"]]
    row = {(u, s[:10]): i for i, (u, s) in enumerate(zip(ds.samples["user"], ds.samples["start"]))}
    r = np.array([row[key] for key in zip(slots["user"], slots["day"])])
    t = slots["slot"].to_numpy()
    np.testing.assert_array_equal(ds.traffic[r, t], slots["traffic"].to_numpy().astype(np.float32))
    assert float(ds.traffic.sum()) == float(slots["traffic"].sum())
    used = sorted(set(slots["idx"]))
    assert list(ds.stations["station_id"]) == [ids[i] for i in used]
    np.testing.assert_array_equal(ds.stations["station_id"].to_numpy()[ds.locations[r, t]],
                                  np.array(ids, dtype=object)[slots["idx"].to_numpy()])

    # the per-record data never reaches Python, and no hash table is built on it
    assert_records_stay_in_duckdb(recs, c["active_slots"], N_STATIONS, N_RECORDS)


def test_unknown_coordinates_error_counts_them(generated):
    folder, df, _ = generated
    n = int((df["reason"] == "unknown_station").sum())
    with pytest.raises(InputError, match=(
            rf"data_6_1[45]\.txt, line \d+: coordinates match no station of base_stations_all\.csv: "
            rf"lat = '{UNKNOWN[0]}', lon = '{UNKNOWN[1]}' \({n} rows like this in all\)")):
        shanghai.prepare_shanghai(folder, threads=2)
