import pytest
import torch
import torch.nn.functional as F

from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.models.denoiser import DenoiserConfig, DenoiserOutput, MSTDiffDenoiser
from mstdiff.models.losses import LossWeights, joint_loss, location_kl, training_loss
from mstdiff.models.vqvae import VQVAE, VQVAEConfig
from mstdiff.models.wavelet import dwt
from standins import UniformJump

N, S, T = 10, 6, 48


def setup(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    proc = UniformJump(N, S)
    l0 = torch.randint(0, N, (B, T), generator=g)
    s = torch.tensor([1, 2, 4, S][:B] + [3] * max(0, B - 4))
    l_s = proc.q_sample(l0, s, g)
    return g, proc, l0, s, l_s


def test_perfect_prediction_gives_zero_kl_and_ce():
    g, proc, l0, s, l_s = setup()
    logits = 40.0 * F.one_hot(l0, N).float()
    eps = torch.randn(4, T, generator=g)
    out = DenoiserOutput(eps=eps.clone(), logits=logits)
    total, parts = joint_loss(out, eps, proc.posterior(l0, l_s, s), l0, l_s, s, proc)
    assert float(parts["traffic_mse"]) == 0.0
    assert float(parts["location_kl"]) < 1e-5 and float(parts["location_ce"]) < 1e-5
    assert float(total) < 1e-5


def test_kl_is_positive_and_matches_manual_formula():
    g, proc, l0, s, l_s = setup()
    logits = torch.randn(4, T, N, generator=g)
    q = proc.posterior(l0, l_s, s)
    p = proc.reverse_probs(logits, l_s, s)
    manual = (q * (q.clamp_min(1e-30).log() - p.log())).sum(-1)  # (B, T)
    manual[0] = -p[0].gather(-1, l0[0].unsqueeze(-1)).squeeze(-1).log()  # sample 0 has s = 1: NLL
    torch.testing.assert_close(location_kl(q, p, l0, s), manual.mean())
    assert float(manual[1:].min()) >= -1e-6
    # at s = 1 the true posterior is the one-hot of l0, so KL and NLL coincide
    assert torch.allclose(q[0], F.one_hot(l0[0], N).float())


def test_weights_combine_parts_and_gradients_reach_logits():
    g, proc, l0, s, l_s = setup()
    logits = torch.randn(4, T, N, generator=g, requires_grad=True)
    eps_hat = torch.randn(4, T, generator=g, requires_grad=True)
    eps = torch.randn(4, T, generator=g)
    out = DenoiserOutput(eps=eps_hat, logits=logits)
    total, parts = joint_loss(out, eps, None, l0, l_s, s, proc, weights=LossWeights(2.0, 3.0, 0.5))
    expected = 2.0 * parts["traffic_mse"] + 3.0 * parts["location_kl"] + 0.5 * parts["location_ce"]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(parts["traffic_mse"], F.mse_loss(eps_hat, eps).detach())
    total2, _ = joint_loss(out, eps, None, l0, l_s, s, proc, weights=(0.0, 1.0, 0.0))
    total2.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert eps_hat.grad is None or eps_hat.grad.abs().sum() == 0  # λ1 = 0


def make_model(seed=0):
    gen = torch.Generator().manual_seed(seed)
    vq = VQVAE(VQVAEConfig(hidden=8, code_dim=4, num_codes=8, num_res_blocks=1), generator=gen)
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=32, n_heads=2, layers_per_stage=1, dropout=0.0)
    return MSTDiffDenoiser(cfg, vq, generator=gen)


@pytest.mark.parametrize("mode", ["sampled", "soft"])
def test_tiny_overfit_decreases_joint_loss(mode):
    gen = torch.Generator().manual_seed(0)
    model = make_model()
    hybrid = HybridDiffusion(
        GaussianDiffusion(GaussianConfig(num_steps=S)), UniformJump(N, S), HybridConfig(mode)
    )
    t = torch.arange(T)
    m = torch.sin(2 * torch.pi * t / T + torch.arange(8).unsqueeze(1)) + 0.1 * torch.randn(
        8, T, generator=gen
    )
    w0 = dwt(m)
    l0 = (torch.arange(8).unsqueeze(1) + t // 12) % N  # (8, T) simple routines
    # fixed noise draws so the objective is the same function at every step
    s = hybrid.sample_steps(8, gen)
    w_s, eps, l_s = hybrid.noise(w0, l0, s, gen)
    loc = hybrid.location_input(l0, l_s, s)
    post = hybrid.discrete.posterior(l0, l_s, s)
    vq_before = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    opt = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(40):
        total, parts = joint_loss(model(w_s, loc, s), eps, post, l0, l_s, s, hybrid.discrete)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, model.vqvae.state_dict()[k]) for k, v in vq_before.items())
    # and the one-call helper (Algorithm 1) runs end to end
    total, parts = training_loss(model, hybrid, w0, l0, gen)
    assert torch.isfinite(total) and set(parts) == {"traffic_mse", "location_kl", "location_ce", "total"}


