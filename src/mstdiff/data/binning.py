"""Shared preparation machinery: DuckDB access to raw tables and slot binning.

Every record reader (:mod:`~mstdiff.data.shanghai`, :mod:`~mstdiff.data.appusage`,
:mod:`~mstdiff.data.tabular`) turns its raw files into one DuckDB relation of **slot cells**::

    user VARCHAR, window_start TIMESTAMP, slot INTEGER, station BIGINT, amount DOUBLE

one row per record (or per share of a record that falls in one slot), where ``station`` is a row
index into the reader's station table and ``amount`` is the record's traffic in that slot.
:func:`bin_slots` reduces the cells to ``[U, T]`` arrays, entirely in DuckDB up to the
per-(user, window, slot) result, so a raw log larger than memory never enters pandas:

- **traffic** of a slot: the sum of its amounts (a reader may pass its own per-slot traffic instead,
  e.g. the union of connected minutes for overlapping sessions);
- **location** of a slot: the station with the largest summed amount in that slot; ties go to the
  smallest station index;
- a slot is **active** when at least one record falls in it; slots without a record carry the last
  known location forward, and slots before the first record take the first known location;
- samples (user, window) with fewer than ``min_active_slots`` active slots are dropped.

The module also holds what the readers share around DuckDB: a connection that spills to a temporary
directory, a description of a delimited text table whose columns are all read as ``VARCHAR`` (so
that values are validated by the reader, with the file and line of the first bad value), and the
translation of DuckDB's own parse errors into :class:`~mstdiff.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from mstdiff.data.dataset import check_T
from mstdiff.data.textfile import TextScan, check_head, reconcile_counts, scan_text
from mstdiff.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_BIN_MINUTES = 30
MINUTES_PER_DAY = 1440


# ---------------------------------------------------------------------------------------- time grid
def slots_per_window(window_minutes: int, bin_minutes: int, *, where: str = "bin_minutes") -> int:
    """``T = window_minutes / bin_minutes``; it must be a whole number divisible by 8."""
    if not isinstance(bin_minutes, int | np.integer) or bin_minutes <= 0:
        raise InputError(
            f"bin size {bin_minutes!r} is not a positive whole number of minutes", where=where,
            fix="use e.g. 30",
        )
    if not isinstance(window_minutes, int | np.integer) or window_minutes <= 0:
        raise InputError(
            f"window length {window_minutes!r} is not a positive whole number of minutes", where=where,
            fix="use e.g. 1440 (one day) or 10080 (one week)",
        )
    if window_minutes % bin_minutes:
        raise InputError(
            f"a window of {window_minutes} min is not a whole number of {bin_minutes}-min bins",
            where=where, fix="choose a bin size that divides the window length, e.g. 30",
        )
    T = int(window_minutes // bin_minutes)
    check_T(T, where=f"{where} (T = {window_minutes} min / {bin_minutes} min)")
    return T


def sql_str(value: object) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def try_double(expr: str) -> str:
    """SQL ``TRY_CAST(expr AS DOUBLE)`` that yields NULL for bad text.

    The cast goes through ``trim(CAST(.. AS VARCHAR))`` on purpose: DuckDB pushes a bare cast of a
    CSV column into the CSV scanner, where it becomes a strict cast that fails on the first bad
    value instead of giving NULL (observed with duckdb 2.0).
    """
    return f"TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE)"


def window_slot_sql(ts: str, *, origin: str, window_minutes: int, bin_minutes: int) -> tuple[str, str]:
    """SQL expressions ``(window_start, slot)`` of timestamp expression ``ts``.

    Windows of ``window_minutes`` are aligned at ``origin`` (a timestamp literal); the slot is the
    ``bin_minutes`` bin inside the window. Integer microsecond arithmetic, so exact.
    """
    w_us = int(window_minutes) * 60_000_000
    b_us = int(bin_minutes) * 60_000_000
    d = f"(epoch_us({ts}) - epoch_us(TIMESTAMP {sql_str(origin)}))"
    win = f"CAST(floor({d} / {w_us}) AS BIGINT)"
    window_start = f"(TIMESTAMP {sql_str(origin)} + to_minutes({win} * {int(window_minutes)}))"
    slot = f"CAST(({d} - {win} * {w_us}) // {b_us} AS INTEGER)"
    return window_start, slot


# ---------------------------------------------------------------------------------------- DuckDB
@contextlib.contextmanager
def duckdb_session(
    *, threads: int | None = None, memory_limit: str | None = None, temp_dir: str | Path | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection that spills to a private temporary directory.

    ``threads`` and ``memory_limit`` (e.g. ``"4GB"``) default to DuckDB's own choice.
    """
    with tempfile.TemporaryDirectory(prefix="mstdiff-duckdb-", dir=temp_dir) as tmp:
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"SET temp_directory = {sql_str(tmp)}")
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET enable_progress_bar = false")
            if threads is None:
                from mstdiff.threads import configured

                threads = configured()
            if threads is not None:
                con.execute(f"SET threads = {int(threads)}")
            if memory_limit is not None:
                con.execute(f"SET memory_limit = {sql_str(memory_limit)}")
            yield con
        finally:
            con.close()


