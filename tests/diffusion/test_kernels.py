"""Fused Numba kernels and the paths built on them, against PyTorch and brute-force oracles."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F

from mstdiff.diffusion import kernels
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.errors import InputError
from mstdiff.kg.graph import synthetic_knn_rate


def torch_draw(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Oracle: inverse CDF in float64 with ``searchsorted(right=True)``."""
    cdf = w.double().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)


# ---------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_draw_product_equals_the_inverse_cdf_of_the_gathered_product(dtype):
    rng = np.random.default_rng(0)
    a = rng.random((7, 50)).astype(dtype)
    b = rng.random((5, 50)).astype(dtype)
    a[a < 0.3] = 0.0  # zero weights
    ia, ib = rng.integers(0, 7, 4000), rng.integers(0, 5, 4000)
    u = rng.random(4000)
    got = kernels.draw_product(a, ia, b, ib, u)
    want = torch_draw(torch.from_numpy(a[ia] * b[ib]), torch.from_numpy(u)).numpy()
    agree = (got == want).mean()
    assert agree == 1.0 if dtype == np.float64 else agree > 0.995
    assert np.all(a[ia, got] * b[ib, got] > 0)  # a state of weight 0 is never drawn


def test_draw_product_never_draws_a_zero_state_at_the_end_of_the_scan():
    w = np.zeros((1, 10))
    w[0, 3] = 1.0  # all the mass on state 3, states after it have weight 0
    for u in (0.0, 0.5, np.nextafter(1.0, 0.0)):
        got = kernels.draw_product(w, np.zeros(1, dtype=np.int64), np.ones((1, 10)),
                                   np.zeros(1, dtype=np.int64), np.array([u]))
        assert got[0] == 3


def test_draw_product_follows_the_law():
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 6)), rng.random((1, 6))
    m = 60000
    draws = kernels.draw_product(a, np.zeros(m, dtype=np.int64), b, np.zeros(m, dtype=np.int64),
                                 rng.random(m))
    p = (a * b)[0] / (a * b).sum()
    counts = np.bincount(draws, minlength=6)
    assert scipy.stats.chisquare(counts, m * p).pvalue > 1e-4


def test_kl_rows_value_and_gradient_equal_autograd_of_the_formula():
    rng = np.random.default_rng(2)
    m, n = 30, 40
    b = rng.dirichlet(np.ones(n), size=m)
    c = rng.random((4, n))
    a = rng.dirichlet(np.ones(n) * 0.3, size=3)
    a[0] = 0.0
    a[0, 5] = 1.0  # one-hot row (s − 1 = 0): q is one-hot too
    ic, ia = rng.integers(0, 4, m), rng.integers(0, 3, m)
    tiny = np.finfo(np.float64).tiny
    log_a = np.log(np.maximum(a, tiny))
    grad = np.empty_like(b)
    kl = kernels.kl_rows(b.copy(), c, ic, a, ia, log_a, out_grad=grad)

    bt = torch.tensor(b, requires_grad=True)
    ct, at = torch.tensor(c[ic]), torch.tensor(a[ia])
    q = ct * at / (ct * at).sum(-1, keepdim=True)
    p = ct * bt / (ct * bt).sum(-1, keepdim=True)
    ref = (torch.special.xlogy(q, q) - q * p.log()).sum(-1)
    (g,) = torch.autograd.grad(ref.sum(), bt)
    np.testing.assert_allclose(kl, ref.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad, g.numpy(), rtol=1e-9, atol=1e-9)


def test_softmax_ce_backward_equals_autograd():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, 15, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 15, generator=g, dtype=torch.float64)  # f(p) = Σ w p per row
    target = torch.randint(0, 15, (20,), generator=g)
    scale, g_ce = torch.rand(20, generator=g, dtype=torch.float64), torch.rand(20, generator=g,
                                                                               dtype=torch.float64)
    p = torch.softmax(z, -1)
    loss = (scale * (w * p).sum(-1)).sum() + (g_ce * F.cross_entropy(z, target, reduction="none")).sum()
    (ref,) = torch.autograd.grad(loss, z)
    out = kernels.softmax_ce_backward(p.detach().numpy(), w.numpy().copy(), scale.numpy(), target.numpy(),
                                      g_ce.numpy(), out=np.empty((20, 15)))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------- losses
def make(n: int = 80, method: str = "cheb", dtype: torch.dtype = torch.float32, steps: int = 10):
    return GraphTransition(synthetic_knn_rate(n, k=5, seed=1), num_steps=steps, method=method, dtype=dtype)


