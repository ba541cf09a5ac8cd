import numpy as np
import pytest
import torch

from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion, quadratic_beta_schedule
from mstdiff.errors import InputError


@pytest.fixture
def proc():
    return GaussianDiffusion(GaussianConfig())


def test_schedule_formula_and_buffers(proc):
    S, b1, bS = 50, 1e-4, 0.5
    s = np.arange(1, S + 1)
    expected = (np.sqrt(b1) + (s - 1) / (S - 1) * (np.sqrt(bS) - np.sqrt(b1))) ** 2
    np.testing.assert_allclose(quadratic_beta_schedule(S, b1, bS), expected, rtol=1e-12)
    assert proc.betas.dtype == torch.float32 and proc.betas.shape == (S + 1,)
    np.testing.assert_allclose(proc.betas[1:].numpy(), expected, rtol=1e-6)
    assert float(proc.betas[0]) == 0.0 and float(proc.alphas_cumprod[0]) == 1.0
    assert len(list(proc.parameters())) == 0  # parameter-free
    assert proc.state_dict() == {}  # schedule is not saved: it is recomputed from the config


def test_alpha_bar_monotone_and_ends_near_zero(proc):
    ac = proc.alphas_cumprod
    assert torch.all(ac[1:] < ac[:-1])
    assert 0 < float(ac[-1]) < 1e-4  # w_S is N(0, I) up to sqrt(3.4e-5) ≈ 0.006 of the data
    assert float(ac[1]) > 0.999


def test_add_noise_statistics(proc):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -2.0, 0.3])
    n = 200_000
    for step in (1, 10, 25, 50):
        noise = torch.randn(n, 3, generator=g)
        xs = proc.add_noise(x0.expand(n, 3), noise, torch.full((n,), step))
        ab = float(proc.alphas_cumprod[step])
        torch.testing.assert_close(xs.mean(0), ab**0.5 * x0, atol=0.01, rtol=0)
        torch.testing.assert_close(xs.std(0), torch.full((3,), (1 - ab) ** 0.5), atol=0.01, rtol=0)
    # per-sample steps broadcast over (B, T)
    x = torch.ones(2, 4)
    out = proc.add_noise(x, torch.zeros(2, 4), torch.tensor([1, 50]))
    torch.testing.assert_close(out[0], torch.full((4,), float(proc.sqrt_alphas_cumprod[1])))
    torch.testing.assert_close(out[1], torch.full((4,), float(proc.sqrt_alphas_cumprod[50])))


def _posterior_brute_force(proc, x0, xs, s):
    """Moments of q(x_{s-1}|x_s,x0) ∝ q(x_s|x_{s-1}) q(x_{s-1}|x0) by numerical integration."""
    a = float(proc.alphas[s])
    b = float(proc.betas[s])
    ab_prev = float(proc.alphas_cumprod[s - 1])
    grid = np.linspace(-12, 12, 400_001)
    log_p = -((xs - np.sqrt(a) * grid) ** 2) / (2 * b) - (grid - np.sqrt(ab_prev) * x0) ** 2 / (
        2 * (1 - ab_prev)
    )
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    mean = (p * grid).sum()
    return mean, (p * (grid - mean) ** 2).sum()


@pytest.mark.parametrize("s", [2, 5, 30, 50])
def test_posterior_matches_brute_force(proc, s):
    x0, xs = 0.7, -0.4
    mean, var = proc.posterior_mean_variance(torch.tensor([x0]), torch.tensor([xs]), s)
    m_ref, v_ref = _posterior_brute_force(proc, x0, xs, s)
    assert abs(float(mean) - m_ref) < 1e-4 * max(1.0, abs(m_ref))
    assert abs(float(var) - v_ref) < 1e-3 * v_ref


def test_step_with_true_eps_recovers_x0(proc):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 48, generator=g)
    eps = torch.randn(4, 48, generator=g)
    for step in (1, 7, 50):
        s = torch.full((4,), step)
        xs = proc.add_noise(x0, eps, s)
        out = proc.step(eps, s, xs, generator=g)
        torch.testing.assert_close(out.pred_original_sample, x0, atol=5e-3 if step == 50 else 1e-4, rtol=0)
    # at s = 1 the step is noiseless and returns x0 itself
    xs = proc.add_noise(x0, eps, 1)
    torch.testing.assert_close(proc.step(eps, 1, xs, generator=g).prev_sample, x0, atol=1e-4, rtol=0)
    # a whole ancestral chain driven by the oracle ε ends at x0
    x = torch.randn(4, 48, generator=g)
    for step in range(50, 0, -1):
        ab = proc.alphas_cumprod[step]
        eps_true = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = proc.step(eps_true, torch.full((4,), step), x, generator=g).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)


def test_step_noise_matches_posterior_variance(proc):
    g = torch.Generator().manual_seed(2)
    n, s = 100_000, 20
    x0 = torch.full((n,), 0.5)
    xs = torch.full((n,), -1.0)
    eps_true = (xs - proc.sqrt_alphas_cumprod[s] * x0) / proc.sqrt_one_minus_alphas_cumprod[s]
    out = proc.step(eps_true, torch.full((n,), s), xs, generator=g).prev_sample
    mean, var = proc.posterior_mean_variance(x0[:1], xs[:1], s)
    assert abs(float(out.mean() - mean)) < 0.01
    assert abs(float(out.var()) / float(var) - 1) < 0.02


def test_step_reproducible_with_generator(proc):
    x = torch.randn(3, 8)
    eps = torch.randn(3, 8)
    a = proc.step(eps, 10, x, generator=torch.Generator().manual_seed(5)).prev_sample
    b = proc.step(eps, 10, x, generator=torch.Generator().manual_seed(5)).prev_sample
    c = proc.step(eps, 10, x, generator=torch.Generator().manual_seed(6)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_invalid_steps_and_config():
    proc = GaussianDiffusion(GaussianConfig(num_steps=10))
    with pytest.raises(ValueError):
        proc.add_noise(torch.zeros(2, 8), torch.zeros(2, 8), torch.tensor([1, 11]))
    with pytest.raises(InputError):
        GaussianConfig(beta_start=0.6, beta_end=0.5)
    with pytest.raises(InputError):
        GaussianConfig(num_steps=0)


def test_clip_denoised():
    proc = GaussianDiffusion(GaussianConfig(clip_denoised=1.0))
    xs = torch.full((1, 8), 5.0)
    out = proc.step(torch.zeros(1, 8), 3, xs, generator=torch.Generator().manual_seed(0))
    assert float(out.pred_original_sample.abs().max()) <= 1.0


def test_step_clip_maps_the_prediction_before_the_posterior_mean():
    proc = GaussianDiffusion(GaussianConfig(num_steps=10))
    xs = torch.full((2, 8), 3.0)
    eps = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    free = proc.step(eps, 4, xs, generator=torch.Generator().manual_seed(0))
    clipped = proc.step(eps, 4, xs, generator=torch.Generator().manual_seed(0),
                        clip=lambda x: x.clamp(-0.5, 0.5))
    torch.testing.assert_close(clipped.pred_original_sample, free.pred_original_sample.clamp(-0.5, 0.5))
    # the same noise draw, the posterior mean of the clipped x0: the difference is c1 · (x0 difference)
    s = torch.tensor([4])
    m_free, _ = proc.posterior_mean_variance(free.pred_original_sample, xs, s)
    m_clip, _ = proc.posterior_mean_variance(clipped.pred_original_sample, xs, s)
    torch.testing.assert_close(clipped.prev_sample - free.prev_sample, m_clip - m_free)
