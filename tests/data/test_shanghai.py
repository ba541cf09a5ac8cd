import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mstdiff.data.prepare import prepare
from mstdiff.data.shanghai import prepare_shanghai, union_minutes_sql
from mstdiff.errors import InputError

# station id -> (lat, lon); ids deliberately not in coordinate order
STATIONS = {0: (31.237872, 121.470259), 1: (31.246946, 121.513919), 2: (31.232877, 121.48753),
            3: (31.227933, 121.45361), 4: (31.1, 121.3)}
A, B, C = STATIONS[0], STATIONS[1], STATIONS[2]


def write_stations(folder):
    lines = [",index,latitude,longitude,address,id"]
    for row, (sid, (lat, lon)) in enumerate(STATIONS.items()):
        lines.append(f"{row},{row * 7},{lat},{lon},{lat}-{lon},{sid}")
    (folder / "base_stations_all.csv").write_text("\n".join(lines) + "\n")


def rec(start, end, where, user):
    lat, lon = where
    return f"{start}\t{end}\t{lat}\t{lon}\t{user}"


def write_day(folder, name, records):
    (folder / name).write_text("\n".join(records) + "\n")


@pytest.fixture
def folder(tmp_path):
    write_stations(tmp_path)
    return tmp_path


def _row(ds, user, day="2014-06-14"):
    m = (ds.samples["user"] == user) & (ds.samples["start"] == f"{day}T00:00:00")
    assert m.sum() == 1
    return int(np.flatnonzero(m.to_numpy())[0])


def _sid(ds, row, t):
    return ds.stations["station_id"].iloc[ds.locations[row, t]]


def test_session_minutes_spread_over_slots_and_hmm_parsing(folder):
    write_day(folder, "data_6_14.txt", [
        rec("9.20", "10.10", A, "u1"),  # 10 + 30 + 10 minutes in slots 18, 19, 20
        rec("17.36", "17.50", A, "u1"),  # 17:36-17:50 = 14 min in slot 35 (not 17.36 hours)
    ])
    ds = prepare_shanghai(folder, min_active_slots=1)
    assert ds.T == 48 and ds.n_samples == 1
    expect = np.zeros(48)
    expect[18:21] = [10, 30, 10]
    expect[35] = 14
    np.testing.assert_allclose(ds.traffic[0], expect)
    assert ds.meta["traffic_unit"] == "minutes"
    assert ds.samples["start"].iloc[0] == "2014-06-14T00:00:00"


def test_midnight_crossing_is_clipped_and_counted(folder):
    write_day(folder, "data_6_14.txt", [rec("23.50", "0.20", A, "u1"), rec("1.00", "1.10", A, "u1")])
    ds = prepare_shanghai(folder, min_active_slots=1)
    assert ds.traffic[0, 47] == 10 and ds.traffic[0, 0] == 0 and ds.traffic[0, 2] == 10
    assert ds.traffic.sum() == 20
    assert ds.meta["counts"]["midnight_crossing_clipped"] == 1
    assert any("midnight" in n and n.startswith("1 ") for n in ds.meta["notes"])


def test_zero_and_out_of_box_coordinates_dropped_and_counted(folder):
    write_day(folder, "data_6_14.txt", [
        rec("8.00", "8.10", A, "u1"),
        rec("9.00", "9.10", (0, 0), "u1"),
        rec("9.00", "9.10", ("0.0", "0.000000"), "u2"),
        rec("10.00", "10.10", (39.9, 116.4), "u1"),  # Beijing
    ])
    ds = prepare_shanghai(folder, min_active_slots=1)
    c = ds.meta["counts"]
    assert c["records_read"] == 4 and c["records_kept"] == 1
    assert c["records_dropped"] == {"zero_coordinates": 2, "outside_bbox": 1, "unknown_station": 0}
    assert list(ds.samples["user"]) == ["u1"]
    assert ds.meta["filters"]["bbox"] == [30.6, 31.9, 120.8, 122.2]


def test_argmax_station_ties_and_fill(folder):
    write_day(folder, "data_6_14.txt", [
        rec("10.00", "10.05", A, "u1"), rec("10.10", "10.22", B, "u1"),  # slot 20: B (12 > 5)
        rec("12.00", "12.07", C, "u1"), rec("12.10", "12.17", B, "u1"),  # slot 24: tie 7/7 -> id 1 (B)
        rec("15.00", "15.00", C, "u1"),  # zero-length: still a record of C in slot 30
    ])
    ds = prepare_shanghai(folder, min_active_slots=1)
    r = 0
    got = [_sid(ds, r, t) for t in range(48)]
    assert got[:20] == ["1"] * 20  # backward fill before the first record
    assert got[20:30] == ["1"] * 10  # slot 20 = B, carried forward
    assert got[30:] == ["2"] * 18  # zero-length record at C, carried to the end
    assert ds.traffic[0, 30] == 0 and ds.meta["counts"]["zero_length_sessions"] == 1
    assert ds.meta["counts"]["active_slots"] == 3


