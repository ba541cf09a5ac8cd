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
