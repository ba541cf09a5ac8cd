"""PateGail (GAIL + PATE-style private rewards) and VOLUNTEER (two-level VAE): tiny configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mstdiff.baselines import Baseline, PateGail, Volunteer, make_baseline
from mstdiff.baselines.pategail import aggregate_rewards, noise_scale
from mstdiff.baselines.volunteer import visits
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import synthetic_city
from mstdiff.errors import InputError

TRAIN = {"batch_size": 16, "threads": 1, "sample_batch_size": 8}
TINY = {
    "pategail": {"d_model": 16, "d_disc": 8, "bc_epochs": 2, "gail_iterations": 2, "rollouts": 8,
                 "ppo_epochs": 1, "ppo_minibatch": 8, "parties": 2, "noise": "laplace"},
    "volunteer": {"d_model": 16, "latent_dim": 4, "user_hidden": 8, "epochs": 2, "kl_warmup_steps": 4},
}


def tiny(name: str, train: dict | None = None, **kw) -> dict:
    return {**TINY[name], **kw, "train": {**TRAIN, **(train or {})}}


def _dataset(locations: np.ndarray, n_stations: int) -> PreparedDataset:
    U, T = locations.shape
    rng = np.random.default_rng(0)
    stations = pd.DataFrame({"station_id": [str(i) for i in range(n_stations)],
                             "lat": 31.0 + rng.random(n_stations) * 0.3,
                             "lon": 121.2 + rng.random(n_stations) * 0.4})
    samples = pd.DataFrame({"user": [f"u{i % 4}" for i in range(U)], "start": ["2016-04-20T00:00:00"] * U})
    return PreparedDataset(np.zeros((U, T), np.float32), locations, stations, samples, {"bin_minutes": 30})


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=20, n_stations=30, days=2, seed=11)


@pytest.fixture(scope="module", params=["pategail", "volunteer"])
def fitted(request, city):
    return make_baseline(request.param, tiny(request.param)).fit(city, val=city, progress=False)


def test_shapes_seeds_and_save_load(fitted, city, tmp_path):
    before = torch.get_rng_state()
    a = fitted.generate(10, seed=4, progress=False)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is not touched
    assert a.produces == frozenset({"locations"}) and a.traffic is None
    assert a.locations.shape == (10, city.T) and a.locations.dtype == np.int32
    assert a.locations.min() >= 0 and a.locations.max() < city.n_stations
    assert np.array_equal(a.locations, fitted.generate(10, seed=4, progress=False).locations)
    assert not np.array_equal(a.locations, fitted.generate(10, seed=5, progress=False).locations)
    fitted.save(tmp_path / "m.pt")
    loaded = Baseline.load(tmp_path / "m.pt")
    assert type(loaded) is type(fitted)
    assert np.array_equal(a.locations, loaded.generate(10, seed=4, progress=False).locations)


@pytest.mark.parametrize("name", ["pategail", "volunteer"])
def test_training_is_reproducible_and_resumes_exactly(name, city, tmp_path):
    longer = {"pategail": {"gail_iterations": 4}, "volunteer": {"epochs": 4}}[name]
    ref = make_baseline(name, tiny(name, **longer)).fit(city, progress=False)
    again = make_baseline(name, tiny(name, **longer)).fit(city, progress=False)
    ckpt = {"checkpoint": str(tmp_path / "ckpt.pt"), "checkpoint_every": 1}
    make_baseline(name, tiny(name, train=ckpt)).fit(city, progress=False)  # "interrupted" half-way
    resumed = make_baseline(name, tiny(name, train=ckpt, **longer)).fit(city, progress=False)
    want = ref.generate(6, seed=0, progress=False).locations
    assert np.array_equal(want, again.generate(6, seed=0, progress=False).locations)
    assert np.array_equal(want, resumed.generate(6, seed=0, progress=False).locations)
    if name == "pategail":
        assert resumed.history.gail == ref.history.gail
    else:
        assert resumed.history.epochs == ref.history.epochs
    with pytest.raises(InputError, match="another config"):  # a checkpoint of another fit is refused
        make_baseline(name, tiny(name, train=ckpt, d_model=8)).fit(city, progress=False)


def _cycle_set() -> PreparedDataset:
    T = 48
    row = np.repeat(np.array([0, 3, 5, 3, 0, 6], dtype=np.int32), 8)[:T]
    return _dataset(np.tile(row, (16, 1)), 8)


def test_pategail_behaviour_cloning_overfits_a_tiny_set():
    ds = _cycle_set()
    cfg = tiny("pategail", bc_epochs=60, gail_iterations=0, parties=1, noise="none", train={"lr": 1e-2})
    m = PateGail(cfg).fit(ds, progress=False)
    assert m.history.bc[-1]["nll"] < 0.1 * m.history.bc[0]["nll"]
    gen = m.generate(20, seed=0, progress=False).locations
    assert (gen == ds.locations[0]).mean() > 0.9


def test_volunteer_overfits_a_tiny_set():
    ds = _cycle_set()
    m = Volunteer(tiny("volunteer", epochs=80, train={"lr": 1e-2})).fit(ds, progress=False)
    assert m.history.epochs[-1]["loss"] < 0.2 * m.history.epochs[0]["loss"]
    gen = m.generate(20, seed=0, progress=False).locations
    assert (gen == ds.locations[0]).mean() > 0.9


def test_reward_aggregation_noise_free_is_gail_and_noise_is_calibrated():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 4000, dtype=torch.float64) * 3
    plain = aggregate_rewards(r[:1], noise="none", clip=2.0, epsilon=1.0, delta=1e-5, generator=g)
    assert torch.equal(plain, r[0].clamp(-2, 2))  # one party, no noise: the plain GAIL reward
    mean = r.clamp(-2, 2).mean(0)
    noise_free = aggregate_rewards(r, noise="none", clip=2.0, epsilon=1.0, delta=1e-5, generator=g)
    assert torch.equal(noise_free, mean)
    lap = aggregate_rewards(r, noise="laplace", clip=2.0, epsilon=0.5, delta=1e-5, generator=g) - mean
    b = noise_scale("laplace", 3, 2.0, 0.5, 1e-5)
    assert b == pytest.approx(2 * 2.0 / 3 / 0.5)
    assert lap.std().item() == pytest.approx(np.sqrt(2) * b, rel=0.06)  # Laplace(b): sd √2·b
    assert (lap.abs() > b).double().mean().item() == pytest.approx(np.exp(-1), abs=0.03)  # P(|x|>b) = 1/e
    gau = aggregate_rewards(r, noise="gaussian", clip=2.0, epsilon=0.5, delta=1e-5, generator=g) - mean
    assert gau.std().item() == pytest.approx(noise_scale("gaussian", 3, 2.0, 0.5, 1e-5), rel=0.06)
    # more parties, less noise per release
    assert noise_scale("laplace", 10, 2.0, 1.0, 1e-5) < noise_scale("laplace", 2, 2.0, 1.0, 1e-5)


def test_privacy_noise_changes_training_and_is_reported(city):
    base = {"parties": 2, "bc_epochs": 0, "gail_iterations": 2}
    plain = PateGail(tiny("pategail", noise="none", **base)).fit(city, progress=False)
    noisy = PateGail(tiny("pategail", noise="laplace", epsilon=0.1, **base)).fit(city, progress=False)
    # the same rollouts and discriminators in iteration 1; only the released rewards differ
    assert plain.history.gail[0]["d_loss"] == noisy.history.gail[0]["d_loss"]
    assert plain.history.gail[0]["reward"] != noisy.history.gail[0]["reward"]
    assert plain.history.gail[-1] != noisy.history.gail[-1]
    p = noisy.privacy()
    assert p["noise"] == "laplace" and p["epsilon_per_release"] == 0.1 and p["bc_is_private"]
    assert p["noise_scale"] == pytest.approx(2 * 5.0 / 2 / 0.1)
    assert plain.privacy()["epsilon_per_release"] is None


def test_discriminators_see_their_own_party_only(city):
    m = PateGail(tiny("pategail", parties=3))
    parts = m._party_index(city, seed=0)
    users = city.samples["user"].astype(str).to_numpy()
    assert sum(p.numel() for p in parts) == city.n_samples
    sets = [set(users[p.numpy()]) for p in parts]
    assert all(sets) and not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    with pytest.raises(InputError, match="parties"):
        PateGail(tiny("pategail", parties=10_000)).fit(city, progress=False)


def test_visits_decouple_dwell_and_travel():
    s, d, tr, a = visits(np.array([4, 4, 4, 1, 1, 4, 2, 2, 2, 2]))
    assert s.tolist() == [4, 1, 4, 2] and d.tolist() == [3, 2, 1, 4] and a.tolist() == [0, 3, 5, 6]
    assert tr.tolist() == [0, 0, 0, 0]  # carried-forward slots: no travel gaps
    assert d.sum() == 10


def test_volunteer_generates_runs_on_the_slots(city):
    m = Volunteer(tiny("volunteer")).fit(city, progress=False)
    gen = m.generate(30, seed=1, progress=False).locations
    assert gen.shape == (30, city.T)
    # every slot filled with a station of the table (no placeholder left behind)
    assert gen.min() >= 0 and gen.max() < city.n_stations


def test_bad_configs_rejected():
    with pytest.raises(InputError, match="noise"):
        make_baseline("pategail", {"noise": "uniform"})
    with pytest.raises(InputError):
        make_baseline("pategail", {"epsilon": 0})
    with pytest.raises(InputError):
        make_baseline("volunteer", {"home_hours": [6, 2]})
    with pytest.raises(InputError, match="valid keys"):
        make_baseline("volunteer", {"epoch": 3})


def test_pairs_with_a_traffic_model(city):
    pair = make_baseline("dit+volunteer", {"dit": {"hidden": 16, "depth": 1, "heads": 2, "step_freq_dim": 16,
                                                   "diffusion": {"steps": 3}, "train": {"max_steps": 2}},
                                           "volunteer": tiny("volunteer")})
    pair.fit(city, progress=False)
    out = pair.generate(4, seed=0, progress=False)
    assert out.traffic.shape == out.locations.shape == (4, city.T)
