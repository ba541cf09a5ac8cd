"""Logits of some tokens only (``rows=``): the fast path equals the rows of the dense one (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mstdiff.diffusion.absorbing import AbsorbingProcess
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.losses import training_loss

N, T, S = 40, 16, 6


def net(*, use_traffic: bool = True, **kw) -> MSTDiffDenoiser:
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=16, n_heads=2, layers_per_stage=1,
                         use_vqvae=False, mask_token=True, dropout=0.0, use_traffic=use_traffic, **kw)
    m = MSTDiffDenoiser(cfg, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    m.set_station_coordinates_(31 + 0.2 * rng.random(N), 121 + 0.2 * rng.random(N))
    return m.eval()


class Dense(torch.nn.Module):
    """The same network seen through a wrapper that does not take ``rows=`` (the dense path)."""

    def __init__(self, inner: MSTDiffDenoiser) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def noisy_ids(B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    l0 = torch.randint(0, N, (B, T), generator=g)
    l_s = torch.where(torch.rand(B, T, generator=g) < 0.5, l0, torch.full_like(l0, N))
    return l0, l_s


@pytest.mark.parametrize("head", ["dot", "cosine"])
@pytest.mark.parametrize(("near_k", "move_decay"), [(0, False), (4, False), (4, True), (0, True)])
def test_logits_of_some_rows_equal_the_dense_rows(head, near_k, move_decay):
    m = net(location_head=head, near_k=near_k, move_decay=move_decay, copy_nearest=move_decay)
    if move_decay:
        with torch.no_grad():
            m.copy.decay_gap.weight.normal_(generator=torch.Generator().manual_seed(2))
    _, l_s = noisy_ids(5, 1)
    w, s = torch.randn(5, T), torch.tensor([1, 2, 3, 5, 6])
    rows = (l_s.reshape(-1) == N).nonzero().squeeze(-1)
    with torch.no_grad():
        dense = m(w, l_s, s).logits.reshape(5 * T, N)
        some = m(w, l_s, s, rows=rows).logits
        none = m(w, l_s, s, rows=rows[:0]).logits
    assert some.shape == (rows.numel(), N) and none.shape == (0, N)
    torch.testing.assert_close(some, dense[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_traffic", [True, False])
def test_the_loss_on_masked_rows_equals_the_dense_loss_and_its_gradients(use_traffic):
    m = net(use_traffic=use_traffic).train()
    m.config.dropout = 0.0
    hybrid = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), AbsorbingProcess(N, S))
    l0, _ = noisy_ids(6, 2)
    w0 = torch.randn(6, T)
    grads = []
    for model in (m, Dense(m)):
        m.zero_grad()
        loss, parts = training_loss(model, hybrid, w0, l0, torch.Generator().manual_seed(3))
        loss.backward()
        grads.append(({k: float(v) for k, v in parts.items()},
                      [p.grad.clone() if p.grad is not None else None for p in m.parameters()]))
    (pa, ga), (pb, gb) = grads
    assert pa == pytest.approx(pb, rel=1e-5, abs=1e-6)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("order", ["random", "confidence"])
def test_planned_sampling_equals_dense_sampling_without_traffic(order):
    m = net(use_traffic=False)
    hybrid = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=S)), AbsorbingProcess(N, S),
                             HybridConfig(unmask_order=order, location_temperature=0.9))
    calls = {"n": 0}

    class Counting(Dense):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            return super().forward(*args, **kwargs)

    fast = hybrid.sample(m, 7, T, torch.Generator().manual_seed(4))
    slow = hybrid.sample(Counting(m), 7, T, torch.Generator().manual_seed(4))
    torch.testing.assert_close(fast.l0, slow.l0, rtol=0, atol=0)
    assert calls["n"] == S and (fast.l0 < N).all()  # every token unmasked in the end


def test_a_step_without_anything_to_unmask_skips_the_network():
    m = net(use_traffic=False)
    hybrid = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=30)), AbsorbingProcess(N, 30))
    seen = []
    orig = m.forward

    def spy(*args, **kwargs):
        seen.append(int(kwargs["rows"].numel()))
        return orig(*args, **kwargs)

    m.forward = spy  # type: ignore[method-assign]
    out = hybrid.sample(m, 1, T, torch.Generator().manual_seed(0))
    assert 0 < len(seen) < 30 and all(k > 0 for k in seen)  # T = 16 tokens over 30 steps
    assert sum(seen) == T and (out.l0 < N).all()  # each token scored once, when it unmasks


def test_station_prior_makes_the_table_head_start_at_the_visit_shares():
    m = net(copy_head=False)
    with torch.no_grad():
        m.logits_head.weight.zero_()  # the biases alone decide the table head
    counts = np.random.default_rng(0).integers(0, 50, N)
    counts[:3] = 0
    m.init_station_prior_(counts, pseudo_count=0.5)
    l0, l_s = noisy_ids(2, 5)
    with torch.no_grad():
        p = torch.softmax(m(torch.zeros(2, T), l_s, torch.tensor([3, 4])).logits, -1)
    want = (counts + 0.5) / (counts.sum() + 0.5 * N)
    torch.testing.assert_close(p[0, 0].double(), torch.from_numpy(want), rtol=1e-4, atol=1e-7)
    with pytest.raises(Exception, match="station counts"):
        m.init_station_prior_(counts[:-1])
