"""Reader for trajectories in the MoveSim format (GeoLife user-days on a location grid, no traffic).

Raw folder (``../shared/data/geolife_movesim``; upstream ``FIBLAB/MoveSim``, ``data/geolife/``)::

    real.data   one sample per line: T space-separated integer location ids (T = 48 slots of 30 min)
    val.data    the same format (the benchmark's evaluation split; the upstream test split is withheld)
    gps         one line per location: ``lat lon`` in degrees; line i (counted from 0) is location i

Every line of a trajectory file is one sample (a user-day); the format has no user ids, dates nor
traffic. The prepared dataset therefore has:

- one station per line of ``gps`` (``station_id`` = the location id as text, all of them kept,
  visited or not, so the station index *is* the MoveSim id);
- ``samples.user = "<file stem>:<line number>"`` (each sample its own user), ``samples.start``
  empty, and ``samples.part`` = the file stem (``real``, ``val``), so that a run can split by file
  (``data: {split_by: part, parts: {train: [real], val: [val], test: [val]}}``);
- no traffic (``meta["has_traffic"] = false``: no ``traffic.npy``; the evaluation leaves traffic
  and joint metrics out).

T comes from the file (every line must have the same number of ids, a multiple of 8). Lines that
are empty are skipped and counted; anything else that is not a line of integer ids in the gps
table raises :class:`~mstdiff.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.binning import DEFAULT_BIN_MINUTES
from mstdiff.data.dataset import PreparedDataset, check_T
from mstdiff.data.textfile import scan_text
from mstdiff.errors import InputError

log = logging.getLogger(__name__)

SOURCE = "movesim"
DEFAULT_FILES = ("real.data", "val.data")
DEFAULT_GPS = "gps"
TRAJECTORY_WHAT = ("a MoveSim trajectory file: one sample per line, space-separated integer location ids "
                   "(e.g. real.data)")
GPS_WHAT = "the MoveSim gps file: one line `lat lon` per location id (line 1 is location 0)"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_ID_BYTES = np.zeros(256, dtype=bool)  # the bytes a line of integer ids may hold
_ID_BYTES[[ord(c) for c in "0123456789+- \t\r\n"]] = True


def _read_bytes(path: Path) -> bytes:
    """The whole content of ``path`` (UTF-8 text, checked by :func:`scan_text`), ``.gz`` decompressed."""
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        return bytes(fh.read())


def _lines(text: str) -> list[str]:
    """Lines of ``text`` without their line breaks (a last line break ends no extra line)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _stem(name: str) -> str:
    base = name[:-3] if name.lower().endswith(".gz") else name
    return Path(base).stem or base


def _existing(folder: Path, name: str, hint: str) -> Path:
    path = folder / name
    if not path.is_file():
        have = sorted(p.name for p in folder.iterdir() if p.is_file())
        shown = have if len(have) <= 12 else have[:12] + ["..."]
        raise InputError("no such file" if not path.exists() else "not a file", where=str(path),
                         fix=f"the folder holds {shown}; {hint}")
    return path


def read_gps(path: Path) -> pd.DataFrame:
    """The station table of a MoveSim ``gps`` file: ``station_id`` (``"0"``, ``"1"``, ...), lat, lon."""
    path = Path(path)
    scan_text(path, what=GPS_WHAT)
    lines = _lines(_read_bytes(path).decode("utf-8"))
    while lines and not lines[-1].strip():  # blank lines at the end locate nothing
        lines.pop()
    if not lines:
        raise InputError("the gps file is empty", where=str(path), fix=f"pass {GPS_WHAT}")
    fields = [line.split() for line in lines]
    bad = next((i for i, f in enumerate(fields) if len(f) != 2), None)
    if bad is not None:
        got = len(fields[bad])
        what = "the line is empty" if got == 0 else f"the line has {got} fields, not 2 (lat lon)"
        raise InputError(
            f"{what}: {lines[bad][:60]!r}" if got else what, where=f"{path}, line {bad + 1}",
            fix=f"line i + 1 holds the coordinates of location i as `lat lon`, so every line needs "
            f"both (this one is location {bad})",
        )
    flat = [v for f in fields for v in f]
    try:
        values = np.array(flat, dtype=np.float64).reshape(-1, 2)
        ok = np.isfinite(values).all(axis=1)
    except ValueError:
        ok = np.zeros(len(fields), dtype=bool)
        values = np.full((len(fields), 2), np.nan)
        for i, f in enumerate(fields):
            try:
                values[i] = [float(f[0]), float(f[1])]
                ok[i] = bool(np.isfinite(values[i]).all())
            except ValueError:
                break
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise InputError(f"the line holds {lines[i][:60]!r}, not two numbers (lat lon)",
                         where=f"{path}, line {i + 1}", fix="write the coordinates as decimal degrees")
    for col, name, limit in ((0, "lat", 90.0), (1, "lon", 180.0)):
        out = np.flatnonzero(np.abs(values[:, col]) > limit)
        if out.size:
            i = int(out[0])
            raise InputError(f"{name} {values[i, col]:g} is outside +-{limit:g} degrees",
                             where=f"{path}, line {i + 1}",
                             fix="each line is `lat lon` (latitude first) in WGS84 degrees")
    return pd.DataFrame({"station_id": [str(i) for i in range(len(values))],
                         "lat": values[:, 0], "lon": values[:, 1]})


