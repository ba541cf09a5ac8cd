"""Small raw inputs of the three record readers, for the bad-input and fuzz tests.

Each ``write_*`` function writes a minimal folder that the reader prepares into a dataset, with the
record lines given as bytes (so a test can put anything in them); ``prepare_*`` runs the reader with
filters that keep every record.
"""

from __future__ import annotations

from pathlib import Path

from mstdiff.data.appusage import prepare_app_usage
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.shanghai import prepare_shanghai
from mstdiff.data.tabular import prepare_tabular

# fragments of DuckDB's own messages that must never reach a user
DUCKDB_WORDS = ("CSV Error", "Parallel CSV", "struct_pack", "Binder Error", "Invalid Input Error",
                "strict_mode", "Possible fixes", "null_padding", "ignore_errors", "Conversion Error",
                "DuckDB", "duckdb", "Traceback")

SH_STATIONS = (",index,latitude,longitude,address,id\n0,0,31.237872,121.470259,a,0\n"
               "1,7,31.246946,121.513919,b,1\n")
SH_LINES = [f"8.{i % 50:02d}\t9.10\t{('31.237872', '31.246946')[i % 2]}\t"
            f"{('121.470259', '121.513919')[i % 2]}\tu{i % 3}".encode() for i in range(12)]
APP_LINES = [f"{i % 3} 201604200{i % 10}1319 {17 + i % 2} 3 {100 * i}".encode() for i in range(12)]
CSV_HEADER = b"user_id,timestamp,station_id,traffic"
CSV_LINES = [f"u{i % 3},2016-04-20 0{i % 10}:1{i % 6}:00,s{i % 4},{i * 10}".encode() for i in range(12)]


UNIX_LINES = [f"u{i % 3},{1461110400 + 937 * i},s{i % 4},{i * 10}".encode() for i in range(12)]


def write_shanghai(folder: Path, body: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base_stations_all.csv").write_text(SH_STATIONS)
    (folder / "data_6_14.txt").write_bytes(body)
    return folder / "data_6_14.txt"


def write_app_usage(folder: Path, body: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "App_usage_trace.txt").write_bytes(body)
    return folder / "App_usage_trace.txt"


def write_csv(folder: Path, body: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.csv").write_bytes(body)
    return folder / "records.csv"


def prepare_shanghai_dir(folder: Path) -> PreparedDataset:
    return prepare_shanghai(folder, min_active_slots=1, threads=1)


def prepare_app_usage_dir(folder: Path) -> PreparedDataset:
    return prepare_app_usage(folder / "App_usage_trace.txt", window="day", min_active_slots=1,
                             use_poi=False, threads=1)


def prepare_csv_dir(folder: Path) -> PreparedDataset:
    return prepare_tabular(folder / "records.csv", min_active_slots=1, threads=1)


def prepare_csv_unix_dir(folder: Path) -> PreparedDataset:
    return prepare_tabular(folder / "records.csv", min_active_slots=1, timestamp_format="unix", threads=1)


READERS = {
    "shanghai": (write_shanghai, prepare_shanghai_dir, b"", SH_LINES),
    "app-usage": (write_app_usage, prepare_app_usage_dir, b"", APP_LINES),
    "csv": (write_csv, prepare_csv_dir, CSV_HEADER + b"\n", CSV_LINES),
    "csv-unix": (write_csv, prepare_csv_unix_dir, CSV_HEADER + b"\n", UNIX_LINES),
}


def assert_package_words(message: str) -> None:
    """The message is the package's own: none of DuckDB's phrases."""
    leaked = [w for w in DUCKDB_WORDS if w in message]
    assert not leaked, f"DuckDB's words {leaked} in: {message}"