def fetch_row(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None
) -> tuple[Any, ...]:
    """The first row of ``sql`` (e.g. an aggregate), fetching the result completely.

    ``fetchone`` leaves the result open, and the DuckDB Python client then refuses some later calls
    (e.g. ``register``) on the same connection; ``fetchall`` closes it.
    """
    rows = con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    if not rows:
        raise RuntimeError(f"query returned no row: {sql[:200]}")
    return tuple(rows[0])


@contextlib.contextmanager
def timed(label: str, logger: logging.Logger = log) -> Iterator[None]:
    """Log the wall time of a preparation stage at DEBUG level."""
    t0 = time.perf_counter()
    yield
    logger.debug("%s: %.2f s", label, time.perf_counter() - t0)


_LINE_RE = re.compile(r"Line:\s*(\d+)")
_FILE_RE = re.compile(r"^\s*file\s*=\s*(.+?)\s*$", re.MULTILINE)
_ORIGINAL_RE = re.compile(r"^Original Line: ?([^\n]*)$", re.MULTILINE)
_COLUMNS_RE = re.compile(r"Expected Number of Columns:\s*(\d+)\s*Found:\s*(\d+)")
_DUPLICATE_RE = re.compile(r'Duplicate named argument "([^"]*)"')
_DEFAULT_FIX = "check the file's delimiter, header and number of columns against the documented format"


def _duckdb_what(text: str, fix: str | None) -> tuple[str, str | None]:
    """The problem of a DuckDB error in the package's words, and a better fix when there is one."""
    m = _COLUMNS_RE.search(text)
    if m:
        want, got = int(m.group(1)), int(m.group(2))
        return f"the line has {got} field(s), expected {want}", fix
    m = _DUPLICATE_RE.search(text)
    if m:
        return f"duplicate column name {m.group(1)!r}", "give every column a distinct name"
    low = text.lower()
    if "unicode" in low or "utf-8" in low or "utf8" in low:
        return "the line is not UTF-8 text", "convert the file to UTF-8 (e.g. with iconv)"
    if "unterminated quote" in low:
        return "a quoted value is never closed (an unbalanced quote)", "close or remove the quote"
    if "maximum line size" in low or "line size" in low:
        return "the line is too long to be a record", "remove or split that line"
    if "parquet" in low or "magic bytes" in low:
        return ("the file is not a readable Parquet file (damaged, truncated or of another format)",
                "write the file again (e.g. pandas DataFrame.to_parquet) or pass a CSV file")
    if "out of memory" in low or "memory limit" in low:
        return ("preparation ran out of memory",
                "give it more memory (-o memory_limit=8GB) or fewer threads (-o threads=1)")
    if "no files found" in low or "cannot open" in low or "no such file" in low:
        return "the file cannot be opened", "check that the file exists and is readable"
    if "could not convert" in low or "conversion" in low:
        return "a value has the wrong type for its column", fix
    return "the file cannot be read as a table of the documented format", fix


