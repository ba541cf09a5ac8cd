"""MSTDiff training and sampling: determinism, exact resume, learning, generation format."""

import numpy as np
import pandas as pd
import pytest
import torch

from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.synthetic import synthetic_city
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.gaussian import GaussianConfig
from mstdiff.errors import InputError
from mstdiff.kg.graph import synthetic_knn_rate
from mstdiff.models.denoiser import DenoiserConfig
from mstdiff.models.wavelet import idwt
from mstdiff.training.mstdiff import ModelConfig, MSTDiff, TrainConfig, generate, train_mstdiff

S = 8


@pytest.fixture(scope="module")
def city():
    return synthetic_city(n_users=24, n_stations=30, days=1, seed=3)


@pytest.fixture(scope="module")
def discrete(city):
    return GraphTransition(synthetic_knn_rate(city.n_stations, k=4, seed=0), num_steps=S)


def model_config():
    return ModelConfig(
        denoiser=DenoiserConfig(d_model=16, n_heads=2, layers_per_stage=1, final_layers=1, dropout=0.1,
                                use_vqvae=False),
        gaussian=GaussianConfig(num_steps=S),
    )


def train_config(**kw):
    base = dict(epochs=3, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=2,
                seed=1, device="cpu", progress=False, val_batches=1)
    base.update(kw)
    return TrainConfig(**base)


def run(city, discrete, out, **kw):
    return train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None,
                         model_config=model_config(), train_config=train_config(**kw), out_dir=out)


def weights(out):
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def test_same_seed_same_weights_and_seed_matters(city, discrete, tmp_path):
    run(city, discrete, tmp_path / "a")
    run(city, discrete, tmp_path / "b")
    run(city, discrete, tmp_path / "c", seed=2)
    wa, wb, wc = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_equals_uninterrupted(city, discrete, tmp_path):
    full = run(city, discrete, tmp_path / "full")

    def interrupt(step, parts):  # Ctrl-C after 5 steps (mid-epoch: 3 batches per epoch)
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None,
                      model_config=model_config(), train_config=train_config(),
                      out_dir=tmp_path / "part", callback=interrupt)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["step"] == 5
    assert not (tmp_path / "part" / "model.pt").exists()
    resumed = train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None,
                            model_config=model_config(), train_config=train_config(),
                            out_dir=tmp_path / "part", resume=True)
    assert resumed.steps == full.steps == 9
    wf, wr = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert resumed.history == full.history


def test_refuses_non_empty_dir_without_resume(city, discrete, tmp_path):
    run(city, discrete, tmp_path / "a", max_steps=1)
    with pytest.raises(InputError, match="not empty"):
        run(city, discrete, tmp_path / "a")


def test_loss_decreases(city, discrete, tmp_path):
    res = run(city, discrete, tmp_path / "a", epochs=40, log_every=10)
    rows = [h for h in res.history if "total" in h]  # means over 10 steps each
    first = np.mean([r["total"] for r in rows[:2]])
    last = np.mean([r["total"] for r in rows[-3:]])
    assert last < 0.85 * first
    assert np.mean([r["location_ce"] for r in rows[-3:]]) < np.mean([r["location_ce"] for r in rows[:2]])


def test_generate_format_and_determinism(city, discrete, tmp_path):
    run(city, discrete, tmp_path / "m", max_steps=3)
    model = MSTDiff.load(tmp_path / "m" / "model.pt", discrete=discrete)
    a = generate(model, city, 10, tmp_path / "g1", seed=5, batch_size=4, progress=False)
    b = generate(model, city, 10, tmp_path / "g2", seed=5, batch_size=4, progress=False)
    c = generate(model, city, 10, tmp_path / "g3", seed=6, batch_size=4, progress=False)
    assert a.traffic.shape == (10, city.T) and a.locations.dtype == np.int32
    assert a.locations.min() >= 0 and a.locations.max() < city.n_stations
    assert np.isfinite(a.traffic).all() and (a.traffic >= 0).all()
    np.testing.assert_array_equal(a.traffic, b.traffic)
    np.testing.assert_array_equal(a.locations, b.locations)
    assert not np.array_equal(a.locations, c.locations)
    assert a.meta["generation"]["seed"] == 5 and a.meta["source"] == "mstdiff"
    with pytest.raises(InputError, match="positive"):
        generate(model, city, 0, tmp_path / "g4", progress=False)


