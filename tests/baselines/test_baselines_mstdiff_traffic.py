"""MSTDiff without trajectory: same traffic network as MSTDiff, the DDPM in time ≡ the DDPM on w."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mstdiff.baselines import MSTDiffTraffic, make_baseline
from mstdiff.baselines._learned import DiffusionConfig
from mstdiff.baselines.mstdiff_traffic import MSTDiffTrafficConfig, WaveletEpsNet
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.vqvae import VQVAE, VQVAEConfig
from mstdiff.models.wavelet import dwt, idwt
from mstdiff.pipeline import BenchmarkConfig, ablation_defaults, baseline_config

CFG = dict(seq_len=48, d_model=16, n_heads=2, layers_per_stage=1, final_layers=1, dropout=0.0)
VQ = VQVAEConfig(num_codes=8, hidden=8, code_dim=4, epochs=1)


def _denoisers(N: int = 37):
    g = torch.Generator().manual_seed(0)
    full = MSTDiffDenoiser(DenoiserConfig(num_stations=N, **CFG), VQVAE(VQ), generator=g)
    ablation = MSTDiffDenoiser(DenoiserConfig(use_locations=False, **CFG), VQVAE(VQ), generator=g)
    return full, ablation


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_ablation_has_mstdiffs_stages_and_no_location_branch():
    full, ablation = _denoisers()
    # every wavelet stage (traffic + location streams, cross-attention, VQ fusion) has the same size
    for a, b in zip(full.stages, ablation.stages):
        assert _count(a) == _count(b)
    assert _count(full.step_mlp) == _count(ablation.step_mlp)
    # what is gone: the (N, d) station table (one learned vector remains) and the location head path
    d = CFG["d_model"]
    path = (full.full_in, full.full_merge, full.full_layers, full.ln_f, full.head_proj, full.copy)
    head = sum(_count(m) for m in path)
    head += full.logits_head.bias.numel()
    assert _count(full) - _count(ablation) == (37 - 1) * d + head
    assert ablation.logits_head is None and ablation.log_tau is None and ablation.copy is None
    assert ablation.station_emb.weight.shape == (1, d)


def test_ablation_forward_takes_no_locations():
    _, ablation = _denoisers()
    w = torch.randn(3, 48)
    s = torch.tensor([1, 5, 9])
    out = ablation(w, None, s)
    assert out.eps.shape == (3, 48) and out.logits is None
    with pytest.raises(ValueError, match="use_locations"):
        ablation(w, torch.zeros(3, 48, dtype=torch.long), s)
    full, _ = _denoisers()
    with pytest.raises(ValueError, match="use_locations"):
        full(w, None, s)


def test_haar_is_orthonormal_so_time_and_wavelet_noising_agree():
    eye = torch.eye(48, dtype=torch.float64)
    W = dwt(eye)  # row i = DWT(e_i)
    torch.testing.assert_close(W @ W.T, eye)
    # loss in time with ε equals the loss on w with DWT(ε), for the wrapper's prediction
    _, ablation = _denoisers()
    ablation.eval()
    net = WaveletEpsNet(ablation)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 1, 48, generator=g), torch.randn(5, 1, 48, generator=g)
    a, b = 0.3, 0.7
    xs = a * x0 + b * eps
    s = torch.tensor([0, 3, 7, 2, 9])
    time_loss = torch.mean((net(xs, s) - eps) ** 2)
    ws = a * dwt(x0[:, 0]) + b * dwt(eps[:, 0])
    wave_loss = torch.mean((ablation(ws, None, s + 1).eps - dwt(eps[:, 0])) ** 2)
    torch.testing.assert_close(time_loss, wave_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(idwt(dwt(x0[:, 0])), x0[:, 0], rtol=1e-5, atol=1e-6)


def test_default_schedule_is_mstdiffs():
    ours = MSTDiffTrafficConfig().diffusion.schedule()
    theirs = GaussianDiffusion(GaussianConfig())
    assert ours.steps == theirs.num_steps
    theirs_betas = theirs.betas.double().cpu().numpy()[1:]  # [0] pads s = 0
    np.testing.assert_allclose(ours.betas.double().numpy(), theirs_betas, rtol=1e-6)
    assert DiffusionConfig().clip_x0 and not MSTDiffTrafficConfig().diffusion.clip_x0


def test_benchmark_defaults_follow_the_run_config():
    cfg = BenchmarkConfig()
    cfg.model.denoiser.d_model = 48
    cfg.train.epochs = 3
    cfg.vqvae.num_codes = 16
    cfg.baselines = {"mstdiff-traffic+markov": {"mstdiff-traffic": {"train": {"lr": 5e-4}}}}
    merged = baseline_config("mstdiff-traffic+markov", cfg)
    part = merged["mstdiff-traffic"]
    assert part["denoiser"]["d_model"] == 48 and part["train"]["epochs"] == 3 and part["train"]["lr"] == 5e-4
    assert part["vqvae"]["num_codes"] == 16
    model = make_baseline("mstdiff-traffic+markov", merged)
    traffic = model.traffic_model
    assert isinstance(traffic, MSTDiffTraffic)
    assert traffic.config.denoiser.d_model == 48 and not traffic.config.denoiser.use_locations
    assert baseline_config("csdi+markov", cfg) is None  # other baselines untouched
    assert ablation_defaults(cfg)["diffusion"]["steps"] == cfg.model.gaussian.num_steps
