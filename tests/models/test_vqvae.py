import logging
import math

import pytest
import torch

from mstdiff.errors import InputError
from mstdiff.models.vqvae import (
    VQVAE,
    VQVAEConfig,
    codebook_usage,
    load_vqvae_history,
    perplexity,
    pretrain_vqvae,
)
from mstdiff.models.wavelet import dwt, scale_coeffs

SMALL = dict(hidden=16, code_dim=4, num_codes=16, num_res_blocks=1, batch_size=32)


def coarse_coeffs(U=256, T=48, seed=0):
    """cA3 of daily curves with random amplitude/phase: a few distinct coarse shapes plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T)
    amp = torch.rand(U, 1, generator=g) * 3
    phase = torch.rand(U, 1, generator=g) * 2 * math.pi
    m = amp * torch.sin(2 * math.pi * t / 48 + phase) + 0.1 * torch.randn(U, T, generator=g)
    return scale_coeffs(dwt(m), "cA3")


def test_forward_shapes_and_eq9():
    model = VQVAE(VQVAEConfig(**SMALL), generator=torch.Generator().manual_seed(0))
    w = torch.randn(5, 6)
    out = model(w)
    assert out.recon.shape == (5, 6) and out.z_e.shape == out.z_q.shape == (5, 6, 4)
    assert out.codes.shape == (5, 6) and out.codes.dtype == torch.long
    torch.testing.assert_close(out.loss, out.recon_loss + out.codebook_loss + 0.25 * out.commit_loss)
    z_q, codes = model.encode(w)
    assert torch.equal(codes, out.codes)
    torch.testing.assert_close(z_q, model.codebook.weight[codes])
    # nearest code really is nearest
    d = ((out.z_e.unsqueeze(-2) - model.codebook.weight) ** 2).sum(-1)  # (5, 6, K)
    assert torch.equal(d.argmin(-1), codes)
    # fully convolutional: also works on the T = 336 length (42)
    assert model(torch.randn(2, 42)).recon.shape == (2, 42)


def test_straight_through_gradients():
    model = VQVAE(VQVAEConfig(**SMALL), generator=torch.Generator().manual_seed(0))
    out = model(torch.randn(8, 6))
    out.recon_loss.backward()
    # the reconstruction gradient passes the quantiser to the encoder, but does not move the codes
    assert model.encoder[0].weight.grad is not None and model.encoder[0].weight.grad.abs().sum() > 0
    assert model.codebook.weight.grad is None or model.codebook.weight.grad.abs().sum() == 0
    model.zero_grad()
    out = model(torch.randn(8, 6))
    out.codebook_loss.backward()
    assert model.codebook.weight.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad is None or model.encoder[0].weight.grad.abs().sum() == 0


def test_perplexity_function():
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([0, 9, 0, 0])) == pytest.approx(1.0)
    assert perplexity(torch.zeros(3)) == 0.0


def test_pretrain_loss_decreases_and_reports_codebook_health():
    x = coarse_coeffs()
    cfg = VQVAEConfig(**SMALL, epochs=25, lr=3e-3)
    model, hist = pretrain_vqvae(x, cfg, seed=0, progress=False)
    assert len(hist) == 25
    assert {"epoch", "loss", "recon_loss", "perplexity", "dead_codes", "restarted"} <= set(hist[0])
    # eq. 9 first rises while the encoder outgrows the codebook, then settles well below the start
    assert hist[-1]["loss"] < 0.3 * hist[0]["loss"]
    assert hist[-1]["recon_loss"] < 0.1 * hist[0]["recon_loss"]
    assert 1.0 <= hist[-1]["perplexity"] <= 16.0 and hist[-1]["perplexity"] > 4.0
    assert not model.training
    counts = codebook_usage(model, x)
    assert counts.sum() == x.numel() and counts.shape == (16,)


def test_pretrain_deterministic_given_seed():
    x = coarse_coeffs(U=64)
    cfg = VQVAEConfig(**SMALL, epochs=2)
    (m1, h1), (m2, h2) = (pretrain_vqvae(x, cfg, seed=3, progress=False) for _ in range(2))
    _, h3 = pretrain_vqvae(x, cfg, seed=4, progress=False)
    assert h1 == h2 and h1 != h3
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_dead_code_restart_revives_codes(caplog):
    x = coarse_coeffs()
    base = dict(SMALL, num_codes=32, epochs=6, codebook_init="uniform", lr=3e-3)
    with caplog.at_level(logging.WARNING, logger="mstdiff.models.vqvae"):
        _, plain = pretrain_vqvae(x, VQVAEConfig(**base, dead_code_restart=False), seed=1, progress=False)
    assert plain[-1]["dead_codes"] > 0
    assert plain[-1]["restarted"] == 0
    assert "never used" in caplog.text  # dead codes do not go unnoticed
    _, restarted = pretrain_vqvae(x, VQVAEConfig(**base, dead_code_restart=True), seed=1, progress=False)
    assert sum(r["restarted"] for r in restarted) > 0
    assert restarted[-1]["dead_codes"] < plain[-1]["dead_codes"]
    assert restarted[-1]["perplexity"] > plain[-1]["perplexity"]


def test_checkpoint_round_trip(tmp_path):
    x = coarse_coeffs(U=64)
    model, hist = pretrain_vqvae(x, VQVAEConfig(**SMALL, epochs=2), seed=0, progress=False)
    path = tmp_path / "vq" / "vqvae.pt"
    model.save_checkpoint(path, history=hist)
    assert [p.name for p in path.parent.iterdir()] == ["vqvae.pt"]  # no temp file left behind
    loaded = VQVAE.load(path)
    assert loaded.config == model.config
    assert float(loaded.scale) == float(model.scale) != 1.0  # normalisation is part of the state
    z1, c1 = model.encode(x)
    z2, c2 = loaded.encode(x)
    assert torch.equal(c1, c2) and torch.equal(z1, z2)
    assert load_vqvae_history(path) == hist


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        VQVAEConfig(scale="cD4")
    with pytest.raises(InputError):
        VQVAEConfig(codebook_init="kmeans")
    with pytest.raises(InputError):
        pretrain_vqvae(torch.zeros(0, 6), VQVAEConfig(**SMALL), seed=0, progress=False)
    with pytest.raises(InputError):
        pretrain_vqvae(torch.full((4, 6), float("nan")), VQVAEConfig(**SMALL), seed=0, progress=False)
    with pytest.raises(InputError, match="not found"):
        VQVAE.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"kind": "other"}, bad)
    with pytest.raises(InputError, match="not a mstdiff VQ-VAE"):
        VQVAE.load(bad)
