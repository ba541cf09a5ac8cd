"""The registry, independent pairs and generated datasets."""

from __future__ import annotations

import numpy as np
import pytest

from mstdiff.baselines import (
    BASELINES,
    Baseline,
    GeneratedSeries,
    Markov,
    Pair,
    TimeGeo,
    baseline_names,
    generate_dataset,
    load_baseline,
    make_baseline,
)
from mstdiff.baselines.base import child_seeds
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import synthetic_city
from mstdiff.errors import InputError

CSDI_TINY = {"channels": 8, "layers": 1, "heads": 2, "ff_dim": 8, "step_emb_dim": 8, "time_emb_dim": 8,
             "diffusion": {"steps": 5},
             "train": {"max_steps": 3, "batch_size": 16, "device": "cpu", "threads": 1, "warmup_steps": 1}}


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=20, n_stations=25, days=2, seed=7)


@pytest.fixture(scope="module")
def pair(city):
    return make_baseline("csdi+timegeo", {"csdi": CSDI_TINY}).fit(city, progress=False)


def test_registry_names():
    assert baseline_names() == ["adaptive", "csdi", "difftraj", "dit", "markov", "mshgan", "mstdiff-traffic",
                                "pategail", "replay", "timegeo", "volunteer"]
    for name, cls in BASELINES.items():
        assert cls.name == name and cls.produces in ({frozenset({"traffic"}), frozenset({"locations"})})
        m = make_baseline(name)
        assert isinstance(m, cls) and not m.fitted


def test_unknown_name_lists_valid_ones():
    with pytest.raises(InputError) as exc:
        make_baseline("movesim")
    msg = str(exc.value)
    for name in ("markov", "timegeo", "difftraj", "csdi", "dit"):
        assert name in msg
    with pytest.raises(InputError, match="valid names"):
        make_baseline("csdi+nope")


def test_bad_pairs_and_configs():
    with pytest.raises(InputError, match="cannot pair"):
        make_baseline("markov+timegeo")
    with pytest.raises(InputError, match="cannot pair"):
        make_baseline("csdi+dit")
    with pytest.raises(InputError, match="bad pair"):
        make_baseline("csdi+timegeo+markov")
    with pytest.raises(InputError, match="not parts"):
        make_baseline("csdi+timegeo", {"markov": {}})
    with pytest.raises(InputError, match="valid keys"):
        make_baseline("markov", {"smoothin": 1.0})
    with pytest.raises(InputError):
        make_baseline("markov", {"smoothing": -1.0})


def test_generate_before_fit_is_an_error():
    with pytest.raises(InputError, match="not fitted"):
        Markov().generate(3, seed=0)
    with pytest.raises(InputError, match="not fitted"):
        make_baseline("csdi+markov").generate(3, seed=0)


def test_pair_produces_both_and_is_independent(pair, city, tmp_path):
    assert isinstance(pair, Pair) and pair.name == "csdi+timegeo"
    assert pair.produces == {"traffic", "locations"}
    out = pair.generate(12, seed=1, progress=False)
    assert out.traffic.shape == out.locations.shape == (12, city.T)
    # the parts are generated with their own child seeds: the same as generating them alone
    s_tr, s_loc = child_seeds(1, 2)
    assert np.array_equal(out.traffic, pair.traffic_model.generate(12, seed=s_tr, progress=False).traffic)
    assert np.array_equal(out.locations,
                          pair.location_model.generate(12, seed=s_loc, progress=False).locations)
    ds = generate_dataset(pair, city, 12, seed=1, progress=False)
    assert isinstance(ds, PreparedDataset)
    assert ds.meta["model"] == "csdi+timegeo" and ds.meta["independent_pair"] is True
    assert ds.meta["produces"] == ["locations", "traffic"] and "placeholder" not in ds.meta
    assert ds.meta["source"] == "baseline:csdi+timegeo" and ds.stations is city.stations
    assert np.array_equal(ds.traffic, out.traffic) and np.array_equal(ds.locations, out.locations)
    again = generate_dataset(pair, city, 12, seed=1, progress=False)
    assert np.array_equal(again.traffic, ds.traffic) and np.array_equal(again.locations, ds.locations)
    other = generate_dataset(pair, city, 12, seed=2, progress=False)
    assert not np.array_equal(other.locations, ds.locations)
    pair.save(tmp_path / "pair.pt")
    loaded = load_baseline(tmp_path / "pair.pt")
    assert isinstance(loaded, Pair) and loaded.name == "csdi+timegeo"
    lo = loaded.generate(12, seed=1, progress=False)
    assert np.array_equal(lo.traffic, out.traffic) and np.array_equal(lo.locations, out.locations)
    ds.save(tmp_path / "gen")  # a valid prepared dataset on disk
    assert PreparedDataset.load(tmp_path / "gen").meta["independent_pair"] is True


def test_single_output_model_gets_placeholders(city):
    m = Markov().fit(city, progress=False)
    ds = generate_dataset(m, city, 9, seed=0, progress=False)
    assert ds.meta["independent_pair"] is False and ds.meta["produces"] == ["locations"]
    assert set(ds.meta["placeholder"]) == {"traffic"}
    assert (ds.traffic == 0).all() and ds.locations.shape == (9, city.T)


def test_generate_dataset_checks_shapes(city):
    m = Markov().fit(city, progress=False)
    week = synthetic_city(n_users=5, n_stations=25, days=7, T=336, seed=1)
    with pytest.raises(InputError, match="T = "):
        generate_dataset(m, week, 3, seed=0)
    small = synthetic_city(n_users=5, n_stations=20, days=2, seed=1)
    with pytest.raises(InputError, match="stations"):
        generate_dataset(m, small, 3, seed=0)
    with pytest.raises(InputError):
        generate_dataset(m, city, -1, seed=0)


def test_load_checks_kind(city, tmp_path):
    Markov().fit(city, progress=False).save(tmp_path / "m.pt")
    with pytest.raises(InputError, match="not a TimeGeo"):
        TimeGeo.load(tmp_path / "m.pt")
    assert isinstance(Baseline.load(tmp_path / "m.pt"), Markov)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch's own unpickling error
        Baseline.load(tmp_path / "junk.pt")


def test_generated_series_checks_shapes():
    with pytest.raises(ValueError):
        GeneratedSeries(traffic=np.zeros((2, 8)), locations=np.zeros((3, 8)))
    g = GeneratedSeries(locations=np.zeros((2, 8), dtype=np.int64))
    assert g.locations.dtype == np.int32 and g.produces == {"locations"} and g.n == 2


def test_child_seeds():
    assert child_seeds(5, 2) == child_seeds(5, 2)
    a, b = child_seeds(5, 2)
    assert a != b and child_seeds(6, 2) != [a, b]


def test_partial_nested_config_keeps_the_baselines_own_defaults():
    dit = make_baseline("dit", {"diffusion": {"steps": 7}, "train": {"epochs": 2}})
    assert dit.config.diffusion.steps == 7
    assert dit.config.diffusion.beta_schedule == "linear"  # DiT's default, not the generic one
    assert dit.config.train.epochs == 2 and dit.config.train.lr == 5e-4
    csdi = make_baseline("csdi", {"diffusion": {"steps": 9}})
    assert csdi.config.diffusion.beta_schedule == "quadratic" and csdi.config.diffusion.beta_end == 0.5
    with pytest.raises(InputError, match="valid keys"):
        make_baseline("dit", {"diffusion": {"stepz": 7}})
