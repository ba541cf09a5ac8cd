import numpy as np
import pandas as pd
import pytest

from mstdiff.data import PreparedDataset, split_dataset, user_level_split
from mstdiff.data.dataset import normalisation_stats
from mstdiff.data.torchdata import SeriesDataset
from mstdiff.errors import InputError


def make_ds(U=30, T=16, N=5, users=10, seed=0):
    rng = np.random.default_rng(seed)
    stations = pd.DataFrame({"station_id": [f"s{i}" for i in range(N)],
                             "lat": rng.uniform(31, 31.3, N), "lon": rng.uniform(121, 121.5, N)})
    samples = pd.DataFrame({"user": [f"u{i % users}" for i in range(U)], "start": ["2014-06-14"] * U})
    return PreparedDataset(rng.gamma(1.0, 2.0, (U, T)), rng.integers(0, N, (U, T)), stations, samples,
                           {"source": "test", "bin_minutes": 30})


def test_save_load_round_trip(tmp_path):
    ds = make_ds()
    ds.save(tmp_path / "d")
    back = PreparedDataset.load(tmp_path / "d")
    np.testing.assert_array_equal(back.traffic, ds.traffic)
    np.testing.assert_array_equal(back.locations, ds.locations)
    assert back.traffic.dtype == np.float32 and back.locations.dtype == np.int32
    assert back.meta["counts"]["samples"] == 30 and back.meta["T"] == 16
    assert list(back.samples["user"]) == list(ds.samples["user"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_save_refuses_existing_without_overwrite(tmp_path):
    ds = make_ds()
    ds.save(tmp_path / "d")
    with pytest.raises(InputError, match="already exists"):
        ds.save(tmp_path / "d")
    ds.save(tmp_path / "d", overwrite=True)


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    ds = make_ds()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        ds.save(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("T", [12, 50, 7])
def test_T_not_divisible_by_8(T):
    with pytest.raises(InputError, match="divisible by 8"):
        make_ds(T=T)


def test_validation_errors():
    ds = make_ds()
    with pytest.raises(InputError, match="out of range"):
        PreparedDataset(ds.traffic, ds.locations + 10, ds.stations, ds.samples)
    bad = ds.traffic.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        PreparedDataset(bad, ds.locations, ds.stations, ds.samples)
    with pytest.raises(InputError, match="negative"):
        PreparedDataset(-ds.traffic - 1, ds.locations, ds.stations, ds.samples)


def test_user_level_split_disjoint_and_seeded():
    ds = make_ds(U=200, users=50)
    a = user_level_split(ds, seed=3)
    b = user_level_split(ds, seed=3)
    c = user_level_split(ds, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    allidx = np.concatenate(list(a.values()))
    assert np.array_equal(np.sort(allidx), np.arange(200))
    users = ds.samples["user"].to_numpy()
    sets = {k: set(users[v]) for k, v in a.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    assert len(sets["train"]) == 40 and len(sets["val"]) == 5


def test_split_dataset_and_torch_view():
    ds = make_ds(U=100, users=20)
    parts = split_dataset(ds, seed=1)
    assert sum(len(p) for p in parts.values()) == 100
    tds = SeriesDataset(parts["train"])
    item = tds[0]
    assert item["traffic"].shape == (16,) and item["locations"].dtype.is_floating_point is False


def test_bad_fractions():
    with pytest.raises(InputError):
        user_level_split(make_ds(), fractions=(0.5, 0.1, 0.1))


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        PreparedDataset.load(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="missing"):
        PreparedDataset.load(tmp_path / "x")


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_normalisation_stats_in_chunks_equal_numpy(chunk_rows):
    rng = np.random.default_rng(3)
    x = (rng.gamma(0.5, 40.0, size=(53, 12)) * (rng.random((53, 12)) < 0.4)).astype(np.float32)
    got = normalisation_stats(x, chunk_rows=chunk_rows)
    x64 = x.astype(np.float64)
    lx = np.log1p(x64)
    want = {"mean": x64.mean(), "std": x64.std(), "max": x64.max(), "log1p_mean": lx.mean(),
            "log1p_std": lx.std(), "active_share": (x64 > 0).mean()}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k
    assert normalisation_stats(np.zeros((0, 4)))["std"] == 0.0