def input_error_from_duckdb(err: duckdb.Error, *, where: str, fix: str | None = None) -> InputError:
    """An :class:`InputError` in the package's words that names the file and line DuckDB reports.

    DuckDB's own message (its option dump, "CSV Error on Line", ...) is logged at DEBUG level only.
    """
    text = str(err)
    log.debug("DuckDB error (%s): %s", type(err).__name__, text)
    m_file = _FILE_RE.search(text)
    m_line = _LINE_RE.search(text)
    place = m_file.group(1) if m_file else where
    if m_line:
        place = f"{place}, line {m_line.group(1)}"
    what, better_fix = _duckdb_what(text, fix)
    m_orig = _ORIGINAL_RE.search(text)
    if m_orig and m_orig.group(1).strip():
        what += f" (the line reads: {m_orig.group(1)[:200]!r})"
    return InputError(what, where=place, fix=better_fix or fix or _DEFAULT_FIX)


@contextlib.contextmanager
def duckdb_errors(where: str, fix: str | None = None) -> Iterator[None]:
    """Re-raise any DuckDB error inside the block as :class:`InputError` (never a bare traceback)."""
    try:
        yield
    except duckdb.Error as err:
        raise input_error_from_duckdb(err, where=where, fix=fix) from err


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


@dataclass(frozen=True)
class TextTable:
    """Delimited text files read lazily by DuckDB with every column as ``VARCHAR``.

    Reading as text and converting with ``TRY_CAST`` in SQL lets the reader say which value was bad;
    :meth:`locate` then finds that value's line by streaming the file (only on the error path).
    """

    paths: tuple[Path, ...]
    names: tuple[str, ...]  # column names, in file order
    delimiter: str = ","
    header: bool = True
    quote: str = ""  # "" = no quoting (the raw cellular traces); '"' for ordinary CSV

    def relation(self) -> str:
        """SQL table expression; adds the column ``filename`` (the path as given here)."""
        files = "[" + ", ".join(sql_str(p) for p in self.paths) + "]"
        cols = "{" + ", ".join(f"{sql_str(n)}: 'VARCHAR'" for n in self.names) + "}"
        return (
            f"read_csv({files}, delim={sql_str(self.delimiter)}, header={str(self.header).lower()}, "
            f"quote={sql_str(self.quote)}, escape={sql_str(self.quote)}, columns={cols}, "
            "auto_detect=false, filename=true, null_padding=false)"
        )

    def scan(self, what: str) -> list[TextScan]:
        """:func:`~mstdiff.data.textfile.scan_text` of every file (encoding, binary data, line
        lengths, line counts); ``what`` describes the expected file in fix hints."""
        return [scan_text(p, quote=self.quote, what=what) for p in self.paths]

    def reconcile(self, scans: list[TextScan], rows: int) -> int:
        """Check that DuckDB's ``rows`` are all non-blank data lines; return the blank lines."""
        return reconcile_counts(scans, rows, header=self.header, delimiter=self.delimiter, quote=self.quote)

    def locate(self, filename: str, values: Mapping[str, str | None]) -> str:
        """``"<file>, line <n>"`` of the first row holding ``values`` (column -> raw text; None = empty).

        Streams the file; used only to report an error.
        """
        path = Path(filename)
        wanted = [(self.names.index(c), "" if v is None else v) for c, v in values.items()]
        try:
            with _open_text(path) as fh:
                if self.quote:
                    reader = csv.reader(fh, delimiter=self.delimiter, quotechar=self.quote)
                else:
                    reader = csv.reader(fh, delimiter=self.delimiter, quoting=csv.QUOTE_NONE)
                for row in reader:
                    if self.header and reader.line_num == 1:
                        continue
                    if all((row[i] if i < len(row) else "") == v for i, v in wanted):
                        return f"{path}, line {reader.line_num}"
        except (OSError, csv.Error):  # pragma: no cover - the file was readable a moment ago
            pass
        cols = ", ".join(repr(c) for c in values)
        return f"{path} (column {cols})"


