import pytest
import torch

from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import (
    DiscreteProcess,
    HybridConfig,
    HybridDiffusion,
    sample_categorical,
    sample_steps,
)
from mstdiff.errors import InputError
from mstdiff.models.denoiser import DenoiserConfig, DenoiserOutput, MSTDiffDenoiser
from mstdiff.models.vqvae import VQVAE, VQVAEConfig
from standins import UniformJump

N, S, T = 12, 8, 48


def make_hybrid(**kw):
    return HybridDiffusion(
        GaussianDiffusion(GaussianConfig(num_steps=S)), UniformJump(N, S), HybridConfig(**kw)
    )


def tiny_model(seed=0, T=T):
    g = torch.Generator().manual_seed(seed)
    vq = VQVAE(VQVAEConfig(hidden=8, code_dim=4, num_codes=8, num_res_blocks=1), generator=g)
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=16, n_heads=2, layers_per_stage=1, dropout=0.0)
    return MSTDiffDenoiser(cfg, vq, generator=g)


def test_stand_in_satisfies_protocol():
    assert isinstance(UniformJump(N, S), DiscreteProcess)


def test_step_counts_must_agree():
    with pytest.raises(InputError, match="same number of diffusion steps"):
        HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S + 1)), UniformJump(N, S))
    with pytest.raises(InputError):
        HybridConfig(location_input="onehot")


def test_noise_shares_one_step_per_sample():
    hy = make_hybrid()
    g = torch.Generator().manual_seed(0)
    B = 400
    w0 = torch.full((B, T), 2.0)
    l0 = torch.randint(0, N, (B, T), generator=g)
    s = torch.tensor([1, S] * (B // 2))
    w_s, eps, l_s = hy.noise(w0, l0, s, g)
    assert w_s.shape == eps.shape == (B, T) and l_s.shape == (B, T) and l_s.dtype == torch.long
    torch.testing.assert_close(w_s, hy.gaussian.add_noise(w0, eps, s))
    low, high = s == 1, s == S
    # at s = 1 both branches are close to the data, at s = S both are far from it
    assert (l_s[low] == l0[low]).float().mean() > 0.9
    assert (l_s[high] == l0[high]).float().mean() < 0.5
    assert (w_s[low] - w0[low]).abs().mean() < 0.1
    assert (w_s[high] - w0[high]).abs().mean() > 1.0


def test_location_input_modes():
    g = torch.Generator().manual_seed(0)
    l0 = torch.randint(0, N, (3, T), generator=g)
    s = torch.tensor([1, 4, S])
    l_s = UniformJump(N, S).q_sample(l0, s, g)
    assert torch.equal(make_hybrid().location_input(l0, l_s, s), l_s)
    soft = make_hybrid(location_input="soft").location_input(l0, l_s, s)
    assert soft.shape == (3, T, N)
    torch.testing.assert_close(soft.sum(-1), torch.ones(3, T))
    torch.testing.assert_close(soft, UniformJump(N, S).marginal(l0, s))


def test_sample_categorical_frequencies_and_zero_probability():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0]) * 7.0  # unnormalised rows are fine
    draws = sample_categorical(probs.expand(100_000, 5), g)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq, probs / probs.sum(), atol=0.01, rtol=0)
    assert freq[1] == 0 and freq[4] == 0
    steps = sample_steps(10_000, S, g)
    assert int(steps.min()) == 1 and int(steps.max()) == S


def test_step_last_step_reweights_prediction():
    hy = make_hybrid(final_location="argmax")
    g = torch.Generator().manual_seed(0)
    B = 2
    logits = torch.randn(B, T, N, generator=g)
    out = DenoiserOutput(eps=torch.zeros(B, T), logits=logits)
    l1 = torch.randint(0, N, (B, T), generator=g)
    s = torch.ones(B, dtype=torch.long)
    w1 = torch.randn(B, T, generator=g)
    res = hy.step(out, w1, l1, s, g)
    Q1 = hy.discrete.Q[1]
    expected = Q1[:, l1].permute(1, 2, 0) * torch.softmax(logits, -1)  # Q_1[:, l_1] ⊙ softmax(z)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(res.l_prev_probs, expected)
    assert torch.equal(res.l_prev, expected.argmax(-1))
    # s = 1 Gaussian step is noiseless: w_0 = ŵ_0
    torch.testing.assert_close(res.w_prev, res.w0_hat, atol=1e-5, rtol=0)


