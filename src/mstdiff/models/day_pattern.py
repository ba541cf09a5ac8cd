"""The pattern of a day and the stations that realise it (``model.pattern``).

A day ``l_1..l_T`` over N stations factorises into

* its **pattern** ``z_t`` = the rank of ``l_t`` among the day's stations by first appearance
  (``[7, 7, 3, 3, 7, 9]`` → ``[0, 0, 1, 1, 0, 2]``): stays, their durations, the distinct stations,
  the returns and the visit-frequency ranks are functions of the pattern alone (duration,
  DistinctLoc and I-rank do not change under a relabelling of the stations);
* the **stations** ``s_0, s_1, ...`` of its labels: ``l_t = s_{z_t}``.

With ``model.pattern.enabled``, MSTDiff's location diffusion (absorbing noise) learns the pattern as
one of two token sequences (``pattern.tokens``):

* ``"moves"`` (the default; :func:`encode_moves`): per slot what the user does, over ``T + 2``
  symbols with a fixed meaning, ``STAY`` (0: the place of slot t−1), ``NEW`` (1: a place the day has
  not held yet) or ``RETURN_k`` (``2 + k``: back to the day's k-th place). Every symbol says the
  same thing in every day, so the plain table head learns them; stays are runs of ``STAY``.
* ``"moves_back"``: the same plus ``BACK`` (``T + 2``): a return to the place the day held just
  before the current one (A → X → A), which ``RETURN_k`` would spell with the k of A, a symbol
  that depends on how many places the day had before; so a one-slot detour is one symbol in every
  day.
* ``"labels"``: the pattern's labels, each training day's mapped by its own random injection
  ``{0..T-1} → {0..P-1}`` (``P = pattern.labels``; :func:`permute_labels`, drawn anew every epoch),
  for the copy head: no symbol carries a meaning, a stay is a copy, a new place any symbol the day
  does not hold yet. (Canonical labels fail under random-order unmasking: two slots unmasked far
  apart both draw the "next" label and merge two places; on GeoLife that made 4.5 distinct cells a
  day against 6.4.)

On the GeoLife validation share the moves made the day's structure far closer to real than the
labels (after 12 epochs, duration 3.4× / I-rank 0.9× the floor against 5.1× / 6.1×; README,
"Day patterns").

:class:`mstdiff.models.station_assigner.StationAssigner` then draws the stations of a pattern, label
by label in time order, from counts of the training days (its module docstring has the formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mstdiff.config import Check, ge, gt, one_of
from mstdiff.errors import InputError

__all__ = ["DayPatternConfig", "back_token", "day_patterns", "decode_moves",
           "encode_moves",
           "gibbs_moves", "invalid_moves", "label_roles", "permute_labels", "redraw_invalid_moves",
           "valid_move_mask",
           "ROLE_EDGES", "STAY", "NEW"]

STAY, NEW = 0, 1  # move tokens; 2 + k: RETURN to the day's k-th place
TOKENS = ("moves", "moves_back", "labels")
KERNELS = ("nearest", "gravity")
MOVE_TOKENS = ("moves", "moves_back")


def back_token(T: int) -> int:
    """Tokens ``"moves_back"``: the symbol ``BACK`` (back to the place before the current one), ``T + 2``."""
    return T + 2

ROLE_EDGES = np.array([1, 2, 3, 5, 9, 17])  # a label's slots in the day: 1, 2, 3-4, 5-8, 9-16, 17+
N_ROLES = 2 * ROLE_EDGES.size  # × (the day returns to it or not)
KM_PER_DEGREE = 111.2


@dataclass
class DayPatternConfig:
    """``model.pattern``: diffuse the day's pattern, then draw its stations (module docstring)."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "tokens": one_of(*TOKENS), "kernel": one_of(*KERNELS), "labels": ge(2), "role_smoothing": gt(0),
        "move_smoothing": gt(0), "neighbours": ge(1), "floor": ge(0), "gibbs_sweeps": ge(0),
    }
    # fields that only change how a trained model samples (``--sample redraw_invalid=true``)
    SAMPLING: ClassVar[tuple[str, ...]] = ("redraw_invalid", "gibbs_sweeps")
    # fields of the station assigner (counts of the training days: another value needs no new
    # training of the network, ``MSTDiff.refit_assigner``)
    ASSIGNER: ClassVar[tuple[str, ...]] = ("kernel", "role_smoothing", "move_smoothing", "neighbours",
                                           "floor")

    enabled: bool = False  # False: the network draws the stations themselves (the default)
    tokens: str = "moves"  # what the network diffuses: "moves" (STAY / NEW / RETURN_k) or "labels"
    labels: int = 256  # tokens "labels": P symbols (≥ T; with the copy head's table_new, > T)
    role_smoothing: float = 0.5  # α: pseudo-count of the average role mix in every station's ρ_j
    move_smoothing: float = 0.3  # λ: pseudo-count of each back-off (slot → all slots → kernel)
    # the back-off kernel K_i of the assigner (mstdiff.models.station_assigner): "nearest", the
    # ``neighbours`` stations nearest to i on the map; "gravity", every station, by its popularity
    # in the label's role × a profile of the move's length fitted to the training moves (needs
    # station coordinates)
    kernel: str = "nearest"
    neighbours: int = 64  # kernel "nearest": stations of K_i (nearest on the map)
    floor: float = 0.05  # ε: a kernel station never visited first weighs ε × the mean arrivals
    # sampling, tokens "moves": redraw every token that no real day can hold (a RETURN to a place the
    # day has not reached, or to the place it is at; slot 0 not NEW) from the network's law given the
    # rest of the day, restricted to the valid moves (:func:`redraw_invalid_moves`); False: decode
    # them as NEW / STAY
    redraw_invalid: bool = False
    # sampling, tokens "moves": sweeps of Gibbs steps after the sampler, each slot in a random order
    # redrawn from the network given all the others, restricted to the valid moves (:func:`gibbs_moves`;
    # one network call per slot and sweep); 0: none
    gibbs_sweeps: int = 0

    def num_symbols(self, T: int) -> int:
        """Size of the token alphabet the network sees for windows of T slots."""
        return T + 2 if self.tokens == "moves" else T + 3 if self.tokens == "moves_back" else self.labels

    @property
    def back(self) -> bool:
        """Whether the move tokens have ``BACK`` (tokens ``"moves_back"``)."""
        return self.tokens == "moves_back"

    def encode(self, patterns: np.ndarray) -> np.ndarray:
        """The network's tokens of day patterns (for "labels", before the random mapping)."""
        return (encode_moves(patterns, back=self.back) if self.tokens in MOVE_TOKENS
                else day_patterns(patterns))

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Day patterns of the network's tokens."""
        return decode_moves(tokens, back=self.back) if self.tokens in MOVE_TOKENS else day_patterns(tokens)

    def validate_for(self, T: int) -> None:
        if self.tokens not in TOKENS:
            raise InputError(f"model.pattern.tokens = {self.tokens!r}", where="model.pattern.tokens",
                             fix=f"use one of {list(TOKENS)}")
        if self.enabled and self.tokens == "labels" and self.labels < T:
            raise InputError(f"model.pattern.labels = {self.labels} is below T = {T}",
                             where="model.pattern.labels",
                             fix=f"use at least T = {T} labels (a day may visit T places)")