def test_overlapping_sessions_count_once(folder):
    write_day(folder, "data_6_14.txt", [rec("16.07", "17.24", A, "u1"), rec("16.07", "16.08", B, "u1"),
                                        rec("16.20", "16.50", C, "u1")])
    ds = prepare_shanghai(folder, min_active_slots=1)
    assert ds.traffic.max() <= 30
    np.testing.assert_allclose(ds.traffic[0, 32:35], [23, 30, 24])


def test_min_active_slots_and_station_table(folder):
    write_day(folder, "data_6_14.txt", [
        rec("1.00", "3.00", A, "u1"),  # 4 active slots
        rec("5.00", "5.10", B, "u2"), rec("7.00", "7.10", B, "u2"),  # 2 active slots
    ])
    write_day(folder, "data_6_16.txt", [rec("1.00", "1.10", C, "u2")] + [
        rec(f"{h}.00", f"{h}.05", C, "u2") for h in range(2, 6)])
    ds = prepare_shanghai(folder, min_active_slots=3, year=2015)
    assert [(u, s) for u, s in zip(ds.samples["user"], ds.samples["start"])] == [
        ("u1", "2015-06-14T00:00:00"), ("u2", "2015-06-16T00:00:00")]
    c = ds.meta["counts"]
    assert c["samples_before_filter"] == 3 and c["samples_dropped_min_active_slots"] == 1
    assert c["users"] == 2
    # only stations used by the kept samples, re-indexed, original ids kept
    assert list(ds.stations["station_id"]) == ["0", "2"]
    assert ds.stations["lat"].iloc[1] == pytest.approx(C[0])
    full = prepare_shanghai(folder, min_active_slots=3, all_stations=True)
    assert len(full.stations) == 5 and list(full.stations["station_id"]) == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(full.stations["station_id"].to_numpy()[full.locations],
                                  ds.stations["station_id"].to_numpy()[ds.locations])


@pytest.mark.parametrize("bad,column", [("17.75", "start"), ("ab", "start"), ("25.00", "start"),
                                         ("", "start"), ("9.6x", "end")])
def test_bad_time_names_file_and_line(folder, bad, column):
    start, end = (bad, "10.00") if column == "start" else ("9.00", bad)
    write_day(folder, "data_6_14.txt", [rec("8.00", "8.10", A, "u1"), rec(start, end, A, "u1")])
    with pytest.raises(InputError, match=rf"data_6_14\.txt, line 2(.|\n)*unparsable {column} time"):
        prepare_shanghai(folder, min_active_slots=1)


def test_bad_coordinate_and_unknown_station(folder):
    write_day(folder, "data_6_14.txt",
              [rec("8.00", "8.10", A, "u1"), rec("8.00", "8.10", ("x", "121"), "u1")])
    with pytest.raises(InputError, match=r"data_6_14\.txt, line 2(.|\n)*latitude"):
        prepare_shanghai(folder, min_active_slots=1)
    write_day(folder, "data_6_14.txt", [rec("8.00", "8.10", A, "u1"), rec("8.00", "8.10", A, "u2"),
                                        rec("9.00", "9.10", (31.2, 121.4), "u2")])
    with pytest.raises(InputError, match=r"data_6_14\.txt, line 3(.|\n)*no station") as info:
        prepare_shanghai(folder, min_active_slots=1)
    assert "unknown_stations" in str(info.value)
    ds = prepare_shanghai(folder, min_active_slots=1, unknown_stations="drop")
    assert ds.meta["counts"]["records_dropped"]["unknown_station"] == 1


def test_malformed_line_and_missing_files(folder, tmp_path_factory):
    write_day(folder, "data_6_14.txt", [rec("8.00", "8.10", A, "u1"), "8.00\t8.10\t31.2"])
    with pytest.raises(InputError, match=r"data_6_14\.txt, line 2"):
        prepare_shanghai(folder, min_active_slots=1)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(InputError, match="no day files"):
        prepare_shanghai(empty)
    write_day(empty, "data_6_14.txt", [rec("8.00", "8.10", A, "u1")])
    with pytest.raises(InputError, match="base_stations_all.csv"):
        prepare_shanghai(empty)
    with pytest.raises(InputError, match="valid date"):
        write_day(folder, "data_2_30.txt", [rec("8.00", "8.10", A, "u1")])
        prepare_shanghai(folder)


