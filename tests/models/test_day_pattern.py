"""Day patterns and the station assigner of ``model.pattern`` (mstdiff.models.day_pattern)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mstdiff.errors import InputError
from mstdiff.models.day_pattern import (
    ROLE_EDGES,
    DayPatternConfig,
    day_patterns,
    decode_moves,
    encode_moves,
    gibbs_moves,
    invalid_moves,
    label_roles,
    permute_labels,
    redraw_invalid_moves,
    valid_move_mask,
)


def patterns_oracle(loc: np.ndarray) -> np.ndarray:
    out = np.empty(loc.shape, dtype=np.int64)
    for u, row in enumerate(loc):
        seen: dict[int, int] = {}
        for t, x in enumerate(row):
            out[u, t] = seen.setdefault(int(x), len(seen))
    return out


def roles_oracle(z: np.ndarray) -> np.ndarray:
    U, T = z.shape
    out = np.full((U, T), -1)
    for u in range(U):
        for k in set(z[u].tolist()):
            slots = int((z[u] == k).sum())
            stays = sum(1 for t in range(T) if z[u, t] == k and (t == 0 or z[u, t - 1] != k))
            c = max(i for i, e in enumerate(ROLE_EDGES) if slots >= e)
            out[u, k] = 2 * c + (stays > 1)
    return out


locations = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=st.integers(0, 9))


@settings(max_examples=60, deadline=None)
@given(locations)
def test_patterns_and_roles_match_brute_force(loc):
    z = day_patterns(loc)
    np.testing.assert_array_equal(z, patterns_oracle(loc))
    np.testing.assert_array_equal(label_roles(z), roles_oracle(z))


def moves_oracle(z: np.ndarray) -> np.ndarray:
    out = np.empty(z.shape, dtype=np.int64)
    for u, row in enumerate(z):
        for t, k in enumerate(row):
            if t == 0 or k > row[:t].max():
                out[u, t] = 1  # NEW
            elif k == row[t - 1]:
                out[u, t] = 0  # STAY
            else:
                out[u, t] = 2 + k  # RETURN_k
    return out


@settings(max_examples=60, deadline=None)
@given(locations)
def test_move_tokens_match_brute_force_and_decode_back(loc):
    tok = encode_moves(loc)
    np.testing.assert_array_equal(tok, moves_oracle(patterns_oracle(loc)))
    np.testing.assert_array_equal(decode_moves(tok), day_patterns(loc))


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=st.integers(0, 13)))
def test_any_token_sequence_decodes_to_a_pattern(tok):
    z = decode_moves(tok)
    np.testing.assert_array_equal(day_patterns(z), z)  # labels in first-appearance order
    stay = np.zeros(tok.shape, dtype=bool)
    stay[:, 1:] = tok[:, 1:] == 0
    assert (z[stay] == np.roll(z, 1, axis=1)[stay]).all()  # STAY keeps the place


tokens_any = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=st.integers(0, 13))


def first_bad_oracle(row: np.ndarray) -> int:
    """The first slot where a row's tokens differ from those of the pattern they decode to, −1 if none."""
    back = encode_moves(decode_moves(row[None]))[0]
    diff = np.flatnonzero(back != row)
    return int(diff[0]) if diff.size else -1


def valid_oracle(prefix: np.ndarray, V: int) -> set[int]:
    """Tokens v after ``prefix`` for which ``prefix + [v]`` encodes back to itself (brute force)."""
    ok = set()
    for v in range(V):
        row = np.append(prefix, v)[None]
        if (encode_moves(decode_moves(row)) == row).all():
            ok.add(v)
    return ok


@settings(max_examples=60, deadline=None)
@given(tokens_any)
def test_invalid_moves_are_where_the_tokens_stop_encoding_their_own_pattern(tok):
    bad = invalid_moves(torch.from_numpy(tok)).numpy()
    for u, row in enumerate(tok):
        first = first_bad_oracle(row)
        assert bad[u].any() == (first >= 0)
        if first >= 0:
            assert int(np.flatnonzero(bad[u])[0]) == first
    assert not invalid_moves(torch.from_numpy(encode_moves(tok))).any()  # real patterns have none


@settings(max_examples=40, deadline=None)
@given(tokens_any, st.data())
def test_the_valid_moves_after_a_prefix_match_brute_force(tok, data):
    U, T = tok.shape
    V = 14
    slot = np.array([data.draw(st.integers(0, T - 1)) for _ in range(U)])
    ok = valid_move_mask(torch.from_numpy(tok), torch.from_numpy(slot), V).numpy()
    for u in range(U):
        prefix = tok[u, : slot[u]]
        if invalid_moves(torch.from_numpy(prefix[None])).any():
            continue  # only defined after a valid prefix
        assert set(np.flatnonzero(ok[u]).tolist()) == valid_oracle(prefix, V)


