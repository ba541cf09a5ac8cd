"""The MoveSim-format reader (GeoLife user-days on a location grid, trajectories only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from raw_inputs import assert_package_words

from mstdiff.cli import cli
from mstdiff.data import PreparedDataset
from mstdiff.data.dataset import split_dataset
from mstdiff.data.movesim import prepare_movesim
from mstdiff.data.prepare import SOURCES, prepare, source_options
from mstdiff.errors import InputError

GPS = [(39.984 + 0.001 * i, 116.305 + 0.002 * i) for i in range(20)]


def _line(rng: np.random.Generator, T: int = 16, n: int = 20) -> str:
    return " ".join(str(v) for v in rng.integers(0, n, T))


def write_movesim(folder, *, real=None, val=None, gps=None, T=16):
    """A small MoveSim folder: real.data (6 lines), val.data (3 lines), gps (20 locations)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    real = real if real is not None else "\n".join(_line(rng, T) for _ in range(6)) + "\n"
    val = val if val is not None else "\n".join(_line(rng, T) for _ in range(3)) + "\n"
    gps = gps if gps is not None else "".join(f"{a} {b}\n" for a, b in GPS)
    for name, body in (("real.data", real), ("val.data", val), ("gps", gps)):
        (folder / name).write_bytes(body.encode() if isinstance(body, str) else body)
    return folder


def _error(folder, pattern, **options):
    with pytest.raises(InputError, match=pattern) as info:
        prepare_movesim(folder, **options)
    msg = str(info.value)
    assert_package_words(msg)
    return msg


def test_source_is_registered_with_its_options():
    assert "movesim" in SOURCES
    assert source_options("movesim") == {"files": ("real.data", "val.data"), "gps": "gps", "bin_minutes": 30}


def test_reads_one_sample_per_line_with_the_gps_table(tmp_path):
    folder = write_movesim(tmp_path / "m")
    ds = prepare_movesim(folder)
    assert (ds.n_samples, ds.T, ds.n_stations) == (9, 16, 20)
    lines = (folder / "real.data").read_text().splitlines()
    np.testing.assert_array_equal(ds.locations[1], [int(v) for v in lines[1].split()])
    assert list(ds.stations["station_id"][:3]) == ["0", "1", "2"]
    np.testing.assert_allclose(ds.coords[5], GPS[5])
    assert ds.samples["user"].tolist()[:2] == ["real:1", "real:2"] and ds.samples["user"].iloc[6] == "val:1"
    assert ds.samples["part"].tolist() == ["real"] * 6 + ["val"] * 3
    assert ds.samples["user"].nunique() == 9  # each line its own sample
    assert not ds.has_traffic and ds.has_locations and not ds.traffic.any()
    assert ds.traffic.dtype == np.float32 and ds.traffic.shape == (9, 16)
    assert ds.meta["has_traffic"] is False and ds.meta["bin_minutes"] == 30
    assert ds.meta["counts"]["samples_per_part"] == {"real": 6, "val": 3}
    assert any("no user ids" in n for n in ds.meta["notes"])


def test_files_option_chooses_the_set_and_bin_minutes_is_recorded(tmp_path):
    folder = write_movesim(tmp_path / "m")
    ds = prepare_movesim(folder, files=["val.data"], bin_minutes=15)
    assert ds.n_samples == 3 and set(ds.samples["part"]) == {"val"} and ds.bin_minutes == 15
    (folder / "grid.txt").write_text((folder / "gps").read_text())
    assert prepare_movesim(folder, files="real.data", gps="grid.txt").n_samples == 6


def test_blank_lines_are_skipped_and_counted_without_shifting_line_numbers(tmp_path):
    rng = np.random.default_rng(1)
    lines = [_line(rng) for _ in range(4)]
    folder = write_movesim(tmp_path / "m", real="\n".join([lines[0], "", lines[1], "  ", *lines[2:]]) + "\n")
    ds = prepare_movesim(folder, files=["real.data"])
    assert ds.n_samples == 4
    assert ds.samples["user"].tolist() == ["real:1", "real:3", "real:5", "real:6"]
    assert ds.meta["counts"]["records_dropped"] == {"blank_line": 2}
    assert ds.meta["counts"]["lines_read"] == 6


def test_crlf_lines_and_a_missing_last_line_break_are_read(tmp_path):
    rng = np.random.default_rng(2)
    folder = write_movesim(tmp_path / "m", real="\r\n".join(_line(rng) for _ in range(3)))
    assert prepare_movesim(folder, files=["real.data"]).n_samples == 3


def test_id_outside_the_gps_table_names_file_line_value_and_size(tmp_path):
    rng = np.random.default_rng(3)
    bad = _line(rng).split()
    bad[4] = "20"
    folder = write_movesim(tmp_path / "m", val="\n".join([_line(rng), " ".join(bad)]) + "\n")
    msg = _error(folder, "outside the gps table")
    assert f"{folder / 'val.data'}, line 2" in msg and "location id 20 (field 5)" in msg
    assert "20 locations (ids 0..19)" in msg
    bad[4] = "-1"
    write_movesim(folder, real=" ".join(bad) + "\n")
    assert "location id -1" in _error(folder, "outside the gps table")


