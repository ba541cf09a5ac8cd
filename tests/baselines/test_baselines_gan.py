"""GAN traffic baselines (MSH-GAN, ADAPTIVE), the Replay trajectory source and coupled pairs:
tiny configs on small synthetic cities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mstdiff.baselines import ADAPTIVE, MSHGAN, Baseline, generate_dataset, make_baseline
from mstdiff.baselines._gan import w1
from mstdiff.baselines.adaptive import align_features, mmd2, station_features
from mstdiff.baselines.base import child_seeds
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import synthetic_city
from mstdiff.errors import InputError

TRAIN = {"epochs": 2, "batch_size": 16, "device": "cpu", "n_critic": 2, "sample_batch_size": 8, "threads": 1}
TINY = {
    "mshgan": {"hidden": 16, "heads": 2, "latent_dim": 8, "slot_noise_dim": 4, "mode_hidden": 16, "modes": 3,
               "critic_width": 8, "time_dim": 8},
    "adaptive": {"hidden": 16, "feature_dim": 8, "latent_dim": 8, "slot_noise_dim": 4, "critic_width": 8,
                 "time_dim": 8, "critic_feature_dim": 4, "align_steps": 30},
}


def tiny(name: str, **train) -> dict:
    return {**TINY[name], "train": {**TRAIN, **train}}


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=24, n_stations=30, days=2, seed=11)


@pytest.fixture(scope="module", params=["mshgan", "adaptive"])
def fitted(request, city):
    return make_baseline(request.param, tiny(request.param)).fit(city, val=city, progress=False)


def test_shapes_domain_seeds_and_save_load(fitted, city, tmp_path):
    before = torch.get_rng_state()
    a = fitted.generate(12, seed=4, progress=False)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is not touched
    assert a.produces == {"traffic"}
    assert a.traffic.shape == (12, city.T) and a.traffic.dtype == np.float32
    assert np.isfinite(a.traffic).all() and (a.traffic >= 0).all()
    assert np.array_equal(a.traffic, fitted.generate(12, seed=4, progress=False).traffic)
    assert not np.array_equal(a.traffic, fitted.generate(12, seed=5, progress=False).traffic)
    fitted.save(tmp_path / "m.pt")
    loaded = Baseline.load(tmp_path / "m.pt")
    assert type(loaded) is type(fitted) and loaded.scaler == fitted.scaler
    assert np.array_equal(a.traffic, loaded.generate(12, seed=4, progress=False).traffic)
    assert fitted.scaler.calibrated  # atoms set from the generator's own samples
    rec = fitted.history.epochs[-1]
    assert {"d_loss", "wasserstein", "gp", "val_w1", "val_w1_diff"} <= set(rec)


def test_training_is_reproducible(city):
    a = make_baseline("mshgan", tiny("mshgan")).fit(city, progress=False)
    b = make_baseline("mshgan", tiny("mshgan")).fit(city, progress=False)
    assert a.history.epochs == b.history.epochs
    assert np.array_equal(a.generate(5, seed=0, progress=False).traffic,
                          b.generate(5, seed=0, progress=False).traffic)


@pytest.mark.parametrize("name", ["mshgan", "adaptive"])
def test_resume_gives_the_uninterrupted_result(name, city, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    straight = make_baseline(name, tiny(name, epochs=4)).fit(city, progress=False)
    make_baseline(name, tiny(name, epochs=2, checkpoint=ckpt, checkpoint_every=1)).fit(city, progress=False)
    resumed = make_baseline(name, tiny(name, epochs=4, checkpoint=ckpt)).fit(city, progress=False)
    assert resumed.history.epochs == straight.history.epochs
    for (k, v), w in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(InputError, match="different settings"):
        make_baseline(name, tiny(name, epochs=4, checkpoint=ckpt, lr_g=1e-3)).fit(city, progress=False)


def _patterned(n: int = 48, T: int = 16, n_stations: int = 2, seed: int = 0) -> PreparedDataset:
    """A tiny set whose traffic is a fixed function of the station: 0 at station 0, ~20 at station 1,
    with users moving between the two at a random slot."""
    rng = np.random.default_rng(seed)
    loc = np.zeros((n, T), dtype=np.int32)
    for i in range(n):
        a, b = sorted(rng.integers(0, T + 1, size=2))
        loc[i, a:b] = 1
    traffic = np.where(loc == 1, 20.0 + rng.random((n, T)), 0.0).astype(np.float32)
    stations = pd.DataFrame({"station_id": np.arange(n_stations), "lat": [31.0, 31.1], "lon": [121.0, 121.2],
                             "poi_shop": [0, 9], "poi_home": [7, 0]})
    samples = pd.DataFrame({"user": [f"u{i}" for i in range(n)], "start": [""] * n})
    return PreparedDataset(traffic, loc, stations, samples,
                           {"source": "test", "bin_minutes": 30, "T": T, "traffic_unit": "MB"})


def test_mshgan_learns_a_tiny_set():
    """Overfitting a tiny set (one daily profile with multiplicative noise): the generated mean
    profile moves onto the data's."""
    base = _patterned()
    rng = np.random.default_rng(0)
    T = base.T
    traffic = (10 + 8 * np.sin(2 * np.pi * np.arange(T) / T))[None] * np.exp(0.1 * rng.normal(size=(48, T)))
    ds = PreparedDataset(traffic.astype(np.float32), base.locations, base.stations, base.samples, base.meta)
    cfg = {**tiny("mshgan", batch_size=48, lr_g=2e-3, lr_d=2e-3, ema_decay=0.9), "critic_width": 32,
           "segments": 4}
    start = make_baseline("mshgan", {**cfg, "train": {**cfg["train"], "epochs": 1}}).fit(ds, progress=False)
    m = make_baseline("mshgan", {**cfg, "train": {**cfg["train"], "epochs": 100}})
    m.fit(ds, val=ds, progress=False)
    real = ds.traffic.mean(axis=0)

    def rmse(model):
        gen = model.generate(200, seed=0, progress=False).traffic
        return float(np.sqrt(np.mean((gen.mean(axis=0) - real) ** 2)))

    assert rmse(m) < 0.25 * rmse(start)
    assert m.history.epochs[-1]["val_w1"] < 0.5 * m.history.epochs[0]["val_w1"]
    usage = m.mode_usage(64)
    assert usage.shape == (3,) and abs(usage.sum() - 1) < 1e-5