@pytest.mark.parametrize("method", ["eig", "cheb"])
def test_fused_location_losses_equal_the_pytorch_path_with_gradients(method):
    gt = make(method=method, dtype=torch.float64)
    n = gt.num_states
    g = torch.Generator().manual_seed(4)
    l0 = torch.randint(0, n, (6, 9), generator=g)
    s = torch.tensor([1, 2, 5, 10, 3, 1])  # s = 1 (one-hot posterior) and s = S included
    l_s = gt.q_sample(l0, s, g)
    z = (3 * torch.randn(6, 9, n, generator=g, dtype=torch.float64)).requires_grad_()
    wk, wc = torch.rand(6, 9, generator=g, dtype=torch.float64), torch.rand(6, 9, generator=g,
                                                                            dtype=torch.float64)
    kl, ce = gt.location_losses(l0, z, l_s, s)
    (gf,) = torch.autograd.grad((wk * kl).sum() + (wc * ce).sum(), z)
    kl_ref = gt.posterior_kl(l0, z, l_s, s)
    ce_ref = F.cross_entropy(z.reshape(-1, n), l0.reshape(-1), reduction="none").reshape(6, 9)
    (gr,) = torch.autograd.grad((wk * kl_ref).sum() + (wc * ce_ref).sum(), z)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ce, ce_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gf, gr, rtol=1e-7, atol=1e-10)
    # only one of the two losses used: the other's gradient is absent, not an error
    (g_kl,) = torch.autograd.grad(gt.location_losses(l0, z, l_s, s)[0].sum(), z)
    (g_kl_ref,) = torch.autograd.grad(gt.posterior_kl(l0, z, l_s, s).sum(), z)
    torch.testing.assert_close(g_kl, g_kl_ref, rtol=1e-7, atol=1e-10)


def test_fused_cross_entropy_is_exact_for_extreme_logits():
    gt = make(n=30)
    z = torch.zeros(1, 2, 30)
    z[0, :, 0] = 200.0  # p[target] underflows to 0 in float32
    l0 = torch.tensor([[5, 0]])
    _, ce = gt.location_losses(l0, z, l0, torch.tensor([3]))
    ref = F.cross_entropy(z[0].double(), l0[0], reduction="none")
    torch.testing.assert_close(ce[0].double(), ref, rtol=1e-6, atol=1e-5)


def test_training_loss_takes_the_fused_path_with_the_same_value():
    from mstdiff.models.losses import joint_loss

    gt = make()
    n = gt.num_states
    g = torch.Generator().manual_seed(5)
    l0 = torch.randint(0, n, (4, 8), generator=g)
    s = torch.tensor([1, 4, 7, 10])
    l_s = gt.q_sample(l0, s, g)

    class Out:
        eps = torch.zeros(4, 8)
        logits = torch.randn(4, 8, n, generator=g)

    eps = torch.randn(4, 8, generator=g)
    fused = joint_loss(Out(), eps, None, l0, l_s, s, gt)[1]
    gt.fused = False
    plain = joint_loss(Out(), eps, None, l0, l_s, s, gt)[1]
    for k in plain:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- sampler
def dense_q(gt: GraphTransition, t: float) -> np.ndarray:
    n, k = gt.num_states, np.exp(-gt.eps * t)
    return k * scipy.linalg.expm(t * gt.rate.toarray()) + (1 - k) / n


