"""The pointer/copy head: a proper distribution that can copy, move nearby, or fall back to the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mstdiff.errors import InputError
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser

N, T = 40, 16


def denoiser(**kw) -> MSTDiffDenoiser:
    kw = {"near_k": 4, **kw}
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=16, n_heads=2, layers_per_stage=1,
                         final_layers=1, use_vqvae=False, **kw)
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


def brute_move_terms(m: MSTDiffDenoiser, h: torch.Tensor, loc: torch.Tensor, lat, lon) -> torch.Tensor:
    """The gravity terms of every token by loops: nearest filled slot on each side, its km distance."""
    c = m.copy
    B, T_ = loc.shape
    lat0 = lat.mean()
    xy = torch.from_numpy(np.stack([lon * 111.32 * math.cos(math.radians(lat0)), lat * 110.57], 1))
    d = np.linalg.norm(xy.numpy()[:, None] - xy.numpy()[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    unit = float(np.median(d.min(1)))  # d₁: median nearest-neighbour distance
    out = torch.zeros(B, T_, N, dtype=torch.float64)
    for b in range(B):
        for t in range(T_):
            coef = c.decay(h[b, t]).double()
            for side, others in enumerate((range(t - 1, -1, -1), range(t + 1, T_))):
                o = next((o for o in others if loc[b, o] < N), None)
                if o is None:
                    continue
                cc = coef[side] + c.decay_gap.weight[abs(o - t), side]
                out[b, t] -= cc * torch.log1p(torch.linalg.norm(xy - xy[loc[b, o]], dim=1) / unit)
    return out


def test_move_decay_terms_equal_a_brute_force_loop_and_start_at_zero():
    m = denoiser(mask_token=True, move_decay=True)
    lat, lon = coords(7)
    m.set_station_coordinates_(lat, lon)
    g = torch.Generator().manual_seed(8)
    loc = torch.where(torch.rand(3, T, generator=g) < 0.6, torch.randint(0, N, (3, T), generator=g), N)
    loc[2] = N  # one sample without any station: no term anywhere
    h = torch.randn(3, T, 16, generator=g)
    rows = torch.arange(3 * T)
    with torch.no_grad():
        assert m.copy.move_terms(h.reshape(-1, 16), loc, loc < N, rows).abs().max() == 0  # zero at init
        m.copy.decay.weight.normal_(generator=g)
        m.copy.decay.bias.normal_(generator=g)
        m.copy.decay_gap.weight.normal_(generator=g)
        fast = m.copy.move_terms(h.reshape(-1, 16), loc, loc < N, rows).reshape(3, T, N)
        slow = brute_move_terms(m, h, loc, lat, lon)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=1e-4)
    assert fast[2].abs().max() == 0
    assert fast[0].abs().max() > 0


def test_move_decay_keeps_a_distribution_and_learns_to_stay_near():
    m = denoiser(mask_token=True, move_decay=True, near_k=0)
    m.set_station_coordinates_(*coords(9))
    with torch.no_grad():  # table only, and a strong decay from the slot before
        m.copy.gate.weight.zero_()
        m.copy.gate.bias.copy_(torch.tensor([-30.0, 30.0]))
        m.copy.decay_gap.weight[:, 0] = 5.0
    m.eval()
    loc = torch.full((1, T), N)
    loc[0, 3] = 0
    with torch.no_grad():
        out = m(torch.randn(1, T), loc, torch.tensor([5])).logits
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(1, T), atol=1e-4, rtol=0)
    d = torch.linalg.norm(m.copy.xy - m.copy.xy[0], dim=1)
    p = out[0, 4].exp()  # after the filled slot: mass decays with the distance to station 0
    assert float(p[d <= d.median()].sum()) > 0.9
    with torch.no_grad():  # before the filled slot: only the (still zero) "after" coefficients
        terms = m.copy.move_terms(torch.zeros(T, 16), loc, loc < N, torch.arange(T))
    assert terms[:3].abs().max() == 0 and terms[4:].abs().max() > 0


def test_nearest_filled_is_the_brute_force_neighbour():
    from mstdiff.models.copy_head import nearest_filled

    g = torch.Generator().manual_seed(11)
    valid = torch.rand(5, T, generator=g) < 0.3
    before, after = nearest_filled(valid)
    for b in range(5):
        for t in range(T):
            prev = [o for o in range(t) if valid[b, o]]
            nxt = [o for o in range(t + 1, T) if valid[b, o]]
            assert before[b, t] == (prev[-1] if prev else -1)
            assert after[b, t] == (nxt[0] if nxt else -1)


def test_copy_nearest_puts_the_copy_on_the_stations_that_bracket_the_gap():
    m = denoiser(mask_token=True, copy_nearest=True, near_k=0)
    assert torch.equal(m.copy.nearest_bias.weight.detach(), torch.full((40, 2), 2.0))
    with torch.no_grad():  # copy only, flat time bias, a strong pull to the nearest filled slots
        m.copy.gate.weight.zero_()
        m.copy.gate.bias.copy_(torch.tensor([30.0, -30.0]))
        m.copy.rel_bias.weight.zero_()
        m.copy.nearest_bias.weight.fill_(30.0)
    loc = torch.full((1, T), N)
    loc[0, [1, 5, 12]] = torch.tensor([7, 8, 9])
    with torch.no_grad():
        out = m(torch.randn(1, T), loc, torch.tensor([5])).logits[0].exp()
    assert float(out[3, [7, 8]].sum()) > 0.99  # between slots 1 and 5: stations 7 and 8, not 9
    assert float(out[8, [8, 9]].sum()) > 0.99
    assert float(out[14, 9]) > 0.99  # after the last filled slot: its station
    m2 = denoiser(mask_token=True, copy_nearest=True)
    m2(torch.randn(1, T), loc, torch.tensor([5])).logits[0, 3, 7].backward()
    grad = m2.copy.nearest_bias.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    groups = m2.optimizer_groups(0.01)  # a bias: no weight decay
    free = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is m2.copy.nearest_bias.weight for p in free)


def test_move_decay_leaves_the_input_stations_to_the_copy():
    m = denoiser(mask_token=True, move_decay=True, near_k=0)
    m.set_station_coordinates_(*coords(12))
    with torch.no_grad():  # the table (move) part alone
        m.copy.gate.weight.zero_()
        m.copy.gate.bias.copy_(torch.tensor([-30.0, 30.0]))
    m.eval()
    loc = torch.full((1, T), N)
    loc[0, [2, 9]] = torch.tensor([N - 1, 4])  # the last station id too (no clash with the mask id)
    with torch.no_grad():
        p = m(torch.randn(1, T), loc, torch.tensor([5])).logits[0].exp()
    assert float(p[:, [N - 1, 4]].max()) < 1e-6  # a move never lands on a station the input holds
    torch.testing.assert_close(p.sum(-1), torch.ones(T), atol=1e-4, rtol=0)


def test_table_new_draws_new_places_only_and_keeps_the_table_shape_elsewhere():
    torch.manual_seed(0)
    loc = torch.full((2, T), N)
    loc[0, [2, 3, 9]] = torch.tensor([N - 1, N - 1, 4])
    loc[1, [0, 5]] = torch.tensor([7, 1])
    held = [[N - 1, 4], [7, 1]]
    out = {}
    for flag in (False, True):
        m = denoiser(mask_token=True, near_k=0, table_new=flag)
        with torch.no_grad():  # the table part alone: what it gives the held stations shows
            m.copy.gate.weight.zero_()
            m.copy.gate.bias.copy_(torch.tensor([-30.0, 30.0]))
        m.eval()
        with torch.no_grad():
            out[flag] = m(torch.randn(2, T), loc, torch.tensor([5, 5])).logits.exp()
    for b in range(2):
        free = [j for j in range(N) if j not in held[b]]
        assert float(out[True][b][:, held[b]].max()) < 1e-6 < float(out[False][b][:, held[b]].min())
        ratio = out[True][b][:, free] / out[False][b][:, free]  # the same softmax, renormalised
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)
        torch.testing.assert_close(out[True][b].sum(-1), torch.ones(T), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="table_new"):
        DenoiserConfig(num_stations=N, copy_head=False, near_k=0, table_new=True, use_vqvae=False).validate()


def test_gate_context_index_is_the_brute_force_kind_and_span():
    from mstdiff.models.copy_head import CopyHead, nearest_filled

    g = torch.Generator().manual_seed(13)
    ids = torch.randint(0, 3, (6, T), generator=g)  # few stations: "same" happens often
    valid = torch.rand(6, T, generator=g) < 0.35
    valid[0] = False  # no filled slot at all
    before, after = nearest_filled(valid)
    got = CopyHead.context_index(ids, before, after)
    for b in range(6):
        for t in range(T):
            prev = [o for o in range(t) if valid[b, o]]
            nxt = [o for o in range(t + 1, T) if valid[b, o]]
            if prev and nxt:
                kind = 3 if ids[b, prev[-1]] == ids[b, nxt[0]] else 4
                span = nxt[0] - prev[-1] - 1
            elif prev:
                kind, span = 1, t - prev[-1]
            elif nxt:
                kind, span = 2, nxt[0] - t
            else:
                kind, span = 0, 1
            assert got[b, t] == 8 * kind + min(max(span - 1, 0), 7), (b, t)
    onehot = torch.nn.functional.one_hot(ids, 5).float()  # probabilities: their likeliest station
    assert torch.equal(CopyHead.context_index(onehot, before, after), got)


def test_gate_context_moves_the_mass_between_copy_and_table_by_context():
    m = denoiser(mask_token=True, copy_nearest=True, near_k=0)
    m.eval()
    loc = torch.full((1, T), N)
    loc[0, [1, 3]] = 7  # slot 2: inside a stay of station 7 (span 1)
    loc[0, [8, 10]] = torch.tensor([7, 9])  # slot 9: a boundary between 7 and 9 (span 1)
    with torch.no_grad():
        m.copy.gate.weight.zero_()
        m.copy.gate.bias.zero_()
        m.copy.gate_context.weight[8 * 3] = torch.tensor([10.0, -10.0])  # inside a stay: copy
        m.copy.gate_context.weight[8 * 4] = torch.tensor([-10.0, 10.0])  # boundary: the table
        p = m(torch.randn(1, T), loc, torch.tensor([5])).logits[0].exp()
    assert float(p[2, 7]) > 0.99
    assert float(p[9, [7, 9]].sum()) < 0.1


def test_copy_context_starts_at_the_training_odds():
    m = denoiser(mask_token=True, copy_nearest=True, near_k=0)
    rng = np.random.default_rng(14)
    stays = np.repeat(rng.integers(0, N, (200, 4)), T // 4, axis=1)  # 4 stays a day, no passing-through
    m.init_copy_context_(stays, seed=1)
    w = m.copy.gate_context.weight.detach().clone()
    inside, boundary = w[8 * 3], w[8 * 4]  # both neighbours hold the same station / different ones
    assert float(inside[0] - inside[1]) > 3.0  # inside a stay: copy
    # at a boundary of such days the slot is also one of the two: copy, but less surely than inside
    assert 0 < float(boundary[0] - boundary[1]) < float(inside[0] - inside[1])
    travel = stays.copy()
    travel[:, T // 4] = rng.integers(0, N, 200)  # a one-slot pass-through at every first boundary
    m.init_copy_context_(travel, seed=1)
    w2 = m.copy.gate_context.weight.detach()
    assert float(w2[8 * 4, 0] - w2[8 * 4, 1]) < float(boundary[0] - boundary[1])
    with pytest.raises(InputError, match="expected"):
        m.init_copy_context_(stays[:, :5])


def test_nearest_pull_starts_at_the_likeliest_beta_by_context():
    m = denoiser(mask_token=True, copy_nearest=True, near_k=0)
    rng = np.random.default_rng(16)
    stays = np.repeat(rng.integers(0, N, (300, 4)), T // 4, axis=1)  # four stays a day
    m.init_copy_context_(stays, seed=3)
    beta = m.copy.nearest_bias.weight.detach().clone()
    torch.testing.assert_close(beta[:, 0], beta[:, 1])
    # between two slots of one stay (one slot apart) the copy is always that stay's station
    assert float(beta[8 * 3, 0]) == 10.0
    # days that alternate A X A X …: between two A slots the truth is always X, held elsewhere
    pairs = rng.integers(0, N, (300, 2))
    alternating = np.where(np.arange(T) % 2 == 0, pairs[:, :1], pairs[:, 1:])
    m.init_copy_context_(alternating, seed=3)
    beta = m.copy.nearest_bias.weight.detach()
    assert float(beta[8 * 3, 0]) == 0.0  # the pull toward the bracket only hurts
    assert float(beta[0, 0]) == 2.0  # no filled slot, nothing to copy: the default


def test_a_checkpoint_with_one_nearest_pull_loads_into_the_table_by_context():
    m = denoiser(mask_token=True, copy_nearest=True, near_k=0)
    state = m.state_dict()
    state["copy.nearest_bias.weight"] = torch.tensor([[3.0], [1.5]])  # the previous build's (2, 1)
    m.load_state_dict(state)
    beta = m.copy.nearest_bias.weight.detach()
    assert beta.shape == (40, 2)
    assert torch.equal(beta[:, 0], torch.full((40,), 3.0)) and torch.equal(beta[:, 1], torch.full((40,), 1.5))


def test_copy_split_gives_the_bracket_and_the_other_stations_apart():
    m = denoiser(mask_token=True, copy_nearest=True, copy_split=True, near_k=0)
    assert m.copy.gate.out_features == 3 and m.copy.gate_context.weight.shape == (40, 3)
    m.eval()
    loc = torch.full((1, T), N)
    loc[0, [1, 5, 12]] = torch.tensor([7, 8, 9])
    g = torch.Generator().manual_seed(21)
    w, s = torch.randn(1, T, generator=g), torch.tensor([5])
    with torch.no_grad():
        m.copy.gate.weight.zero_()
        p = m(w, loc, s).logits[0]
        torch.testing.assert_close(p.logsumexp(-1), torch.zeros(T), atol=1e-4, rtol=0)
        m.copy.gate.bias.copy_(torch.tensor([30.0, -30.0, -30.0]))  # the bracket's copy only
        bracket = m(w, loc, s).logits[0].exp()
        m.copy.gate.bias.copy_(torch.tensor([-30.0, -30.0, 30.0]))  # the other stations' copy only
        other = m(w, loc, s).logits[0].exp()
    assert float(bracket[3, [7, 8]].sum()) > 0.99 and float(other[3, 9]) > 0.99  # between 1 and 5
    assert float(bracket[8, [8, 9]].sum()) > 0.99 and float(other[8, 7]) > 0.99
    assert float(bracket[14, 9]) > 0.99 and float(other[14, [7, 8]].sum()) > 0.99
    loc2 = torch.full((1, T), N)
    loc2[0, [2, 9]] = 7  # one station only: nothing else to return to, the other gate is closed
    with torch.no_grad():
        m.copy.gate.bias.copy_(torch.tensor([0.0, -30.0, 30.0]))
        p2 = m(w, loc2, s).logits[0].exp()
    torch.testing.assert_close(p2.sum(-1), torch.ones(T), atol=1e-4, rtol=0)
    assert float(p2[5, 7]) > 0.99  # the closed gate's mass goes to the open ones by their odds
    with pytest.raises(InputError, match="copy_split needs copy_nearest"):
        denoiser(copy_split=True)


def test_copy_split_starts_at_the_training_odds_of_a_return():
    m = denoiser(mask_token=True, copy_nearest=True, copy_split=True, near_k=0)
    rng = np.random.default_rng(22)
    stays = np.repeat(rng.integers(0, N, (300, 4)), T // 4, axis=1)  # four stays a day
    m.init_copy_context_(stays, seed=2)
    inside = m.copy.gate_context.weight.detach()[8 * 3].clone()  # (bracket, table, other)
    assert float(inside[0] - inside[2]) > 3.0  # inside a stay the copy is the stay's station
    pairs = rng.integers(0, N, (300, 2))
    alternating = np.where(np.arange(T) % 2 == 0, pairs[:, :1], pairs[:, 1:])  # A X A X …
    m.init_copy_context_(alternating, seed=2)
    w = m.copy.gate_context.weight.detach()[8 * 3]
    assert float(w[2] - w[0]) > 3.0  # between two A slots the truth is X: a station outside the bracket


def test_motion_context_is_the_brute_force_arrival_at_each_nearest_slot():
    from mstdiff.models.copy_head import CopyHead, nearest_filled

    g = torch.Generator().manual_seed(23)
    ids = torch.randint(0, 3, (6, T), generator=g)
    valid = torch.rand(6, T, generator=g) < 0.6
    before, after = nearest_filled(valid)
    plain = CopyHead.context_index(ids, before, after)
    got = CopyHead.context_index(ids, before, after, valid)
    for b in range(6):
        for t in range(T):
            o, q = int(before[b, t]), int(after[b, t])
            mb = o >= 1 and bool(valid[b, o - 1]) and int(ids[b, o - 1]) != int(ids[b, o])
            ma = 0 <= q < T - 1 and bool(valid[b, q + 1]) and int(ids[b, q + 1]) != int(ids[b, q])
            assert got[b, t] == plain[b, t] + 40 * (2 * mb + ma), (b, t)
    m = denoiser(mask_token=True, copy_nearest=True, copy_motion=True, near_k=0)
    assert m.copy.gate_context.weight.shape == (160, 2) and m.copy.nearest_bias.weight.shape == (160, 2)
    loc = torch.where(valid[:1], ids[:1], N)
    out = m(torch.randn(1, T), loc, torch.tensor([3])).logits
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(1, T), atol=1e-4, rtol=0)
    trip = np.tile(np.arange(T) % N, (50, 1))  # a new cell every slot: always moving
    m.init_copy_context_(trip, seed=0)
    w = m.copy.gate_context.weight.detach()
    # between two filled cells of a trip (both sides moving, one slot apart): a new cell, not a copy
    assert float(w[40 * 3 + 8 * 4, 1] - w[40 * 3 + 8 * 4, 0]) > 3.0
