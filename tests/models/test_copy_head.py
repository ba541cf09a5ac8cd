"""The pointer/copy head: a proper distribution that can copy, move nearby, or fall back to the table."""

from __future__ import annotations

import math

import numpy as np
import torch

from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser

N, T = 40, 16


def denoiser(**kw) -> MSTDiffDenoiser:
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=16, n_heads=2, layers_per_stage=1,
                         final_layers=1, use_vqvae=False, near_k=4, **kw)
    return MSTDiffDenoiser(cfg, generator=torch.Generator().manual_seed(0))


def coords(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 31.0 + 0.2 * rng.random(N), 121.0 + 0.2 * rng.random(N)


def test_output_is_a_distribution_and_gradients_reach_every_part():
    m = denoiser(mask_token=True)
    m.set_station_coordinates_(*coords())
    g = torch.Generator().manual_seed(1)
    loc = torch.randint(0, N + 1, (3, T), generator=g)  # N = mask
    out = m(torch.randn(3, T, generator=g), loc, torch.tensor([1, 3, 5]))
    torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(3, T), atol=1e-4, rtol=0)
    out.logits[..., :].gather(-1, torch.randint(0, N, (3, T, 1), generator=g)).sum().backward()
    for name in ("q.weight", "k.weight", "gate.weight", "rel_bias.weight"):
        assert m.copy.get_parameter(name).grad is not None, name


def test_map_kernel_is_the_brute_force_nearest_stations():
    m = denoiser()
    lat, lon = coords(2)
    m.set_station_coordinates_(lat, lon)
    lat0 = lat.mean()
    xy = np.stack([lon * 111.32 * math.cos(math.radians(lat0)), lat * 110.57], 1)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    brute = np.sort(np.argsort(d, axis=1)[:, :4], axis=1)
    np.testing.assert_array_equal(np.sort(m.copy.near_idx.numpy(), axis=1), brute)
    torch.testing.assert_close(m.copy.near_w.sum(1), torch.ones(N))
    assert (m.copy.near_w[:, :-1] >= m.copy.near_w[:, 1:] - 1e-7).all()  # nearer weighs more


def test_with_an_open_copy_gate_the_head_puts_its_mass_on_the_input_stations():
    m = denoiser()
    m.eval()
    with torch.no_grad():  # gate: copy only; attention: the slot itself
        m.copy.gate.weight.zero_()
        m.copy.gate.bias.copy_(torch.tensor([30.0, -30.0, -30.0]))
        m.copy.rel_bias.weight.copy_(torch.where(torch.arange(-(T - 1), T) == 0, 0.0, -1e4)[:, None])
    g = torch.Generator().manual_seed(3)
    loc = torch.randint(0, N, (2, T), generator=g)
    out = m(torch.randn(2, T, generator=g), loc, torch.tensor([1, 2]))
    assert torch.equal(out.logits.argmax(-1), loc)
    assert float(out.logits.detach().gather(-1, loc[..., None]).exp().min()) > 0.99


def test_all_masked_input_falls_back_to_the_table_head():
    m = denoiser(mask_token=True)
    loc = torch.full((2, T), N)
    out = m(torch.randn(2, T), loc, torch.tensor([5, 5]))
    with torch.no_grad():
        assert torch.isfinite(out.logits).all()
        torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(2, T), atol=1e-4, rtol=0)


def test_ids_and_one_hot_probabilities_agree_with_the_map_kernel():
    m = denoiser()
    m.set_station_coordinates_(*coords(5))
    m.eval()
    g = torch.Generator().manual_seed(6)
    loc = torch.randint(0, N, (2, T), generator=g)
    w, s = torch.randn(2, T, generator=g), torch.tensor([2, 4])
    a = m(w, loc, s).logits
    b = m(w, torch.nn.functional.one_hot(loc, N).float(), s).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
