"""Reader for the Shanghai Telecom session records (``data_M_D.txt`` + ``base_stations_all.csv``).

Raw format (see the dataset's SOURCE.md): tab-separated, no header, ``start end lat lon user`` with
``start``/``end`` clock times ``H.MM`` (``17.36`` is 17:36, *not* 17.36 hours) on the day named by
the file (``data_6_14.txt`` = June 14; the year is an option). The coordinates are those of the base
station; stations are matched to ``base_stations_all.csv`` by coordinates (to 1e-6 degree).

There are no bytes in this dataset, so **traffic = connected minutes per slot**: each session
``[start, end)`` is spread over the slots it covers. A user's sessions may overlap (often at two
stations at once), so the traffic of a slot is the number of minutes in it during which the user had
at least one session (the union), which keeps it within ``0..bin_minutes``. The location of a slot is
the station with the most session minutes in it (a session shorter than a minute still counts as a
record of its station in its start slot). Sessions with ``end < start`` cross midnight: they are
clipped at the end of the day (the next day is another sample) and counted.

Samples are user-days: ``T = 1440 / bin_minutes`` (48 at 30 min).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
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
    read_header,
    reindex_stations,
    run_checks,
    slots_per_window,
    spread_sql,
    sql_str,
    timed,
    try_double,
)
from mstdiff.data.dataset import PreparedDataset, normalisation_stats
from mstdiff.data.textfile import data_lines, scan_text
from mstdiff.errors import InputError

log = logging.getLogger(__name__)

SOURCE = "shanghai-telecom"
#: Default bounding box (lat_min, lat_max, lon_min, lon_max) of greater Shanghai.
SHANGHAI_BBOX: tuple[float, float, float, float] = (30.6, 31.9, 120.8, 122.2)
STATION_FILE = "base_stations_all.csv"
DAY_FILE_RE = re.compile(r"^data_(\d{1,2})_(\d{1,2})\.txt(\.gz)?$")
COLUMNS = ("start_hm", "end_hm", "lat", "lon", "user")
COORD_SCALE = 1_000_000  # coordinates are matched on round(degrees * 1e6)
UNKNOWN_POLICIES = ("error", "drop")


def find_day_files(raw: Path, year: int) -> list[tuple[Path, dt.date]]:
    """The day files under ``raw`` (a folder, or one ``data_M_D.txt`` file) with their dates."""
    raw = Path(raw)
    if raw.is_dir():
        files = sorted(p for p in raw.iterdir() if p.is_file() and DAY_FILE_RE.match(p.name))
        if not files:
            raise InputError(
                "no day files named data_<month>_<day>.txt in this folder", where=str(raw),
                fix="pass the folder that holds the Shanghai Telecom day files (e.g. data_6_14.txt)",
            )
    elif raw.is_file():
        if not DAY_FILE_RE.match(raw.name):
            raise InputError(
                "the file name does not look like data_<month>_<day>.txt, so its date is unknown",
                where=str(raw), fix="rename the file to data_<month>_<day>.txt or pass its folder",
            )
        files = [raw]
    else:
        raise InputError("no such file or folder", where=str(raw),
                         fix="pass the folder of the Shanghai Telecom day files")
    out = []
    for path in files:
        m = DAY_FILE_RE.match(path.name)
        assert m is not None
        try:
            day = dt.date(int(year), int(m.group(1)), int(m.group(2)))
        except ValueError as err:
            raise InputError(f"the file name gives no valid date in {year} ({err})", where=str(path),
                             fix="day files are named data_<month>_<day>.txt") from err
        out.append((path, day))
    return out


def read_station_table(path: Path) -> pd.DataFrame:
    """``base_stations_all.csv`` as ``station_id, lat, lon`` sorted by numeric id (a small table).

    Raises :class:`InputError` for a missing file or column, a bad value (with its line) or two
    stations at the same coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "station table not found", where=str(path),
            fix=f"put {STATION_FILE} beside the day files or pass its path with -o stations=PATH",
        )
    scan_text(path, quote='"', what=f"the dataset's {STATION_FILE} (UTF-8 CSV)")
    read_header(path)  # duplicate column names
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
        raise InputError(f"cannot parse the station table ({err})", where=str(path)) from err
    need = {"id": "id", "latitude": "latitude", "longitude": "longitude"}
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(
            f"station table lacks column(s) {missing}; it has {list(df.columns)}", where=str(path),
            fix="use base_stations_all.csv from the dataset (columns ...,latitude,longitude,address,id)",
        )
    ids = pd.to_numeric(df["id"], errors="coerce")
    lat = pd.to_numeric(df["latitude"], errors="coerce")
    lon = pd.to_numeric(df["longitude"], errors="coerce")
    for name, col in (("id", ids), ("latitude", lat), ("longitude", lon)):
        bad = np.flatnonzero(col.isna().to_numpy() | ~np.isfinite(col.to_numpy(dtype=float)))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"column {name!r} holds {df[name].iloc[i]!r}, not a number ({bad.size} such rows)",
                where=f"{path}, line {i + 2}", fix="fix or remove that row",
            )
    out = pd.DataFrame(
        {"station_id": ids.astype(np.int64), "lat": lat.astype(float), "lon": lon.astype(float)}
    )
    dup = out["station_id"].duplicated(keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[1])
        raise InputError(f"station id {out['station_id'].iloc[i]} appears twice",
                         where=f"{path}, line {i + 2}", fix="station ids must be unique")
    key = pd.DataFrame({"a": np.round(out["lat"] * COORD_SCALE), "b": np.round(out["lon"] * COORD_SCALE)})
    dup = key.duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            f"two stations share the coordinates {out['lat'].iloc[i]}, {out['lon'].iloc[i]}, so records "
            "cannot be matched to one of them", where=f"{path}, line {i + 2}",
            fix="remove the duplicate row",
        )
    out = out.sort_values("station_id", kind="stable").reset_index(drop=True)
    out["station_id"] = out["station_id"].astype(str)
    return out


