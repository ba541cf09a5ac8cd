import numpy as np
import pytest

from mstdiff.data.appusage import prepare_app_usage, read_poi_table
from mstdiff.data.prepare import prepare
from mstdiff.errors import InputError

POI_HEADER = "BaseID\tMedical care\tHotel\tBusiness affairs"


def write_poi(path, rows):
    lines = [POI_HEADER] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CRLF, as distributed


def write_trace(path, rows):
    path.write_text("\n".join(" ".join(str(v) for v in r) for r in rows) + "\n")


# user timestamp station app bytes
TRACE = [
    (0, "20160420081319", 8194, 361, 1920),  # day 0 slot 16
    (0, "20160420081500", 17, 2, 3000),  # slot 16: station 17 has more bytes -> location
    (0, "20160420082900", 8194, 2, 100),  # slot 16 total: 5020
    (0, "20160420120000", 5, 2, 0),  # slot 24: zero bytes, still a record of station 5
    (0, "20160421000000", 5, 2, 7),  # day 1 slot 0 (week slot 48)
    (1, "20160420230000", 17, 2, 50),  # user 1: one slot only
    (0, "20160427000000", 5, 2, 99),  # after the study week: dropped
    (0, "20160419235959", 5, 2, 99),  # before: dropped
]


@pytest.fixture
def trace_dir(tmp_path):
    write_trace(tmp_path / "App_usage_trace.txt", TRACE)
    write_poi(tmp_path / "base_poi.txt", [(5, 1, 2, 3), (17, 0, 0, 9), (99, 4, 4, 4)])
    return tmp_path


def test_week_window_sums_bytes_and_takes_argmax(trace_dir):
    ds = prepare_app_usage(trace_dir, min_active_slots=1)
    assert ds.T == 336 and ds.meta["traffic_unit"] == "bytes" and ds.meta["record_format"] == "trace"
    assert list(ds.samples["user"]) == ["0", "1"]
    assert set(ds.samples["start"]) == {"2016-04-20T00:00:00"}
    tr = ds.traffic[0]
    assert tr[16] == 5020 and tr[24] == 0 and tr[48] == 7 and tr.sum() == 5027
    sid = ds.stations["station_id"].to_numpy()[ds.locations[0]]
    assert sid[0] == "17" and sid[16] == "17" and sid[23] == "17"  # backward and forward fill
    assert sid[24] == "5" and sid[335] == "5"
    c = ds.meta["counts"]
    assert c["records_read"] == 8 and c["records_dropped"] == {"outside_period": 2} and c["records_kept"] == 6
    assert list(ds.stations["station_id"]) == ["5", "17"]  # only stations of kept samples, numeric order


def test_day_windows_min_active_and_poi(trace_dir):
    ds = prepare_app_usage(trace_dir, window="day", min_active_slots=2)
    assert ds.T == 48
    # user 0 day 0 has 2 active slots; user 0 day 1 and user 1 day 0 have one -> dropped
    assert list(zip(ds.samples["user"], ds.samples["start"])) == [("0", "2016-04-20T00:00:00")]
    assert ds.meta["counts"]["samples_dropped_min_active_slots"] == 2
    st = ds.stations.set_index("station_id")
    assert list(st.columns[:2]) == ["lat", "lon"] and st["lat"].isna().all()
    assert st.loc["17", "poi_business_affairs"] == 9 and st.loc["5", "poi_medical_care"] == 1
    assert any("distance metrics" in n for n in ds.meta["notes"])
    assert ds.meta["poi_file"] == "base_poi.txt"


def test_coordinates_and_all_stations(trace_dir, tmp_path):
    coords = tmp_path / "coords.csv"
    coords.write_text("base_id,latitude,longitude\n17,31.2,121.4\n5,31.3,121.5\n")
    ds = prepare_app_usage(trace_dir, min_active_slots=1, coords=coords, all_stations=True)
    assert list(ds.stations["station_id"]) == ["5", "17", "99", "8194"]
    st = ds.stations.set_index("station_id")
    assert st.loc["17", "lat"] == 31.2 and np.isnan(st.loc["8194", "lat"])
    assert ds.meta["counts"]["stations_without_coordinates"] == 2
    assert not any("no station coordinates" in n for n in ds.meta["notes"])
    assert ds.stations["station_id"].to_numpy()[ds.locations[0, 16]] == "17"