def test_fast_kl_path_equals_explicit_path():
    """joint_loss with a process that has posterior_kl gives the explicit KL (incl. s = 1)."""
    from mstdiff.diffusion.discrete import GraphTransition
    from mstdiff.kg.graph import synthetic_knn_rate
    from mstdiff.models.losses import joint_loss

    gt = GraphTransition(synthetic_knn_rate(40, k=4, seed=1), num_steps=6, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    l0 = torch.randint(0, 40, (5, 8), generator=g)
    s = torch.tensor([1, 2, 3, 6, 1])
    l_s = gt.q_sample(l0, s, g)

    class Out:
        eps = torch.zeros(5, 8)
        logits = torch.randn(5, 8, 40, generator=g, dtype=torch.float64)

    fast, parts_fast = joint_loss(Out, torch.zeros(5, 8), None, l0, l_s, s, gt)
    slow, parts_slow = joint_loss(Out, torch.zeros(5, 8), gt.posterior(l0, l_s, s), l0, l_s, s, gt)
    assert torch.allclose(parts_fast["location_kl"], parts_slow["location_kl"], rtol=1e-6, atol=1e-8)
    no_kl, parts = joint_loss(Out, torch.zeros(5, 8), None, l0, l_s, s, gt, weights=(1.0, 0.0, 0.1))
    assert parts["location_kl"].item() == 0.0 and torch.allclose(no_kl, 0.1 * parts["location_ce"])


def test_condition_masks_rates_and_tasks():
    from mstdiff.models.losses import condition_masks

    g = torch.Generator().manual_seed(0)
    m_l, m_a = condition_masks((3000, 12), 0.0, g, "cpu")
    assert not m_l.any() and not m_a.any()
    m_l, m_a = condition_masks((3000, 12), 0.5, g, "cpu")
    cond = m_l.any(1) | m_a.any(1)
    assert abs(cond.float().mean().item() - 0.5) < 0.04
    only_l = m_l.all(1) & ~m_a.any(1)  # trajectories given
    only_a = m_a.all(1) & ~m_l.any(1)  # traffic given
    assert abs(only_l.float().mean().item() - 0.5 / 3) < 0.03
    assert abs(only_a.float().mean().item() - 0.5 / 3) < 0.03
    fill = cond & ~only_l & ~only_a
    assert torch.equal(m_l[fill], m_a[fill]) and fill.any()  # the same slots of both


def test_given_location_tokens_carry_no_location_loss():
    """With every location given (condition_rate 1, task 0 forced), the location part is zero."""
    from mstdiff.diffusion.absorbing import AbsorbingProcess
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
    from mstdiff.diffusion.hybrid import HybridDiffusion
    from mstdiff.models import losses

    S, N = 6, 9
    hybrid = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), AbsorbingProcess(N, S))

    class Net(torch.nn.Module):
        def forward(self, w, loc, s, activity=None):
            from types import SimpleNamespace

            return SimpleNamespace(eps=torch.zeros_like(w), logits=torch.zeros(*w.shape, N))

    w0, l0 = torch.randn(4, 8), torch.randint(0, N, (4, 8))
    orig = losses.condition_masks
    try:
        losses.condition_masks = lambda shape, rate, g, d: (torch.ones(shape, dtype=torch.bool),) * 2
        _, parts = losses.training_loss(Net(), hybrid, w0, l0, torch.Generator().manual_seed(0),
                                        condition_rate=1.0)
    finally:
        losses.condition_masks = orig
    assert float(parts["location_kl"]) == 0.0
    _, free = losses.training_loss(Net(), hybrid, w0, l0, torch.Generator().manual_seed(0))
    assert float(free["location_kl"]) > 0.0