def read_header(path: Path, *, delimiter: str = ",", quote: str = '"', unique: bool = True) -> list[str]:
    """Column names in the first line of a delimited text file.

    Raises :class:`InputError` for a file that is not UTF-8 text, has no header line or (with
    ``unique``) names a column twice.
    """
    check_head(Path(path), "a CSV file with a header line")
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=delimiter, quotechar=quote or '"')
            first = next(reader, None)
    except (OSError, EOFError, csv.Error) as err:
        raise InputError(f"cannot read the first line ({err})", where=f"{path}, line 1",
                         fix="pass a UTF-8 text file whose first line names the columns") from err
    if not first:
        raise InputError("the file is empty (no header line)", where=str(path),
                         fix="pass a file whose first line names the columns")
    names = [c.strip().lstrip("\ufeff") for c in first]
    if unique:
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                raise InputError(
                    f"duplicate column name {name!r} in the header (columns {seen[name] + 1} and {i + 1})",
                    where=f"{path}, line 1", fix="give every column a distinct name",
                )
            seen[name] = i
    return names


def first_bad_row(
    con: duckdb.DuckDBPyConnection, relation: str, condition: str, columns: Sequence[str],
) -> tuple[str, dict[str, str | None]] | None:
    """``(filename, {column: raw text})`` of one row of ``relation`` where ``condition`` holds."""
    cols = ", ".join(f"CAST({sql_ident(c)} AS VARCHAR)" for c in columns)
    rows = con.execute(f"SELECT filename, {cols} FROM {relation} WHERE {condition} LIMIT 1").fetchall()
    if not rows:
        return None
    row = rows[0]
    return str(row[0]), {c: (None if v is None else str(v)) for c, v in zip(columns, row[1:])}


@dataclass(frozen=True)
class Check:
    """A validity rule on parsed records: rows where ``condition`` holds are bad input."""

    condition: str  # SQL boolean over the parsed relation
    columns: tuple[str, ...]  # raw columns whose text identifies the row; shown unless named "_..."
    what: str  # description of the problem, e.g. "unparsable start time"
    fix: str  # how to fix it


def run_checks(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    checks: Sequence[Check],
    locate: Callable[[str, Mapping[str, str | None]], str],
) -> None:
    """Raise :class:`InputError` for the first failing :class:`Check` (one scan when all pass).

    ``relation`` must have a ``filename`` column; ``locate(filename, values)`` turns the bad row's
    raw values into a place such as ``"data.csv, line 17"``.
    """
    if not checks:
        return
    agg = ", ".join(f"count(*) FILTER (WHERE {c.condition})" for c in checks)
    counts = fetch_row(con, f"SELECT {agg} FROM {relation}")
    for check, n in zip(checks, counts):
        if not n:
            continue
        found = first_bad_row(con, relation, check.condition, check.columns)
        if found is None:  # pragma: no cover - counted above
            continue
        filename, values = found
        shown = ", ".join(
            f"{c} = {'(empty)' if v is None else repr(v)}" for c, v in values.items() if not c.startswith("_")
        )
        more = f" ({n} rows like this in all)" if n > 1 else ""
        raise InputError(f"{check.what}: {shown}{more}", where=locate(filename, values), fix=check.fix)


