import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mstdiff.data.binning import (
    Check,
    TextTable,
    bin_slots,
    duckdb_errors,
    duckdb_session,
    fill_locations,
    reindex_stations,
    run_checks,
    slots_per_window,
    spread_sql,
    try_double,
    window_slot_sql,
)
from mstdiff.errors import InputError


def _cells(con, rows):
    df = pd.DataFrame(rows, columns=["user", "window_start", "slot", "station", "amount"])
    df["window_start"] = pd.to_datetime(df["window_start"])
    df["slot"] = df["slot"].astype("int32")
    df["station"] = df["station"].astype("int64")
    df["amount"] = df["amount"].astype(float)
    con.register("cells_df", df)
    return "cells_df"


def test_fill_locations_forward_and_backward():
    obs = np.array([[-1, -1, 3, -1, 5, -1], [2, -1, -1, -1, -1, -1], [-1] * 6])
    out = fill_locations(obs)
    np.testing.assert_array_equal(out[0], [3, 3, 3, 3, 5, 5])
    np.testing.assert_array_equal(out[1], [2] * 6)
    np.testing.assert_array_equal(out[2], [-1] * 6)
    assert obs[0, 0] == -1  # input not modified


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                  elements=st.integers(-1, 4)))
def test_fill_locations_matches_loop(obs):
    out = fill_locations(obs)
    for u in range(obs.shape[0]):
        known = [t for t in range(obs.shape[1]) if obs[u, t] >= 0]
        for t in range(obs.shape[1]):
            if not known:
                expect = -1
            elif obs[u, t] >= 0:
                expect = obs[u, t]
            else:
                before = [k for k in known if k < t]
                expect = obs[u, before[-1]] if before else obs[u, known[0]]
            assert out[u, t] == expect