# ----------------------------------------------------------------------------- patterns


def day_patterns(locations: np.ndarray) -> np.ndarray:
    """Each row's stations relabelled by order of first appearance, ``(U, T)`` int32 in ``0..T-1``."""
    loc = np.asarray(locations)
    if loc.ndim != 2:
        raise ValueError(f"locations must be (U, T), got shape {loc.shape}")
    U, T = loc.shape
    if loc.size == 0:
        return np.zeros((U, T), dtype=np.int32)
    n = int(loc.max()) + 1
    key = np.arange(U, dtype=np.int64)[:, None] * n + loc.astype(np.int64)
    _, first, inv = np.unique(key.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique (row, station) by row, then first slot
    rows = first[order] // T
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size) - np.searchsorted(rows, rows, side="left")
    return rank[inv.ravel()].reshape(U, T).astype(np.int32)


def encode_moves(patterns: np.ndarray, *, back: bool = False) -> np.ndarray:
    """Move tokens of day patterns (any labels), ``(U, T)`` int32: slot 0 is ``NEW``; slot t is
    ``STAY`` at the place of slot t−1, ``NEW`` at a place the day has not held, else ``2 + k`` for
    a return to its k-th place (first-appearance order). ``back``: a return to the place held just
    before the current one is ``BACK`` (:func:`back_token`) instead."""
    z = day_patterns(patterns).astype(np.int64)
    U, T = z.shape
    tok = np.full((U, T), NEW, dtype=np.int64)
    if T > 1:
        seen = np.maximum.accumulate(z, axis=1)[:, :-1]
        cur, prev = z[:, 1:], z[:, :-1]
        tok[:, 1:] = np.where(cur == prev, STAY, np.where(cur > seen, NEW, 2 + cur))
    if back:
        before = np.full(U, -1, dtype=np.int64)  # the place held before the current one
        for t in range(1, T):
            moved = z[:, t] != z[:, t - 1]
            tok[moved & (z[:, t] == before), t] = back_token(T)
            before = np.where(moved, z[:, t - 1], before)
    return tok.astype(np.int32)