def test_redrawing_leaves_valid_rows_alone_and_makes_every_row_valid():
    g = torch.Generator().manual_seed(0)
    T, V, mask = 12, 14, 14
    real = torch.from_numpy(encode_moves(np.random.default_rng(0).integers(0, 4, (30, T))))
    noisy = torch.randint(0, V, (40, T), generator=g)
    tok = torch.cat([real, noisy])
    calls = []

    def uniform(x, rows):
        calls.append(int(rows.numel()))
        assert (x.reshape(-1)[rows] == mask).all() and (x == mask).sum() == rows.numel()  # one per row
        return torch.zeros(rows.numel(), V)

    out = redraw_invalid_moves(tok, uniform, mask, generator=g)
    assert not invalid_moves(out).any()
    np.testing.assert_array_equal(out[:30].numpy(), real.numpy())  # already valid: untouched
    bad = invalid_moves(tok)
    first = bad.float().argmax(1)
    for u in range(tok.shape[0]):  # the prefix before a row's first invalid slot is kept
        if bad[u].any():
            assert (out[u, : first[u]] == tok[u, : first[u]]).all()
    assert len(calls) <= T and calls[0] == int(bad.any(1).sum())


def test_a_redrawn_token_follows_the_network_restricted_to_the_valid_moves():
    # [NEW, NEW, RETURN_5]: the return is invalid (2 places so far); the network prefers RETURN_5,
    # then RETURN_1 (the current place: invalid too), then RETURN_0 3:1 over STAY
    tok = torch.tensor([[1, 1, 7]]).repeat(4000, 1)
    V, mask = 8, 8
    logit = torch.full((V,), -30.0)
    logit[7], logit[3], logit[2], logit[0] = 10.0, 9.0, np.log(3.0), 0.0

    out = redraw_invalid_moves(tok, lambda x, rows: logit.expand(rows.numel(), V).clone(), mask,
                               generator=torch.Generator().manual_seed(1))
    drawn = out[:, 2]
    assert set(drawn.unique().tolist()) <= {0, 2}
    assert abs((drawn == 2).float().mean().item() - 0.75) < 0.03


def test_a_gibbs_sweep_redraws_every_slot_once_from_the_valid_moves():
    g = torch.Generator().manual_seed(0)
    B, T, V, mask = 16, 10, 12, 12
    tok = torch.randint(0, V, (B, T), generator=g)
    seen = []

    def new_only(x, rows):  # the network is sure of NEW everywhere
        assert (x == mask).sum() == B and (x.reshape(-1)[rows] == mask).all()  # one slot per row
        seen.append(int(rows[0]) % T)
        out = torch.full((rows.numel(), V), -20.0)
        out[:, 1] = 5.0
        return out

    out = gibbs_moves(tok, new_only, mask, 2, generator=g)
    assert (out == 1).all()  # every slot was redrawn
    assert sorted(seen[:T]) == list(range(T)) and sorted(seen[T:]) == list(range(T))  # once a sweep
    assert seen[:T] != seen[T:]  # a fresh order each sweep (this seed)

    def stay_favoured(x, rows):  # STAY is invalid at slot 0: the draw there must be NEW
        out = torch.full((rows.numel(), V), -20.0)
        out[:, 0] = 5.0
        return out

    out = gibbs_moves(tok, stay_favoured, mask, 1, generator=g)
    assert (out[:, 0] == 1).all() and (out[:, 1:] == 0).all() and not invalid_moves(out).any()
    np.testing.assert_array_equal(gibbs_moves(tok, stay_favoured, mask, 0).numpy(), tok.numpy())


def test_a_pattern_config_knows_its_alphabet():
    assert DayPatternConfig(tokens="moves").num_symbols(48) == 50
    assert DayPatternConfig(tokens="labels", labels=99).num_symbols(48) == 99
    with pytest.raises(InputError, match="tokens"):
        DayPatternConfig(enabled=True, tokens="words").validate_for(48)


@settings(max_examples=40, deadline=None)
@given(locations, st.integers(0, 2**31 - 1))
def test_a_pattern_does_not_depend_on_the_station_ids(loc, seed):
    perm = np.random.default_rng(seed).permutation(100)
    np.testing.assert_array_equal(day_patterns(perm[loc]), day_patterns(loc))


@settings(max_examples=40, deadline=None)
@given(locations, st.integers(12, 40), st.integers(0, 2**31 - 1))
def test_permuted_labels_keep_the_pattern_and_stay_in_range(loc, P, seed):
    z = torch.from_numpy(day_patterns(loc)).long()
    m = permute_labels(z, P, torch.Generator().manual_seed(seed))
    assert m.shape == z.shape and int(m.min()) >= 0 and int(m.max()) < P
    np.testing.assert_array_equal(day_patterns(m.numpy()), z.numpy())


def test_permuted_labels_are_spread_over_all_symbols():
    z = torch.zeros(4000, 3, dtype=torch.long)  # one place a day
    m = permute_labels(z, 8, torch.Generator().manual_seed(0))[:, 0]
    share = torch.bincount(m, minlength=8).double() / m.numel()
    assert (share - 1 / 8).abs().max() < 0.02
    with pytest.raises(ValueError):
        permute_labels(torch.zeros(2, 9, dtype=torch.long), 8, torch.Generator())


