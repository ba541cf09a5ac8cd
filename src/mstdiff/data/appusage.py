"""Reader for the Tsinghua "App Usage" records (official trace and the LLMApp CSV sample).

Two layouts are read:

- ``trace``: the official ``App_usage_trace.txt``, space-separated without header,
  ``user timestamp(YYYYMMDDhhmmss) station app bytes``; 1000 users, 2016-04-20 .. 2016-04-26.
- ``csv``: the LLMApp sample ``data_sample.csv``, with a header and (at least) the columns
  ``user_id, time, location, traffic`` (time as YYYYMMDDhhmmss, traffic in bytes).

Traffic = bytes summed per slot; a slot's location is the station with most bytes in it. Samples are
user-weeks (``window="week"``, T = 336 at 30 min, the paper's setting) or user-days
(``window="day"``, T = 48), in windows starting at ``start`` (default 2016-04-20 00:00).

Station context: POI counts per station come from the official ``base_poi.txt`` (BaseID + 17
categories), joined on the station id as columns ``poi_<category>``. The public dataset has **no
station coordinates**; pass a coordinate table (``coords``: station id, lat, lon) if you have one,
otherwise lat/lon are NaN and meta.json says that distance metrics are unavailable. (The
``location.csv`` of the LLMApp sample does *not* index this trace: see the data's SOURCE.md.)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.binning import (
    DEFAULT_BIN_MINUTES,
    MINUTES_PER_DAY,
    Check,
    TextTable,
    bin_slots,
    duckdb_errors,
    duckdb_session,
    ensure_samples,
    fetch_row,
    numeric_order_key,
    read_header,
    reindex_stations,
    run_checks,
    slots_per_window,
    sql_ident,
    sql_str,
    try_double,
    window_slot_sql,
)
from mstdiff.data.dataset import PARQUET_ERRORS, PreparedDataset, normalisation_stats
from mstdiff.data.tabular import read_station_table, usable_header
from mstdiff.data.textfile import check_parquet, data_lines, scan_text
from mstdiff.errors import InputError

log = logging.getLogger(__name__)

SOURCE = "app-usage"
TRACE_FILE = "App_usage_trace.txt"
SAMPLE_FILES = ("llmapp_sample/data_sample.csv", "data_sample.csv")
POI_FILE = "base_poi.txt"
TRACE_COLUMNS = ("user", "time", "station", "app", "traffic")
CSV_ROLES = {"user": "user_id", "time": "time", "station": "location", "traffic": "traffic"}
WINDOWS = {"week": 7 * MINUTES_PER_DAY, "day": MINUTES_PER_DAY}
DEFAULT_START = "2016-04-20 00:00"
TIME_FORMAT = "%Y%m%d%H%M%S"
ID_NAMES = ("station_id", "base_id", "baseid", "id", "station", "location")
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "lng", "longitude")


def find_records(raw: Path) -> Path:
    """The records file: ``raw`` itself, or the trace / the LLMApp sample inside folder ``raw``."""
    raw = Path(raw)
    if raw.is_file():
        return raw
    if raw.is_dir():
        for name in (TRACE_FILE, TRACE_FILE + ".gz", *SAMPLE_FILES):
            if (raw / name).is_file():
                return raw / name
        raise InputError(
            f"found neither {TRACE_FILE} nor the LLMApp sample ({', '.join(SAMPLE_FILES)}) here",
            where=str(raw),
            fix=f"download {TRACE_FILE} from http://fi.ee.tsinghua.edu.cn/appusage/ into this folder, "
            "or pass the records file itself",
        )
    raise InputError("no such file or folder", where=str(raw), fix="pass the App Usage records file")


def detect_format(path: Path) -> str:
    """``"csv"`` (header line with commas) or ``"trace"`` (space-separated, no header)."""
    if path.name.lower().endswith((".csv", ".csv.gz")):
        return "csv"
    first = read_header(path, delimiter="\t", unique=False)  # the whole first line (no tabs in either layout)
    return "csv" if "," in first[0] else "trace"


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def read_poi_table(path: Path) -> pd.DataFrame:
    """``base_poi.txt`` as ``station_id`` (str) + ``poi_<category>`` float columns (CRLF is fine)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("POI table not found", where=str(path),
                         fix=f"pass the official {POI_FILE} (-o poi=PATH) or switch POI off "
                         "(-o use_poi=false)")
    scan_text(path, quote='"', what=f"the official {POI_FILE} (UTF-8, tab-separated, with a header line)")
    read_header(path, delimiter="\t")  # duplicate column names
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, OSError) as err:
        log.debug("pandas could not read %s: %s", path, err)
        raise InputError("cannot parse the POI table: its lines cannot be split into the header's columns",
                         where=str(path),
                         fix="it must be tab-separated with a header line (BaseID + categories)") from err
    df.columns = [str(c).strip().lstrip("\ufeff") for c in df.columns]
    if not len(df.columns) or df.columns[0].lower() != "baseid":
        raise InputError(f"the first column is {df.columns[0] if len(df.columns) else None!r}, not BaseID",
                         where=str(path), fix=f"pass the official {POI_FILE}")
    out = pd.DataFrame({"station_id": df.iloc[:, 0].str.strip()})
    for c in df.columns[1:]:
        val = pd.to_numeric(df[c].str.strip(), errors="coerce")
        bad = np.flatnonzero(val.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise InputError(f"column {c!r} holds {df[c].iloc[i]!r}, not a count",
                             where=f"{path}, line {i + 2}", fix="POI counts must be whole numbers")
        out[f"poi_{_snake(c)}"] = val.astype(float).to_numpy()
    out["station_id"] = _canonical_ids(out["station_id"])
    dup = out["station_id"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputError(f"BaseID {out['station_id'].iloc[i]!r} appears twice", where=f"{path}, line {i + 2}")
    return out


def _canonical_ids(ids: pd.Series) -> pd.Series:
    """Integer-like ids without leading zeros ("0012" -> "12"); other ids unchanged."""
    def canon(s: str) -> str:
        s = str(s).strip()
        return str(int(s)) if re.fullmatch(r"[+-]?\d+", s) else s

    return ids.map(canon)


def read_coordinate_table(path: Path) -> pd.DataFrame:
    """A station coordinate table (CSV/Parquet) with id, lat and lon columns found by name."""
    path = Path(path)
    if not path.is_file():
        raise InputError("coordinate table not found", where=str(path), fix="pass an existing file")
    if path.name.lower().endswith((".parquet", ".pq")):
        check_parquet(path)
        try:
            have = [str(c) for c in pd.read_parquet(path).columns]
        except PARQUET_ERRORS as err:
            raise InputError("cannot read the Parquet file's columns", where=str(path),
                             fix="write the file again or pass a CSV file (station id, lat, lon)") from err
    else:
        have = read_header(path)

    def pick(names: tuple[str, ...], role: str) -> str:
        for c in have:
            if c.lower() in names:
                return c
        raise InputError(
            f"no {role} column (looked for {list(names)}); the file has {have}", where=str(path),
            fix="name the columns station_id, lat, lon",
        )

    mapping = {"station_id": pick(ID_NAMES, "station id"), "lat": pick(LAT_NAMES, "latitude"),
               "lon": pick(LON_NAMES, "longitude")}
    st = read_station_table(path, station_columns=mapping, keep_features=False)
    st["station_id"] = _canonical_ids(st["station_id"])
    return st


def prepare_app_usage(
    raw: Path,
    *,
    window: str = "week",
    start: str = DEFAULT_START,
    end: str | None = None,
    bin_minutes: int = DEFAULT_BIN_MINUTES,
    min_active_slots: int = 5,
    record_format: str = "auto",
    poi: Path | None = None,
    use_poi: bool = True,
    coords: Path | None = None,
    all_stations: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> PreparedDataset:
    """Prepare App Usage records as user-week (or user-day) samples with traffic in bytes.

    Parameters
    ----------
    raw: the records file (``App_usage_trace.txt`` or ``data_sample.csv``) or a folder holding one.
    window: ``"week"`` (T = 7 days / bin) or ``"day"`` (T = 1 day / bin).
    start: start of the first window; records before it are dropped and counted.
    end: end (exclusive) of the study period; default ``start`` + 7 days (the dataset's week).
        Records at or after it are dropped and counted.
    bin_minutes: slot length (T must be divisible by 8).
    min_active_slots: keep samples with at least this many slots holding a record.
    record_format: ``"auto"``, ``"trace"`` or ``"csv"`` (see the module doc).
    poi: ``base_poi.txt``; default: looked up beside the records file and one folder up.
    use_poi: join POI counts (``False``: no POI columns).
    coords: optional station coordinate table (station id, lat, lon); default none (NaN coordinates).
    all_stations: keep every station of the POI/coordinate tables, not only those in kept samples.
    threads, memory_limit: DuckDB resources.
    """
    if window not in WINDOWS:
        raise InputError(f"window = {window!r}", where="window", fix=f"use one of {list(WINDOWS)}")
    window_minutes = WINDOWS[window]
    T = slots_per_window(window_minutes, bin_minutes)
    try:
        start_ts = pd.Timestamp(start)
        end_ts = pd.Timestamp(end) if end is not None else start_ts + pd.Timedelta(days=7)
    except (ValueError, TypeError) as err:
        raise InputError(f"start/end {start!r}/{end!r} is not a timestamp", where="start",
                         fix="e.g. 2016-04-20 00:00") from err
    if end_ts <= start_ts:
        raise InputError(f"end {end_ts} is not after start {start_ts}", where="end")
    path = find_records(Path(raw))
    fmt = detect_format(path) if record_format == "auto" else record_format
    if fmt == "trace":
        table = TextTable((path,), TRACE_COLUMNS, delimiter=" ", header=False, quote="")
        role = {r: r for r in ("user", "time", "station", "traffic")}
    elif fmt == "csv":
        header = usable_header(path, read_header(path))
        missing = [c for c in CSV_ROLES.values() if c not in header]
        if missing:
            raise InputError(
                f"missing column(s) {missing}; the file has columns {header}", where=str(path),
                fix="the App Usage CSV layout needs user_id, time, location, traffic "
                "(or pass -o record_format=trace for the official space-separated trace)",
            )
        table = TextTable((path,), tuple(header), delimiter=",", header=True, quote='"')
        role = dict(CSV_ROLES)
    else:
        raise InputError(f"record_format = {record_format!r}", where="record_format",
                         fix="use 'auto', 'trace' or 'csv'")

    poi_path: Path | None = None
    if use_poi:
        if poi is not None:
            poi_path = Path(poi)
        else:
            poi_path = next((d / POI_FILE for d in (path.parent, path.parent.parent)
                             if (d / POI_FILE).is_file()), None)
    poi_table = read_poi_table(poi_path) if poi_path is not None else None
    coord_table = read_coordinate_table(Path(coords)) if coords is not None else None

    start_txt = start_ts.strftime("%Y-%m-%d %H:%M:%S")
    end_txt = end_ts.strftime("%Y-%m-%d %H:%M:%S")
    scans = table.scan("the App Usage trace (UTF-8 text, 5 space-separated fields per line) or its CSV "
                       "sample (with a header line)")
    if data_lines(scans, header=table.header) == 0:
        raise InputError("the records file has no rows (empty, blank lines or a header only)",
                         where=str(path), fix="pass the App Usage records file")
    fix_line = ("the official trace has 5 space-separated fields per line: user timestamp station app "
                "bytes" if fmt == "trace" else "check the CSV's columns")
    with duckdb_session(threads=threads, memory_limit=memory_limit) as con, duckdb_errors(
        str(path), fix=fix_line
    ):
        u, t, s, b = (sql_ident(role[k]) for k in ("user", "time", "station", "traffic"))
        con.execute(f"""
            CREATE TEMP VIEW parsed AS
            SELECT *, trim({u}) AS _user,
                   CASE WHEN regexp_full_match(trim({t}), '[0-9]{{14}}')
                        THEN try_strptime(trim({t}), {sql_str(TIME_FORMAT)}) END AS _ts,
                   CASE WHEN regexp_full_match(trim({s}), '[+-]?[0-9]+')
                        THEN CAST(TRY_CAST(trim({s}) AS HUGEINT) AS VARCHAR) ELSE trim({s}) END AS _station,
                   {try_double(b)} AS _amount
            FROM {table.relation()}
        """)
        run_checks(con, "parsed", [
            Check("_user IS NULL OR _user = ''", (role["user"],), "empty user id",
                  "give every record a user"),
            Check("_ts IS NULL", (role["time"],), "unparsable timestamp",
                  "timestamps are YYYYMMDDhhmmss, e.g. 20160420081319"),
            Check("_station IS NULL OR _station = ''", (role["station"],), "empty station id",
                  "give every record a station id"),
            Check("_amount IS NULL OR NOT isfinite(_amount)", (role["traffic"],),
                  "traffic is missing or not a finite number", "traffic is bytes, a number >= 0"),
            Check("_amount < 0", (role["traffic"],), "negative traffic", "traffic is bytes, a number >= 0"),
        ], table.locate)
        # One pass reduces the records to one row per (user, window, slot, station, day) of the study
        # period (records outside it collapse into one row), which gives the period counts and the
        # days too. Nothing is joined to the records themselves: a join there made DuckDB build its
        # hash table on the records (memory growing with the log's length).
        in_period = f"(_ts >= TIMESTAMP {sql_str(start_txt)} AND _ts < TIMESTAMP {sql_str(end_txt)})"
        window_start, slot = window_slot_sql("_ts", origin=start_txt, window_minutes=window_minutes,
                                             bin_minutes=bin_minutes)
        con.execute(f"""
            CREATE TEMP TABLE _groups AS
            SELECT {in_period} AS _in,
                   CASE WHEN {in_period} THEN CAST(_ts AS DATE) END AS _day,
                   CASE WHEN {in_period} THEN _user END AS user,
                   CASE WHEN {in_period} THEN {window_start} END AS window_start,
                   CASE WHEN {in_period} THEN {slot} END AS slot,
                   CASE WHEN {in_period} THEN _station END AS _station,
                   sum(_amount) AS amount, count(*) AS n
            FROM parsed GROUP BY ALL
        """)
        n_out, n_kept, n_days = (int(v or 0) for v in fetch_row(con, """
            SELECT sum(n) FILTER (WHERE NOT _in), sum(n) FILTER (WHERE _in),
                   count(DISTINCT _day) FILTER (WHERE _in)
            FROM _groups
        """))
        # every line is a record or a counted problem (DuckDB skips blank lines: counted by the scan)
        blank = table.reconcile(scans, n_out + n_kept)
        reasons = {"outside_period": n_out, "kept": n_kept, "blank_line": blank}
        n_read = n_out + n_kept + blank
        if n_read == 0:
            raise InputError("the records file has no rows", where=str(path), fix="pass a non-empty file")
        con.execute("""
            CREATE TEMP TABLE _slot_station AS
            SELECT user, window_start, slot, _station, sum(amount) AS amount
            FROM _groups WHERE _in GROUP BY ALL
        """)
        con.execute("DROP TABLE _groups")
        ids = [str(r[0]) for r in con.execute("SELECT DISTINCT _station FROM _slot_station").fetchall()]
        keys = numeric_order_key(ids)
        ids = [ids[i] for i in sorted(range(len(ids)), key=keys.__getitem__)]
        con.register("_st_df", pd.DataFrame({"_station": ids, "idx": np.arange(len(ids), dtype=np.int64)}))
        con.execute("""
            CREATE TEMP VIEW cells AS
            SELECT user, window_start, slot, s.idx AS station, amount
            FROM _slot_station JOIN _st_df AS s USING (_station)
        """)
        binned = bin_slots(con, "cells", T=T, min_active_slots=min_active_slots)

    filters_txt = f"start={start_ts}, end={end_ts}, min_active_slots={min_active_slots}"
    if int(reasons.get("kept", 0)) == 0:
        raise InputError(
            f"no record lies in the study period [{start_ts}, {end_ts}) ({n_read} read)", where=str(path),
            fix="set the study period to the records' dates with -o start=DATE (and -o end=DATE), "
            "e.g. -o 'start=2016-04-20 00:00'",
        )
    ensure_samples(binned, where=str(path), filters=filters_txt)

    # station table: the record stations (sorted by id), or all stations known to any table
    all_ids = list(ids)
    if all_stations:
        extra = set()
        for tab in (poi_table, coord_table):
            if tab is not None:
                extra |= set(tab["station_id"]) - set(all_ids)
        if extra:
            all_ids = all_ids + sorted(extra)
            keys = numeric_order_key(all_ids)
            all_ids = [all_ids[i] for i in sorted(range(len(all_ids)), key=keys.__getitem__)]
    pos = {sid: i for i, sid in enumerate(all_ids)}
    old_to_new = np.array([pos[sid] for sid in ids], dtype=np.int64)
    locations = old_to_new[binned.locations] if len(ids) else binned.locations
    st = pd.DataFrame({"station_id": all_ids})
    if not all_stations:
        kept_idx, locations = reindex_stations(locations, len(all_ids))
        st = st.iloc[kept_idx].reset_index(drop=True)

    notes = [
        "traffic = bytes summed per slot; slot location = station with most bytes in the slot "
        "(ties: smallest station index); the app column is not used",
        "slots without a record carry the last location forward (backward before the first record)",
    ]
    counts_extra: dict[str, int] = {}
    if coord_table is not None:
        st = st.merge(coord_table[["station_id", "lat", "lon"]], on="station_id", how="left")
        n_missing = int(st["lat"].isna().sum())
        counts_extra["stations_without_coordinates"] = n_missing
        if n_missing:
            notes.append(f"{n_missing} station(s) have no coordinates in {Path(str(coords)).name} (NaN); "
                         "distance metrics skip them or are unavailable")
    else:
        st["lat"] = np.nan
        st["lon"] = np.nan
        notes.append("the App Usage dataset has no station coordinates and none were given (coords=...): "
                     "lat/lon are NaN, so distance metrics (Distance, Radius) are unavailable")
    if poi_table is not None:
        st = st.merge(poi_table, on="station_id", how="left")
        n_nopoi = int(st[[c for c in poi_table.columns if c != "station_id"]].isna().all(axis=1).sum())
        counts_extra["stations_without_poi"] = n_nopoi
        notes.append(f"POI counts from {poi_path.name if poi_path else POI_FILE} joined on the station id "
                     f"(BaseID); {n_nopoi} station(s) have no POI row (NaN)")
    else:
        notes.append("no POI table was used: no poi_* columns")
    if fmt == "csv":
        notes.append("CSV layout (the LLMApp sample): its location ids are assumed to be the official "
                     "BaseIDs, which the sample's publisher does not document; check before relying on "
                     "the POI join")
    if n_days and n_days * MINUTES_PER_DAY < window_minutes:
        notes.append(f"the kept records cover {n_days} day(s) but a {window} window spans "
                     f"{window_minutes // MINUTES_PER_DAY} days: most slots have no record and carry "
                     "a location forward; consider window='day'")
    st = st[["station_id", "lat", "lon", *[c for c in st.columns if c not in ("station_id", "lat", "lon")]]]

    meta: dict[str, Any] = {
        "source": SOURCE,
        "raw": str(raw),
        "files": [path.name],
        "record_format": fmt,
        "poi_file": poi_path.name if poi_path is not None else None,
        "coords_file": Path(str(coords)).name if coords is not None else None,
        "bin_minutes": int(bin_minutes),
        "T": T,
        "window": window,
        "traffic_unit": "bytes",
        "filters": {
            "period": [start_ts.isoformat(), end_ts.isoformat()],
            "min_active_slots": int(min_active_slots),
            "all_stations": bool(all_stations),
        },
        "counts": {
            "records_read": n_read,
            "records_dropped": {"outside_period": int(reasons.get("outside_period", 0)),
                                **({"blank_line": blank} if blank else {})},
            "records_kept": int(reasons.get("kept", 0)),
            "days_with_records": n_days,
            **binned.counts,
            "stations": len(st),
            **counts_extra,
        },
        "normalisation": normalisation_stats(binned.traffic),
        "notes": notes,
    }
    return PreparedDataset(binned.traffic, locations, st.reset_index(drop=True), binned.samples, meta)