def test_ragged_line_names_file_line_and_both_counts(tmp_path):
    rng = np.random.default_rng(4)
    folder = write_movesim(tmp_path / "m", real="\n".join([_line(rng), _line(rng), _line(rng, T=15)]) + "\n")
    msg = _error(folder, "15 location ids, the first sample line")
    assert f"{folder / 'real.data'}, line 3" in msg and "has 16" in msg


def test_T_must_be_a_multiple_of_8(tmp_path):
    rng = np.random.default_rng(5)
    folder = write_movesim(tmp_path / "m", real=_line(rng, T=12) + "\n")
    msg = _error(folder, "not divisible by 8", files=["real.data"])
    assert "line 1" in msg


def test_files_of_different_T_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    folder = write_movesim(tmp_path / "m", val=_line(rng, T=24) + "\n")
    assert "the files of one set" in _error(folder, "24 location ids, those of real.data have 16")


@pytest.mark.parametrize("value", ["3.0", "abc", "٣", "1_0", "0x1"])
def test_non_integer_names_file_line_and_value(tmp_path, value):
    rng = np.random.default_rng(7)
    bad = _line(rng).split()
    bad[2] = value
    folder = write_movesim(tmp_path / "m", real="\n".join([_line(rng), " ".join(bad)]) + "\n")
    msg = _error(folder, "not an integer")
    assert f"{folder / 'real.data'}, line 2" in msg and repr(value) in msg and "location id 3" in msg


@pytest.mark.parametrize("body", ["", "\n\n"])
def test_empty_file(tmp_path, body):
    folder = write_movesim(tmp_path / "m", val=body)
    msg = _error(folder, "holds no sample")
    assert str(folder / "val.data") in msg


@pytest.mark.parametrize("gps, pattern, line", [
    ("", "gps file is empty", None),
    ("39.9 116.3\n39.9\n", "2 fields|1 fields", 2),
    ("39.9 116.3\n\n39.9 116.4\n", "the line is empty", 2),
    ("39.9 116.3\n39.9 abc\n", "not two numbers", 2),
    ("39.9 116.3\nnan 116.3\n", "not two numbers", 2),
    ("39.9 116.3\n116.3 39.9\n", "lat 116.3 is outside", 2),
    ("39.9 116.3\n39.9 116.3 7\n", "3 fields, not 2", 2),
])
def test_bad_gps_lines(tmp_path, gps, pattern, line):
    folder = write_movesim(tmp_path / "m", real="0 1 0 1 0 1 0 1\n", val="1 1 1 1 1 1 1 1\n", gps=gps)
    msg = _error(folder, pattern)
    assert str(folder / "gps") in msg
    if line is not None:
        assert f"gps, line {line}" in msg


def test_gps_blank_lines_at_the_end_are_ignored(tmp_path):
    folder = write_movesim(tmp_path / "m", gps="".join(f"{a} {b}\n" for a, b in GPS) + "\n\n")
    assert prepare_movesim(folder).n_stations == 20


def test_binary_or_utf16_trajectory_file_is_refused_in_package_words(tmp_path):
    folder = write_movesim(tmp_path / "m", real="0 1 2 3 4 5 6 7\n".encode("utf-16"))
    msg = _error(folder, "UTF-16")
    assert str(folder / "real.data") in msg


def test_missing_files_and_folder(tmp_path):
    folder = write_movesim(tmp_path / "m")
    msg = _error(folder, "no such file", files=["real.data", "test.data"])
    assert str(folder / "test.data") in msg and "gps" in msg and "files=" in msg
    (folder / "gps").unlink()
    assert "gps=NAME" in _error(folder, "no such file")
    assert str(tmp_path / "nope") in _error(tmp_path / "nope", "no such folder")
    _error(folder / "real.data", "not a folder")
    _error(folder, "non-empty list", files=[])
    _error(folder, "stem 'real'", files=["real.data", "real.txt"])
    _error(folder, "bin_minutes", bin_minutes=0)


def test_prepare_writes_no_traffic_and_no_normalisation(tmp_path):
    folder = write_movesim(tmp_path / "m")
    ds = prepare("movesim", folder, tmp_path / "out")
    assert "normalisation" not in ds.meta and ds.meta["counts"]["users"] == 9
    assert not (tmp_path / "out" / "traffic.npy").exists()
    back = PreparedDataset.load(tmp_path / "out")
    assert not back.has_traffic and back.samples["part"].tolist() == ds.samples["part"].tolist()
    np.testing.assert_array_equal(back.locations, ds.locations)