def test_empty_after_filters_and_bad_T(folder):
    write_day(folder, "data_6_14.txt", [rec("8.00", "8.10", A, "u1")])
    with pytest.raises(InputError, match="no sample is left"):
        prepare_shanghai(folder, min_active_slots=5)
    with pytest.raises(InputError, match="no record is left"):
        prepare_shanghai(folder, bbox=(40, 41, 100, 101))
    with pytest.raises(InputError, match="divisible by 8"):
        prepare_shanghai(folder, bin_minutes=120)
    ds = prepare_shanghai(folder, bin_minutes=15, min_active_slots=1)
    assert ds.T == 96 and ds.traffic[0, 32] == 10


def test_prepare_writes_dataset_with_meta(folder, tmp_path):
    write_day(folder, "data_6_14.txt", [rec("9.20", "10.10", A, "u1"), rec("23.50", "0.20", A, "u1"),
                                        rec("9.00", "9.10", (0, 0), "u1")])
    out = tmp_path / "out" / "prepared"
    ds = prepare("shanghai-telecom", folder, out, min_active_slots=1)
    meta = json.loads((out / "meta.json").read_text())
    for key in ("source", "bin_minutes", "T", "filters", "counts", "normalisation", "traffic_unit",
                "notes", "command", "options"):
        assert key in meta, key
    assert meta["source"] == "shanghai-telecom" and meta["T"] == 48
    assert meta["counts"]["records_dropped"]["zero_coordinates"] == 1
    assert meta["counts"]["midnight_crossing_clipped"] == 1
    assert meta["normalisation"]["max"] == 30.0
    assert ds.n_samples == 1
    with pytest.raises(InputError, match="already exists"):
        prepare("shanghai-telecom", folder, out, min_active_slots=1)
    with pytest.raises(InputError, match="do not apply"):
        prepare("shanghai-telecom", folder, None, window="week")


def test_failed_prepare_leaves_no_output(folder, tmp_path):
    write_day(folder, "data_6_14.txt", [rec("xx", "10.10", A, "u1")])
    out = tmp_path / "never"
    with pytest.raises(InputError):
        prepare("shanghai-telecom", folder, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


@pytest.mark.realdata
def test_real_shanghai_invariants(shared_data):
    raw = shared_data / "shanghai_telecom"
    if not raw.is_dir():
        pytest.skip(f"{raw} not found")
    ds = prepare_shanghai(raw)
    c = ds.meta["counts"]
    n_lines = sum(sum(1 for _ in open(p)) for p in sorted(raw.glob("data_*_*.txt")))
    assert c["records_read"] == n_lines
    assert c["records_read"] == c["records_kept"] + sum(c["records_dropped"].values())
    assert c["records_dropped"]["zero_coordinates"] > 0 and c["records_dropped"]["unknown_station"] == 0
    assert ds.T == 48 and ds.n_samples == c["samples"] > 1000
    assert not ds.samples.duplicated(["user", "start"]).any()  # no user twice per day
    assert set(ds.samples["start"]) <= {"2014-06-14T00:00:00", "2014-06-16T00:00:00"}
    assert ds.locations.min() >= 0 and ds.locations.max() < ds.n_stations
    assert (ds.traffic >= 0).all() and (ds.traffic <= 30).all()
    assert (ds.traffic > 0).sum(axis=1).min() >= 1
    assert np.unique(ds.locations).size == ds.n_stations  # only used stations kept
    lat, lon = ds.stations["lat"], ds.stations["lon"]
    assert lat.between(30.6, 31.9).all() and lon.between(120.8, 122.2).all()
    assert ds.stations["station_id"].is_unique
    assert 0 < c["midnight_crossing_clipped"] < 0.05 * c["records_kept"]


@settings(max_examples=40, deadline=None)
@given(sessions=st.lists(st.tuples(st.integers(0, 1439), st.integers(0, 240)), min_size=1, max_size=8),
       bin_minutes=st.sampled_from([15, 30, 90, 180]))
def test_union_minutes_matches_minute_set(sessions, bin_minutes):
    ivs = [(s, min(s + d, 1440)) for s, d in sessions]
    df = pd.DataFrame({"user": "u", "day": pd.Timestamp("2014-06-14"),
                       "s": [a for a, _ in ivs], "e": [b for _, b in ivs]})
    with duckdb.connect() as con:
        con.register("iv", df)
        con.execute(union_minutes_sql("iv", bin_minutes=bin_minutes, name="um"))
        got = dict(con.execute("SELECT slot, traffic FROM um").fetchall())
    covered = set().union(*(range(a, b) for a, b in ivs))
    for slot in range(1440 // bin_minutes):
        expect = len(covered & set(range(slot * bin_minutes, (slot + 1) * bin_minutes)))
        assert got.get(slot, 0.0) == expect