_HM_MACRO = f"""
CREATE OR REPLACE TEMP MACRO hm_hours(x) AS TRY_CAST(split_part(x, '.', 1) AS INTEGER);
CREATE OR REPLACE TEMP MACRO hm_mins(x) AS (
    CASE WHEN split_part(x, '.', 2) = '' THEN 0
         WHEN length(split_part(x, '.', 2)) = 1 THEN TRY_CAST(split_part(x, '.', 2) AS INTEGER) * 10
         ELSE TRY_CAST(split_part(x, '.', 2) AS INTEGER) END
);
CREATE OR REPLACE TEMP MACRO hm_minutes(x) AS (
    CASE WHEN regexp_full_match(x, '[0-9]{{1,2}}([.][0-9]{{1,2}})?') AND hm_mins(x) < 60
              AND 60 * hm_hours(x) + hm_mins(x) <= {MINUTES_PER_DAY}
         THEN 60 * hm_hours(x) + hm_mins(x) END
);
"""


def _coord_key(col: str) -> str:
    """SQL matching key of a coordinate column: round(degrees * 1e6) as an integer."""
    return f"CAST(round({col} * {COORD_SCALE}) AS BIGINT)"


def _chunk_minutes(bin_minutes: int) -> int:
    """Largest divisor of ``bin_minutes`` that fits a 62-bit minute mask."""
    return max(d for d in range(1, min(bin_minutes, 62) + 1) if bin_minutes % d == 0)


def union_minutes_sql(relation: str, *, bin_minutes: int, name: str) -> str:
    """SQL creating view ``name`` (user, window_start, slot, traffic): minutes covered by the union of
    each user-day's intervals ``[s, e)`` in ``relation``, per slot.

    Each interval is cut into chunks of ``c`` minutes (``c`` divides the bin, ``c <= 62``); a chunk's
    covered minutes are a bit mask, OR-ed over the user-day's intervals and counted. A hash
    aggregate: no sort of the records, so it scales to logs larger than memory.
    """
    c = _chunk_minutes(int(bin_minutes))
    return f"""
        CREATE OR REPLACE TEMP VIEW {name} AS
        WITH pieces AS (
            SELECT user, day, k, greatest(s, k * {c}) - k * {c} AS lo, least(e, (k + 1) * {c}) - k * {c} AS hi
            FROM (SELECT user, day, s, e, unnest(range(s // {c}, greatest(s, e - 1) // {c} + 1)) AS k
                  FROM {relation})
        ),
        chunks AS (
            SELECT user, day, k,
                   bit_count(bit_or(((CAST(1 AS UBIGINT) << (hi - lo)) - 1) << lo)) AS minutes
            FROM pieces GROUP BY ALL
        )
        SELECT user, CAST(day AS TIMESTAMP) AS window_start, CAST(k * {c} // {int(bin_minutes)} AS INTEGER)
               AS slot, CAST(sum(minutes) AS DOUBLE) AS traffic
        FROM chunks GROUP BY ALL
    """


