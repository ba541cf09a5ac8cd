"""Prepared datasets without traffic (trajectories only) and with placeholder outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mstdiff.data import PreparedDataset, split_dataset
from mstdiff.data.dataset import save_splits
from mstdiff.errors import InputError


def trajectories_only(U=20, T=16, N=6, seed=0):
    rng = np.random.default_rng(seed)
    stations = pd.DataFrame({"station_id": [str(i) for i in range(N)],
                             "lat": rng.uniform(39.8, 40.1, N), "lon": rng.uniform(116.2, 116.5, N)})
    samples = pd.DataFrame({"user": [f"real:{i + 1}" for i in range(U)], "start": [""] * U,
                            "part": ["real"] * (U - 5) + ["val"] * 5})
    return PreparedDataset(np.zeros((U, T)), rng.integers(0, N, (U, T)), stations, samples,
                           {"source": "movesim", "bin_minutes": 30, "has_traffic": False})


def test_flags():
    ds = trajectories_only()
    assert not ds.has_traffic and ds.has_locations
    with_traffic = PreparedDataset(np.ones((2, 8)), np.zeros((2, 8)), ds.stations,
                                   pd.DataFrame({"user": ["a", "b"], "start": ["", ""]}), {})
    assert with_traffic.has_traffic and with_traffic.has_locations  # has_traffic absent: true
    ph = with_traffic.with_series(np.zeros((2, 8)), np.zeros((2, 8)), source="x",
                                  placeholder={"traffic": "zeros", "locations": "zeros"})
    assert not ph.has_traffic and not ph.has_locations
    assert ph.meta.get("has_traffic", True) is True  # a placeholder is stored as zeros, as before


def test_save_load_round_trip_without_traffic_npy(tmp_path):
    ds = trajectories_only()
    ds.save(tmp_path / "d")
    assert not (tmp_path / "d" / "traffic.npy").exists()
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["has_traffic"] is False and "normalisation" not in meta
    for mmap in (False, True):
        back = PreparedDataset.load(tmp_path / "d", mmap=mmap)
        assert not back.has_traffic
        assert back.traffic.dtype == np.float32 and back.traffic.shape == (20, 16) and not back.traffic.any()
        np.testing.assert_array_equal(back.locations, ds.locations)
        assert back.samples["part"].tolist() == ds.samples["part"].tolist()


def test_missing_traffic_npy_is_still_an_error_when_meta_has_traffic(tmp_path):
    ds = trajectories_only()
    ds.meta["has_traffic"] = True
    ds.save(tmp_path / "d")
    (tmp_path / "d" / "traffic.npy").unlink()
    with pytest.raises(InputError, match="missing traffic.npy") as info:
        PreparedDataset.load(tmp_path / "d")
    assert str(tmp_path / "d") in str(info.value)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    del meta["has_traffic"]  # absent: true
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="missing traffic.npy"):
        PreparedDataset.load(tmp_path / "d")
    meta["has_traffic"] = "no"
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="'has_traffic' is 'no', not true or false"):
        PreparedDataset.load(tmp_path / "d")


def test_missing_other_files_are_named_as_before(tmp_path):
    trajectories_only().save(tmp_path / "d")
    (tmp_path / "d" / "locations.npy").unlink()
    with pytest.raises(InputError, match="missing traffic.npy, locations.npy"):
        PreparedDataset.load(tmp_path / "d")


def test_non_zero_traffic_with_has_traffic_false_is_refused():
    ds = trajectories_only()
    with pytest.raises(InputError, match="has_traffic: false but the traffic array holds non-zero"):
        PreparedDataset(np.ones(ds.locations.shape), ds.locations, ds.stations, ds.samples, dict(ds.meta))


def test_info_says_there_is_no_traffic():
    text = trajectories_only().summary()
    assert "| traffic" in text and "none (trajectories only)" in text
    assert "active slots" not in text and "traffic unit" not in text
    assert "moves per sample" in text


def test_info_of_placeholder_outputs():
    ds = trajectories_only()
    ds.meta["has_traffic"] = True
    ph = ds.with_series(np.zeros((3, 16)), np.zeros((3, 16)), source="b",
                        placeholder={"traffic": "zeros", "locations": "zeros"})
    text = ph.summary()
    assert "placeholder zeros: the model does not generate traffic" in text
    assert "does not generate locations" in text and "moves per sample" not in text


def test_subset_split_and_with_series_keep_the_flag(tmp_path):
    ds = trajectories_only()
    assert not ds.subset([0, 1, 2]).has_traffic
    for part in split_dataset(ds, (0.6, 0.2, 0.2), seed=1).values():
        assert not part.has_traffic
    parts = save_splits(ds, tmp_path / "s", by="part", parts={"train": ["real"], "val": ["val"],
                                                               "test": ["val"]})
    assert [parts[k].n_samples for k in ("train", "val", "test")] == [15, 5, 5]
    for k in ("train", "val", "test"):
        assert not (tmp_path / "s" / k / "traffic.npy").exists()
        assert not PreparedDataset.load(tmp_path / "s" / k).has_traffic
    gen = ds.with_series(np.random.default_rng(0).random((4, 16)), np.zeros((4, 16)), source="gen")
    assert not gen.has_traffic and not gen.traffic.any() and "normalisation" not in gen.meta
    gen.save(tmp_path / "g")
    assert not (tmp_path / "g" / "traffic.npy").exists()