def test_adaptive_follows_the_station_features():
    """Overfitting a tiny set where traffic is a function of the station: the generator conditions on
    the station features along the given trajectory."""
    ds = _patterned()
    m = make_baseline("adaptive", {**tiny("adaptive", epochs=100, batch_size=48, lr_g=2e-3, lr_d=2e-3,
                                          ema_decay=0.9), "critic_width": 32})
    m.fit(ds, progress=False)
    T = ds.T
    at0 = m.generate_given(np.zeros((64, T), dtype=np.int32), seed=0, progress=False).traffic
    at1 = m.generate_given(np.ones((64, T), dtype=np.int32), seed=0, progress=False).traffic
    assert (at0 == 0).mean() > 0.8  # station 0 never carries traffic in the data
    assert (at1 > 0).mean() > 0.8 and at1.mean() > 5 * max(at0.mean(), 0.1)
    with pytest.raises(InputError, match="station indices"):
        m.generate_given(np.full((2, T), 5), seed=0)
    with pytest.raises(InputError, match="shape"):
        m.generate_given(np.zeros((2, T + 1), dtype=np.int32), seed=0)


def test_decoder_atoms_follow_the_training_shares(city):
    m = make_baseline("mshgan", tiny("mshgan", epochs=6)).fit(city, progress=False)
    gen = m.generate(400, seed=9, progress=False).traffic
    assert abs((gen == 0).mean() - (city.traffic == 0).mean()) < 0.1


def test_station_features_kinds(city, tmp_path):
    f, kind = station_features(city)
    n_poi = sum(str(c).startswith("poi_") for c in city.stations.columns)
    assert kind == "poi" and f.shape == (city.n_stations, n_poi + 2)
    np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-5)
    f, kind = station_features(city, "coords")
    assert kind == "coords" and f.shape == (city.n_stations, 2)
    emb = np.random.default_rng(0).normal(size=(city.n_stations, 5)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    f, kind = station_features(city, "auto", str(tmp_path / "e.npy"))
    assert kind == "embeddings" and f.shape == (city.n_stations, 5)
    np.save(tmp_path / "bad.npy", emb[:-1])
    with pytest.raises(InputError, match="stations"):
        station_features(city, "embeddings", str(tmp_path / "bad.npy"))
    with pytest.raises(InputError, match="not found"):
        station_features(city, "embeddings", str(tmp_path / "missing.npy"))
    with pytest.raises(InputError, match="embeddings file"):
        make_baseline("adaptive", {"features": "embeddings"})


def test_mmd_is_zero_on_equal_samples_and_grows_with_a_shift():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd2(x, x + 2.0)) > float(mmd2(x, x + 0.5)) > 0


def test_alignment_undoes_a_distortion_between_two_cities():
    src = station_features(synthetic_city(n_users=10, n_stations=80, days=1, seed=1))[0]
    tgt = station_features(synthetic_city(n_users=10, n_stations=80, days=1, seed=2))[0]
    rng = np.random.default_rng(0)
    distorted = tgt @ (np.eye(tgt.shape[1]) + 0.3 * rng.normal(size=(tgt.shape[1],) * 2)).T + 1.5
    al = align_features(src, distorted.astype(np.float32), steps=200, lr=2e-2, reg=1e-3)
    assert al["mmd2_after"] < 0.3 * al["mmd2_before"]
    assert al["aligned"].shape == tgt.shape


