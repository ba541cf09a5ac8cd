import json

import numpy as np
import pandas as pd
import pytest

from mstdiff.data.prepare import prepare, source_options
from mstdiff.data.tabular import prepare_tabular, read_station_table
from mstdiff.errors import InputError

RECORDS = """user_id,timestamp,station_id,traffic
alice,2021-03-01 08:10:00,s2,100
alice,2021-03-01 08:20:00,s1,150
alice,2021-03-01 08:25:00,s2,60
alice,2021-03-01 12:00:00,s3,5
alice,2021-03-02 00:05:00,s1,1
bob,2021-03-01 23:59:59,s3,7
"""
STATIONS = """station_id,lat,lon,kind,capacity
s1,31.20,121.40,office,10
s2,31.25,121.45,home,20
s3,31.30,121.50,mall,
s4,31.35,121.55,park,5
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "records.csv").write_text(RECORDS)
    (tmp_path / "stations.csv").write_text(STATIONS)
    return tmp_path / "records.csv", tmp_path / "stations.csv"


def test_daily_binning_with_station_table(files):
    rec, st = files
    ds = prepare_tabular(rec, stations=st, min_active_slots=1, traffic_unit="bytes")
    assert ds.T == 48
    assert list(zip(ds.samples["user"], ds.samples["start"])) == [
        ("alice", "2021-03-01T00:00:00"), ("alice", "2021-03-02T00:00:00"), ("bob", "2021-03-01T00:00:00")]
    assert ds.traffic[0, 16] == 310 and ds.traffic[0, 24] == 5 and ds.traffic[0].sum() == 315
    ids = ds.stations["station_id"].to_numpy()
    loc = ids[ds.locations[0]]
    assert loc[16] == "s2"  # s2: 160 bytes > s1: 150
    assert (loc[:16] == "s2").all() and (loc[17:24] == "s2").all() and (loc[24:] == "s3").all()
    assert (ids[ds.locations[2]] == "s3").all() and ds.traffic[2, 47] == 7
    # stations: only used ones, table order, features kept (numeric ones as floats)
    assert list(ds.stations["station_id"]) == ["s1", "s2", "s3"]
    assert list(ds.stations["kind"]) == ["office", "home", "mall"]
    assert ds.stations["capacity"].dtype == float and np.isnan(ds.stations["capacity"].iloc[2])
    assert ds.meta["traffic_unit"] == "bytes" and ds.meta["counts"]["records_read"] == 6


def test_week_window_origin_and_column_mapping(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("uid;when;cell;bytes\nu;01/03/2021 08:10;c1;4\nu;03/03/2021 09:00;c2;6\n"
                 "u;26/02/2021 09:00;c2;6\n")
    ds = prepare_tabular(
        f, columns={"user": "uid", "timestamp": "when", "station": "cell", "traffic": "bytes"},
        timestamp_format="%d/%m/%Y %H:%M", delimiter=";", window_minutes=7 * 1440,
        origin="2021-03-01", min_active_slots=1,
    )
    assert ds.T == 336 and ds.samples["start"].iloc[0] == "2021-03-01T00:00:00"
    assert ds.traffic[0, 16] == 4 and ds.traffic[0, 96 + 18] == 6
    assert ds.meta["counts"]["records_dropped"]["before_origin"] == 1
    assert ds.stations["lat"].isna().all()  # no station table
    assert any("coordinates are unknown" in n for n in ds.meta["notes"])


def test_parquet_and_unix_time(tmp_path):
    df = pd.DataFrame({"user_id": ["a", "a", "b"], "timestamp": [0, 1800 * 3 + 5, 60],
                       "station_id": [1, 2, 1], "traffic": [1.5, 2.0, 3.0]})
    df.to_parquet(tmp_path / "r.parquet")
    pd.DataFrame({"station_id": ["1", "2"], "lat": [1.0, 2.0], "lon": [3.0, 4.0]}).to_parquet(
        tmp_path / "s.parquet")
    ds = prepare_tabular(tmp_path / "r.parquet", stations=tmp_path / "s.parquet", timestamp_format="unix",
                         min_active_slots=1)
    assert ds.samples["start"].tolist() == ["1970-01-01T00:00:00"] * 2
    assert ds.traffic[0, 0] == 1.5 and ds.traffic[0, 3] == 2.0 and ds.traffic[1, 0] == 3.0
    df.loc[1, "traffic"] = -1.0
    df.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(InputError, match=r"r\.parquet, row 2(.|\n)*negative traffic"):
        prepare_tabular(tmp_path / "r.parquet", timestamp_format="unix", min_active_slots=1)


@pytest.mark.parametrize("line,pattern", [
    ("alice,yesterday,s1,3", "unparsable timestamp"),
    ("alice,2021-03-01 08:00:00,s1,-3", "negative traffic"),
    ("alice,2021-03-01 08:00:00,s1,NaN", "not a finite number"),
    ("alice,2021-03-01 08:00:00,s1,", "not a finite number"),
    (",2021-03-01 08:00:00,s1,3", "empty user id"),
    ("alice,2021-03-01 08:00:00,s9,3", "not in the station table"),
])
def test_bad_records_name_file_and_line(files, line, pattern):
    rec, st = files
    rec.write_text(RECORDS + line + "\n")
    with pytest.raises(InputError, match=rf"records\.csv, line 8(.|\n)*{pattern}"):
        prepare_tabular(rec, stations=st, min_active_slots=1)


def test_unknown_station_drop_and_other_errors(files, tmp_path):
    rec, st = files
    rec.write_text(RECORDS + "alice,2021-03-01 08:00:00,s9,3\n")
    ds = prepare_tabular(rec, stations=st, min_active_slots=1, unknown_stations="drop")
    assert ds.meta["counts"]["records_dropped"]["unknown_station"] == 1
    with pytest.raises(InputError, match=r"records\.csv(.|\n)*'volume' \(traffic\)"):
        prepare_tabular(rec, columns={"traffic": "volume"})
    with pytest.raises(InputError, match="divisible by 8"):
        prepare_tabular(rec, bin_minutes=40)
    with pytest.raises(InputError, match="whole number"):
        prepare_tabular(rec, bin_minutes=7)
    with pytest.raises(InputError, match="no sample is left"):
        prepare_tabular(rec, stations=st, min_active_slots=30, unknown_stations="drop")
    with pytest.raises(InputError, match="unknown columns role"):
        prepare_tabular(rec, columns={"time": "t"})
    rec.write_text(RECORDS + "alice,2021-03-01,s1,3,extra\n")
    with pytest.raises(InputError, match=r"records\.csv, line 8"):
        prepare_tabular(rec)


def test_station_table_errors(tmp_path):
    p = tmp_path / "st.csv"
    p.write_text("station_id,lat,lon\na,31,121\nb,north,121\n")
    with pytest.raises(InputError, match=r"st\.csv, line 3(.|\n)*'north'"):
        read_station_table(p)
    p.write_text("station_id,lat,lon\na,31,121\na,32,121\n")
    with pytest.raises(InputError, match=r"st\.csv, line 3(.|\n)*twice"):
        read_station_table(p)
    p.write_text("id,lat,lon\na,31,121\n")
    with pytest.raises(InputError, match=r"st\.csv(.|\n)*'station_id'"):
        read_station_table(p)
    assert read_station_table(p, station_columns={"station_id": "id"})["station_id"].tolist() == ["a"]


def test_prepare_csv_dispatch_and_meta(files, tmp_path):
    rec, st = files
    out = tmp_path / "prepared"
    ds = prepare("csv", rec, out, stations=st, min_active_slots=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "csv" and meta["T"] == 48 and meta["counts"]["samples"] == ds.n_samples == 3
    assert meta["options"]["stations"] == str(st) and meta["options"]["bin_minutes"] == 30
    assert meta["normalisation"]["max"] == 310.0 and "command" in meta
    assert "stations" in source_options("csv")
    with pytest.raises(InputError, match="unknown source"):
        prepare("excel", rec, None)
    with pytest.raises(InputError, match="needs raw input"):
        prepare("csv", None, None)