def prepare_shanghai(
    raw: Path,
    *,
    year: int = 2014,
    stations: Path | None = None,
    bin_minutes: int = DEFAULT_BIN_MINUTES,
    min_active_slots: int = 5,
    bbox: Sequence[float] | None = SHANGHAI_BBOX,
    unknown_stations: str = "error",
    all_stations: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> PreparedDataset:
    """Prepare the Shanghai Telecom day files under ``raw`` as user-day samples.

    Parameters
    ----------
    raw: folder with ``data_M_D.txt`` files (or one such file).
    year: year of the dates in the file names (the public files are from 2014).
    stations: station table; default ``raw/base_stations_all.csv``.
    bin_minutes: slot length; ``1440 / bin_minutes`` must be a whole number divisible by 8.
    min_active_slots: keep user-days with at least this many slots holding a record.
    bbox: ``(lat_min, lat_max, lon_min, lon_max)``; records outside are dropped and counted.
        ``None`` keeps every coordinate (records with lat = lon = 0 are always dropped: missing).
    unknown_stations: ``"error"`` (default) stops at a coordinate not in the station table, naming
        the file and line; ``"drop"`` drops such records and counts them.
    all_stations: keep the full station table (3,042 rows) instead of only the stations that occur
        in the kept samples.
    threads, memory_limit: DuckDB resources (default: DuckDB's choice); the scan spills to disk.
    """
    raw = Path(raw)
    T = slots_per_window(MINUTES_PER_DAY, bin_minutes)
    if unknown_stations not in UNKNOWN_POLICIES:
        raise InputError(f"unknown_stations = {unknown_stations!r}", where="unknown_stations",
                         fix=f"use one of {list(UNKNOWN_POLICIES)}")
    if bbox is not None:
        bbox = tuple(float(v) for v in bbox)
        if len(bbox) != 4 or not (bbox[0] < bbox[1] and bbox[2] < bbox[3]):
            raise InputError(f"bbox {bbox} is not (lat_min, lat_max, lon_min, lon_max)", where="bbox",
                             fix="e.g. 30.6 31.9 120.8 122.2")
    day_files = find_day_files(raw, year)
    folder = raw if raw.is_dir() else raw.parent
    station_path = Path(stations) if stations is not None else folder / STATION_FILE
    station_table = read_station_table(station_path)
    log.info("Shanghai Telecom: %d day file(s), %d stations", len(day_files), len(station_table))

    table = TextTable(tuple(p for p, _ in day_files), COLUMNS, delimiter="\t", header=False, quote="")
    where = ", ".join(str(p) for p, _ in day_files)
    with timed("shanghai: scan the day files"):
        scans = table.scan("a Shanghai Telecom day file (UTF-8 text, 5 tab-separated fields per line)")
    if data_lines(scans, header=False) == 0:
        raise InputError("the day file(s) have no rows (empty, or blank lines only)", where=where,
                         fix="pass the Shanghai Telecom day files (5 tab-separated fields per line)")
    with duckdb_session(threads=threads, memory_limit=memory_limit) as con, duckdb_errors(
        where, fix="each line must hold 5 tab-separated fields: start end lat lon user"
    ):
        con.execute(_HM_MACRO)
        con.register("_st_df", pd.DataFrame({
            "idx": np.arange(len(station_table), dtype=np.int64),
            "lat_key": np.round(station_table["lat"].to_numpy() * COORD_SCALE).astype(np.int64),
            "lon_key": np.round(station_table["lon"].to_numpy() * COORD_SCALE).astype(np.int64),
        }))
        # the day of each file by a CASE on its name: no join with the records
        day_of_file = " ".join(f"WHEN {sql_str(str(p))} THEN DATE {sql_str(d.isoformat())}"
                               for p, d in day_files)
        con.execute(f"""
            CREATE TEMP VIEW parsed AS
            SELECT r.filename, r.start_hm, r.end_hm, r.lat, r.lon, r.user,
                   hm_minutes(r.start_hm) AS s, hm_minutes(r.end_hm) AS e,
                   {try_double("r.lat")} AS lat_d, {try_double("r.lon")} AS lon_d,
                   CASE r.filename {day_of_file} END AS day
            FROM {table.relation()} AS r
        """)
        fix_time = "times are H.MM clock times of the file's day, e.g. 17.36 for 17:36"
        checks = [
            Check("s IS NULL OR s >= 1440", ("start_hm",), "unparsable start time", fix_time),
            Check("e IS NULL", ("end_hm",), "unparsable end time", fix_time),
            Check("lat_d IS NULL OR NOT isfinite(lat_d)", ("lat",), "latitude is not a number",
                  "column 3 must be a latitude in degrees"),
            Check("lon_d IS NULL OR NOT isfinite(lon_d)", ("lon",), "longitude is not a number",
                  "column 4 must be a longitude in degrees"),
            Check("user IS NULL OR trim(user) = ''", ("user",), "empty user id",
                  "column 5 must be the user id"),
        ]
        in_box = (
            "true" if bbox is None
            else f"lat_d BETWEEN {bbox[0]} AND {bbox[1]} AND lon_d BETWEEN {bbox[2]} AND {bbox[3]}"
        )
        kept_coords = f"NOT (lat_d = 0 AND lon_d = 0) AND ({in_box})"
        # One scan of the raw files into a table of parsed records (the station is not joined here);
        # the raw text is scanned again only on the error path, to name the first bad line.
        with timed("shanghai: parse, classify and store records"):
            con.execute(f"""
                CREATE TEMP TABLE rec AS
                SELECT p.user, p.day, p.s, CASE WHEN p.e < p.s THEN 1440 ELSE p.e END AS e,
                       p.e < p.s AS crossed, p.e = p.s AS zero_length, p.drop_reason,
                       CASE WHEN p.drop_reason IS NULL THEN {_coord_key('p.lat_d')} END AS lat_key,
                       CASE WHEN p.drop_reason IS NULL THEN {_coord_key('p.lon_d')} END AS lon_key
                FROM (SELECT *, CASE WHEN {" OR ".join(f"({c.condition})" for c in checks)} THEN 'bad_value'
                                     WHEN lat_d = 0 AND lon_d = 0 THEN 'zero_coordinates'
                                     WHEN NOT ({in_box}) THEN 'outside_bbox' END AS drop_reason
                      FROM parsed) AS p
            """)
        reasons = {str(k): int(v) for k, v in con.execute(
            "SELECT coalesce(drop_reason, 'kept'), count(*) FROM rec GROUP BY ALL").fetchall()}
        if reasons.get("bad_value"):
            run_checks(con, "parsed", checks, table.locate)
        # every line is a record or a counted problem (DuckDB skips blank lines: counted by the scan)
        blank = table.reconcile(scans, int(sum(reasons.values())))
        # The station table is joined onto the distinct coordinates of the kept records, not onto
        # the records (a join there let DuckDB build its hash table on the records).
        con.execute("""
            CREATE TEMP TABLE _coords AS
            SELECT c.lat_key, c.lon_key, c.n, st.idx AS station
            FROM (SELECT lat_key, lon_key, count(*) AS n FROM rec WHERE drop_reason IS NULL GROUP BY ALL)
                 AS c LEFT JOIN _st_df AS st USING (lat_key, lon_key)
        """)
        unknown = con.execute(
            "SELECT lat_key, lon_key, n FROM _coords WHERE station IS NULL ORDER BY ALL").fetchall()
        if unknown:
            # a few coordinate pairs: records are matched to them by a list lookup, not by a join
            listed = "[" + ", ".join(f"[{int(a)}, {int(b)}]" for a, b, _ in unknown) + "]"
            n_unknown = sum(int(n) for _, _, n in unknown)
            reasons["unknown_station"] = n_unknown
            reasons["kept"] -= n_unknown
            if unknown_stations == "error":
                key = f"[{_coord_key('lat_d')}, {_coord_key('lon_d')}]"
                run_checks(con, "parsed", [Check(
                    f"CASE WHEN {kept_coords} THEN list_contains({listed}, {key}) END",
                    ("lat", "lon"), f"coordinates match no station of {station_path.name}",
                    "pass the matching station table (-o stations=PATH), or drop and count such "
                    "records with -o unknown_stations=drop",
                )], table.locate)
            con.execute("DELETE FROM rec WHERE drop_reason IS NOT NULL "
                        f"OR list_contains({listed}, [lat_key, lon_key])")
        else:
            con.execute("DELETE FROM rec WHERE drop_reason IS NOT NULL")
        crossed, zero_len = fetch_row(
            con, "SELECT count(*) FILTER (WHERE crossed), count(*) FILTER (WHERE zero_length) FROM rec")
        # session minutes per (user, day, slot, coordinates), then the station of each coordinate pair
        keys = ("user", "day", "lat_key", "lon_key")
        with timed("shanghai: spread sessions over slots"):
            con.execute(f"""
                CREATE TEMP TABLE _coord_cells AS
                SELECT user, day, slot, lat_key, lon_key, sum(amount) AS amount
                FROM ({spread_sql("rec", bin_minutes=bin_minutes, keys=keys)}) GROUP BY ALL
            """)
        con.execute("""
            CREATE TEMP VIEW cells AS
            SELECT user, CAST(day AS TIMESTAMP) AS window_start, slot, c.station, amount
            FROM _coord_cells JOIN _coords AS c USING (lat_key, lon_key)
        """)
        con.execute(union_minutes_sql("rec", bin_minutes=bin_minutes, name="union_minutes"))
        with timed("shanghai: binning"):
            binned = bin_slots(con, "cells", T=T, min_active_slots=min_active_slots, traffic="union_minutes")

    reasons["blank_line"] = blank
    n_read = int(sum(reasons.values()))
    dropped = {r: int(reasons.get(r, 0)) for r in ("zero_coordinates", "outside_bbox", "unknown_station")}
    if blank:  # blank lines are counted only where there are some
        dropped["blank_line"] = int(blank)
    filters_txt = f"bbox={list(bbox) if bbox else None}, min_active_slots={min_active_slots}"
    if int(reasons.get("kept", 0)) == 0:
        raise InputError(
            f"no record is left after the filters ({n_read} read, dropped: {dropped})", where=where,
            fix=f"check the coordinates and the filters ({filters_txt})",
        )
    ensure_samples(binned, where=where, filters=filters_txt)

    locations = binned.locations
    st = station_table
    if not all_stations:
        kept, locations = reindex_stations(locations, len(station_table))
        st = station_table.iloc[kept].reset_index(drop=True)

    notes = [
        "traffic = connected minutes per slot: each session [start, end) is spread over the slots it "
        "covers; overlapping sessions of a user count once (union of minutes), so 0 <= traffic <= "
        f"{bin_minutes}",
        "slot location = station with the most session minutes in the slot (ties: smallest station "
        "index); a session shorter than one minute is still a record of its station in its start slot",
        "slots without a record carry the last location forward (backward before the first record)",
        f"{int(crossed)} session(s) with end < start cross midnight: clipped at 24:00 of their day "
        "(the part after midnight is not added to the next day)",
        "records with lat = lon = 0 are missing coordinates and are dropped",
    ]
    meta: dict[str, Any] = {
        "source": SOURCE,
        "raw": str(raw),
        "files": [p.name for p, _ in day_files],
        "stations_file": station_path.name,
        "days": [d.isoformat() for _, d in day_files],
        "bin_minutes": int(bin_minutes),
        "T": T,
        "window": "day",
        "traffic_unit": "minutes",
        "filters": {
            "bbox": list(bbox) if bbox is not None else None,
            "drop_zero_coordinates": True,
            "unknown_stations": unknown_stations,
            "min_active_slots": int(min_active_slots),
            "all_stations": bool(all_stations),
        },
        "options": {"year": int(year)},
        "counts": {
            "records_read": n_read,
            "records_dropped": dropped,
            "records_kept": int(reasons.get("kept", 0)),
            "midnight_crossing_clipped": int(crossed),
            "zero_length_sessions": int(zero_len),
            **binned.counts,
            "stations": len(st),
            "stations_in_table": len(station_table),
        },
        "normalisation": normalisation_stats(binned.traffic),
        "notes": notes,
    }
    log.info(
        "Shanghai Telecom: %d records read, %d kept; %d samples of %d users on %d stations",
        n_read, meta["counts"]["records_kept"], binned.counts["samples"], binned.counts["users"], len(st),
    )
    return PreparedDataset(binned.traffic, locations, st, binned.samples, meta)