def test_cross_city_option_trains_on_the_source_and_generates_on_the_target(tmp_path):
    source = synthetic_city(n_users=20, n_stations=25, days=1, seed=1)
    target = synthetic_city(n_users=12, n_stations=40, days=1, seed=2)
    source.save(tmp_path / "source")
    m = make_baseline("adaptive", {**tiny("adaptive"), "source": str(tmp_path / "source")})
    m.fit(target, val=target, progress=False)
    assert m.alignment is not None and m.alignment["source_samples"] == source.n_samples
    assert m.alignment["mmd2_after"] <= m.alignment["mmd2_before"]
    assert m.target_features.shape[0] == target.n_stations
    assert "val_w1" not in m.history.epochs[-1]  # the target split is not the training city: not monitored
    a = m.generate(7, seed=3, progress=False)
    assert a.traffic.shape == (7, target.T) and (a.traffic >= 0).all()
    m.save(tmp_path / "m.pt")
    again = Baseline.load(tmp_path / "m.pt").generate(7, seed=3, progress=False)
    assert np.array_equal(a.traffic, again.traffic)
    other = synthetic_city(n_users=10, n_stations=20, days=1, seed=3, T=24, bin_minutes=60)
    other.save(tmp_path / "other")
    with pytest.raises(InputError, match="source city"):
        make_baseline("adaptive", {**tiny("adaptive"), "source": str(tmp_path / "other")}).fit(target)


def test_coupled_pair_follows_the_trajectory_model(city):
    pair = make_baseline("adaptive+markov", {"adaptive": tiny("adaptive")}).fit(city, progress=False)
    assert not pair.independent
    ds = generate_dataset(pair, city, 9, seed=2, progress=False)
    assert ds.meta["independent_pair"] is False and ds.meta["trajectory_source"] == "markov"
    s_tr, s_loc = child_seeds(2, 2)
    loc = pair.location_model.generate(9, seed=s_loc, progress=False).locations
    assert np.array_equal(ds.locations, loc)
    adaptive = pair.traffic_model
    assert isinstance(adaptive, ADAPTIVE)
    assert np.array_equal(ds.traffic, adaptive.generate_given(loc, seed=s_tr, progress=False).traffic)
    indep = make_baseline("mshgan+markov", {"mshgan": tiny("mshgan", epochs=1)}).fit(city, progress=False)
    assert indep.independent and isinstance(indep.traffic_model, MSHGAN)
    assert generate_dataset(indep, city, 3, seed=0, progress=False).meta["independent_pair"] is True


def test_replay_draws_training_trajectories(city, tmp_path):
    r = make_baseline("replay").fit(city)
    a = r.generate(20, seed=1).locations
    rows = {tuple(x) for x in city.locations}
    assert a.shape == (20, city.T) and all(tuple(x) in rows for x in a)
    assert np.array_equal(a, r.generate(20, seed=1).locations)
    r.save(tmp_path / "r.pt")
    assert np.array_equal(a, Baseline.load(tmp_path / "r.pt").generate(20, seed=1).locations)


def test_w1_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    assert w1(x, x + 0.7) == pytest.approx(0.7, abs=1e-9)
    assert w1(x, x) == 0.0


def test_bad_configs_rejected(city):
    for name, bad in [("mshgan", {"hidden": 15}), ("mshgan", {"train": {"n_critic": 0}}),
                      ("mshgan", {"switch_entropy": -1.0}), ("adaptive", {"features": "kg"}),
                      ("adaptive", {"source_embeddings": "x.npy"}),
                      ("adaptive", {"train": {"betas": [0.5, 1.0]}})]:
        with pytest.raises(InputError):
            make_baseline(name, bad)
    with pytest.raises(InputError, match="segments"):
        make_baseline("mshgan", {**tiny("mshgan"), "segments": 5}).fit(city)


def test_embeddings_run_is_bound_to_the_run_directory(city, tmp_path):
    m = make_baseline("adaptive", {**tiny("adaptive"), "embeddings": "run"})
    with pytest.raises(InputError, match="only resolved inside"):
        m.fit(city, progress=False)
    (tmp_path / "embed").mkdir()
    np.save(tmp_path / "embed" / "station_embeddings.npy", np.eye(city.n_stations, 6, dtype=np.float32))
    m.bind_run_dir(tmp_path)
    m.fit(city, progress=False)
    assert m.feature_kind == "embeddings" and m.target_features.shape == (city.n_stations, 6)
