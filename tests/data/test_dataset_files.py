"""Broken prepared-dataset directories: an InputError naming the file, the problem and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mstdiff.data import PreparedDataset
from mstdiff.errors import InputError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    rng = np.random.default_rng(0)
    stations = pd.DataFrame({"station_id": ["a", "b", "c"], "lat": [31.0, 31.1, 31.2],
                             "lon": [121.0, 121.1, 121.2]})
    samples = pd.DataFrame({"user": ["u0", "u1", "u2", "u3"], "start": ["2014-06-14T00:00:00"] * 4})
    ds = PreparedDataset(rng.gamma(1.0, 2.0, (4, 16)), rng.integers(0, 3, (4, 16)), stations, samples,
                         {"source": "test", "bin_minutes": 30})
    return ds.save(tmp_path_factory.mktemp("ds") / "good")


def _truncate(name, frac):
    def f(d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * frac)])
    return f


def _write(name, data):
    return lambda d: (d / name).write_bytes(data)


def _meta(**kw):
    def f(d):
        meta = json.loads((d / "meta.json").read_text())
        meta.update(kw)
        (d / "meta.json").write_text(json.dumps(meta))
    return f


def _npy(name, arr):
    return lambda d: np.save(d / name, arr, allow_pickle=True)


def _parquet(name, edit):
    def f(d):
        edit(pd.read_parquet(d / name)).to_parquet(d / name)
    return f


CASES = [
    ("traffic.npy", _truncate("traffic.npy", 0.6),
     r"truncated: \d[\d,]* bytes where an array of shape \(4, 16\)"),
    ("locations.npy", _truncate("locations.npy", 0.95), "truncated"),
    ("traffic.npy", _truncate("traffic.npy", 0.01), "not a NumPy array file"),
    ("traffic.npy", _write("traffic.npy", b""), "empty"),
    ("traffic.npy", _write("traffic.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': Fal"),
     "not a NumPy array file"),
    ("traffic.npy", _npy("traffic.npy", np.array([{"x": 1}] * 64, dtype=object).reshape(4, 16)),
     "Python objects, which mstdiff never unpickles"),
    ("locations.npy", _npy("locations.npy", np.full((4, 16), "a")), "not station indices"),
    ("traffic.npy", _npy("traffic.npy", np.ones((4, 16), dtype=complex)), "not traffic values"),
    ("meta.json", _truncate("meta.json", 0.5), r"not valid JSON .*|line \d+ column \d+"),
    ("meta.json", _write("meta.json", b""), "empty"),
    ("meta.json", _write("meta.json", b"[1, 2]"), "JSON list, not an object"),
    ("meta.json", _write("meta.json", b"\xff\xfe\x00x"), "not UTF-8"),
    ("meta.json", _meta(bin_minutes="thirty"), "'bin_minutes' is 'thirty', not a whole number"),
    ("meta.json", _meta(format_version=99), "format 99; this version of mstdiff reads format 1"),
    ("stations.parquet", _truncate("stations.parquet", 0.5), "truncated"),
    ("stations.parquet", _write("stations.parquet", b"station_id,lat,lon\n"), "not a Parquet file"),
    ("samples.parquet", lambda d: (d / "samples.parquet").write_bytes(
        (lambda b: b[:4] + bytes(len(b) - 8) + b[-4:])((d / "samples.parquet").read_bytes())), "damaged"),
    ("stations.parquet", _parquet("stations.parquet", lambda df: df.assign(lat=df.lat.astype(str))),
     "'lat' holds .* values, not numbers"),
    ("samples.parquet", _parquet("samples.parquet", lambda df: df.drop(columns=["user"])),
     r"lacks column\(s\) \['user'\]"),
]


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("name,damage,pattern", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_broken_file_is_named_with_what_and_how(good, tmp_path, name, damage, pattern, mmap):
    d = tmp_path / "ds"
    shutil.copytree(good, d)
    damage(d)
    with pytest.raises(InputError, match=pattern) as info:
        PreparedDataset.load(d, mmap=mmap)
    err = info.value
    assert err.where is not None and err.where.startswith(str(d / name)), err.where
    assert err.fix and ("mstdiff prepare" in err.fix or "mstdiff" in err.fix)


@pytest.mark.parametrize("damage,pattern", [
    (_meta(T=48), "meta.json says T = 48 but traffic.npy has 16 time bins"),
    (_npy("locations.npy", np.full((4, 16), 7, dtype=np.int64)), r"location index out of range \[7, 7\]"),
    (_npy("traffic.npy", np.full((4, 16), np.nan, dtype=np.float32)), "NaN"),
    (_npy("traffic.npy", np.ones(64, dtype=np.float32)), "2-D"),
    (_parquet("samples.parquet", lambda df: df.iloc[:2]), "2 sample ids for 4 samples"),
    (_npy("locations.npy", np.full((4, 16), 2**40, dtype=np.int64)), "do not fit"),
])
def test_inconsistent_directory_names_the_directory(good, tmp_path, damage, pattern):
    d = tmp_path / "ds"
    shutil.copytree(good, d)
    damage(d)
    with pytest.raises(InputError, match=pattern) as info:
        PreparedDataset.load(d)
    assert str(d) in str(info.value) and info.value.fix


def test_npy_files_are_never_unpickled(good, tmp_path, monkeypatch):
    d = tmp_path / "ds"
    shutil.copytree(good, d)
    np.save(d / "traffic.npy", np.array([{"x": 1}] * 64, dtype=object).reshape(4, 16), allow_pickle=True)
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    with pytest.raises(InputError):
        PreparedDataset.load(d)
    good_ds = PreparedDataset.load(good)
    assert good_ds.n_samples == 4 and calls and all(k.get("allow_pickle") is False for k in calls)


def test_a_file_as_the_dataset_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="it is a file"):
        PreparedDataset.load(tmp_path / "f")