def decode_moves(tokens: np.ndarray, *, back: bool = False) -> np.ndarray:
    """Day patterns ``(U, T)`` of move tokens; the inverse of :func:`encode_moves` on its image.

    Any token sequence decodes: slot 0 is the first place whatever its token, a ``RETURN_k`` to
    a place the day has not reached yet (k ≥ the places so far) is a new place, one to the current
    place a stay, and a ``BACK`` (``back``) with no place before the current one a new place.
    """
    tok = np.asarray(tokens, dtype=np.int64)
    if tok.ndim != 2:
        raise ValueError(f"tokens must be (U, T), got shape {tok.shape}")
    return _move_state(torch.from_numpy(tok), back)[1].numpy().astype(np.int32)


def _move_state(tok: Tensor, back: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move tokens ``(B, T)`` read slot by slot: ``(invalid, z, n, before)``, whether each token is
    one that :func:`encode_moves` never emits given the slots before it, the place (pattern label)
    of every slot (:func:`decode_moves`), the number of places before every slot and the place held
    before the one at slot t − 1 (−1: none yet).

    Slot 0 is place 0 whatever its token; a ``RETURN_k`` to a place not reached yet (k ≥ the places
    so far) is a new place, one to the current place a stay; with ``back``, ``BACK`` returns to the
    place before the current one (a new place where there is none), and a ``RETURN_k`` to that
    place is invalid (the encoding says ``BACK``)."""
    B, T = tok.shape
    invalid = torch.zeros((B, T), dtype=torch.bool, device=tok.device)
    z = torch.zeros((B, T), dtype=torch.long, device=tok.device)
    n_at = torch.zeros((B, T), dtype=torch.long, device=tok.device)
    before_at = torch.full((B, T), -1, dtype=torch.long, device=tok.device)
    if T == 0:
        return invalid, z, n_at, before_at
    invalid[:, 0] = tok[:, 0] != NEW
    cur = torch.zeros(B, dtype=torch.long, device=tok.device)  # the place at slot t - 1
    before = torch.full((B,), -1, dtype=torch.long, device=tok.device)  # the place held before cur
    n = torch.ones(B, dtype=torch.long, device=tok.device)  # places so far
    for t in range(1, T):
        n_at[:, t], before_at[:, t] = n, before
        k = tok[:, t] - 2
        is_back = (tok[:, t] == back_token(T)) if back else torch.zeros_like(invalid[:, t])
        is_ret = (tok[:, t] >= 2) & ~is_back
        invalid[:, t] = (is_ret & ((k >= n) | (k == cur) | (k == before))) if back else (
            is_ret & ((k >= n) | (k == cur)))
        invalid[:, t] |= is_back & (before < 0)
        ret = is_ret & (k < n) & (k != cur)
        went_back = is_back & (before >= 0)
        new = (tok[:, t] == NEW) | (is_ret & (k >= n)) | (is_back & (before < 0))
        nxt = torch.where(ret, k, torch.where(went_back, before, torch.where(new, n, cur)))
        before = torch.where(nxt != cur, cur, before)
        cur = nxt
        n = n + new.long()
        z[:, t] = cur
    return invalid, z, n_at, before_at


def invalid_moves(tokens: Tensor, *, back: bool = False) -> Tensor:
    """``(B, T)`` bool: the move tokens that no real day holds given the slots before them (slot 0
    not ``NEW``; a ``RETURN_k`` to a place not reached yet or to the current place; with ``back``,
    a ``RETURN_k`` to the place before the current one, or a ``BACK`` with none). A row has none
    exactly when ``encode_moves(decode_moves(row)) == row``."""
    return _move_state(tokens.long(), back)[0]


def valid_move_mask(tokens: Tensor, slot: Tensor, num_symbols: int, *, back: bool = False) -> Tensor:
    """``(B, num_symbols)`` bool: the tokens that are valid at ``slot (B,)`` of each row given the
    row's slots before it: ``NEW``, and for a slot after the first ``STAY`` and the returns to the
    places reached before it other than the current one (with ``back``: other than the place
    before it too, which is ``BACK``, valid where there is such a place)."""
    _, z, n_at, before_at = _move_state(tokens.long(), back)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    # (B,): the place at slot − 1, the places so far and the place held before it (slots before only)
    cur, n, before = z[rows, (slot - 1).clamp(min=0)], n_at[rows, slot], before_at[rows, slot]
    T = tokens.shape[1]
    sym = torch.arange(num_symbols, device=tokens.device)[None, :]  # (1, V)
    k = sym - 2
    later = slot[:, None] > 0
    ok = (sym == NEW) | ((sym == STAY) & later)
    is_ret = (sym >= 2) & (sym != back_token(T)) if back else sym >= 2
    ret_ok = is_ret & (k < n[:, None]) & (k != cur[:, None]) & later
    if back:
        ret_ok &= k != before[:, None]
        ok |= (sym == back_token(T)) & (before[:, None] >= 0) & later
    return ok | ret_ok


def _draw_valid(logits: Tensor, x: Tensor, slot: Tensor, generator: torch.Generator | None,
                back: bool = False) -> Tensor:
    """One token per row from ``softmax(logits (R, V))`` restricted to the moves valid at ``slot (R,)``
    after the row's prefix in ``x`` (:func:`valid_move_mask`)."""
    logits = logits.float()
    allowed = valid_move_mask(x, slot, logits.shape[-1], back=back)
    probs = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)
    gen_device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(gen_device), 1, generator=generator).squeeze(-1)


