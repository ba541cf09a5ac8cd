"""Absorbing process: what the shared template (test_processes.py) does not cover — the sampler."""

from __future__ import annotations

import pytest
import torch

from mstdiff.diffusion.absorbing import AbsorbingProcess, absorbing_schedule
from mstdiff.errors import InputError


def test_schedule_ends_masked_and_unmask_probability_is_one_over_s_for_linear():
    p = AbsorbingProcess(5, 10)
    assert float(p.keep_bar[0]) == 1.0 and float(p.keep_bar[-1]) == 0.0
    torch.testing.assert_close(p.unmask[1:], 1.0 / torch.arange(1, 11).float())
    assert (absorbing_schedule(10, "cosine")[1:-1] > absorbing_schedule(10, "linear")[1:-1]).all()
    with pytest.raises(InputError):
        absorbing_schedule(10, "sqrt")


@pytest.mark.parametrize("order", ["random", "confidence"])
def test_sampler_carries_unmasked_tokens_over_and_unmasks_everything_at_s1(order):
    g = torch.Generator().manual_seed(0)
    p = AbsorbingProcess(6, 8)
    B, T = 32, 12
    l0 = torch.randint(0, 6, (B, T), generator=g)
    ls = p.q_sample(l0, torch.full((B,), 4), g)
    logits = torch.randn(B, T, 6, generator=g)
    nxt = p.sample_reverse(logits, ls, torch.full((B,), 4), g, order=order)
    kept = ls != p.mask_id
    assert torch.equal(nxt[kept], ls[kept])  # carry-over
    assert ((nxt != p.mask_id) | (ls == p.mask_id)).all()
    last = p.sample_reverse(logits, ls, torch.full((B,), 1), g, order=order)
    assert (last != p.mask_id).all() and (last < 6).all()


def test_confidence_order_unmasks_the_binomial_count_most_confident_first():
    g = torch.Generator().manual_seed(1)
    p = AbsorbingProcess(4, 10)
    B, T = 2000, 10
    ls = torch.full((B, T), p.mask_id)
    # slot 0 is certain, the others are uniform: slot 0 must be unmasked first whenever any is
    logits = torch.zeros(B, T, 4)
    logits[:, 0, 2] = 30.0
    s = torch.full((B,), 5)
    out = p.sample_reverse(logits, ls, s, g, order="confidence")
    n_unmasked = (out != p.mask_id).sum(-1).float()
    assert abs(float(n_unmasked.mean()) - T * float(p.unmask[5])) < 0.1  # Binomial(T, u_s) mean
    some = n_unmasked > 0
    assert (out[some, 0] == 2).all()


def test_hybrid_sampling_with_the_absorbing_process_returns_stations_only():
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
    from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion

    N, T, S = 9, 8, 6
    p = AbsorbingProcess(N, S)

    class Net:
        def __call__(self, w, loc, s):
            class Out:
                eps = torch.zeros_like(w)
                logits = torch.zeros(w.shape[0], T, N)
            assert loc.max() <= N  # ids with the mask
            return Out()

    for cfg in (HybridConfig(), HybridConfig(unmask_order="confidence", location_temperature=0.5),
                HybridConfig(location_input="soft")):
        h = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), p, cfg)
        out = h.sample(Net(), 5, T, torch.Generator().manual_seed(0))
        assert out.l0.shape == (5, T) and (out.l0 < N).all() and (out.l0 >= 0).all()


def test_step_for_masked_is_the_binomial_mode_brute_force():
    from scipy.stats import binom

    for S, T, schedule in ((200, 48, "linear"), (50, 7, "cosine"), (3, 10, "linear")):
        p = AbsorbingProcess(4, S, schedule=schedule)
        keep = p.keep_bar.double().numpy()
        j = torch.arange(1, T + 1)
        got = p.step_for_masked(j, T)
        for jj, s in zip(j.tolist(), got.tolist(), strict=True):
            like = [binom.pmf(jj, T, 1.0 - keep[k]) for k in range(1, S + 1)]
            assert 1 <= s <= S and like[s - 1] == pytest.approx(max(like), rel=1e-9)
        assert int(got[-1]) == S  # all masked: the last step
    with pytest.raises(ValueError):
        AbsorbingProcess(4, 10).step_for_masked(torch.tensor([0]), 5)


