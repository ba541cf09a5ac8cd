"""The prepared-dataset format shared by every source, model and baseline.

A prepared dataset is a directory::

    traffic.npy      float32 [U, T]   traffic per time bin (unit in meta["traffic_unit"]);
                                      absent for a dataset without traffic (below)
    locations.npy    int32   [U, T]   row index into stations.parquet
    stations.parquet station_id (str), lat, lon (float64), optional feature columns (e.g. poi_*)
    samples.parquet  user (str), start (ISO datetime string of the window start), optional columns
                     (e.g. ``part``: the raw file a sample came from)
    meta.json        source, bin_minutes, T, filters, counts, normalisation, creation command

Real data, generated data and baseline outputs all use it, so that ``mstdiff evaluate`` treats them
alike. :meth:`PreparedDataset.save` writes atomically.

**Datasets without traffic** (trajectories only, e.g. GeoLife in the MoveSim format) say
``meta["has_traffic"] = false`` (absent: true). In memory their ``traffic`` is a float32 zeros
``[U, T]`` array, so that code indexing it keeps working; on disk they have no ``traffic.npy`` and
no normalisation statistics. A generated set whose model does not produce one output lists it under
``meta["placeholder"]`` (zeros stored as usual). :attr:`PreparedDataset.has_traffic` and
:attr:`PreparedDataset.has_locations` say whether a set's traffic and locations are data; the
evaluation skips the metrics, plots and statistics of what is not.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, run_meta, write_json

FORMAT_VERSION = 1
REQUIRED_FILES = ("traffic.npy", "locations.npy", "stations.parquet", "samples.parquet", "meta.json")
OPTIONAL_TRAFFIC = "traffic.npy"  # absent where meta.json says has_traffic: false
NO_TRAFFIC = "none (trajectories only)"
STATION_COLUMNS = ("station_id", "lat", "lon")
SAMPLE_COLUMNS = ("user", "start")


def check_T(T: int, *, where: str = "T") -> None:
    """The wavelet branch uses a 3-level Haar transform: T must be a positive multiple of 8."""
    if T <= 0 or T % 8 != 0:
        raise InputError(
            f"T = {T} time bins is not divisible by 8",
            where=where,
            fix="the 3-level wavelet transform needs T divisible by 8: e.g. 48 (one day at 30 min) "
            "or 336 (one week at 30 min); change the window length or the bin size",
        )


def normalisation_stats(traffic: np.ndarray, *, chunk_rows: int = 16384) -> dict[str, float]:
    """Summary statistics of the traffic values stored in ``meta.json``.

    Models scale traffic with ``log1p`` and then standardise by ``log1p_mean`` / ``log1p_std``.
    Computed over ``chunk_rows`` rows at a time (means and variances merged exactly, Chan et al.),
    so a memory-mapped array of any size costs one chunk of float64 memory.
    """
    arr = np.asarray(traffic)
    if arr.size == 0:
        return {k: 0.0 for k in ("mean", "std", "max", "log1p_mean", "log1p_std", "active_share")}
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    n, mom, mx, active = 0, np.zeros((2, 2)), -np.inf, 0  # mom[k] = (mean, M2) of x and log1p(x)
    for a in range(0, rows.shape[0], max(1, chunk_rows)):
        x = np.asarray(rows[a:a + chunk_rows], dtype=np.float64).ravel()
        if x.size == 0:
            continue
        for k, v in enumerate((x, np.log1p(np.clip(x, 0.0, None)))):
            m_b, m2_b = float(v.mean()), float(((v - v.mean()) ** 2).sum())
            delta, tot = m_b - mom[k, 0], n + x.size
            mom[k, 1] += m2_b + delta**2 * n * x.size / tot
            mom[k, 0] += delta * x.size / tot
        mx = max(mx, float(x.max()))
        active += int((x > 0).sum())
        n += x.size
    return {
        "mean": float(mom[0, 0]),
        "std": float(np.sqrt(mom[0, 1] / n)),
        "max": mx,
        "log1p_mean": float(mom[1, 0]),
        "log1p_std": float(np.sqrt(mom[1, 1] / n)),
        "active_share": active / n,
    }


@dataclass
class PreparedDataset:
    """Traffic and location series of U samples over T bins on a shared station table."""

    traffic: np.ndarray  # (U, T) float32
    locations: np.ndarray  # (U, T) int32, index into `stations`
    stations: pd.DataFrame  # station_id, lat, lon, [features...]
    samples: pd.DataFrame  # user, start
    meta: dict[str, Any] = field(default_factory=dict)
    where: InitVar[str] = "prepared dataset"  # named in validation errors (load passes the directory)

    def __post_init__(self, where: str) -> None:
        self.traffic = np.ascontiguousarray(self.traffic, dtype=np.float32)
        self.locations = np.ascontiguousarray(self.locations, dtype=np.int32)
        self.validate(where)

    # ------------------------------------------------------------------ what the set holds
    @property
    def has_traffic(self) -> bool:
        """Whether ``traffic`` is data: ``meta["has_traffic"]`` (default true) and not a placeholder
        (``meta["placeholder"]`` of a model that does not generate traffic)."""
        return self.meta.get("has_traffic", True) is not False and "traffic" not in _placeholder(self.meta)

    @property
    def has_locations(self) -> bool:
        """Whether ``locations`` are data (not a placeholder of a model that does not generate them)."""
        return "locations" not in _placeholder(self.meta)

    # ------------------------------------------------------------------ properties
    @property
    def n_samples(self) -> int:
        return int(self.traffic.shape[0])

    @property
    def T(self) -> int:
        return int(self.traffic.shape[1])

    @property
    def n_stations(self) -> int:
        return len(self.stations)

    @property
    def coords(self) -> np.ndarray:
        """Station coordinates ``(N, 2)`` as (lat, lon) degrees."""
        return self.stations[["lat", "lon"]].to_numpy(dtype=np.float64)

    @property
    def bin_minutes(self) -> int:
        return int(self.meta.get("bin_minutes", 30))

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        src = self.meta.get("source", "?")
        return f"PreparedDataset(source={src!r}, U={self.n_samples}, T={self.T}, N={self.n_stations})"

    def summary(self) -> str:
        """A short Markdown summary: counts, T, N, sparsity and value ranges (``mstdiff info``)."""
        tr = self.traffic
        active = tr > 0
        users = self.samples["user"].astype(str)
        moves = (np.diff(self.locations, axis=1) != 0).sum(axis=1) if self.n_samples else np.zeros(0)
        srt = np.sort(self.locations, axis=1)
        distinct = 1 + (np.diff(srt, axis=1) != 0).sum(axis=1)  # distinct stations per sample
        visited = np.unique(self.locations).size if self.n_samples else 0
        rows = [
            ("source", self.meta.get("source", "?")),
            ("samples (U)", f"{self.n_samples:,}"),
            ("users", f"{users.nunique():,}"),
            ("time bins (T)", f"{self.T} x {self.bin_minutes} min"),
            ("stations (N)", f"{self.n_stations:,} ({visited:,} visited)"),
        ]
        if self.has_traffic:
            rows += [
                ("traffic unit", self.meta.get("traffic_unit", "?")),
                ("active slots", f"{active.mean():.1%}" if tr.size else "-"),
                ("traffic per active slot",
                 f"median {np.median(tr[active]):.3g}, mean {tr[active].mean():.3g}, max {tr.max():.3g}"
                 if active.any() else "-"),
                ("active slots per sample", f"median {np.median(active.sum(1)):.0f}" if tr.size else "-"),
            ]
        elif self.meta.get("has_traffic", True) is False:
            rows.append(("traffic", NO_TRAFFIC))
        else:
            rows.append(("traffic", "none (placeholder zeros: the model does not generate traffic)"))
        if self.has_locations:
            rows += [
                ("moves per sample", f"mean {moves.mean():.2f}" if moves.size else "-"),
                ("distinct stations per sample", f"mean {distinct.mean():.2f}" if distinct.size else "-"),
            ]
        else:
            rows.append(("locations", "none (placeholder: the model does not generate locations)"))
        counts = self.meta.get("counts")
        counts = counts if isinstance(counts, dict) else {}
        dropped = counts.get("records_dropped") or counts.get("dropped") or {}
        for reason, count in (dropped.items() if isinstance(dropped, dict) else []):
            rows.append((f"records dropped: {reason}", f"{count:,}"))
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'field':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        return "\n".join(lines)

    # ------------------------------------------------------------------ checks
    def validate(self, where: str = "prepared dataset") -> None:
        """Raise :class:`InputError` if the arrays and tables are inconsistent."""
        if self.traffic.ndim != 2:
            raise InputError(f"traffic must be 2-D [U, T], got shape {self.traffic.shape}", where=where)
        if self.locations.shape != self.traffic.shape:
            raise InputError(
                f"locations shape {self.locations.shape} differs from traffic shape {self.traffic.shape}",
                where=where,
            )
        check_T(self.T, where=f"{where} (T)")
        missing = [c for c in STATION_COLUMNS if c not in self.stations.columns]
        if missing:
            raise InputError(f"station table lacks columns {missing}", where=where)
        missing = [c for c in SAMPLE_COLUMNS if c not in self.samples.columns]
        if missing:
            raise InputError(f"sample table lacks columns {missing}", where=where)
        if len(self.samples) != self.n_samples:
            raise InputError(
                f"{len(self.samples)} sample ids for {self.n_samples} samples", where=where
            )
        if self.locations.size:
            lo, hi = int(self.locations.min()), int(self.locations.max())
            if lo < 0 or hi >= self.n_stations:
                raise InputError(
                    f"location index out of range [{lo}, {hi}] for {self.n_stations} stations",
                    where=where,
                )
        if not np.isfinite(self.traffic).all():
            raise InputError("traffic contains NaN or infinite values", where=where)
        if (self.traffic < 0).any():
            raise InputError("traffic contains negative values", where=where)
        flag = self.meta.get("has_traffic", True)
        if not isinstance(flag, bool):
            raise InputError(f"meta field 'has_traffic' is {flag!r}, not true or false", where=where)
        if flag is False and self.traffic.any():
            raise InputError(
                "meta says has_traffic: false but the traffic array holds non-zero values", where=where,
                fix="a dataset without traffic has all-zero traffic: drop meta['has_traffic'] to keep "
                "the values, or pass zeros",
            )

    # ------------------------------------------------------------------ derived sets
    def subset(self, index: np.ndarray | list[int], **meta_update: Any) -> PreparedDataset:
        """Samples ``index`` (positions), same station table; meta copied with counts updated."""
        idx = np.asarray(index, dtype=np.int64)
        meta = dict(self.meta)
        meta.update(meta_update)
        meta.setdefault("counts", {})
        meta["counts"] = dict(meta["counts"], samples=int(idx.size))
        return PreparedDataset(
            traffic=self.traffic[idx],
            locations=self.locations[idx],
            stations=self.stations,
            samples=self.samples.iloc[idx].reset_index(drop=True),
            meta=meta,
        )

    def with_series(
        self, traffic: np.ndarray, locations: np.ndarray, *, source: str, users: list[str] | None = None,
        **meta_update: Any,
    ) -> PreparedDataset:
        """A new dataset on this station table (e.g. a generated set) with fresh sample ids."""
        U = int(np.asarray(traffic).shape[0])
        samples = pd.DataFrame(
            {"user": users if users is not None else [f"gen{i:06d}" for i in range(U)],
             "start": [""] * U}
        )
        meta: dict[str, Any] = {
            "source": source,
            "bin_minutes": self.bin_minutes,
            "T": int(np.asarray(traffic).shape[1]),
            "traffic_unit": self.meta.get("traffic_unit", "unknown"),
            "counts": {"samples": U, "stations": self.n_stations},
            "stations_from": self.meta.get("source"),
        }
        if self.meta.get("has_traffic", True) is False:  # a set on a dataset without traffic has none
            meta["has_traffic"] = False
        meta.update(meta_update)
        if meta.get("has_traffic", True) is False:
            traffic = np.zeros(np.shape(traffic), dtype=np.float32)
        else:
            meta.setdefault("normalisation", normalisation_stats(traffic))
        return PreparedDataset(traffic, locations, self.stations, samples, meta)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the dataset directory atomically; return its path."""
        path = Path(path)
        meta = dict(self.meta)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta["T"] = self.T
        meta.setdefault("bin_minutes", 30)
        meta.setdefault("counts", {})
        meta["counts"] = dict(meta["counts"], samples=self.n_samples, stations=self.n_stations)
        without = meta.get("has_traffic", True) is False  # no traffic.npy, no normalisation statistics
        if without:
            meta.pop("normalisation", None)
        else:
            meta.setdefault("normalisation", normalisation_stats(self.traffic))
        if "created_at" not in meta:
            meta.update({k: v for k, v in run_meta().items() if k not in meta})
        with atomic_dir(path, overwrite=overwrite) as tmp:
            if not without:
                np.save(tmp / "traffic.npy", self.traffic)
            np.save(tmp / "locations.npy", self.locations)
            stations = self.stations.copy()
            stations["station_id"] = stations["station_id"].astype(str)
            stations.to_parquet(tmp / "stations.parquet", index=False)
            samples = self.samples.copy()
            samples["user"] = samples["user"].astype(str)
            samples["start"] = samples["start"].astype(str)
            samples.to_parquet(tmp / "samples.parquet", index=False)
            write_json(tmp / "meta.json", meta)
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> PreparedDataset:
        """Read a prepared dataset directory written by :meth:`save`.

        Nothing read can run code (``.npy`` files load with ``allow_pickle=False``). A truncated or
        corrupt file, a wrong type or shape, and an inconsistent directory raise :class:`InputError`
        naming the directory and the file, what is wrong, and what to do.
        """
        path = Path(path)
        if not path.is_dir():
            what = "not a directory (it is a file)" if path.is_file() else "not a directory (no such path)"
            raise InputError(
                what, where=str(path),
                fix="pass the directory written by `mstdiff prepare` (or `mstdiff generate`)",
            )
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        if [f for f in missing if f != OPTIONAL_TRAFFIC]:  # traffic.npy alone: decided by meta.json
            raise InputError(
                f"not a prepared dataset: missing {', '.join(missing)}", where=str(path),
                fix="create it with `mstdiff prepare --source ... --out DIR`",
            )
        meta = _load_meta(path / "meta.json")
        traffic: np.ndarray | None = None
        if (path / OPTIONAL_TRAFFIC).is_file():
            traffic = _load_npy(path / OPTIONAL_TRAFFIC, mmap=mmap, kinds="fiu", what="traffic values")
        elif meta.get("has_traffic", True) is not False:
            raise InputError(
                f"not a prepared dataset: missing {OPTIONAL_TRAFFIC}", where=str(path),
                fix="create it with `mstdiff prepare --source ... --out DIR` (a dataset without traffic "
                "says has_traffic: false in its meta.json)",
            )
        locations = _load_npy(path / "locations.npy", mmap=mmap, kinds="iu", what="station indices")
        if traffic is None:  # a dataset without traffic: zeros in memory
            traffic = np.zeros(locations.shape, dtype=np.float32)
        if locations.dtype != np.int32 and locations.size:
            lo, hi = int(locations.min()), int(locations.max())
            if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
                raise InputError(f"station indices [{lo}, {hi}] do not fit the index range",
                                 where=str(path / "locations.npy"), fix=_REDO)
        stations = _load_parquet(path / "stations.parquet", STATION_COLUMNS)
        samples = _load_parquet(path / "samples.parquet", SAMPLE_COLUMNS)
        for col in ("lat", "lon"):
            values = stations[col]
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                raise InputError(f"column {col!r} holds {stations[col].dtype} values, not numbers",
                                 where=str(path / "stations.parquet"), fix=_REDO)
        T_meta = meta.get("T")
        if T_meta is not None and traffic.ndim == 2 and T_meta != traffic.shape[1]:
            array = OPTIONAL_TRAFFIC if (path / OPTIONAL_TRAFFIC).is_file() else "locations.npy"
            raise InputError(f"meta.json says T = {T_meta} but {array} has {traffic.shape[1]} time bins",
                             where=str(path), fix=_REDO)
        try:
            return cls(traffic, locations, stations, samples, meta, where=str(path))
        except InputError as err:
            if err.fix:
                raise
            raise InputError(err.what, where=err.where, fix=_REDO) from err