def redraw_invalid_moves(tokens: Tensor, logits_fn: Any, mask_id: int, *,
                         generator: torch.Generator | None = None, max_rounds: int | None = None,
                         back: bool = False) -> Tensor:
    """Move tokens ``(B, T)`` with every invalid token (:func:`invalid_moves`) redrawn.

    Round by round, the first invalid slot of each row that has one is masked and drawn again from
    the network's law given the rest of the row, ``softmax`` of ``logits_fn(x, rows)`` (``x`` the
    tokens with those slots masked as ``mask_id``, ``rows`` their flat indices into the B·T
    tokens; it returns ``(M, V)`` logits) restricted to the tokens valid after the row's prefix
    (:func:`valid_move_mask`): a Gibbs step of the model's conditional onto the days that exist.
    The prefix before the redrawn slot is valid and unchanged, so each row's first invalid slot
    moves right every round: at most T rounds (``max_rounds``), each one network call on the rows
    that still need it. Rows without invalid tokens are returned as they are.
    """
    tok = tokens.long().clone()
    B, T = tok.shape
    for _ in range(T if max_rounds is None else max_rounds):
        bad = invalid_moves(tok, back=back)
        todo = bad.any(dim=1).nonzero().squeeze(-1)  # (R,)
        if not todo.numel():
            break
        slot = bad[todo].float().argmax(dim=1)  # (R,) first invalid slot
        x = tok[todo].clone()
        x[torch.arange(todo.numel(), device=x.device), slot] = mask_id
        flat = torch.arange(todo.numel(), device=x.device) * T + slot
        tok[todo, slot] = _draw_valid(logits_fn(x, flat), x, slot, generator, back).to(tok.device)
    return tok


