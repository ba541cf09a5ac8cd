"""The DDPM schedule shared by the learned baselines, and the traffic scaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mstdiff.baselines._ddpm import DDPMSchedule, beta_schedule, timestep_embedding
from mstdiff.data.scaling import TrafficScaler
from mstdiff.errors import InputError


def test_quadratic_schedule_endpoints_and_shape():
    b = beta_schedule("quadratic", 50, 1e-4, 0.5)
    assert b.shape == (50,) and b.dtype == np.float64
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.5)
    assert np.all(np.diff(np.sqrt(b)) > 0)
    assert np.allclose(np.diff(np.sqrt(b)), np.diff(np.sqrt(b))[0])  # linear in sqrt(beta)


@pytest.mark.parametrize("kind", ["linear", "quadratic", "cosine"])
def test_schedules_valid(kind):
    b = beta_schedule(kind, 20, 1e-4, 0.2)
    assert np.all((b > 0) & (b < 1))
    abar = np.cumprod(1 - b)
    assert np.all(np.diff(abar) < 0)


def test_bad_schedule_rejected():
    with pytest.raises(InputError):
        beta_schedule("sigmoid", 10)
    with pytest.raises(InputError):
        beta_schedule("linear", 0)


def test_add_noise_formula():
    sched = DDPMSchedule(beta_schedule("linear", 10, 1e-3, 0.2))
    x0, eps = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    s = torch.tensor([0, 3, 6, 9])
    abar = np.cumprod(1 - beta_schedule("linear", 10, 1e-3, 0.2))
    want = torch.stack([math.sqrt(abar[k]) * x0[i] + math.sqrt(1 - abar[k]) * eps[i]
                        for i, k in enumerate(s.tolist())])
    assert torch.allclose(sched.add_noise(x0, eps, s), want, atol=1e-6)


def test_clipped_step_equals_plain_step_when_nothing_is_clipped():
    sched = DDPMSchedule(beta_schedule("quadratic", 12, 1e-4, 0.5))
    x, eps, z = torch.randn(3, 1, 16), torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    wide = (torch.tensor(-1e9), torch.tensor(1e9))
    for s in (0, 1, 5, 11):
        a = sched.step(eps, s, x, z)
        b = sched.step(eps, s, x, z, clip=wide)
        assert torch.allclose(a, b, atol=1e-4), s


def test_sampler_recovers_a_point_mass_with_the_exact_denoiser():
    # data = the constant c: the exact eps-predictor is (x - sqrt(abar) c) / sqrt(1 - abar)
    sched = DDPMSchedule(beta_schedule("linear", 30, 1e-3, 0.3))
    c = torch.linspace(-1.0, 2.0, 8)[None, None, :]

    def oracle(x, s):
        sa = sched.sqrt_abar[s].view(-1, 1, 1)
        s1 = sched.sqrt_1m_abar[s].view(-1, 1, 1)
        return (x - sa * c) / s1

    g = torch.Generator().manual_seed(0)
    out = sched.sample(oracle, (5, 1, 8), g, torch.device("cpu"))
    assert torch.allclose(out, c.expand(5, 1, 8), atol=1e-3)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rnd = lambda x, s: 0.5 * x  # noqa: E731
    assert torch.equal(sched.sample(rnd, (2, 1, 8), g1, torch.device("cpu")),
                       sched.sample(rnd, (2, 1, 8), g2, torch.device("cpu")))


def test_timestep_embedding_shape_and_distinct():
    e = timestep_embedding(torch.arange(5), 16)
    assert e.shape == (5, 16)
    assert torch.unique(e, dim=0).shape[0] == 5


def test_scaler_roundtrip_zeros_and_dict():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.0, 1.0, (20, 48)) * (rng.random((20, 48)) < 0.4)
    x = x.astype(np.float32)
    sc = TrafficScaler.fit(x)
    z = sc.encode(x)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 1e-5
    assert float(z.std()) == pytest.approx(1, abs=1e-4)
    back = sc.decode(z)
    assert np.allclose(back, x, rtol=1e-4, atol=1e-5)
    assert np.array_equal(back == 0, x == 0)
    assert sc.zero_threshold == pytest.approx(0.5 * x[x > 0].min())
    # a decoded value just above the zero level of the model is set to exactly 0
    tiny = sc.encode(np.full((1, 1), 0.25 * x[x > 0].min()))
    assert sc.decode(tiny)[0, 0] == 0.0
    assert (sc.decode(np.array([[-50.0, 500.0]])) >= 0).all()
    assert np.isfinite(sc.decode(np.array([[1e6]]))).all()
    assert TrafficScaler.from_dict(sc.to_dict()) == sc


def test_scaler_rejects_negative():
    with pytest.raises(InputError):
        TrafficScaler.fit(np.array([[1.0, -1.0]]))


@pytest.mark.parametrize("kind,steps,b0,b1", [("linear", 100, 1e-3, 0.2), ("quadratic", 50, 1e-4, 0.5)])
def test_sampler_reproduces_gaussian_data_with_the_exact_denoiser(kind, steps, b0, b1):
    # data N(mu, tau^2): E[eps | x_s] = sqrt(1-abar) (x_s - sqrt(abar) mu) / (abar tau^2 + 1 - abar)
    sched = DDPMSchedule(beta_schedule(kind, steps, b0, b1))
    mu, tau = 1.0, 0.5
    abar = sched.sqrt_abar**2

    def oracle(x, s):
        a = abar[s].view(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * tau**2 + 1 - a)

    out = sched.sample(oracle, (4000, 1, 4), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(out.mean()) == pytest.approx(mu, abs=0.03)
    # the posterior variance (beta-tilde) slightly under-disperses with few steps: 0.46..0.47 here
    assert 0.43 < float(out.std()) < 0.53