# ------------------------------------------------------------------ location processes (issue 11)
@pytest.mark.parametrize("process", ["absorbing", "graph"])
def test_both_location_processes_train_save_load_and_sample(city, discrete, tmp_path, process):
    from dataclasses import replace

    from mstdiff.diffusion.location import LocationConfig

    mcfg = replace(model_config(), location=LocationConfig(process=process))
    train_mstdiff(city, None, discrete=discrete, vqvae=None, model_config=mcfg,
                  train_config=train_config(max_steps=2), out_dir=tmp_path / "m",
                  transition_path=None)
    model = MSTDiff.load(tmp_path / "m" / "model.pt", discrete=discrete if process == "graph" else None)
    assert type(model.hybrid.discrete).__name__ == ("AbsorbingProcess" if process == "absorbing"
                                                     else "GraphTransition")
    assert model.denoiser.config.mask_token is (process == "absorbing")
    assert model.scaler.calibrated  # the decoder's atoms were set from the model's own samples
    tr, lo = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert (lo >= 0).all() and (lo < city.n_stations).all() and (tr >= 0).all()


def test_absorbing_model_loads_without_a_transition_and_graph_model_needs_one(city, discrete, tmp_path):
    from dataclasses import replace

    from mstdiff.diffusion.location import LocationConfig

    for process in ("absorbing", "graph"):
        mcfg = replace(model_config(), location=LocationConfig(process=process))
        train_mstdiff(city, None, discrete=discrete, vqvae=None, model_config=mcfg,
                      train_config=train_config(max_steps=1, calibration_samples=0),
                      out_dir=tmp_path / process, transition_path=None)
    assert not MSTDiff.load(tmp_path / "absorbing").scaler.calibrated
    with pytest.raises(InputError, match="transition"):
        MSTDiff.load(tmp_path / "graph")


def test_sampling_options_are_checked_and_change_the_samples(city, discrete, tmp_path):
    run(city, discrete, tmp_path / "m", max_steps=3)
    model = MSTDiff.load(tmp_path / "m")
    with pytest.raises(InputError, match="unknown sampling option"):
        model.with_sampling(temperature=0.5)
    sharp = model.with_sampling(location_temperature=0.3, unmask_order="confidence")
    assert sharp.config.hybrid.unmask_order == "confidence" and model.config.hybrid.unmask_order == "random"
    _, a = model.sample(8, generator=torch.Generator().manual_seed(0))
    _, b = sharp.sample(8, generator=torch.Generator().manual_seed(0))
    assert not np.array_equal(a, b)
    g = generate(sharp, city, 4, tmp_path / "g", seed=1, batch_size=4, progress=False)
    assert g.meta["generation"]["sampling"]["unmask_order"] == "confidence"


def test_clip_traffic_keeps_every_step_inside_the_training_range(city, discrete, tmp_path, monkeypatch):
    import mstdiff.diffusion.gaussian as gm

    run(city, discrete, tmp_path / "m", max_steps=3)
    model = MSTDiff.load(tmp_path / "m")
    assert model.traffic_clip() is None  # off unless asked for
    top = float(np.asarray(city.traffic).max())
    assert model.scaler.train_max == pytest.approx(top)
    free, _ = model.sample(16, generator=torch.Generator().manual_seed(0))
    assert free.max() > top  # an untrained network drifts past the training maximum
    clipped = model.with_sampling(clip_traffic=True)
    lo, hi = model.scaler.model_range()
    seen = []
    real_step = gm.GaussianDiffusion.step

    def spy(self, eps, s, x, generator=None, clip=None):
        out = real_step(self, eps, s, x, generator, clip=clip)
        seen.append(idwt(out.pred_original_sample))
        return out

    monkeypatch.setattr(gm.GaussianDiffusion, "step", spy)
    tr, _ = clipped.sample(16, generator=torch.Generator().manual_seed(0))
    assert len(seen) == S and all(float(x.min()) >= lo - 1e-4 and float(x.max()) <= hi + 1e-4 for x in seen)
    assert tr.max() <= top * (1 + 1e-4) and tr.min() >= 0