def spread_sql(relation: str, *, bin_minutes: int, keys: Sequence[str], station: str | None = None) -> str:
    """SQL that spreads intervals ``[s, e)`` (integer minutes in the window) over the bins they cover.

    One output row per (interval, bin) with ``keys``, ``slot`` and ``amount`` = minutes of overlap.
    A zero-length interval (``s = e``) yields its start bin with amount 0, so it still counts as a
    record in that bin. ``station`` (a column name) is carried along when given.
    """
    b = int(bin_minutes)
    cols = ", ".join([*keys, *([station] if station else [])])
    return f"""
        SELECT {cols}, slot,
               CAST(greatest(0, least(e, (slot + 1) * {b}) - greatest(s, slot * {b})) AS DOUBLE) AS amount
        FROM (SELECT {cols}, s, e, unnest(range(s // {b}, greatest(s, e - 1) // {b} + 1)) AS slot
              FROM {relation})
    """


# ---------------------------------------------------------------------------------------- binning
@dataclass
class BinnedSeries:
    """Output of :func:`bin_slots`: arrays over samples sorted by (user, window start)."""

    traffic: np.ndarray  # (U, T) float32, traffic per slot
    locations: np.ndarray  # (U, T) int64, station index of the caller's station table
    samples: pd.DataFrame  # user (str), start (ISO datetime string)
    counts: dict[str, Any] = field(default_factory=dict)


def fill_locations(observed: np.ndarray) -> np.ndarray:
    """Fill ``-1`` entries of ``observed`` (U, T) along time: last value forward, first backward.

    Rows with no observation at all stay ``-1``. Returns a new array.
    """
    obs = np.asarray(observed)
    U, T = obs.shape
    known = obs >= 0
    pos = np.where(known, np.arange(T)[None, :], -1)  # (U, T)
    last = np.maximum.accumulate(pos, axis=1)  # index of the last known slot at or before t
    first = np.argmax(known, axis=1)  # first known slot (0 when none)
    src = np.where(last >= 0, last, first[:, None])
    out = np.take_along_axis(obs, src, axis=1)
    out[~known.any(axis=1)] = -1
    return out