def gibbs_moves(tokens: Tensor, logits_fn: Any, mask_id: int, sweeps: int, *,
                generator: torch.Generator | None = None, back: bool = False) -> Tensor:
    """Move tokens ``(B, T)`` after ``sweeps`` Gibbs sweeps of the network's conditionals.

    Each sweep visits the slots in a random order; at slot t every row's token is masked and drawn
    again from ``softmax(logits_fn(x, rows))`` (as in :func:`redraw_invalid_moves`) restricted to the
    moves valid after the row's slots before t. A redraw can make a later token invalid (a place
    fewer or more before it); those are left to :func:`redraw_invalid_moves`, which the caller runs
    after.
    """
    tok = tokens.long().clone()
    B, T = tok.shape
    rows = torch.arange(B, device=tok.device)
    gen_device = generator.device if generator is not None else tok.device
    for _ in range(sweeps):
        order = torch.randperm(T, generator=generator, device=gen_device).tolist()
        for t in order:
            x = tok.clone()
            x[:, t] = mask_id
            slot = torch.full((B,), t, dtype=torch.long, device=tok.device)
            tok[:, t] = _draw_valid(logits_fn(x, rows * T + t), x, slot, generator, back).to(tok.device)
    return tok


def label_roles(patterns: np.ndarray) -> np.ndarray:
    """Role of every label of every day, ``(U, T)`` int64 (−1 for labels the day does not use).

    Role = ``2 · c + b``: c the class of the label's slots in the day by :data:`ROLE_EDGES`, b = 1
    when the day has more than one stay there (it comes back).
    """
    z = np.asarray(patterns, dtype=np.int64)
    U, T = z.shape
    rows = np.arange(U, dtype=np.int64)[:, None] * T
    slots = np.bincount((rows + z).ravel(), minlength=U * T).reshape(U, T)
    starts = np.ones((U, T), dtype=bool)
    starts[:, 1:] = z[:, 1:] != z[:, :-1]
    stays = np.bincount((rows + z)[starts], minlength=U * T).reshape(U, T)
    cls = np.searchsorted(ROLE_EDGES, np.maximum(slots, 1), side="right") - 1
    return np.where(slots > 0, 2 * cls + (stays > 1), -1)


def permute_labels(labels: Tensor, num_labels: int, generator: torch.Generator) -> Tensor:
    """``labels (B, T)`` in ``0..T-1`` mapped by a random injection into ``0..num_labels-1`` per row."""
    B, T = labels.shape
    if num_labels < T:
        raise ValueError(f"num_labels = {num_labels} < T = {T}")
    keys = torch.rand(B, num_labels, generator=generator, device=generator.device)
    perm = keys.argsort(dim=1)[:, :T].to(labels.device)
    return perm.gather(1, labels.long())