class CountingModel(torch.nn.Module):
    """Records the location inputs it was called with; predicts l0 = 3 everywhere."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, w, loc, s):
        self.calls.append((loc.dim(), int(s[0]), self.training))
        logits = torch.full((*w.shape, N), -20.0)
        logits[..., 3] = 20.0
        return DenoiserOutput(eps=torch.zeros_like(w), logits=logits)


@pytest.mark.parametrize("mode,dim", [("sampled", 2), ("soft", 3)])
def test_sample_calls_network_once_per_step(mode, dim):
    hy = make_hybrid(location_input=mode)
    model = CountingModel().train()
    w0, l0 = hy.sample(model, 5, T, torch.Generator().manual_seed(0))
    assert [c[1] for c in model.calls] == list(range(S, 0, -1))
    assert all(c[0] == dim for c in model.calls)
    assert not any(c[2] for c in model.calls)  # eval mode during sampling
    assert model.training  # and restored afterwards
    assert w0.shape == (5, T) and l0.shape == (5, T)
    assert (l0 == 3).float().mean() > 0.95  # follows the network's confident prediction


@pytest.mark.parametrize("mode", ["sampled", "soft"])
def test_sample_with_denoiser_valid_and_reproducible(mode):
    hy = make_hybrid(location_input=mode)
    model = tiny_model()
    a = hy.sample(model, 4, T, torch.Generator().manual_seed(7))
    b = hy.sample(model, 4, T, torch.Generator().manual_seed(7))
    c = hy.sample(model, 4, T, torch.Generator().manual_seed(8))
    assert a.w0.shape == (4, T) and a.w0.dtype == torch.float32 and torch.isfinite(a.w0).all()
    assert a.l0.dtype == torch.long and int(a.l0.min()) >= 0 and int(a.l0.max()) < N
    assert torch.equal(a.w0, b.w0) and torch.equal(a.l0, b.l0)
    assert not torch.equal(a.w0, c.w0)


def test_sample_T336():
    hy = make_hybrid()
    w0, l0 = hy.sample(tiny_model(T=336), 2, 336, torch.Generator().manual_seed(0))
    assert w0.shape == (2, 336) and l0.shape == (2, 336) and torch.isfinite(w0).all()


class LocationEcho(torch.nn.Module):
    """ε̂ = the location ids it is given (as floats), logits that prefer station 3."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, w, loc, s):
        self.calls += 1
        ids = loc.argmax(-1) if loc.dim() == 3 else loc
        logits = torch.zeros((*w.shape, N))
        logits[..., 3] = 5.0
        return DenoiserOutput(eps=ids.float(), logits=logits)


def fix_locations(c):
    return lambda w, l, a, s: (w, torch.full_like(l, c), a)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_guided_output_mixes_free_and_given_predictions(gamma):
    hy = make_hybrid(condition_weight=gamma)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, T, generator=g)
    l_free = torch.randint(0, N, (3, T), generator=g)
    given = DenoiserOutput(eps=torch.full((3, T), 5.0), logits=torch.zeros(3, T, N))
    mixed, nxt, _ = hy._guided(LocationEcho(), given, w, l_free, None, None, torch.full((3,), 4), g,
                               None, False, None, gamma)
    torch.testing.assert_close(mixed.eps, l_free.float() + gamma * (5.0 - l_free.float()))
    assert mixed.logits is given.logits  # the given chain's locations are not guided
    assert nxt.shape == l_free.shape and nxt.dtype == torch.long


def test_condition_weight_zero_makes_traffic_ignore_the_given_locations():
    def run(gamma, c, guide=True):
        model = LocationEcho()
        out = make_hybrid(condition_weight=gamma).sample(model, 4, T, torch.Generator().manual_seed(1),
                                                         impute=fix_locations(c), guide=guide)
        return out, model.calls

    (a, calls), (b, _) = run(0.0, 2), run(0.0, 9)
    assert torch.equal(a.w0, b.w0) and calls == 2 * S  # one more call per step: the free chain
    assert (a.l0 == 2).all() and (b.l0 == 9).all()  # the given locations are still kept
    (c1, calls1), (c2, _) = run(1.0, 2), run(1.0, 9)
    assert calls1 == S and not torch.equal(c1.w0, c2.w0)  # γ = 1: the plain conditional, one call
    half, _ = run(0.5, 2)
    assert not torch.equal(half.w0, a.w0) and not torch.equal(half.w0, c1.w0)
    unguided, calls_u = run(0.0, 2, guide=False)  # no location condition: nothing to weight
    assert calls_u == S and torch.equal(unguided.w0, c1.w0)


def test_condition_weight_must_not_be_negative():
    with pytest.raises(InputError, match="condition_weight"):
        HybridConfig(condition_weight=-0.5)
