"""Conditional generation: masks, pass-through of observed values, determinism, station matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mstdiff.cli import cli
from mstdiff.conditional import Observed, mask_rule, observed_from, station_index
from mstdiff.data.synthetic import synthetic_city
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.gaussian import GaussianConfig
from mstdiff.diffusion.location import LocationConfig
from mstdiff.errors import InputError
from mstdiff.kg.graph import synthetic_knn_rate
from mstdiff.models.denoiser import DenoiserConfig
from mstdiff.training.mstdiff import ModelConfig, MSTDiff, TrainConfig, train_mstdiff

S = 6


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=16, n_stations=20, days=1, seed=4)


def _train(city, out, process="absorbing", activity=True):
    mcfg = ModelConfig(
        denoiser=DenoiserConfig(d_model=16, n_heads=2, layers_per_stage=1, final_layers=1, use_vqvae=False),
        gaussian=GaussianConfig(num_steps=S), location=LocationConfig(process=process), activity=activity)
    disc = GraphTransition(synthetic_knn_rate(city.n_stations, k=4, seed=0), num_steps=S) \
        if process == "graph" else None
    train_mstdiff(city, None, discrete=disc, vqvae=None, model_config=mcfg, out_dir=out,
                  train_config=TrainConfig(epochs=2, batch_size=8, device="cpu", progress=False,
                                           calibration_samples=16))
    return MSTDiff.load(out / "model.pt", discrete=disc)


@pytest.fixture(scope="module")
def model(city, tmp_path_factory):
    return _train(city, tmp_path_factory.mktemp("m"))


def test_mask_rules():
    m = mask_rule("after=18:00", 3, 48, bin_minutes=30)
    assert m.shape == (3, 48) and m[:, 36:].all() and not m[:, :36].any()
    b = mask_rule("before=08:00", 2, 48, bin_minutes=30)
    assert b[:, :16].all() and not b[:, 16:].any()
    r = mask_rule("random=0.3", 200, 48, bin_minutes=30, seed=1)
    assert abs(r.mean() - 0.3) < 0.02 and np.array_equal(r, mask_rule("random=0.3", 200, 48, bin_minutes=30,
                                                                        seed=1))
    assert mask_rule(None, 2, 4, bin_minutes=30).all() and not mask_rule("none", 2, 4, bin_minutes=30).any()
    for bad in ("after=25:99", "random=2", "sometimes"):
        with pytest.raises(InputError):
            mask_rule(bad, 2, 48, bin_minutes=30)


def test_mask_from_file(tmp_path):
    f = tmp_path / "m.npy"
    np.save(f, np.arange(48) % 2 == 0)
    m = mask_rule(str(f), 3, 48, bin_minutes=30)
    assert m.shape == (3, 48) and m[:, 0].all() and not m[:, 1].any()
    np.save(f, np.ones((2, 5), bool))
    with pytest.raises(InputError, match="shape"):
        mask_rule(str(f), 3, 48, bin_minutes=30)


def test_stations_are_matched_by_id_not_position(city):
    perm = np.random.default_rng(0).permutation(city.n_stations)
    other = city.subset(np.arange(4))
    other.stations = city.stations.iloc[perm].reset_index(drop=True)
    inv = np.argsort(perm)
    other.locations = inv[city.locations[:4]].astype(np.int32)  # same places, other ids order
    assert np.array_equal(station_index(other, city), city.locations[:4])
    broken = other.subset(np.arange(4))
    broken.stations = broken.stations.assign(station_id=["zz" + str(i) for i in range(city.n_stations)])
    with pytest.raises(InputError, match="not in the model's station table"):
        station_index(broken, city)


@pytest.mark.parametrize("kind", ["locations", "traffic", "both"])
def test_observed_values_are_passed_through_exactly(model, city, kind):
    cond = city.subset(np.arange(6))
    gen_mask = mask_rule("after=12:00", 6, city.T, bin_minutes=30) if kind == "both" else None
    obs = observed_from(kind, cond, city, gen_mask)
    tr, lo = model.generate(generator=torch.Generator().manual_seed(0), condition=obs)
    assert tr.shape == lo.shape == (6, city.T)
    assert np.array_equal(tr[obs.traffic_mask], cond.traffic[obs.traffic_mask])
    assert np.array_equal(lo[obs.location_mask], cond.locations[obs.location_mask])
    if kind == "locations":
        assert obs.location_mask.all() and not obs.traffic_mask.any()
    if kind == "both":
        assert not obs.traffic_mask[:, 24:].any() and obs.traffic_mask[:, :24].all()
    assert np.isfinite(tr).all() and (tr >= 0).all()


def test_graph_process_model_conditions_too(city, tmp_path):
    m = _train(city, tmp_path / "g", process="graph", activity=False)
    obs = observed_from("locations", city.subset(np.arange(4)), city)
    tr, lo = m.generate(generator=torch.Generator().manual_seed(0), condition=obs)
    assert np.array_equal(lo, city.locations[:4])


def test_same_seed_same_samples_and_seed_matters(model, city):
    obs = observed_from("traffic", city.subset(np.arange(5)), city)
    a = model.generate(generator=torch.Generator().manual_seed(3), condition=obs)
    b = model.generate(generator=torch.Generator().manual_seed(3), condition=obs)
    c = model.generate(generator=torch.Generator().manual_seed(4), condition=obs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_no_condition_is_the_unconditional_sampler(model):
    n = 4
    tr, lo = model.generate(n, generator=torch.Generator().manual_seed(7))
    tr2, lo2 = model.sample(n, generator=torch.Generator().manual_seed(7))
    assert np.array_equal(tr, tr2) and np.array_equal(lo, lo2)


def test_the_condition_changes_the_generated_modality(model, city):
    """Traffic generated for the real trajectories depends on which trajectories are given."""
    cond = city.subset(np.arange(6))
    other = city.subset(np.arange(6, 12))
    def traffic_for(ds):
        obs = observed_from("locations", ds, city)
        return model.generate(generator=torch.Generator().manual_seed(0), condition=obs)[0]

    a, b = traffic_for(cond), traffic_for(other)
    assert not np.array_equal(a, b)


def test_condition_weight_zero_gives_the_same_traffic_for_any_trajectory(model, city):
    """condition_weight = 0: the traffic is that of the model's own (free) trajectories, so it no
    longer depends on which trajectories are given; the given ones are still passed through."""
    free = model.with_sampling(condition_weight=0.0)
    runs = []
    for rows in (np.arange(6), np.arange(6, 12)):
        ds = city.subset(rows)
        obs = observed_from("locations", ds, city)
        tr, lo = free.generate(generator=torch.Generator().manual_seed(0), condition=obs)
        assert np.array_equal(lo, obs.locations)
        runs.append(tr)
    assert np.array_equal(runs[0], runs[1])
    obs = observed_from("locations", city.subset(np.arange(6)), city)
    half = model.with_sampling(condition_weight=0.5).generate(generator=torch.Generator().manual_seed(0),
                                                              condition=obs)
    assert not np.array_equal(half[0], runs[0])


def test_observed_shapes_are_checked():
    z = np.zeros((2, 4), bool)
    with pytest.raises(InputError, match="shape"):
        Observed(np.zeros((2, 4)), np.zeros((2, 5)), z, z)


def test_cli_conditional_generation(model, city, tmp_path):
    model_dir = tmp_path / "model"
    model.save(model_dir / "model.pt", transition_path=None, meta={})
    like = city.save(tmp_path / "like")
    cond = city.subset(np.arange(3)).save(tmp_path / "cond")
    out = tmp_path / "gen"
    res = CliRunner().invoke(cli, ["generate", "--model", str(model_dir), "--like", str(like),
                                   "--condition", f"both={cond}", "--mask", "after=18:00",
                                   "--samples-per-condition", "2", "--out", str(out), "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    from mstdiff.data import PreparedDataset

    g = PreparedDataset.load(out)
    assert g.n_samples == 6 and list(g.samples["condition"]) == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(g.traffic[::2, :36], city.traffic[:3, :36])
    bad = CliRunner().invoke(cli, ["generate", "--model", str(model_dir), "--like", str(like),
                                   "--condition", f"both={cond}", "--out", str(tmp_path / "g2")])
    assert bad.exit_code == 2 and "needs --mask" in bad.output
    bad = CliRunner().invoke(cli, ["generate", "--model", str(model_dir), "--like", str(like),
                                   "--condition", f"where={cond}", "--out", str(tmp_path / "g3")])
    assert bad.exit_code == 2 and "KIND=DIR" in bad.output
    bad = CliRunner().invoke(cli, ["generate", "--model", str(model_dir), "--like", str(like),
                                   "--condition", f"locations={cond}", "--sample", "condition_weight=-1",
                                   "--out", str(tmp_path / "g4")])
    assert bad.exit_code == 2 and "condition_weight = -1" in bad.output