def test_csv_layout(tmp_path):
    f = tmp_path / "data_sample.csv"
    f.write_text("user_id,time,location,app_id,app_cate_id,traffic\n"
                 "4,20160420080933,4093,2,5,7674\n4,20160420080934,4093,2,5,8290\n"
                 "4,20160420090000,354,2,5,1\n")
    ds = prepare_app_usage(f, window="day", min_active_slots=1, use_poi=False)
    assert ds.meta["record_format"] == "csv"
    assert ds.traffic[0, 16] == 7674 + 8290 and ds.traffic[0, 18] == 1
    assert [c for c in ds.stations.columns if c.startswith("poi_")] == []


@pytest.mark.parametrize("row,pattern", [
    ((0, "2016042008131", 5, 2, 10), "unparsable timestamp"),
    ((0, "20160420081319", 5, 2, -3), "negative traffic"),
    ((0, "20160420081319", 5, 2, "nan"), "not a finite number"),
    ((0, "20160420081319", 5, 2, "12kB"), "not a finite number"),
])
def test_bad_values_name_file_and_line(tmp_path, row, pattern):
    write_trace(tmp_path / "App_usage_trace.txt", [TRACE[0], TRACE[1], row])
    with pytest.raises(InputError, match=rf"App_usage_trace\.txt, line 3(.|\n)*{pattern}"):
        prepare_app_usage(tmp_path, use_poi=False)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="App_usage_trace.txt"):
        prepare_app_usage(tmp_path)  # nothing there
    f = tmp_path / "data_sample.csv"
    f.write_text("user_id,time,app_id,traffic\n4,20160420080933,2,7674\n")
    with pytest.raises(InputError, match=r"data_sample\.csv(.|\n)*location"):
        prepare_app_usage(f)
    write_trace(tmp_path / "App_usage_trace.txt", [TRACE[0], (1, 2, 3)])
    with pytest.raises(InputError, match=r"App_usage_trace\.txt, line 2"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", use_poi=False)
    write_trace(tmp_path / "App_usage_trace.txt", TRACE)
    with pytest.raises(InputError, match="study period"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", start="2017-01-01", use_poi=False)
    with pytest.raises(InputError, match="no sample is left"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", min_active_slots=10, use_poi=False)
    with pytest.raises(InputError, match="divisible by 8"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", window="day", bin_minutes=120, use_poi=False)
    with pytest.raises(InputError, match="window"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", window="month")
    with pytest.raises(InputError, match="POI table not found"):
        prepare_app_usage(tmp_path / "App_usage_trace.txt", poi=tmp_path / "nope.txt")


def test_poi_table_reader(tmp_path):
    p = tmp_path / "base_poi.txt"
    write_poi(p, [(0, 1, 3, 4), (1, 0, 0, "x")])
    with pytest.raises(InputError, match=r"base_poi\.txt, line 3"):
        read_poi_table(p)
    write_poi(p, [(0, 1, 3, 4), (1, 0, 0, 7)])
    df = read_poi_table(p)
    assert list(df.columns) == ["station_id", "poi_medical_care", "poi_hotel", "poi_business_affairs"]
    assert df["poi_business_affairs"].tolist() == [4.0, 7.0]


@pytest.mark.realdata
def test_real_app_usage_sample(shared_data, tmp_path):
    raw = shared_data / "tsinghua_app_usage" / "llmapp_sample" / "data_sample.csv"
    if not raw.is_file():
        pytest.skip(f"{raw} not found")
    ds = prepare("app-usage", raw, tmp_path / "au", window="day")
    c = ds.meta["counts"]
    assert ds.T == 48 and c["records_read"] == c["records_kept"] == sum(1 for _ in open(raw)) - 1
    assert not ds.samples.duplicated(["user", "start"]).any()
    assert set(ds.samples["start"]) == {"2016-04-20T00:00:00"}
    assert 1 <= ds.n_samples <= 6
    assert ds.locations.min() >= 0 and ds.locations.max() < ds.n_stations
    assert (ds.traffic >= 0).all() and ds.traffic.max() > 0
    poi = [col for col in ds.stations.columns if col.startswith("poi_")]
    assert len(poi) == 17 and ds.stations[poi].notna().all().all()  # ids in 0..9850 all have a row
    assert ds.stations["lat"].isna().all()
    assert any("BaseIDs" in n for n in ds.meta["notes"])
    week = prepare_app_usage(raw)
    assert week.T == 336 and any("cover 1 day" in n for n in week.meta["notes"])
