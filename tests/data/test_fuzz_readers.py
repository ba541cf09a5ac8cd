"""Property tests: random malformed raw files and prepared datasets end in a dataset or an InputError.

The three record readers (Shanghai Telecom, App Usage, generic CSV, the latter also with epoch-second
timestamps) get files made of valid record
lines mixed with broken ones: wrong field counts, random unicode (control characters, tabs, quotes,
line breaks inside fields), numbers as NaN / inf / 1e400 / 30-digit integers, empty fields, BOMs,
CRLF line breaks, blank lines and raw bytes. The prepared-dataset loader gets a valid directory with
one file truncated, overwritten with random bytes, bit-flipped, or replaced by a well-formed file of
the wrong content (random JSON, arrays of random dtype and shape, tables of random columns).

Every outcome must be a dataset or an :class:`InputError` whose message is the package's (no DuckDB
phrases); a dataset from a reader must account for every line (``records_read`` = data lines, and
``records_read`` = kept + dropped). The number of examples is small and fixed (``derandomize``), so
the file adds a few seconds to the suite and fails the same way on every machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_inputs import READERS, assert_package_words

from mstdiff.data import PreparedDataset
from mstdiff.errors import InputError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DELIM = {"shanghai": b"\t", "app-usage": b" ", "csv": b",", "csv-unix": b","}
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-0", "0x1F", "1_000", "", " ", "NULL", "１２"]),
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)


@st.composite
def broken_line(draw, reader: str) -> bytes:
    """A record line of ``reader`` with some fields replaced and maybe too few or too many fields."""
    template = draw(st.sampled_from(READERS[reader][3]))
    fields = template.split(DELIM[reader])
    for i in range(len(fields)):
        if draw(st.integers(0, 3)) == 0:
            fields[i] = draw(st.one_of(NUMBERS, TEXT)).encode("utf-8")
    change = draw(st.integers(-2, 2)) if draw(st.booleans()) else 0
    if change < 0:
        fields = fields[: len(fields) + change]
    else:
        fields += [draw(NUMBERS).encode()] * change
    line = DELIM[reader].join(fields)
    if draw(st.integers(0, 9)) == 0:
        line += draw(st.binary(max_size=6))
    return line


@st.composite
def record_file(draw, reader: str) -> bytes:
    good = READERS[reader][3]
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            lines.append(draw(st.sampled_from(good)))
        elif kind < 9:
            lines.append(draw(broken_line(reader)))
        else:
            lines.append(b"")
    body = READERS[reader][2] + b"\n".join(lines) + (b"\n" if draw(st.booleans()) else b"")
    if draw(st.integers(0, 4)) == 0:
        body = body.replace(b"\n", b"\r\n")
    bom = draw(st.sampled_from([b"", b"", b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]))
    return bom + body


def _data_lines(body: bytes, header: bool) -> int:
    n = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
    return n - (1 if header and n else 0)


def _check_reader(reader: str, body: bytes) -> str:
    write, prepare, header, _ = READERS[reader]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), body)
        try:
            ds = prepare(Path(tmp))
        except InputError as err:
            msg = str(err)
            assert_package_words(msg)
            assert path.name in msg or tmp in msg, msg
            return "error"
    c = ds.meta["counts"]
    assert c["records_read"] == c["records_kept"] + sum(c["records_dropped"].values())
    if b'"' not in body:  # a quoted CSV field may span lines; otherwise lines are records
        assert c["records_read"] == _data_lines(body, bool(header))
    assert ds.n_samples > 0 and np.isfinite(ds.traffic).all()
    return "dataset"


OUTCOMES: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("reader", list(READERS))
def test_fuzz_record_readers(reader):
    seen = OUTCOMES.setdefault(reader, {"dataset": 0, "error": 0})

    @FUZZ
    @given(body=record_file(reader))
    def run(body: bytes) -> None:
        seen[_check_reader(reader, body)] += 1

    run()
    assert seen["dataset"] > 0 and seen["error"] > 0, seen  # both outcomes were exercised


# ------------------------------------------------------------------------------- prepared datasets
def _small_dataset() -> PreparedDataset:
    rng = np.random.default_rng(0)
    stations = pd.DataFrame({"station_id": ["a", "b", "c"], "lat": [31.0, 31.1, 31.2],
                             "lon": [121.0, 121.1, 121.2]})
    samples = pd.DataFrame({"user": ["u0", "u1", "u2", "u3"], "start": ["2014-06-14T00:00:00"] * 4})
    return PreparedDataset(rng.gamma(1.0, 2.0, (4, 8)), rng.integers(0, 3, (4, 8)), stations, samples,
                           {"source": "test", "bin_minutes": 30})


FILES = ["traffic.npy", "locations.npy", "stations.parquet", "samples.parquet", "meta.json"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["T", "bin_minutes", "counts", "source", "format_version", "traffic_unit", "x"]),
        inner, max_size=4),
    max_leaves=8,
)
DTYPES = st.sampled_from(["float32", "float64", "int8", "int32", "int64", "uint16", "bool", "complex64",
                          "U3", "S2", "object"])
SHAPES = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
VALUES = st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 1e300, 2.0**40, 3.0])


@st.composite
def mutation(draw):
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["truncate", "random bytes", "flip bytes", "well-formed"]))
    if how == "truncate":
        return name, how, draw(st.floats(0.0, 0.999))
    if how == "random bytes":
        return name, how, draw(st.binary(max_size=200))
    if how == "flip bytes":
        return name, how, draw(st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)), min_size=1,
                                        max_size=4))
    if name == "meta.json":
        return name, how, draw(JSON)
    if name.endswith(".npy"):
        return name, how, (draw(DTYPES), draw(SHAPES), draw(VALUES))
    cols = draw(st.lists(st.sampled_from(["station_id", "lat", "lon", "user", "start", "x"]), max_size=4,
                         unique=True))
    kinds = draw(st.lists(st.sampled_from(["str", "float", "int", "bool", "none"]), min_size=len(cols),
                          max_size=len(cols)))
    return name, how, (cols, kinds, draw(st.integers(0, 5)))


def _apply(path: Path, name: str, how: str, arg) -> None:
    f = path / name
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[: int(len(data) * arg)])
    elif how == "random bytes":
        f.write_bytes(arg)
    elif how == "flip bytes":
        buf = bytearray(data)
        for frac, x in arg:
            buf[int(len(buf) * frac)] ^= x
        f.write_bytes(bytes(buf))
    elif name == "meta.json":
        f.write_text(json.dumps(arg))
    elif name.endswith(".npy"):
        dtype, shape, value = arg
        with np.errstate(invalid="ignore", over="ignore"):
            arr = np.full(shape, value).astype(dtype) if dtype != "object" else np.full(shape, {"v": value})
        np.save(f, arr, allow_pickle=True)
    else:
        cols, kinds, n = arg
        make = {"str": lambda: [f"s{i}" for i in range(n)], "float": lambda: np.linspace(0, 1, n),
                "int": lambda: np.arange(n), "bool": lambda: np.ones(n, bool), "none": lambda: [None] * n}
        pd.DataFrame({c: make[k]() for c, k in zip(cols, kinds)}).to_parquet(f)


def test_fuzz_prepared_dataset_loader(tmp_path):
    good = _small_dataset().save(tmp_path / "good")
    seen = {"dataset": 0, "error": 0}

    @FUZZ
    @given(change=mutation(), mmap=st.booleans())
    def run(change, mmap: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "ds"
            shutil.copytree(good, d)
            _apply(d, *change)
            try:
                ds = PreparedDataset.load(d, mmap=mmap)
            except InputError as err:
                msg = str(err)
                assert str(d) in msg, msg
                seen["error"] += 1
                return
            ds.summary()
            seen["dataset"] += 1

    run()
    assert seen["error"] > 0, seen