def test_two_stage_law_is_the_reverse_step_law():
    """Σ_x P(x | l_s) P(j | x, l_s) with the two stages' laws = p_θ(j | l_s) (brute force, expm)."""
    gt = make(n=25, method="eig", dtype=torch.float64, steps=6)
    rng = np.random.default_rng(6)
    ab = gt.alpha_bar.double().numpy()
    for s in (1, 2, 6):
        qbar_s, qbar_prev = dense_q(gt, ab[s]), dense_q(gt, ab[s - 1])
        q_step = dense_q(gt, ab[s] - ab[s - 1])
        pi = rng.dirichlet(np.ones(25))
        ls = 7
        p1 = pi * qbar_s[ls]
        p1 /= p1.sum()
        p2 = qbar_prev * q_step[:, ls][None, :]
        p2 /= p2.sum(1, keepdims=True)
        law = p1 @ p2
        want = gt.reverse_probs(torch.log(torch.tensor(pi))[None, None], torch.tensor([[ls]]),
                                torch.tensor([s]))[0, 0].numpy()
        np.testing.assert_allclose(law, want, atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
def test_sample_reverse_draws_from_reverse_probs(fused):
    """Many tokens with the same (logits, l_s): their histogram is the reverse-step law."""
    gt = make(n=12, method="cheb", steps=5)
    gt.fused = fused
    g = torch.Generator().manual_seed(7)
    m = 30000
    z = torch.randn(12, generator=g).expand(1, m, 12).contiguous()
    for s, ls in ((5, 3), (2, 8), (1, 4)):
        l_s = torch.full((1, m), ls)
        x = gt.sample_reverse(z, l_s, torch.tensor([s]), g)
        p = gt.reverse_probs(z[:, :1], l_s[:, :1], torch.tensor([s]))[0, 0].double().numpy()
        counts = np.bincount(x.reshape(-1).numpy(), minlength=12)
        keep = p > 0
        assert counts[~keep].sum() == 0
        exp = m * p[keep] / p[keep].sum()
        assert scipy.stats.chisquare(counts[keep], exp).pvalue > 1e-4, (s, counts, exp)


def test_sample_reverse_with_a_row_cache_draws_the_same_and_prunes_old_steps():
    gt = make(n=40, steps=8)
    g = torch.Generator().manual_seed(8)
    z = torch.randn(5, 6, 40, generator=g)
    l_plain = l_cached = torch.randint(0, 40, (5, 6), generator=g)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    cache = gt.row_cache()
    for s in range(8, 0, -1):
        st = torch.tensor([s])
        l_plain = gt.sample_reverse(z, l_plain, st, g1)
        l_cached = gt.sample_reverse(z, l_cached, st, g2, cache)
        assert torch.equal(l_plain, l_cached)
        keys = cache.keys["bar"]
        assert int((keys // 40).max()) <= s - 1 or s == 1  # rows of steps above s − 1 are gone
        assert torch.equal(keys, torch.sort(keys).values)


def test_fused_and_pytorch_sampler_agree_with_the_same_seed():
    gt = make(n=50)
    g = torch.Generator().manual_seed(10)
    z = torch.randn(3, 7, 50, generator=g)
    l_s = torch.randint(0, 50, (3, 7), generator=g)
    out = {}
    for fused in (True, False):
        gt.fused = fused
        out[fused] = gt.sample_reverse(z, l_s, torch.tensor([6]), torch.Generator().manual_seed(11))
    assert (out[True] == out[False]).float().mean() > 0.95  # float32 sums may flip a boundary draw


def test_hybrid_uses_the_two_stage_draw_unless_probabilities_are_needed():
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion

    gt = make(n=20, steps=4)
    gauss = GaussianDiffusion(GaussianConfig(num_steps=4))

    class Out:
        eps = torch.zeros(2, 8)
        logits = torch.randn(2, 8, 20)

    l_s, w = torch.randint(0, 20, (2, 8)), torch.randn(2, 8)
    for cfg, built in ((HybridConfig(), False), (HybridConfig(location_draw="dense"), True),
                       (HybridConfig(location_input="soft"), True)):
        step = HybridDiffusion(gauss, gt, cfg).step(Out(), w, l_s, torch.tensor([3, 3]), None)
        assert (step.l_prev_probs is not None) == built
    last = HybridDiffusion(gauss, gt, HybridConfig(final_location="argmax")).step(
        Out(), w, l_s, torch.tensor([1, 1]), None)
    assert last.l_prev_probs is not None and torch.equal(last.l_prev, last.l_prev_probs.argmax(-1))


def test_fused_losses_take_bfloat16_logits_and_return_float32_losses():
    """Mixed precision (train.amp): the losses stay in the process's float32; the gradient comes
    back in the logits' dtype."""
    gt = make(n=30)
    g = torch.Generator().manual_seed(12)
    l0 = torch.randint(0, 30, (2, 5), generator=g)
    s = torch.tensor([2, 7])
    l_s = gt.q_sample(l0, s, g)
    z = torch.randn(2, 5, 30, generator=g)
    zb = z.bfloat16().requires_grad_()
    kl, ce = gt.location_losses(l0, zb, l_s, s)
    assert kl.dtype == ce.dtype == torch.float32
    (grad,) = torch.autograd.grad(kl.sum() + ce.sum(), zb)
    assert grad.dtype == torch.bfloat16
    kl32, ce32 = gt.location_losses(l0, zb.detach().float(), l_s, s)
    torch.testing.assert_close(kl, kl32)
    torch.testing.assert_close(ce, ce32)


@pytest.mark.parametrize("draw", ["two_stage", "dense"])
def test_full_sampling_run_on_the_graph_process(draw):
    """Algorithm 2 with either draw: reproducible for a seed, valid states, and a confident network's
    prediction is followed (the last step reweights it by Q_1[:, l_1] only)."""
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion

    gt = make(n=30, steps=6)
    hy = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=6)), gt, HybridConfig(location_draw=draw))

    class Out:
        def __init__(self, w: torch.Tensor) -> None:
            self.eps = torch.zeros_like(w)
            self.logits = torch.full((*w.shape, 30), -20.0)
            self.logits[..., 7] = 20.0

    def model(w: torch.Tensor, loc: torch.Tensor, s: torch.Tensor) -> Out:
        return Out(w)

    a = hy.sample(model, 5, 8, torch.Generator().manual_seed(3))
    b = hy.sample(model, 5, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a.l0, b.l0) and torch.equal(a.w0, b.w0)
    assert (a.l0 == 7).float().mean() > 0.95
    with pytest.raises(InputError, match="location_draw"):
        HybridConfig(location_draw="gibbs")


def test_row_cache_with_mixed_steps_in_a_batch():
    gt = make(n=40, steps=8)
    g = torch.Generator().manual_seed(13)
    z = torch.randn(4, 6, 40, generator=g)
    s0 = torch.tensor([8, 5, 3, 8])
    l_plain = l_cached = torch.randint(0, 40, (4, 6), generator=g)
    g1, g2 = torch.Generator().manual_seed(14), torch.Generator().manual_seed(14)
    cache = gt.row_cache()
    for k in range(3):  # every sample one step down per call, each from its own step
        st = s0 - k
        l_plain = gt.sample_reverse(z, l_plain, st, g1)
        l_cached = gt.sample_reverse(z, l_cached, st, g2, cache)
        assert torch.equal(l_plain, l_cached)