# ------------------------------------------------------------------ tokens "moves_back"
def back_oracle(z: np.ndarray) -> np.ndarray:
    """Brute force: the moves, with a return to the place of the run before the current run as BACK."""
    out = moves_oracle(z)
    T = z.shape[1]
    for u, row in enumerate(z):
        runs = [row[0]]
        for t in range(1, T):
            if row[t] != row[t - 1]:
                if len(runs) >= 2 and row[t] == runs[-2]:
                    out[u, t] = T + 2
                runs.append(row[t])
    return out


@settings(max_examples=60, deadline=None)
@given(locations)
def test_back_tokens_match_brute_force_and_decode_back(loc):
    from mstdiff.models.day_pattern import back_token

    tok = encode_moves(loc, back=True)
    np.testing.assert_array_equal(tok, back_oracle(patterns_oracle(loc)))
    np.testing.assert_array_equal(decode_moves(tok, back=True), day_patterns(loc))
    assert not invalid_moves(torch.from_numpy(tok), back=True).any()
    plain = encode_moves(loc)
    is_back = tok == back_token(loc.shape[1])
    np.testing.assert_array_equal(tok[~is_back], plain[~is_back])  # BACK replaces returns only
    assert (plain[is_back] >= 2).all()


tokens_back = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=st.integers(0, 14))


@settings(max_examples=80, deadline=None)
@given(tokens_back, st.data())
def test_back_validity_matches_brute_force(tok, data):
    U, T = tok.shape
    V = T + 3
    tok = np.minimum(tok, V - 1)

    def valid_prefix(prefix: np.ndarray) -> bool:
        """Brute force: the prefix, padded to T slots with NEW (valid after anything), encodes
        back to itself (T is fixed, so BACK stays T + 2)."""
        row = np.concatenate([prefix, np.full(T - prefix.size, 1, dtype=np.int64)])[None]
        return bool((encode_moves(decode_moves(row, back=True), back=True) == row).all())

    bad = invalid_moves(torch.from_numpy(tok), back=True).numpy()
    for u, row in enumerate(tok):
        first = next((t - 1 for t in range(1, T + 1) if not valid_prefix(row[:t])), -1)
        assert bad[u].any() == (first >= 0)
        if first >= 0:
            assert int(np.flatnonzero(bad[u])[0]) == first
    slot = np.array([data.draw(st.integers(0, T - 1)) for _ in range(U)])
    ok = valid_move_mask(torch.from_numpy(tok), torch.from_numpy(slot), V, back=True).numpy()
    for u in range(U):
        prefix = tok[u, : slot[u]]
        if not valid_prefix(prefix):
            continue  # only defined after a valid prefix
        want = {v for v in range(V) if valid_prefix(np.append(prefix, v))}
        assert set(np.flatnonzero(ok[u]).tolist()) == want


def test_back_validity_on_a_day_with_detours():
    # NEW NEW BACK (A X A) is valid; RETURN_0 there is not (the encoding says BACK); BACK at slot 1
    # has no place before the current one
    T = 6
    B = T + 2
    tok = torch.tensor([[1, 1, B, 1, 1, B], [1, 1, 2, 1, 0, 0], [1, B, 1, 1, 1, 1]])
    bad = invalid_moves(tok, back=True)
    assert not bad[0].any() and bad[1].tolist() == [False, False, True, False, False, False]
    assert bad[2].tolist() == [False, True, False, False, False, False]
    np.testing.assert_array_equal(decode_moves(tok[:1].numpy(), back=True), [[0, 1, 0, 2, 3, 2]])
    ok = valid_move_mask(tok[:1], torch.tensor([5]), T + 3, back=True)[0]
    # at slot 5 (after places 0 1 0 2 3): NEW, STAY, RETURN_0, RETURN_1 and BACK (to 2)
    assert set(ok.nonzero().squeeze(-1).tolist()) == {0, 1, 2, 3, B}


def test_a_back_token_is_one_symbol_for_every_one_slot_detour():
    # A X A early and late in a day: RETURN_0 and RETURN_3 in the plain moves, BACK in both here
    z = np.array([[0, 1, 0, 0, 2, 3, 4, 3, 3]])
    T = z.shape[1]
    assert encode_moves(z)[0, 2] == 2 and encode_moves(z)[0, 7] == 2 + 3
    tok = encode_moves(z, back=True)
    assert tok[0, 2] == T + 2 and tok[0, 7] == T + 2
    from mstdiff.models.day_pattern import DayPatternConfig

    cfg = DayPatternConfig(enabled=True, tokens="moves_back")
    assert cfg.num_symbols(T) == T + 3 and cfg.back
    np.testing.assert_array_equal(cfg.decode(cfg.encode(z)), z)
