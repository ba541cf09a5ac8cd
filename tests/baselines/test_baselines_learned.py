"""Learned baselines (CSDI, DiT-1D, DiffTraj, MSTDiff without trajectory): tiny configs on a small
synthetic city."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mstdiff.baselines import Baseline, DiffTraj, StationSnapper, make_baseline
from mstdiff.data.synthetic import synthetic_city
from mstdiff.errors import InputError

TRAIN = {"max_steps": 6, "batch_size": 16, "device": "cpu", "warmup_steps": 2, "sample_batch_size": 8,
         "threads": 1}
DIFF = {"steps": 6}
TINY = {
    "csdi": {"channels": 8, "layers": 1, "heads": 2, "ff_dim": 8, "step_emb_dim": 8, "time_emb_dim": 8,
             "diffusion": {**DIFF, "beta_schedule": "quadratic", "beta_start": 1e-4, "beta_end": 0.5}},
    "dit": {"hidden": 16, "depth": 1, "heads": 2, "step_freq_dim": 16,
            "diffusion": {**DIFF, "beta_schedule": "linear", "beta_start": 1e-2, "beta_end": 0.5}},
    "difftraj": {"channels": 8, "channel_mult": [1, 2], "attention": False,
                 "diffusion": {**DIFF, "beta_schedule": "linear", "beta_start": 1e-2, "beta_end": 0.5}},
    "mstdiff-traffic": {"denoiser": {"d_model": 16, "n_heads": 2, "layers_per_stage": 1, "final_layers": 0},
                        "vqvae": {"epochs": 2, "num_codes": 8, "hidden": 8, "code_dim": 4},
                        "diffusion": DIFF},
}


def tiny(name: str, **train) -> dict:
    return {**TINY[name], "train": {**TRAIN, **train}}


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=24, n_stations=30, days=2, seed=11)


@pytest.fixture(scope="module", params=["csdi", "dit", "difftraj", "mstdiff-traffic"])
def fitted(request, city):
    return make_baseline(request.param, tiny(request.param)).fit(city, progress=False)


def test_fit_generate_shapes_ranges_and_reproducibility(fitted, city, tmp_path):
    before = torch.get_rng_state()
    a = fitted.generate(10, seed=4, progress=False)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is not touched
    assert a.produces == fitted.produces
    if "traffic" in fitted.produces:
        assert a.traffic.shape == (10, city.T) and a.traffic.dtype == np.float32
        assert np.isfinite(a.traffic).all() and (a.traffic >= 0).all()
    if "locations" in fitted.produces:
        assert a.locations.shape == (10, city.T) and a.locations.dtype == np.int32
        assert a.locations.min() >= 0 and a.locations.max() < city.n_stations
    key = "traffic" if "traffic" in fitted.produces else "locations"
    same = fitted.generate(10, seed=4, progress=False)
    other = fitted.generate(10, seed=5, progress=False)
    assert np.array_equal(getattr(a, key), getattr(same, key))
    assert not np.array_equal(getattr(a, key), getattr(other, key))
    fitted.save(tmp_path / "m.pt")
    loaded = Baseline.load(tmp_path / "m.pt")
    assert type(loaded) is type(fitted)
    assert np.array_equal(getattr(a, key), getattr(loaded.generate(10, seed=4, progress=False), key))


def test_training_is_reproducible(city):
    a = make_baseline("dit", tiny("dit")).fit(city, progress=False)
    b = make_baseline("dit", tiny("dit")).fit(city, progress=False)
    assert a.history.step_loss == b.history.step_loss
    assert np.array_equal(a.generate(5, seed=0, progress=False).traffic,
                          b.generate(5, seed=0, progress=False).traffic)


def test_traffic_training_loss_decreases(city):
    cfg = tiny("csdi", max_steps=60, lr=3e-3, warmup_steps=5, ema_decay=0.9)
    m = make_baseline("csdi", cfg).fit(city, val=city, progress=False)
    val = [e["val_loss"] for e in m.history.epochs]
    assert m.history.epochs[0]["step"] == 0 and len(val) >= 3
    assert val[-1] < 0.9 * val[0]
    assert np.mean(m.history.step_loss[-10:]) < np.mean(m.history.step_loss[:10])


def test_dit_patch_must_divide_T(city):
    with pytest.raises(InputError, match="patch_size"):
        make_baseline("dit", {**tiny("dit"), "patch_size": 5}).fit(city, progress=False)


def test_bad_config_values_rejected():
    with pytest.raises(InputError):
        make_baseline("csdi", {"channels": 10, "heads": 4})
    with pytest.raises(InputError):
        make_baseline("difftraj", {"channels": 12})
    with pytest.raises(InputError):
        make_baseline("dit", {"train": {"lr_schedule": "wavy"}})
    with pytest.raises(InputError, match="valid keys"):
        make_baseline("csdi", {"train": {"epoch": 3}})


def test_snapping_returns_the_nearest_station():
    rng = np.random.default_rng(0)
    coords = np.stack([31.0 + 0.4 * rng.random(200), 121.2 + 0.5 * rng.random(200)], axis=1)
    snap = StationSnapper(coords)
    pts = np.stack([30.95 + 0.5 * rng.random(500), 121.15 + 0.6 * rng.random(500)], axis=1)
    got = snap.snap(pts)
    # brute force in the same projection
    d = np.linalg.norm(snap.project(pts)[:, None, :] - snap.project(coords)[None, :, :], axis=2)
    assert np.array_equal(got, d.argmin(axis=1))
    # and the same as brute-force haversine except for near-ties
    lat1, lon1 = np.radians(pts[:, 0])[:, None], np.radians(pts[:, 1])[:, None]
    lat2, lon2 = np.radians(coords[:, 0])[None, :], np.radians(coords[:, 1])[None, :]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    assert (got == h.argmin(axis=1)).mean() >= 0.98
    # stations snap to themselves; shape is kept
    assert np.array_equal(snap.snap(coords), np.arange(200))
    assert snap.snap(pts.reshape(25, 20, 2)).shape == (25, 20)


def test_difftraj_decodes_station_coordinates_exactly(city):
    m = DiffTraj(tiny("difftraj")).fit(city, progress=False)
    enc = m._encode(city)  # (U, 2, T) standardised coordinates of the real trajectories
    assert np.array_equal(m._decode(enc).locations, city.locations)