def series_from_slots(
    sample: np.ndarray, slot: np.ndarray, station: np.ndarray, traffic: np.ndarray, n_samples: int, T: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter per-(sample, slot) rows into ``[U, T]`` traffic and filled locations."""
    tr = np.zeros((n_samples, T), dtype=np.float32)
    loc = np.full((n_samples, T), -1, dtype=np.int64)
    tr[sample, slot] = traffic
    loc[sample, slot] = station
    return tr, fill_locations(loc)


def bin_slots(
    con: duckdb.DuckDBPyConnection,
    cells: str,
    *,
    T: int,
    min_active_slots: int,
    traffic: str | None = None,
) -> BinnedSeries:
    """Reduce a relation of slot cells to ``[U, T]`` traffic and location arrays.

    ``cells``: relation with ``user, window_start, slot, station, amount`` (see the module doc);
    slots must lie in ``0..T-1``. ``traffic``: optional relation ``user, window_start, slot, traffic``
    that replaces the per-slot sum of amounts (rows for slots without a cell are ignored).
    Counts returned: ``samples_before_filter``, ``samples_dropped_min_active_slots``, ``samples``,
    ``users``, ``active_slots`` and ``active_slot_share`` (of the kept samples' U*T slots).
    """
    check_T(T)
    if min_active_slots < 0:
        raise InputError(f"min_active_slots = {min_active_slots} is negative", where="min_active_slots",
                         fix="use 0 or a positive number of slots")
    bad = fetch_row(con, f"SELECT min(slot), max(slot) FROM {cells}")
    if bad[0] is not None and (bad[0] < 0 or bad[1] >= T):
        raise RuntimeError(f"reader produced slots outside 0..{T - 1}: [{bad[0]}, {bad[1]}]")
    # Location: arg_max over the key (amount, -station) = most amount, ties to the smallest index;
    # a hash aggregate, so no sort of the (possibly huge) cell table is needed.
    if traffic is None:
        tr_join, tr_col = "", "slots.amt_sum"
    else:
        tr_join = (
            f"LEFT JOIN (SELECT user, window_start, slot, sum(traffic) AS traffic FROM {traffic} "
            "GROUP BY ALL) AS tr USING (user, window_start, slot)"
        )
        tr_col = "coalesce(tr.traffic, 0.0)"
    with timed("bin_slots: per-slot reduction"):
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _binned AS
            WITH per_station AS (
                SELECT user, window_start, slot, station, sum(amount) AS amt
                FROM {cells} GROUP BY ALL
            ),
            slots AS (
                SELECT user, window_start, slot, arg_max(station, (amt, -station)) AS station,
                       sum(amt) AS amt_sum
                FROM per_station GROUP BY ALL
            ),
            active AS (SELECT user, window_start, count(*) AS n_active FROM slots GROUP BY ALL)
            SELECT slots.user, slots.window_start, slots.slot, slots.station,
                   CAST({tr_col} AS DOUBLE) AS traffic, active.n_active
            FROM slots
            JOIN active USING (user, window_start)
            {tr_join}
            """
        )
    with timed("bin_slots: sample table"):
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _samples AS
            SELECT user, window_start, row_number() OVER (ORDER BY user, window_start) - 1 AS sample
            FROM (SELECT DISTINCT user, window_start FROM _binned WHERE n_active >= ?)
            """,
            [int(min_active_slots)],
        )
        n_before = int(fetch_row(
            con, "SELECT count(*) FROM (SELECT DISTINCT user, window_start FROM _binned)")[0])
        samples = con.execute(
            "SELECT user, strftime(window_start, '%Y-%m-%dT%H:%M:%S') AS start FROM _samples ORDER BY sample"
        ).fetchdf()
    with timed("bin_slots: fetch slots"):
        cols = con.execute(
            """
            SELECT s.sample, b.slot, b.station, b.traffic
            FROM _binned AS b JOIN _samples AS s USING (user, window_start)
            """
        ).fetchnumpy()
    con.execute("DROP TABLE _binned")
    con.execute("DROP TABLE _samples")
    U = len(samples)
    tr, loc = series_from_slots(
        np.asarray(cols["sample"], dtype=np.int64),
        np.asarray(cols["slot"], dtype=np.int64),
        np.asarray(cols["station"], dtype=np.int64),
        np.asarray(cols["traffic"], dtype=np.float64),
        U,
        T,
    )
    n_rows = len(cols["sample"])
    samples = pd.DataFrame({"user": samples["user"].astype(str).to_numpy(),
                            "start": samples["start"].astype(str).to_numpy()})
    counts: dict[str, Any] = {
        "samples_before_filter": int(n_before),
        "samples_dropped_min_active_slots": int(n_before - U),
        "samples": U,
        "users": int(samples["user"].nunique()),
        "active_slots": int(n_rows),
        "active_slot_share": float(n_rows / (U * T)) if U else 0.0,
    }
    return BinnedSeries(traffic=tr, locations=loc, samples=samples, counts=counts)


def reindex_stations(locations: np.ndarray, n_stations: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the stations that occur in ``locations``, in their original order.

    Returns ``(kept, new_locations)``: ``kept`` are the old indices of the kept stations (sorted),
    ``new_locations`` the locations re-indexed into ``kept``.
    """
    kept = np.unique(locations)
    remap = np.full(n_stations, -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    return kept, remap[locations]


def ensure_samples(binned: BinnedSeries, *, where: str, filters: str) -> None:
    """Raise :class:`InputError` when no sample survived the filters."""
    if binned.traffic.shape[0] == 0:
        raise InputError(
            "no sample is left after the filters "
            f"({binned.counts.get('samples_before_filter', 0)} user-windows before the "
            "min_active_slots filter)",
            where=where,
            fix=f"check the input and loosen the filters ({filters})",
        )


def numeric_order_key(ids: Sequence[str]) -> list[tuple[int, int | str]]:
    """Sort keys that order integer-like ids numerically and the rest as text, after them."""
    out: list[tuple[int, int | str]] = []
    for s in ids:
        try:
            out.append((0, int(s)))
        except ValueError:
            out.append((1, s))
    return out