def test_bin_slots_argmax_ties_sum_and_filter():
    T = 8
    rows = [
        # u1 day 1: slot 1 has station 4 (5) vs station 2 (3+3=6) -> 2; slot 3 tie 7 vs 7 -> smaller (1)
        ("u1", "2020-01-01", 1, 4, 5.0), ("u1", "2020-01-01", 1, 2, 3.0), ("u1", "2020-01-01", 1, 2, 3.0),
        ("u1", "2020-01-01", 3, 7, 7.0), ("u1", "2020-01-01", 3, 1, 7.0),
        ("u1", "2020-01-01", 6, 0, 0.0),  # zero-amount record: still a location, traffic 0
        # u0 day 2: only one active slot -> dropped when min_active_slots=2
        ("u0", "2020-01-02", 5, 3, 9.0),
        # u0 day 1: two active slots
        ("u0", "2020-01-01", 0, 5, 1.0), ("u0", "2020-01-01", 7, 6, 2.0),
    ]
    with duckdb_session(threads=1) as con:
        out = bin_slots(con, _cells(con, rows), T=T, min_active_slots=2)
    assert list(out.samples["user"]) == ["u0", "u1"]  # sorted by user, then window
    assert list(out.samples["start"]) == ["2020-01-01T00:00:00", "2020-01-01T00:00:00"]
    np.testing.assert_allclose(out.traffic[1], [0, 11, 0, 14, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.locations[1], [2, 2, 2, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out.locations[0], [5, 5, 5, 5, 5, 5, 5, 6])
    np.testing.assert_allclose(out.traffic[0], [1, 0, 0, 0, 0, 0, 0, 2])
    c = out.counts
    assert c["samples_before_filter"] == 3 and c["samples_dropped_min_active_slots"] == 1
    assert c["samples"] == 2 and c["users"] == 2 and c["active_slots"] == 5
    assert c["active_slot_share"] == pytest.approx(5 / 16)


def test_bin_slots_traffic_override():
    rows = [("u", "2020-01-01", 2, 1, 20.0), ("u", "2020-01-01", 2, 0, 20.0)]
    with duckdb_session() as con:
        cells = _cells(con, rows)
        con.execute("CREATE TEMP TABLE tr AS SELECT 'u' AS user, TIMESTAMP '2020-01-01' AS window_start, "
                    "2 AS slot, 25.0 AS traffic")
        out = bin_slots(con, cells, T=8, min_active_slots=1, traffic="tr")
    assert out.traffic[0, 2] == 25.0 and out.traffic.sum() == 25.0
    assert (out.locations[0] == 0).all()  # tie 20 vs 20 -> smaller index


def test_bin_slots_rejects_bad_T_and_reports_empty():
    with duckdb_session() as con:
        cells = _cells(con, [("u", "2020-01-01", 0, 0, 1.0)])
        with pytest.raises(InputError, match="divisible by 8"):
            bin_slots(con, cells, T=12, min_active_slots=1)
        out = bin_slots(con, cells, T=8, min_active_slots=2)
    assert out.traffic.shape == (0, 8) and out.counts["samples_dropped_min_active_slots"] == 1


def test_spread_sql_minutes_per_slot():
    with duckdb.connect() as con:
        con.execute("CREATE TABLE iv AS SELECT * FROM (VALUES (560, 610), (700, 700), (1430, 1440), (0, 30)) "
                    "t(s, e)")
        rows = con.execute(f"SELECT s, slot, amount FROM ({spread_sql('iv', bin_minutes=30, keys=['s'])}) "
                           "ORDER BY s, slot").fetchall()
    assert rows == [
        (0, 0, 30.0),
        (560, 18, 10.0), (560, 19, 30.0), (560, 20, 10.0),  # 9:20-10:10
        (700, 23, 0.0),  # zero-length session: its start slot, no minutes
        (1430, 47, 10.0),
    ]


def test_window_slot_sql_exact():
    ws, slot = window_slot_sql("ts", origin="2016-04-20 00:00:00", window_minutes=10080, bin_minutes=30)
    with duckdb.connect() as con:
        got = con.execute(
            f"SELECT {ws}, {slot} FROM (VALUES (TIMESTAMP '2016-04-20 00:00:00'), "
            "(TIMESTAMP '2016-04-26 23:59:59.999'), (TIMESTAMP '2016-04-27 00:30:00'), "
            "(TIMESTAMP '2016-04-19 23:59:00')) t(ts)"
        ).fetchall()
    assert [str(w) for w, _ in got] == ["2016-04-20 00:00:00", "2016-04-20 00:00:00",
                                        "2016-04-27 00:00:00", "2016-04-13 00:00:00"]
    assert [s for _, s in got] == [0, 335, 1, 335]


@pytest.mark.parametrize("window,bin_,ok", [(1440, 30, 48), (10080, 30, 336), (1440, 60, 24),
                                             (1440, 7, None), (1440, 120, None), (1440, 0, None)])
def test_slots_per_window(window, bin_, ok):
    if ok is None:
        with pytest.raises(InputError):
            slots_per_window(window, bin_)
    else:
        assert slots_per_window(window, bin_) == ok


def test_reindex_stations_keeps_order():
    kept, loc = reindex_stations(np.array([[5, 5, 2], [9, 2, 2]]), 10)
    np.testing.assert_array_equal(kept, [2, 5, 9])
    np.testing.assert_array_equal(loc, [[1, 1, 0], [2, 0, 0]])


def test_run_checks_names_file_and_line(tmp_path):
    f = tmp_path / "recs.csv"
    f.write_text("a,b\n1,2\n3,oops\n4,5\n")
    table = TextTable((f,), ("a", "b"), delimiter=",", header=True, quote='"')
    with duckdb_session() as con:
        con.execute(f"CREATE VIEW p AS SELECT *, {try_double('b')} AS bd FROM {table.relation()}")
        run_checks(con, "p", [Check("bd < 0", ("b",), "negative", "fix")], table.locate)  # passes
        with pytest.raises(InputError, match=r"recs\.csv, line 3(.|\n)*'oops'"):
            run_checks(con, "p", [Check("bd IS NULL", ("b",), "not a number", "fix it")], table.locate)


def test_duckdb_parse_errors_become_input_errors(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("1\t2\n3\t4\t5\n")
    table = TextTable((f,), ("a", "b"), delimiter="\t", header=False)
    with pytest.raises(InputError, match=r"bad\.tsv, line 2") as info:
        with duckdb_session() as con, duckdb_errors(str(f)):
            con.execute(f"SELECT * FROM {table.relation()}").fetchall()
    assert "Traceback" not in str(info.value)