try:  # the errors pyarrow raises on a damaged file (most derive from the built-in ones below)
    from pyarrow.lib import ArrowException as _ArrowException
except ImportError:  # pragma: no cover - pyarrow is a dependency of pandas' Parquet support
    _ArrowException = OSError
PARQUET_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, TypeError, KeyError, IndexError, NotImplementedError, ImportError, _ArrowException,
)
_REDO = "the dataset is damaged: re-run the stage that wrote it (`mstdiff prepare`, or `mstdiff generate`)"
_META_TYPES: dict[str, tuple[type, ...]] = {
    "source": (str,), "traffic_unit": (str,), "counts": (dict,), "format_version": (int,),
    "bin_minutes": (int,), "T": (int,),
}


def _placeholder(meta: dict[str, Any]) -> dict[str, Any]:
    ph = meta.get("placeholder")
    return ph if isinstance(ph, dict) else {}


def _load_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` as a dict, with the types of the fields the package reads checked."""
    try:
        text = path.read_bytes().decode("utf-8")
        meta = json.loads(text)
    except OSError as err:
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path), fix=_REDO) from err
    except UnicodeDecodeError as err:
        raise InputError("not a text file (not UTF-8)", where=str(path), fix=_REDO) from err
    except json.JSONDecodeError as err:
        problem = "empty" if not text.strip() else f"not valid JSON ({err.msg})"
        where = str(path) if not text.strip() else f"{path}, line {err.lineno} column {err.colno}"
        raise InputError(f"the file is {problem}", where=where, fix=_REDO) from err
    if not isinstance(meta, dict):
        raise InputError(f"the file holds a JSON {type(meta).__name__}, not an object", where=str(path),
                         fix=_REDO)
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            kind = {int: "a whole number", str: "text", dict: "a JSON object"}[types[0]]
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise InputError(f"field {key!r} is {shown}, not {kind}", where=str(path), fix=_REDO)
    if meta.get("has_traffic") is not None and not isinstance(meta["has_traffic"], bool):
        raise InputError(f"field 'has_traffic' is {meta['has_traffic']!r}, not true or false",
                         where=str(path), fix=_REDO)
    if meta.get("bin_minutes") is not None and meta["bin_minutes"] <= 0:
        raise InputError(f"bin_minutes = {meta['bin_minutes']} is not positive", where=str(path), fix=_REDO)
    version = meta.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise InputError(
            f"written in dataset format {version}; this version of mstdiff reads format {FORMAT_VERSION}",
            where=str(path), fix="update mstdiff, or re-run `mstdiff prepare` with this version",
        )
    return meta


def _load_npy(path: Path, *, mmap: bool, kinds: str, what: str) -> np.ndarray:
    """A ``.npy`` array, never unpickled; its header, length and dtype checked before reading."""
    fmt = np.lib.format
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            else:
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            offset = fh.tell()
    except OSError as err:
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path), fix=_REDO) from err
    except Exception as err:  # numpy's header parser fails in many ways on a damaged header
        problem = "empty" if size == 0 else "not a NumPy array file (or its header is damaged)"
        raise InputError(f"the file is {problem}", where=str(path), fix=_REDO) from err
    if dtype.hasobject:
        raise InputError("the array holds Python objects, which mstdiff never unpickles", where=str(path),
                         fix=_REDO)
    if dtype.kind not in kinds:
        raise InputError(f"the array holds {dtype} values, not {what}", where=str(path), fix=_REDO)
    expected = offset + math.prod(int(n) for n in shape) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise InputError(
            f"the file is {state}: {size:,} bytes where an array of shape {tuple(shape)} ({dtype}) needs "
            f"{expected:,}", where=str(path), fix=_REDO,
        )
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # pragma: no cover - checked above
        raise InputError(f"cannot read the array ({type(err).__name__})", where=str(path), fix=_REDO) from err
    return np.asarray(arr) if not mmap else arr


def _load_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A Parquet table with ``columns`` present."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except OSError as err:
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path), fix=_REDO) from err
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        problem = ("empty" if size == 0 else "truncated (no Parquet footer)" if head == b"PAR1"
                   else "not a Parquet file")
        raise InputError(f"the file is {problem}", where=str(path), fix=_REDO)
    try:
        df = pd.read_parquet(path)
    except PARQUET_ERRORS as err:
        raise InputError("the Parquet file is damaged (its contents cannot be read)", where=str(path),
                         fix=_REDO) from err
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"the table lacks column(s) {missing}; it has {list(map(str, df.columns))}",
                         where=str(path), fix=_REDO)
    return df


def user_level_split(
    ds: PreparedDataset,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded split of sample positions into train/val/test with no user in two splits.

    Users (not samples) are shuffled with ``numpy.random.default_rng(seed)`` and cut by the
    cumulative ``fractions``; every sample of a user goes to that user's split. Returns sorted
    position arrays keyed ``"train"``, ``"val"``, ``"test"``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InputError(
            f"split fractions {fractions} must be three non-negative numbers summing to 1",
            where="split", fix="e.g. --fractions 0.8 0.1 0.1",
        )
    users = ds.samples["user"].astype(str).to_numpy()
    uniq = np.unique(users)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(uniq.size)
    cuts = np.round(np.cumsum(fractions)[:2] * uniq.size).astype(int)
    groups = np.split(uniq[perm], cuts)
    out: dict[str, np.ndarray] = {}
    for name, group in zip(("train", "val", "test"), groups):
        out[name] = np.flatnonzero(np.isin(users, group))
    return out


SPLIT_NAMES = ("train", "val", "test")


def is_share(value: Any) -> bool:
    """``parts.val`` given as a number (a share of the training part) rather than a list of values."""
    return isinstance(value, float | int) and not isinstance(value, bool)


def column_split(ds: PreparedDataset, column: str, parts: Mapping[str, Any], seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """Split of sample positions by the value of a samples column instead of random fractions.

    ``parts`` maps each of ``"train"``, ``"val"``, ``"test"`` to the list of ``column`` values whose
    samples go there, e.g. ``column="part"``, ``parts={"train": ["real"], "val": ["val"], "test":
    ["val"]}`` for MoveSim-format data (a split may repeat another's values: the GeoLife benchmark
    evaluates on its validation file). Values are compared as text. A listed value that no sample
    has raises :class:`InputError`; samples whose value is listed nowhere are left out. Returns sorted
    position arrays keyed ``"train"``, ``"val"``, ``"test"``.

    ``parts["val"]`` may instead be a number in (0, 1): that share of the training part's users
    (seeded, ``numpy.random.default_rng(seed)``) is taken out of train into val, so that choices made
    on the validation split never look at the test part (e.g. ``{train: [real], val: 0.1, test:
    [val]}`` for GeoLife, whose test part is its validation file).
    """
    where = f"split by {column!r}"
    if column not in ds.samples.columns:
        raise InputError(
            f"the samples table has no column {column!r}; it has {list(map(str, ds.samples.columns))}",
            where=where, fix="split by one of those columns, or by fractions",
        )
    if not isinstance(parts, Mapping):
        raise InputError(f"parts is {type(parts).__name__}, not a mapping", where=where,
                         fix="e.g. {train: [real], val: [val], test: [val]}")
    unknown = sorted(map(str, set(parts) - set(SPLIT_NAMES)))
    absent = [k for k in SPLIT_NAMES if k not in parts]
    if unknown or absent:
        what = (f"unknown split name(s) {unknown}" if unknown else f"no values for split(s) {absent}")
        raise InputError(f"{what}: parts needs exactly train, val and test", where=where,
                         fix="e.g. {train: [real], val: [val], test: [val]}")
    values = ds.samples[column].astype(str).to_numpy()
    present = sorted(set(values.tolist()))
    out: dict[str, np.ndarray] = {}
    share = parts["val"]
    from_train = is_share(share)
    if from_train and not 0.0 < float(share) < 1.0:
        raise InputError(f"parts.val = {share!r}: a share of the training part must be in (0, 1)",
                         where=where, fix="e.g. val: 0.1, or a list of values")
    for name in SPLIT_NAMES:
        if name == "val" and from_train:
            continue
        wanted = parts[name]
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(wanted, list | tuple) or not all(isinstance(v, str | int) for v in wanted):
            raise InputError(f"parts.{name} is {wanted!r}, not a list of {column} values", where=where,
                             fix="e.g. [real]")
        missing = [str(v) for v in wanted if str(v) not in present]
        if missing:
            shown = present if len(present) <= 20 else present[:20] + ["..."]
            raise InputError(
                f"no sample has {column} = {missing[0]!r} (parts.{name}); the values are {shown}",
                where=where, fix=f"list values of the {column!r} column")
        out[name] = np.flatnonzero(np.isin(values, [str(v) for v in wanted]))
    if from_train:
        users = ds.samples["user"].astype(str).to_numpy()
        uniq = np.unique(users[out["train"]])
        n_val = int(round(float(share) * uniq.size))
        if not 0 < n_val < uniq.size:
            raise InputError(f"parts.val = {share}: {n_val} of the {uniq.size} training users",
                             where=where, fix="choose a share that leaves users on both sides")
        held = uniq[np.random.default_rng(seed).permutation(uniq.size)[:n_val]]
        moved = np.isin(users[out["train"]], held)
        out["train"], out["val"] = out["train"][~moved], out["train"][moved]
    return out


def _split_parts(ds: PreparedDataset, fractions: tuple[float, float, float], seed: int, by: str | None,
                 parts: Mapping[str, Any] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if by is None:
        if parts:
            raise InputError("parts are given without the column to split by", where="split",
                             fix="give the column too (split_by: part / --by part), or drop the parts")
        return user_level_split(ds, fractions, seed), {"seed": seed, "fractions": list(fractions)}
    idx = column_split(ds, by, parts or {}, seed)
    how: dict[str, Any] = {"by": by, "parts": {
        k: float(p) if is_share(p) else [str(v) for v in ([p] if isinstance(p, str) else p)]
        for k, p in (parts or {}).items()}}
    if isinstance(how["parts"].get("val"), float):
        how["seed"] = seed
    return idx, how


def split_dataset(
    ds: PreparedDataset, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, *,
    by: str | None = None, parts: Mapping[str, Any] | None = None,
) -> dict[str, PreparedDataset]:
    """:func:`user_level_split` (or, with ``by``, :func:`column_split` of ``parts``) materialised as
    three datasets sharing the station table."""
    idx, how = _split_parts(ds, fractions, seed, by, parts)
    return {name: ds.subset(i, split={"name": name, **how}) for name, i in idx.items()}


def save_splits(
    ds: PreparedDataset,
    out: str | os.PathLike[str],
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    by: str | None = None,
    parts: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, PreparedDataset]:
    """Write ``out/{train,val,test}`` as prepared datasets, atomically as one directory.

    By fractions of users (:func:`user_level_split`), or with ``by`` by a samples column
    (:func:`column_split`, e.g. ``by="part"``, ``parts={"train": ["real"], "val": ["val"],
    "test": ["val"]}``)."""
    idx, how = _split_parts(ds, fractions, seed, by, parts)
    split = {name: ds.subset(i, split={"name": name, **how}) for name, i in idx.items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, part in split.items():
            part.save(tmp / name)
        write_json(tmp / "meta.json", run_meta(
            stage="split", **how, source=ds.meta.get("source"),
            counts={k: v.n_samples for k, v in split.items()}))
    return split