def test_activity_channel_trains_and_its_classes_set_the_traffic_atoms(city, discrete, tmp_path):
    from dataclasses import replace

    mcfg = replace(model_config(), activity=True)
    res = train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None, model_config=mcfg,
                        train_config=train_config(max_steps=3), out_dir=tmp_path / "m")
    assert any("activity_ce" in h for h in res.history)
    model = MSTDiff.load(tmp_path / "m")
    assert model.hybrid.activity is not None and model.denoiser.config.activity_classes == 2  # MB: 2
    out = model.hybrid.sample(model.denoiser, 6, city.T, torch.Generator().manual_seed(0))
    assert out.a0 is not None and set(out.a0.unique().tolist()) <= {0, 1}
    tr, _ = model.sample(6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(tr == 0, out.a0.numpy() == 0)  # zero slots are the class-0 slots
    sharp = model.with_sampling(location_temperature=0.8)  # keeps the activity stream
    assert sharp.hybrid.activity is model.hybrid.activity
    generate(sharp, city, 4, tmp_path / "g", seed=0, batch_size=4, progress=False)


def test_calibrated_values_of_an_activity_model_follow_the_training_values(city, discrete, tmp_path):
    from dataclasses import replace

    mcfg = replace(model_config(), activity=True)
    train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None, model_config=mcfg,
                  train_config=train_config(max_steps=3, calibrate_values=True, calibration_samples=64),
                  out_dir=tmp_path / "m")
    model = MSTDiff.load(tmp_path / "m")
    sc = model.scaler
    assert sc.value_from is not None and sc.value_to == sc.positive_quantiles
    tr, _ = model.sample(64, generator=torch.Generator().manual_seed(5))
    pos, real = tr[tr > 0], city.traffic[city.traffic > 0]
    # the active slots' values have the training values' shares (a fresh draw: within sampling noise)
    for q in (0.25, 0.5, 0.75):
        assert np.quantile(pos, q) == pytest.approx(np.quantile(real, q), rel=0.35)
    raw = MSTDiff(model.denoiser, model.hybrid, replace(sc, value_from=None, value_to=None), model.config)
    tr_raw, _ = raw.sample(64, generator=torch.Generator().manual_seed(5))  # the same draw, no map
    np.testing.assert_array_equal(tr_raw == 0, tr == 0)  # the map moves values, not the atoms
    assert abs(np.log(np.median(tr_raw[tr_raw > 0]) / np.median(real))) > 0.5  # what it corrects
    with pytest.raises(InputError, match="model.activity"):
        train_mstdiff(city, city.subset(np.arange(8)), discrete=discrete, vqvae=None,
                      model_config=model_config(),
                      train_config=train_config(max_steps=1, calibrate_values=True), out_dir=tmp_path / "n")


def test_sampling_reports_every_reverse_step(city, discrete, tmp_path):
    res = run(city, discrete, tmp_path / "m", epochs=1)
    model = MSTDiff.load(res.out_dir / "model.pt")
    ticks: list[int] = []
    model.sample(3, generator=torch.Generator().manual_seed(0), on_step=lambda: ticks.append(1))
    assert len(ticks) == model.hybrid.num_steps


# ------------------------------------------------------------------ without traffic (issue 14)
def _no_traffic(city):
    from mstdiff.data.dataset import PreparedDataset

    meta = dict(city.meta, has_traffic=False)
    return PreparedDataset(np.zeros_like(city.traffic), city.locations, city.stations, city.samples, meta)