def read_trajectories(path: Path, n_locations: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(locations [U, T] int32, line numbers [U], blank lines)`` of one MoveSim trajectory file,
    every id checked to be in ``0 .. n_locations - 1``."""
    path = Path(path)
    scan_text(path, what=TRAJECTORY_WHAT)
    data = _read_bytes(path)
    lines = _lines(data.decode("utf-8"))
    keep = [i for i, line in enumerate(lines) if line.strip()]
    blank = len(lines) - len(keep)
    if not keep:
        raise InputError("the file holds no sample" + (" (only blank lines)" if lines else " (it is empty)"),
                         where=str(path), fix=f"pass {TRAJECTORY_WHAT}")
    tokens = [lines[i].split() for i in keep]
    T = len(tokens[0])
    ragged = next((k for k, t in enumerate(tokens) if len(t) != T), None)
    if ragged is not None:
        raise InputError(
            f"the line has {len(tokens[ragged])} location ids, the first sample line "
            f"(line {keep[0] + 1}) has {T}", where=f"{path}, line {keep[ragged] + 1}",
            fix="every line holds one location id per time slot, the same number on every line",
        )
    check_T(T, where=f"{path}, line {keep[0] + 1} ({T} location ids per line)")
    ids: np.ndarray | None = None
    if _ID_BYTES[np.frombuffer(data, dtype=np.uint8)].all():  # only digits, signs and blanks: fast path
        try:
            ids = np.array([v for t in tokens for v in t], dtype=np.int64).reshape(len(keep), T)
        except (ValueError, OverflowError):
            ids = None
    if ids is not None:
        bad = (ids < 0) | (ids >= n_locations)
        first = [(int(k), int(j)) for k, j in zip(*np.nonzero(bad))][:1]
    else:  # the first field that is not an integer, or outside the table (slow path, errors only)
        first = []
        for k, t in enumerate(tokens):
            for j, v in enumerate(t):
                if not _INTEGER.fullmatch(v):
                    raise InputError(
                        f"location id {j + 1} of the line is {v[:40]!r}, not an integer",
                        where=f"{path}, line {keep[k] + 1}",
                        fix="every field is an integer location id (a line number of the gps file, from 0)",
                    )
                if not 0 <= int(v) < n_locations:
                    first = [(k, j)]
                    break
            if first:
                break
    if first:
        k, j = first[0]
        raise InputError(
            f"location id {tokens[k][j][:40]} (field {j + 1}) is outside the gps table, which has "
            f"{n_locations:,} locations (ids 0..{n_locations - 1:,})", where=f"{path}, line {keep[k] + 1}",
            fix="pass the gps file of this location grid (one line per location id)",
        )
    if ids is None:  # every field an integer in the table, but separated by other blanks
        ids = np.array([[int(v) for v in t] for t in tokens], dtype=np.int64)
    return ids.astype(np.int32), np.asarray(keep, dtype=np.int64) + 1, blank


def prepare_movesim(
    raw: Path,
    *,
    files: Sequence[str] = DEFAULT_FILES,
    gps: str = DEFAULT_GPS,
    bin_minutes: int = DEFAULT_BIN_MINUTES,
) -> PreparedDataset:
    """Prepare trajectories in the MoveSim format (module docstring) into a dataset without traffic.

    Parameters
    ----------
    raw: the folder holding the trajectory files and the gps file.
    files: trajectory files (names in ``raw``) that form the set, in this order; each sample
        records its file's stem in ``samples.part``.
    gps: name of the location table in ``raw`` (line i = location i: ``lat lon``).
    bin_minutes: length of one slot (MoveSim: 30 minutes; T comes from the files).
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError("not a folder" if raw.exists() else "no such folder", where=str(raw),
                         fix="pass the folder holding the MoveSim files (e.g. real.data, val.data, gps) "
                         "with --raw")
    names = [files] if isinstance(files, str) else list(files)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"files = {files!r} must be a non-empty list of file names", where="files",
                         fix="e.g. -o files=[real.data,val.data]")
    stems = [_stem(n) for n in names]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise InputError(
            f"two of files {names} have the stem {dup!r}: samples.part could not tell them apart",
            where="files", fix="list each file once")
    if not isinstance(bin_minutes, int) or isinstance(bin_minutes, bool) or bin_minutes <= 0:
        raise InputError(f"bin_minutes = {bin_minutes!r} must be a positive whole number of minutes",
                         where="bin_minutes", fix="MoveSim slots are 30 minutes")
    paths = [_existing(raw, n, "pass the MoveSim folder with --raw, or choose the trajectory files with "
                             "-o files=[real.data,val.data]") for n in names]
    gps_path = _existing(raw, gps, "pass the MoveSim folder with --raw, or name the location table with "
                         "-o gps=NAME")

    stations = read_gps(gps_path)
    N = len(stations)
    blocks, users, parts = [], [], []
    per_file: dict[str, int] = {}
    blank = lines_read = 0
    T: int | None = None
    for path, stem in zip(paths, stems):
        loc, line_no, n_blank = read_trajectories(path, N)
        if T is not None and loc.shape[1] != T:
            raise InputError(f"the lines have {loc.shape[1]} location ids, those of {paths[0].name} have {T}",
                             where=f"{path}, line {int(line_no[0])}",
                             fix="the files of one set must have the same number of time slots")
        T = loc.shape[1]
        blocks.append(loc)
        users += [f"{stem}:{n}" for n in line_no.tolist()]
        parts += [stem] * loc.shape[0]
        per_file[stem] = int(loc.shape[0])
        blank += n_blank
        lines_read += int(loc.shape[0]) + n_blank
        log.info("%s: %d samples of T = %d", path, loc.shape[0], T)
    assert T is not None
    locations = np.concatenate(blocks)
    U = locations.shape[0]
    samples = pd.DataFrame({"user": users, "start": [""] * U, "part": parts})
    dropped = {"blank_line": blank} if blank else {}
    notes = [
        "MoveSim format: one sample per line; the format has no user ids, so every line is its own "
        "sample and user (samples.user = '<file stem>:<line number>'): user-level splits and the floor "
        "treat the user-days as independent, although several come from one GeoLife user",
        "no traffic: trajectories only (meta has_traffic = false, no traffic.npy); the evaluation "
        "leaves traffic and joint metrics out",
        "stations = the gps file, every location kept (visited or not): station index and station_id "
        "= the MoveSim location id (line number - 1)",
        "samples.part = the stem of the file a sample came from (split by it with "
        "data.split_by: part); samples.start is empty (the format has no dates)",
    ]
    meta: dict[str, Any] = {
        "source": SOURCE,
        "raw": str(raw),
        "files": names,
        "gps_file": gps,
        "has_traffic": False,
        "bin_minutes": int(bin_minutes),
        "T": int(T),
        "window_minutes": int(T * bin_minutes),
        "traffic_unit": "none",
        "filters": {},
        "counts": {
            "lines_read": lines_read,
            "records_dropped": dropped,
            "samples": U,
            "samples_per_part": per_file,
            "stations": N,
            "stations_visited": int(np.unique(locations).size),
        },
        "notes": notes,
    }
    return PreparedDataset(np.zeros(locations.shape, dtype=np.float32), locations, stations, samples, meta)