def test_cli_prepare_info_and_split_by_part(tmp_path):
    folder = write_movesim(tmp_path / "m")
    r = CliRunner()
    res = r.invoke(cli, ["prepare", "--source", "movesim", "--raw", str(folder),
                         "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert "traffic                      | none (trajectories only)" in res.output
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["has_traffic"] is False and meta["options"]["files"] == ["real.data", "val.data"]
    assert not (tmp_path / "d" / "traffic.npy").exists()
    info = r.invoke(cli, ["info", str(tmp_path / "d")]).output
    assert "none (trajectories only)" in info and "active slots" not in info
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--by", "part",
                         "--train", "real", "--val", "val", "--test", "val"])
    assert res.exit_code == 0, res.output
    train, test = (PreparedDataset.load(tmp_path / "s" / k) for k in ("train", "test"))
    assert train.n_samples == 6 and test.n_samples == 3 and not train.has_traffic
    assert set(test.samples["part"]) == {"val"}
    split_meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert split_meta["by"] == "part" and split_meta["parts"]["train"] == ["real"]
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s2"), "--by", "part",
                         "--train", "real", "--val", "val", "--test", "test"])
    assert res.exit_code == 2 and "no sample has part = 'test'" in res.output
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s3"), "--train", "real"])
    assert res.exit_code == 2 and "--by" in res.output
    res = r.invoke(cli, ["prepare", "--source", "movesim", "--raw", str(folder), "--out", str(tmp_path / "e"),
                         "-o", "files=[real.data,nope.data]"])
    assert res.exit_code == 2 and "nope.data: no such file" in res.output and "Traceback" not in res.output


def test_split_by_column_errors(tmp_path):
    ds = prepare_movesim(write_movesim(tmp_path / "m"))
    with pytest.raises(InputError, match="no column 'file'"):
        split_dataset(ds, by="file", parts={"train": ["real"], "val": ["val"], "test": ["val"]})
    with pytest.raises(InputError, match="needs exactly train, val and test"):
        split_dataset(ds, by="part", parts={"train": ["real"], "test": ["val"]})
    with pytest.raises(InputError, match="without the column"):
        split_dataset(ds, parts={"train": ["real"]})
    parts = split_dataset(ds, by="part", parts={"train": ["real", "val"], "val": [], "test": "val"})
    assert [parts[k].n_samples for k in ("train", "val", "test")] == [9, 0, 3]
    assert parts["train"].meta["split"] == {"name": "train", "by": "part", "parts": {
        "train": ["real", "val"], "val": [], "test": ["val"]}}


@pytest.fixture(scope="module")
def geolife(request):
    from conftest import shared_data_dir

    path = shared_data_dir() / "geolife_movesim"
    if not (path / "real.data").is_file():
        pytest.skip(f"GeoLife MoveSim files not found at {path} (set MSTDIFF_SHARED_DATA to the folder "
                    "holding geolife_movesim/)")
    return path


def test_real_geolife_files(geolife):
    ds = prepare("movesim", geolife, None)
    assert (ds.n_samples, ds.T, ds.n_stations) == (8000, 48, 23768)
    assert int(ds.locations.min()) == 0 and int(ds.locations.max()) == 23760
    assert ds.meta["counts"]["samples_per_part"] == {"real": 7000, "val": 1000}
    assert not ds.has_traffic and ds.meta["prepare_seconds"] < 30
    assert np.unique(ds.locations[ds.samples["part"] == "real"]).size == 17897  # SOURCE.md


def test_val_as_a_share_of_the_train_part_is_seeded_disjoint_and_leaves_test_alone(tmp_path):
    from mstdiff.data.dataset import column_split

    folder = write_movesim(tmp_path / "m")
    ds = prepare_movesim(folder)
    whole = column_split(ds, "part", {"train": ["real"], "val": ["val"], "test": ["val"]})
    a = column_split(ds, "part", {"train": ["real"], "val": 0.5, "test": ["val"]}, seed=3)
    b = column_split(ds, "part", {"train": ["real"], "val": 0.5, "test": ["val"]}, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["val"].size == 3 and a["train"].size == 3
    np.testing.assert_array_equal(np.sort(np.r_[a["train"], a["val"]]), whole["train"])
    np.testing.assert_array_equal(a["test"], whole["test"])
    others = {tuple(column_split(ds, "part", {"train": ["real"], "val": 0.5, "test": ["val"]},
                                 seed=s)["val"]) for s in range(8)}
    assert len(others) > 1  # the seed chooses which users
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(InputError, match="share of the training part"):
            column_split(ds, "part", {"train": ["real"], "val": bad, "test": ["val"]})
    r = CliRunner()
    prepare("movesim", folder, tmp_path / "d")
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--by", "part",
                         "--train", "real", "--val-share", "0.5", "--test", "val", "--seed", "3"])
    assert res.exit_code == 0, res.output
    val = PreparedDataset.load(tmp_path / "s" / "val")
    assert sorted(val.samples["user"]) == sorted(ds.samples["user"].to_numpy()[a["val"]])
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["parts"]["val"] == 0.5