def test_plan_single_picks_one_masked_slot_uniformly():
    p = AbsorbingProcess(5, 20)
    B, T = 6000, 4
    ls = torch.full((B, T), p.mask_id)
    ls[:, 1] = 2  # slot 1 is drawn already in every sample
    ls[-1] = 3  # the last sample has nothing masked
    rows, s = p.plan_single(ls, torch.Generator().manual_seed(0))
    assert rows.numel() == B - 1 and bool((rows[1:] > rows[:-1]).all())
    sample, slot = rows // T, rows % T
    assert torch.equal(sample, torch.arange(B - 1))
    assert (ls.reshape(-1)[rows] == p.mask_id).all()  # never an unmasked slot
    share = torch.bincount(slot, minlength=T).float() / (B - 1)
    assert share[1] == 0 and torch.allclose(share[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.025)
    assert (s[:-1] == p.step_for_masked(torch.tensor([3]), T)).all() and int(s[-1]) == 1


class ExactConditionals(torch.nn.Module):
    """A network that knows a joint law ``p`` over N^T days: the logits of every masked token are
    the log of its conditional given the unmasked ones (brute force over all days)."""

    supports_rows = True

    def __init__(self, joint: torch.Tensor, N: int, T: int):
        super().__init__()
        self.joint, self.N, self.T = joint, N, T
        self.days = torch.cartesian_prod(*[torch.arange(N)] * T).reshape(-1, T)  # (N^T, T)
        self.config = type("Cfg", (), {"use_traffic": False})()
        self.calls = 0

    def forward(self, w, loc, s, rows=None):
        self.calls += 1
        B, T = loc.shape
        fits = ((loc[:, None, :] == self.days[None]) | (loc[:, None, :] == self.N)).all(-1)  # (B, N^T)
        weight = fits.double() * self.joint[None]
        cond = torch.stack([torch.stack([(weight * (self.days[None, :, t] == x)).sum(-1)
                                         for x in range(self.N)], -1) for t in range(T)], 1)  # (B, T, N)
        logits = (cond / cond.sum(-1, keepdim=True)).clamp_min(1e-12).log().float()
        out = logits.reshape(B * T, self.N)[rows] if rows is not None else logits
        return type("Out", (), {"eps": None, "logits": out})()


@pytest.mark.parametrize("order,S,exact", [("single", 4, True), ("random", 1, False)])
def test_single_order_draws_the_networks_joint_exactly(order, S, exact):
    """With exact conditionals, one token per call reproduces the joint law; the random order at
    S = 1 (every token from one call) gives the product of the marginals instead (the test can fail)."""
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
    from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion

    N, T, n = 2, 3, 20000
    g = torch.Generator().manual_seed(3)
    joint = torch.tensor([0.30, 0.01, 0.01, 0.18, 0.02, 0.18, 0.01, 0.29], dtype=torch.float64)  # correlated
    net = ExactConditionals(joint, N, T)
    h = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), AbsorbingProcess(N, S),
                        HybridConfig(unmask_order=order))
    ticks = []
    out = h.sample(net, n, T, g, on_step=lambda: ticks.append(1))
    code = (out.l0 * torch.tensor([4, 2, 1])).sum(-1)
    freq = torch.bincount(code, minlength=2 ** T).double() / n
    tv = 0.5 * float((freq - joint).abs().sum())
    assert (tv < 0.02) if exact else (tv > 0.2)
    if order == "single":
        assert net.calls == T and len(ticks) == T == h.sampling_calls(T)


def test_single_order_refuses_what_it_cannot_run():
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
    from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion

    N, T, S = 2, 3, 4
    net = ExactConditionals(torch.full((8,), 1 / 8, dtype=torch.float64), N, T)
    h = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), AbsorbingProcess(N, S),
                        HybridConfig(unmask_order="single"))
    net.config.use_traffic = True
    with pytest.raises(InputError, match="denoises traffic"):
        h.sample(net, 2, T, torch.Generator().manual_seed(0))
    net.config.use_traffic = False
    with pytest.raises(InputError, match="conditional"):
        h.sample(net, 2, T, torch.Generator().manual_seed(0), impute=lambda w, l, a, s: (w, l, a))
    with pytest.raises(InputError, match="chooses its own steps"):
        AbsorbingProcess(N, S).plan_reverse(torch.full((2, T), N), torch.full((2,), 2), order="single")