@pytest.mark.parametrize("process", ["absorbing", "graph"])
def test_a_dataset_without_traffic_trains_mstdiff_without_traffic(city, discrete, tmp_path, process):
    from dataclasses import replace

    from mstdiff.diffusion.location import LocationConfig

    traj = _no_traffic(city)
    mcfg = replace(model_config(), activity=True, location=LocationConfig(process=process),
                   denoiser=replace(model_config().denoiser, use_vqvae=True))  # both switched off
    res = train_mstdiff(traj, traj.subset(np.arange(8)), discrete=discrete, vqvae=None, model_config=mcfg,
                        train_config=train_config(max_steps=4), out_dir=tmp_path / "m")
    assert all(h.get("traffic_mse", 0.0) == 0.0 for h in res.history)  # no traffic term at all
    model = MSTDiff.load(tmp_path / "m", discrete=discrete if process == "graph" else None)
    cfg = model.denoiser.config
    assert not cfg.use_traffic and not cfg.use_vqvae and cfg.activity_classes == 0
    assert model.hybrid.activity is None and model.denoiser.vqvae is None
    assert not any(n.startswith("stages.") and ("coef_in" in n or "eps_head" in n)
                   for n, _ in model.denoiser.named_parameters())
    tr, lo = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert (tr == 0).all() and (lo >= 0).all() and (lo < city.n_stations).all()
    _, lo2 = model.sample(6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(lo, lo2)  # same seed, same trajectories
    g = generate(model, traj, 5, tmp_path / "g", seed=0, batch_size=4, progress=False)
    assert g.meta["has_traffic"] is False and g.n_samples == 5 and not g.has_traffic
    assert not (tmp_path / "g" / "traffic.npy").exists()


def test_without_traffic_the_network_ignores_the_traffic_input(city):
    from mstdiff.models.denoiser import MSTDiffDenoiser

    cfg = DenoiserConfig(num_stations=city.n_stations, seq_len=city.T, d_model=16, n_heads=2,
                         layers_per_stage=1, use_vqvae=False, use_traffic=False, dropout=0.0)
    net = MSTDiffDenoiser(cfg, generator=torch.Generator().manual_seed(0)).eval()
    loc = torch.from_numpy(city.locations[:3]).long()
    s = torch.tensor([1, 4, 8])
    a = net(torch.zeros(3, city.T), loc, s)
    b = net(torch.randn(3, city.T), loc, s)
    assert a.eps is None
    torch.testing.assert_close(a.logits, b.logits)  # the traffic values reach nothing
    c = net(torch.zeros(3, city.T), torch.roll(loc, 1, dims=1), s)
    assert not torch.allclose(a.logits, c.logits)  # the locations do


def test_without_traffic_config_errors():
    with pytest.raises(InputError, match="traffic or locations"):
        DenoiserConfig(num_stations=5, use_traffic=False, use_locations=False, use_vqvae=False).validate()
    with pytest.raises(InputError, match="use_vqvae"):
        DenoiserConfig(num_stations=5, use_traffic=False, use_vqvae=True).validate()


def test_the_vqvae_stage_refuses_a_dataset_without_traffic(city, tmp_path):
    from mstdiff.training.mstdiff import pretrain_vqvae_stage

    with pytest.raises(InputError, match="no traffic"):
        pretrain_vqvae_stage(_no_traffic(city), tmp_path / "vq", progress=False)


def test_keep_best_saves_the_epoch_with_the_lowest_validation_loss(city, discrete, tmp_path):
    kw = dict(keep_best=True, schedule="constant", warmup_steps=0, lr=0.05, epochs=4)
    res = run(city, discrete, tmp_path / "best", **kw)
    vals = [h["val_total"] for h in res.history if "val_total" in h]
    assert len(vals) == 4
    e = int(np.argmin(vals)) + 1
    meta = torch.load(tmp_path / "best" / "model.pt", weights_only=True)["meta"]
    assert meta["best_epoch"] == e
    # a constant learning rate: the run stopped after epoch e passed through the same weights
    run(city, discrete, tmp_path / "upto", **{**kw, "epochs": e, "keep_best": False})
    wb, wu = weights(tmp_path / "best"), weights(tmp_path / "upto")
    assert all(torch.equal(wb[k], wu[k]) for k in wb)
    last = run(city, discrete, tmp_path / "last", **{**kw, "keep_best": False})
    assert last.history == res.history
    if e != 4:
        wl = weights(tmp_path / "last")
        assert not all(torch.equal(wb[k], wl[k]) for k in wb)

    def interrupt(step, parts):  # Ctrl-C in the third epoch: the best so far survives the resume
        if step == 7:
            raise KeyboardInterrupt

    args = dict(discrete=discrete, vqvae=None, model_config=model_config(),
                train_config=train_config(**kw), out_dir=tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        train_mstdiff(city, city.subset(np.arange(8)), callback=interrupt, **args)
    train_mstdiff(city, city.subset(np.arange(8)), resume=True, **args)
    wr = weights(tmp_path / "part")
    assert all(torch.equal(wb[k], wr[k]) for k in wb)


def test_station_counts_of_slots_and_of_arrivals_against_a_loop():
    from mstdiff.training.mstdiff import station_counts

    rng = np.random.default_rng(5)
    L = np.repeat(rng.integers(0, 6, (20, 6)), rng.integers(1, 4, 6), axis=1)  # stays of 1-3 slots
    slots, arrivals = np.zeros(6, int), np.zeros(6, int)
    for row in L:
        for t, x in enumerate(row):
            slots[x] += 1
            arrivals[x] += t == 0 or row[t - 1] != x
    np.testing.assert_array_equal(station_counts(L, 6), slots)
    np.testing.assert_array_equal(station_counts(L, 6, "arrivals"), arrivals)
    assert station_counts(L, 6, "arrivals").sum() < L.size  # stays longer than a slot count once
    with pytest.raises(InputError, match="station counts"):
        station_counts(L, 6, "visits")


def _pattern_config(tokens="labels", **pattern):
    from dataclasses import replace

    from mstdiff.diffusion.location import LocationConfig
    from mstdiff.models.day_pattern import DayPatternConfig

    base = model_config()
    return replace(base, location=LocationConfig(process="absorbing"),
                   pattern=DayPatternConfig(enabled=True, tokens=tokens, labels=64, **pattern),
                   denoiser=replace(base.denoiser, use_traffic=False, near_k=0, copy_head=tokens == "labels",
                                    copy_nearest=tokens == "labels", table_new=tokens == "labels"))


@pytest.mark.parametrize("tokens", ["moves", "moves_back", "labels"])
def test_a_pattern_model_draws_patterns_then_stations(city, tmp_path, tokens, monkeypatch):
    from mstdiff.models.day_pattern import day_patterns

    traj = _no_traffic(city)
    res = train_mstdiff(traj, traj.subset(np.arange(8)), discrete=None, vqvae=None,
                        model_config=_pattern_config(tokens), train_config=train_config(epochs=2),
                        out_dir=tmp_path / "m")
    assert res.steps > 0 and any("val_total" in h for h in res.history)
    model = MSTDiff.load(tmp_path / "m")
    assert model.assigner is not None and model.n_stations == city.n_stations
    P = {"labels": 64, "moves": city.T + 2, "moves_back": city.T + 3}[tokens]  # the network's symbols
    assert model.hybrid.num_states == P and model.denoiser.config.num_stations == P
    _, lo = model.sample(10, generator=torch.Generator().manual_seed(0))
    assert lo.shape == (10, city.T) and lo.min() >= 0 and lo.max() < city.n_stations
    same = model.with_sampling(location_temperature=1.0)
    _, lo2 = same.sample(10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(lo, lo2)  # same seed, same stations; sampling options keep the assigner
    if tokens == "moves_back":  # the redraw reads BACK too: every drawn day is one the encoding holds
        import mstdiff.training.model as mod
        from mstdiff.models.day_pattern import invalid_moves

        seen = {}
        real_redraw = mod.redraw_invalid_moves

        def spy(tok, logits_fn, mask_id, **kw):
            seen["back"], seen["out"] = kw.get("back"), real_redraw(tok, logits_fn, mask_id, **kw)
            return seen["out"]

        monkeypatch.setattr(mod, "redraw_invalid_moves", spy)
        model.with_sampling(redraw_invalid=True, unmask_order="single").sample(
            16, generator=torch.Generator().manual_seed(0))
        assert seen["back"] is True and not invalid_moves(seen["out"], back=True).any()
        assert int(seen["out"].max()) <= city.T + 2
    g = generate(model, traj, 5, tmp_path / "g", seed=0, batch_size=4, progress=False)
    assert g.n_samples == 5 and g.n_stations == city.n_stations
    # the stations realise the drawn pattern: as many distinct stations as distinct labels
    assert (day_patterns(g.locations).max(1) + 1 == [len(set(r)) for r in g.locations]).all()


def _moves_model(city, tmp_path):
    """The city's trajectories and a move-token pattern model trained on them for one epoch."""
    traj = _no_traffic(city)
    train_mstdiff(traj, traj.subset(np.arange(8)), discrete=None, vqvae=None,
                  model_config=_pattern_config("moves"), train_config=train_config(epochs=1),
                  out_dir=tmp_path / "m")
    return traj, MSTDiff.load(tmp_path / "m")


def test_a_move_pattern_model_redraws_its_invalid_tokens_on_request(city, tmp_path, monkeypatch):
    import mstdiff.training.model as mod
    from mstdiff.models.day_pattern import decode_moves, invalid_moves

    traj, model = _moves_model(city, tmp_path)
    assert not model.config.pattern.redraw_invalid  # off unless asked for
    fixed = model.with_sampling(redraw_invalid=True)
    assert fixed.config.pattern.redraw_invalid and fixed.assigner is model.assigner
    with pytest.raises(InputError, match="redraw_invalid"):
        model.with_sampling(redraw_invalid="often")
    seen = {}
    real_redraw = mod.redraw_invalid_moves

    def spy(tokens, logits_fn, mask_id, **kw):
        out = real_redraw(tokens, logits_fn, mask_id, **kw)
        seen["in"], seen["out"] = tokens.clone(), out.clone()
        return out

    monkeypatch.setattr(mod, "redraw_invalid_moves", spy)
    assigned = {}
    real_assign = model.assigner.assign

    def assign(z, rng):
        assigned["z"] = z.copy()
        return real_assign(z, rng)

    monkeypatch.setattr(model.assigner, "assign", assign)
    _, lo = fixed.sample(64, generator=torch.Generator().manual_seed(0))
    assert lo.shape == (64, city.T)
    assert not invalid_moves(seen["out"]).any()
    np.testing.assert_array_equal(assigned["z"], decode_moves(seen["out"].numpy()))  # the redrawn tokens
    seen.clear()
    model.sample(8, generator=torch.Generator().manual_seed(0))
    assert not seen  # not asked for: not called
    swept = model.with_sampling(gibbs_sweeps=1)  # Gibbs sweeps end with the redraw too
    _, lo = swept.sample(8, generator=torch.Generator().manual_seed(0))
    assert lo.shape == (8, city.T) and not invalid_moves(seen["out"]).any()
    with pytest.raises(InputError, match="gibbs_sweeps"):
        model.with_sampling(gibbs_sweeps=-1)
    single = model.with_sampling(unmask_order="single", redraw_invalid=True)  # T calls, then the redraw
    ticks: list[int] = []
    _, lo = single.sample(8, generator=torch.Generator().manual_seed(0), on_step=lambda: ticks.append(1))
    assert lo.shape == (8, city.T) and len(ticks) == city.T and not invalid_moves(seen["out"]).any()
    g = generate(swept, traj, 4, tmp_path / "g", seed=0, batch_size=4, progress=False)
    assert g.meta["generation"]["sampling"]["gibbs_sweeps"] == 1  # the set says how it was drawn
    assert g.meta["generation"]["sampling"]["redraw_invalid"] is False


def test_a_pattern_model_refits_its_assigner_without_training(city, tmp_path, monkeypatch):
    traj, model = _moves_model(city, tmp_path)
    assert model.config.pattern.kernel == "nearest"
    grav = model.refit_assigner(traj, kernel="gravity", move_smoothing=1.0)
    assert grav.denoiser is model.denoiser and grav.assigner is not model.assigner
    assert grav.config.pattern.kernel == "gravity" and grav.config.pattern.move_smoothing == 1.0
    assert grav.assigner.gravity_h.size and not model.assigner.gravity_h.size
    # the network draws the same patterns; only their stations change
    drawn = []
    for m in (model, grav):
        real_assign = m.assigner.assign
        monkeypatch.setattr(m.assigner, "assign", lambda z, rng, f=real_assign: drawn.append(z) or f(z, rng))
    _, a = model.sample(12, generator=torch.Generator().manual_seed(0))
    _, b = grav.sample(12, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(drawn[0], drawn[1])
    assert not np.array_equal(a, b)
    grav.save(tmp_path / "g.pt", transition_path=None, meta={})
    again = MSTDiff.load(tmp_path / "g.pt")  # the refitted assigner is saved with the model
    np.testing.assert_array_equal(again.assigner.gravity_h, grav.assigner.gravity_h)
    with pytest.raises(InputError, match="not options of the station assigner"):
        model.refit_assigner(traj, tokens="labels")
    with pytest.raises(InputError, match="kernel"):
        model.refit_assigner(traj, kernel="far")
    extra = traj.stations.iloc[:1].assign(station_id=-1)  # another station table: one station more
    table = pd.concat([traj.stations, extra], ignore_index=True)
    other = PreparedDataset(traj.traffic, traj.locations, table, traj.samples, dict(traj.meta))
    with pytest.raises(InputError, match="stations"):
        model.refit_assigner(other)


def test_pattern_training_maps_the_labels_afresh_every_epoch_and_resumes_exactly(city, tmp_path, monkeypatch):
    import mstdiff.training.mstdiff as tm

    traj = _no_traffic(city)
    seen = []

    def record(labels, P, g):
        out = permute(labels, P, g)
        seen.append(out.clone())
        return out

    permute = tm.permute_labels
    monkeypatch.setattr(tm, "permute_labels", record)
    kw = dict(discrete=None, vqvae=None, model_config=_pattern_config(), train_config=train_config(epochs=3))
    train_mstdiff(traj, traj.subset(np.arange(8)), out_dir=tmp_path / "a", **kw)
    assert len(seen) == 1 + 3  # the validation set once, the training set every epoch
    assert all(not torch.equal(seen[i], seen[j]) for i in range(1, 4) for j in range(i + 1, 4))

    def interrupt(step, parts):  # Ctrl-C mid-epoch 2 (3 batches per epoch)
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mstdiff(traj, traj.subset(np.arange(8)), out_dir=tmp_path / "b", callback=interrupt, **kw)
    train_mstdiff(traj, traj.subset(np.arange(8)), out_dir=tmp_path / "b", resume=True, **kw)
    for k, v in weights(tmp_path / "a").items():
        torch.testing.assert_close(weights(tmp_path / "b")[k], v, rtol=0, atol=0)


def test_pattern_config_errors_and_no_conditions(city, tmp_path):
    from dataclasses import replace

    from mstdiff.conditional import Observed, sample_conditional
    from mstdiff.diffusion.location import LocationConfig
    from mstdiff.training.mstdiff import check_pattern

    cfg = _pattern_config()
    check_pattern(cfg)
    with pytest.raises(InputError, match="absorbing"):
        check_pattern(replace(cfg, location=LocationConfig(process="graph")))
    with pytest.raises(InputError, match="near_k"):
        check_pattern(replace(cfg, denoiser=replace(cfg.denoiser, near_k=4)))
    with pytest.raises(InputError, match="use_traffic"):
        train_mstdiff(city, None, discrete=None, vqvae=None, model_config=replace(
            cfg, denoiser=replace(cfg.denoiser, use_traffic=True)), train_config=train_config(max_steps=1),
            out_dir=tmp_path / "x")
    traj = _no_traffic(city)
    train_mstdiff(traj, None, discrete=None, vqvae=None, model_config=cfg,
                  train_config=train_config(max_steps=2), out_dir=tmp_path / "m")
    model = MSTDiff.load(tmp_path / "m")
    n, T = 3, city.T
    mask = np.zeros((n, T), dtype=bool)
    mask[:, :4] = True
    obs = Observed(np.zeros((n, T), np.float32), traj.locations[:n].astype(np.int64),
                   np.zeros((n, T), bool), mask)
    with pytest.raises(InputError, match="unconditionally"):
        sample_conditional(model, obs, generator=torch.Generator(), device=torch.device("cpu"))
