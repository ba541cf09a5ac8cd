"""Generic reader for your own records: a CSV or Parquet table of events plus a station table.

Records (one row per event; CSV with a header line, or Parquet; one file or a folder of them)::

    user_id, timestamp, station_id, traffic        (names configurable with ``columns``)

Stations (optional; CSV with a header or Parquet)::

    station_id, lat, lon, [feature columns...]     (names configurable with ``station_columns``)

Records are binned into ``bin_minutes`` slots of windows of ``window_minutes`` (one sample per user
and window; ``T = window_minutes / bin_minutes`` must be divisible by 8): traffic is summed per slot
and a slot's location is the station with most traffic in it (see :mod:`mstdiff.data.binning`).
Windows start at ``origin`` (default: midnight of the day of the earliest record). Timestamps are
read as naive local times: ISO 8601 text by default, or a ``strptime`` format, or ``"unix"`` /
``"unix_ms"`` epoch numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.binning import (
    DEFAULT_BIN_MINUTES,
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
from mstdiff.data.textfile import check_parquet, data_lines, scan_text
from mstdiff.errors import InputError

log = logging.getLogger(__name__)

SOURCE = "csv"
DEFAULT_COLUMNS: dict[str, str] = {
    "user": "user_id", "timestamp": "timestamp", "station": "station_id", "traffic": "traffic",
}
DEFAULT_STATION_COLUMNS: dict[str, str] = {"station_id": "station_id", "lat": "lat", "lon": "lon"}
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
UNKNOWN_POLICIES = ("error", "drop")

Locator = Callable[[str, Mapping[str, "str | None"]], str]


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _mapping(given: Mapping[str, str] | None, default: dict[str, str], what: str) -> dict[str, str]:
    out = dict(default)
    for role, name in (given or {}).items():
        if role not in default:
            raise InputError(f"unknown {what} role {role!r}", where=what,
                             fix=f"the roles are {list(default)}")
        if not isinstance(name, str) or not name:
            raise InputError(f"column name for {role!r} must be a non-empty string, got {name!r}", where=what)
        out[role] = name
    return out


def record_files(records: Path) -> tuple[str, list[Path]]:
    """``(kind, files)`` for a records file or a folder of record files of one kind."""
    records = Path(records)
    if records.is_dir():
        files = sorted(p for p in records.iterdir() if p.is_file() and _kind(p) is not None)
        if not files:
            raise InputError(
                "no record files (.csv, .tsv, .txt, .parquet) in this folder", where=str(records),
                fix="pass a records file or a folder of them",
            )
        kinds = {_kind(p) for p in files}
        if len(kinds) > 1:
            raise InputError("the folder mixes text and Parquet record files", where=str(records),
                             fix="keep one format per folder")
        return str(kinds.pop()), files
    if not records.is_file():
        raise InputError("no such file or folder", where=str(records), fix="pass the records table")
    kind = _kind(records)
    if kind is None:
        raise InputError(
            "unknown file type (expected .csv, .tsv, .txt or .parquet)", where=str(records),
            fix="convert the records to CSV (with a header line) or Parquet",
        )
    return kind, [records]


RESERVED_COLUMNS = ("filename",)  # added by the reader to every row


def usable_header(path: Path, header: list[str], *, place: str = "line 1") -> list[str]:
    """``header`` with empty names as ``column<N>``; a reserved name raises :class:`InputError`."""
    out = [name or f"column{i + 1}" for i, name in enumerate(header)]
    for i, name in enumerate(out):
        if name.lower() in RESERVED_COLUMNS:
            raise InputError(f"column {i + 1} is named {name!r}, a name the reader uses itself",
                             where=f"{path}, {place}", fix="rename that column")
    if len(set(out)) != len(out):
        dup = next(n for n in out if out.count(n) > 1)
        raise InputError(f"duplicate column name {dup!r} in the header", where=f"{path}, {place}",
                         fix="give every column a distinct name")
    return out


def _parquet_columns(path: Path) -> list[str]:
    """Column names of a Parquet file (from its footer only)."""
    import pyarrow.parquet as pq

    try:
        return [str(n) for n in pq.read_schema(path).names]
    except PARQUET_ERRORS as err:
        log.debug("pyarrow could not read the schema of %s: %s", path, err)
        raise InputError("the Parquet file is damaged: its schema cannot be read", where=str(path),
                         fix="write the file again (e.g. pandas DataFrame.to_parquet) or pass a CSV file",
                         ) from err


def _missing_columns(path: Path, have: list[str], need: Mapping[str, str], option: str) -> None:
    missing = {role: name for role, name in need.items() if name not in have}
    if missing:
        names = ", ".join(f"{name!r} ({role})" for role, name in missing.items())
        example = ", ".join(f"{role}: NAME" for role in missing)
        raise InputError(
            f"missing column(s) {names}; the file has columns {have}", where=str(path),
            fix=f"rename the columns or map them with -o '{option}={{{example}}}'",
        )


def _read_small_table(path: Path, *, delimiter: str) -> pd.DataFrame:
    """A station-sized table (CSV/Parquet) into pandas; text columns as strings."""
    kind = _kind(path)
    if not path.is_file():
        raise InputError("no such file", where=str(path), fix="pass an existing station table")
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else delimiter
    if kind == "parquet":
        check_parquet(path)
    else:
        scan_text(path, quote='"', what="a station table: CSV (UTF-8, with a header line) or Parquet")
        read_header(path, delimiter=sep)  # duplicate column names
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except PARQUET_ERRORS as err:  # pandas' CSV parser errors are ValueErrors
        log.debug("pandas could not read %s: %s", path, err)
        problem = ("its columns cannot be read" if kind == "parquet"
                   else "its lines cannot be split into the header's columns")
        raise InputError(f"cannot read the table: {problem}", where=str(path),
                         fix="pass a CSV file with a header line, or a Parquet file") from err


def read_station_table(
    path: Path,
    *,
    station_columns: Mapping[str, str] | None = None,
    delimiter: str = ",",
    keep_features: bool = True,
) -> pd.DataFrame:
    """Station table as ``station_id (str), lat, lon`` plus the other columns as features.

    Feature columns that are all numbers become floats; the rest stay text. Raises
    :class:`InputError` naming the file and line of a missing column, a bad coordinate or a
    duplicated id.
    """
    path = Path(path)
    cols = _mapping(station_columns, DEFAULT_STATION_COLUMNS, "station_columns")
    df = _read_small_table(path, delimiter=delimiter)
    df.columns = [str(c).strip().lstrip("\ufeff") for c in df.columns]
    _missing_columns(path, list(df.columns), cols, "station_columns")
    row0 = 1 if _kind(path) == "parquet" else 2  # first data row: row 1 / line 2 (after the header)
    unit = "row" if _kind(path) == "parquet" else "line"
    ids = df[cols["station_id"]].astype(str).str.strip()
    empty = np.flatnonzero((ids == "").to_numpy() | df[cols["station_id"]].isna().to_numpy())
    if empty.size:
        raise InputError(f"empty station id in column {cols['station_id']!r}",
                         where=f"{path}, {unit} {int(empty[0]) + row0}", fix="give every station an id")
    out = pd.DataFrame({"station_id": ids})
    for role in ("lat", "lon"):
        raw = df[cols[role]]
        val = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = np.flatnonzero(~np.isfinite(val.to_numpy()))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"column {cols[role]!r} ({role}) holds {raw.iloc[i]!r}, not a number "
                f"({bad.size} such rows)", where=f"{path}, {unit} {i + row0}",
                fix="give every station numeric coordinates in degrees",
            )
        limit = 90.0 if role == "lat" else 180.0
        bad = np.flatnonzero(np.abs(val.to_numpy()) > limit)
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{role} {val.iloc[i]} is outside +-{limit:g} degrees",
                             where=f"{path}, {unit} {i + row0}",
                             fix="coordinates must be WGS84 latitude/longitude in degrees")
        out[role] = val.to_numpy()
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputError(f"station id {ids.iloc[i]!r} appears twice", where=f"{path}, {unit} {i + row0}",
                         fix="station ids must be unique")
    if keep_features:
        for c in df.columns:
            if c in cols.values() or c in out.columns:
                continue
            num = pd.to_numeric(df[c], errors="coerce")
            as_text = df[c].astype(str).str.strip()
            out[c] = num.astype(float) if bool((num.notna() | (as_text == "")).all()) else df[c]
    return out.reset_index(drop=True)


def _timestamp_sql(col: str, col_type: str, fmt: str | None) -> str:
    c = sql_ident(col)
    if fmt in ("unix", "unix_s", "unix_ms"):
        # epoch numbers beyond +-1e11 s (year ~5000), NaN and inf give NULL: an unparsable timestamp
        scale = 1e6 if fmt != "unix_ms" else 1e3
        v = try_double(c)
        return (f"CASE WHEN isfinite({v}) AND abs({v} * {scale}) < 1e17 "
                f"THEN make_timestamp(CAST(round({v} * {scale}) AS BIGINT)) END")
    if col_type.upper().startswith(("TIMESTAMP", "DATE")):
        return f"CAST({c} AS TIMESTAMP)"
    if fmt is None:
        return f"TRY_CAST(trim(CAST({c} AS VARCHAR)) AS TIMESTAMP)"
    return f"CAST(try_strptime(trim(CAST({c} AS VARCHAR)), {sql_str(fmt)}) AS TIMESTAMP)"


def prepare_tabular(
    records: Path,
    *,
    stations: Path | None = None,
    columns: Mapping[str, str] | None = None,
    station_columns: Mapping[str, str] | None = None,
    timestamp_format: str | None = None,
    bin_minutes: int = DEFAULT_BIN_MINUTES,
    window_minutes: int = 1440,
    origin: str | None = None,
    min_active_slots: int = 5,
    unknown_stations: str = "error",
    all_stations: bool = False,
    traffic_unit: str = "unknown",
    delimiter: str = ",",
    threads: int | None = None,
    memory_limit: str | None = None,
) -> PreparedDataset:
    """Prepare a generic records table (CSV/Parquet) with an optional station table.

    Parameters
    ----------
    records: records file, or a folder of record files of one format.
    stations: station table (``station_id, lat, lon`` + features). Without it the stations are the
        ids seen in the records, with unknown (NaN) coordinates.
    columns: record column names by role, default ``{"user": "user_id", "timestamp": "timestamp",
        "station": "station_id", "traffic": "traffic"}`` (give only the ones that differ).
    station_columns: station column names by role, default ``station_id``, ``lat``, ``lon``.
    timestamp_format: ``None`` (ISO 8601 text such as ``2016-04-20 08:13:19``), a ``strptime``
        format such as ``"%Y%m%d%H%M%S"``, or ``"unix"`` / ``"unix_ms"`` for epoch numbers.
    bin_minutes, window_minutes: slot and sample window length; ``T`` = their ratio (divisible by 8).
    origin: start of the first window (timestamp text); default midnight of the earliest record's
        day. Records before it are dropped and counted.
    min_active_slots: keep samples with at least this many slots holding a record.
    unknown_stations: ``"error"`` or ``"drop"`` (records whose station is not in the station table).
    all_stations: keep every station of the station table, not only those in the kept samples.
    traffic_unit: unit written to meta.json (e.g. ``"bytes"``).
    delimiter: field separator of CSV files (``.tsv`` files use a tab).
    """
    records = Path(records)
    T = slots_per_window(window_minutes, bin_minutes, where="window_minutes / bin_minutes")
    if unknown_stations not in UNKNOWN_POLICIES:
        raise InputError(f"unknown_stations = {unknown_stations!r}", where="unknown_stations",
                         fix=f"use one of {list(UNKNOWN_POLICIES)}")
    cols = _mapping(columns, DEFAULT_COLUMNS, "columns")
    kind, files = record_files(records)
    station_table = (
        read_station_table(Path(stations), station_columns=station_columns, delimiter=delimiter)
        if stations is not None else None
    )
    where = str(records)

    with duckdb_session(threads=threads, memory_limit=memory_limit) as con, duckdb_errors(where):
        locate: Locator
        row_cols: tuple[str, ...] = ()
        if kind == "text":
            sep = "\t" if files[0].name.lower().endswith((".tsv", ".tsv.gz")) else delimiter
            header = usable_header(files[0], read_header(files[0], delimiter=sep))
            for f in files[1:]:
                if usable_header(f, read_header(f, delimiter=sep)) != header:
                    raise InputError(f"the header differs from that of {files[0].name}", where=str(f),
                                     fix="all record files in a folder must have the same columns")
            _missing_columns(files[0], header, cols, "columns")
            table = TextTable(tuple(files), tuple(header), delimiter=sep, header=True, quote='"')
            scans = table.scan("a records table: CSV (UTF-8, with a header line) or Parquet")
            if data_lines(scans, header=True) == 0:
                raise InputError("the records table has no rows (only a header line)", where=where,
                                 fix="pass a non-empty table")
            relation = table.relation()
            locate = table.locate
            types = {name: "VARCHAR" for name in header}
        else:
            for f in files:
                check_parquet(f)
                names = _parquet_columns(f)
                if usable_header(f, names, place="schema") != names:
                    raise InputError("the file has a column without a name", where=str(f),
                                     fix="name every column")
            relation = (
                "read_parquet([" + ", ".join(sql_str(p) for p in files) + "], filename=true, "
                "file_row_number=true)"
            )
            described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            types = {str(r[0]): str(r[1]) for r in described}
            _missing_columns(files[0], [c for c in types if c not in ("filename", "file_row_number")],
                             cols, "columns")
            row_cols = ("_row",)

            def locate(filename: str, values: Mapping[str, str | None]) -> str:
                row = values.get("_row")
                return f"{filename}, row {int(row) + 1}" if row is not None else filename

        u, st, tr = (sql_ident(cols[r]) for r in ("user", "station", "traffic"))
        ts_expr = _timestamp_sql(cols["timestamp"], types.get(cols["timestamp"], "VARCHAR"), timestamp_format)
        extra = ", file_row_number AS _row" if kind == "parquet" else ""
        con.execute(f"""
            CREATE TEMP VIEW parsed AS
            SELECT *{extra},
                   trim(CAST({u} AS VARCHAR)) AS _user, {ts_expr} AS _ts,
                   trim(CAST({st} AS VARCHAR)) AS _station, {try_double(tr)} AS _amount
            FROM {relation}
        """)
        fmt_hint = (
            "with timestamp_format=unix (unix_ms) the timestamps are finite seconds (milliseconds) since "
            "1970-01-01, within +-1e11 s" if str(timestamp_format).startswith("unix") else
            "timestamps must be ISO 8601 (e.g. 2016-04-20 08:13:19) unless you pass their format with "
            "-o timestamp_format=FORMAT, a strptime format in quotes because of the %, e.g. "
            "-o \"timestamp_format='%Y%m%d%H%M%S'\", or unix / unix_ms"
        )
        run_checks(con, "parsed", [
            Check("_user IS NULL OR _user = ''", (cols["user"], *row_cols),
                  f"empty user id in column {cols['user']!r}", "give every record a user id"),
            Check("_ts IS NULL", (cols["timestamp"], *row_cols),
                  f"unparsable timestamp in column {cols['timestamp']!r}", fmt_hint),
            Check("_station IS NULL OR _station = ''", (cols["station"], *row_cols),
                  f"empty station id in column {cols['station']!r}", "give every record a station id"),
            Check("_amount IS NULL OR NOT isfinite(_amount)", (cols["traffic"], *row_cols),
                  f"traffic in column {cols['traffic']!r} is missing or not a finite number",
                  "traffic must be a number >= 0"),
            Check("_amount < 0", (cols["traffic"], *row_cols),
                  f"negative traffic in column {cols['traffic']!r}", "traffic must be a number >= 0"),
        ], locate)

        n_read, first = fetch_row(con, "SELECT count(*), min(_ts) FROM parsed")
        n_read = int(n_read)
        # every line is a record or a counted problem (DuckDB skips blank lines: counted by the scan)
        blank = table.reconcile(scans, n_read) if kind == "text" else 0
        if n_read == 0:
            raise InputError("the records table has no rows", where=where, fix="pass a non-empty table")
        if origin is None:
            origin_ts = pd.Timestamp(first).normalize()
        else:
            try:
                origin_ts = pd.Timestamp(origin)
            except (ValueError, TypeError) as err:
                raise InputError(f"origin {origin!r} is not a timestamp", where="origin",
                                 fix="e.g. 2016-04-20 00:00") from err
        origin_txt = origin_ts.strftime("%Y-%m-%d %H:%M:%S")

        # One pass reduces the records to one row per (user, window, slot, station) from the origin
        # on (the records before it collapse into one row per station), with the number of records
        # in each row. The station table is joined onto these rows, never onto the records: a join
        # there let DuckDB build its hash table on the records (memory growing with the log).
        before = f"(_ts < TIMESTAMP {sql_str(origin_txt)})"
        window_start, slot = window_slot_sql("_ts", origin=origin_txt, window_minutes=window_minutes,
                                             bin_minutes=bin_minutes)
        con.execute(f"""
            CREATE TEMP TABLE _groups AS
            SELECT {before} AS _before,
                   CASE WHEN NOT {before} THEN _user END AS user,
                   CASE WHEN NOT {before} THEN {window_start} END AS window_start,
                   CASE WHEN NOT {before} THEN {slot} END AS slot,
                   _station, sum(_amount) AS amount, count(*) AS n
            FROM parsed GROUP BY ALL
        """)
        if station_table is None:
            ids = [str(r[0]) for r in con.execute("SELECT DISTINCT _station FROM _groups").fetchall()]
            keys = numeric_order_key(ids)
            ids = [ids[i] for i in sorted(range(len(ids)), key=keys.__getitem__)]
            st_full = stations_without_coordinates(ids)
        else:
            st_full = station_table
        con.register("_st_df", pd.DataFrame(
            {"_station": st_full["station_id"].to_numpy(), "idx": np.arange(len(st_full), dtype=np.int64)}))
        con.execute("""
            CREATE TEMP TABLE _classified AS
            SELECT g.*, s.idx AS station,
                   CASE WHEN g._before THEN 'before_origin'
                        WHEN s.idx IS NULL THEN 'unknown_station' END AS drop_reason
            FROM _groups AS g LEFT JOIN _st_df AS s USING (_station)
        """)
        con.execute("DROP TABLE _groups")
        reasons = {str(k): int(v) for k, v in con.execute(
            "SELECT coalesce(drop_reason, 'kept'), sum(n) FROM _classified GROUP BY ALL").fetchall()}
        if unknown_stations == "error" and station_table is not None and reasons.get("unknown_station"):
            # error path only: find the first such record by its (few) unknown ids, without a join
            unknown = [str(r[0]) for r in con.execute(
                "SELECT DISTINCT _station FROM _classified WHERE drop_reason = 'unknown_station'"
            ).fetchall()]
            listed = "[" + ", ".join(sql_str(x) for x in sorted(unknown)) + "]"
            run_checks(con, "parsed", [Check(
                f"NOT {before} AND list_contains({listed}, _station)", (cols["station"], *row_cols),
                f"station id not in the station table {Path(str(stations)).name}",
                "add the station to the station table, or drop and count such records with "
                "-o unknown_stations=drop",
            )], locate)
        con.execute("""
            CREATE TEMP VIEW cells AS
            SELECT user, window_start, slot, station, amount
            FROM _classified WHERE drop_reason IS NULL
        """)
        binned = bin_slots(con, "cells", T=T, min_active_slots=min_active_slots)

    dropped = {r: int(reasons.get(r, 0)) for r in ("before_origin", "unknown_station")}
    if blank:  # blank lines are counted only where there are some
        dropped["blank_line"] = int(blank)
    n_read += blank
    filters_txt = f"origin={origin_txt}, min_active_slots={min_active_slots}"
    if int(reasons.get("kept", 0)) == 0:
        raise InputError(f"no record is left after the filters ({n_read} read, dropped: {dropped})",
                         where=where, fix=f"check the filters ({filters_txt})")
    ensure_samples(binned, where=where, filters=filters_txt)

    notes: list[str] = [
        "traffic = sum of the records' traffic per slot; slot location = station with most traffic "
        "in the slot (ties: smallest station index)",
        "slots without a record carry the last location forward (backward before the first record)",
    ]
    if station_table is None:
        notes.append("no station table was given: station coordinates are unknown (NaN), so distance "
                     "metrics (Distance, Radius) are unavailable")
    locations = binned.locations
    st = st_full
    if not all_stations:
        kept, locations = reindex_stations(locations, len(st_full))
        st = st_full.iloc[kept].reset_index(drop=True)

    meta: dict[str, Any] = {
        "source": SOURCE,
        "raw": str(records),
        "files": [p.name for p in files],
        "stations_file": Path(stations).name if stations is not None else None,
        "bin_minutes": int(bin_minutes),
        "T": T,
        "window_minutes": int(window_minutes),
        "origin": origin_ts.isoformat(),
        "traffic_unit": traffic_unit,
        "columns": cols,
        "timestamp_format": timestamp_format,
        "filters": {
            "origin": origin_ts.isoformat(),
            "min_active_slots": int(min_active_slots),
            "unknown_stations": unknown_stations,
            "all_stations": bool(all_stations),
        },
        "counts": {
            "records_read": n_read,
            "records_dropped": dropped,
            "records_kept": int(reasons.get("kept", 0)),
            **binned.counts,
            "stations": len(st),
            "stations_in_table": len(st_full),
        },
        "normalisation": normalisation_stats(binned.traffic),
        "notes": notes,
    }
    return PreparedDataset(binned.traffic, locations, st, binned.samples, meta)


def stations_without_coordinates(ids: list[str]) -> pd.DataFrame:
    """A station table of ``ids`` with unknown coordinates."""
    return pd.DataFrame({"station_id": [str(i) for i in ids], "lat": np.nan, "lon": np.nan})
