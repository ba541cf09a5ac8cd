"""The pointer/copy output head of the denoiser: copy a station of the day's input, move to a new
one (near on the map, or by a gravity model of the move), or draw from the station table.

A tied table head alone learned nothing in 250 steps on N ≈ 2,000 (DESIGN §1, "Location output must
be able to copy"); :class:`CopyHead` is the mixture :class:`~mstdiff.models.denoiser.MSTDiffDenoiser`
puts on top of its full-resolution location tokens.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from mstdiff.errors import InputError

if TYPE_CHECKING:
    from mstdiff.models.denoiser import DenoiserConfig

logger = logging.getLogger(__name__)


def nearest_filled(valid: Tensor) -> tuple[Tensor, Tensor]:
    """For each slot of ``valid (B, T)`` the nearest filled slot strictly before and strictly after
    it: two Long ``(B, T)``, −1 where there is none."""
    B, T = valid.shape
    idx = torch.arange(T, device=valid.device)
    filled = torch.where(valid, idx, -1)  # (B, T)
    before = torch.cat([filled.new_full((B, 1), -1), filled.cummax(1).values[:, :-1]], 1)
    rev = torch.where(valid, T - 1 - idx, -1).flip(1)  # positions counted from the end
    after = torch.cat([rev.new_full((B, 1), -1), rev.cummax(1).values[:, :-1]], 1).flip(1)
    return before, torch.where(after >= 0, T - 1 - after, -1)


def station_at(ids: Tensor, slot: Tensor) -> Tensor:
    """The station of ``ids (B, T)`` at ``slot (B, T)`` (as from :func:`nearest_filled`), −1 where
    the slot is −1 (no such slot)."""
    return torch.where(slot >= 0, ids.gather(1, slot.clamp_min(0)), -1)


class CopyHead(nn.Module):
    """Pointer/copy output: a mixture of copying, moving nearby and the station table.

    ``p(j) = g_copy · Σ_{t' : l[t'] = j} a(t, t') + g_near · Σ_{t'} a(t, t') K(l[t'], j)
    + g_table · softmax(table)_j``, with

    * ``a(t, ·)``: attention of slot t over the input slots that hold a station (masked slots
      excluded), scores ``q_t · k_{t'} / √d + b(t' − t)``; the relative-time bias ``b`` starts at
      ``−|t' − t| / 2``, so a slot first copies its neighbours in time;
    * ``K(x, ·)``: a fixed kernel over the ``near_k`` stations nearest to x on the map,
      ``∝ exp(−dist / d₀)`` (:meth:`MSTDiffDenoiser.set_station_coordinates_`): moving to a new
      station near one the sequence holds — real users move a median 2.7 km on Shanghai Telecom,
      while a table head alone draws new stations from the whole city (median 22 km);
    * with ``copy_nearest``, learned biases ``β_prev, β_next`` added to the score of the nearest
      filled slot before and after t, by the context of those slots (the rows of
      :meth:`context_index`; init 2, or the training set's best, :meth:`MSTDiffDenoiser.init_copy_context_`):
      a copy prefers the stations that bracket the gap (on GeoLife the true station of a masked
      slot is one of those two in 92 % of the cases and another input station in 1.4 %, but the
      head without the biases gave those others 6 %; with one β for all contexts, the copy between
      two slots of one stay still took another station of the day 2 % of the time, 17× the data's
      rate, the source of more than half of the one-slot blips A-X-A of the samples); and
      learned gate logits by the context of those two slots (:meth:`context_index`: inside a stay,
      at a boundary, one-sided, by span). Without them the gate gave a new station 8–11 % inside a
      stay (truth 0.3 %) and 16 % between two different stations (truth 38–44 %): a constant rate
      of moves, which doubled the moves per day;
    * with ``copy_split``, the copy in two gated parts: attention renormalised over the slots that
      hold a station of the nearest filled slots (stay, step back) and over the slots that hold
      another one (a return to an earlier place), each with its odds by context (a single copy
      took another station of the day 9.9 % of the time at boundaries, against 3.3–3.8 % real);
      with ``copy_motion``, the context also says on which side the user was moving
      (:meth:`context_index`), so a slot between two cells of a trip differs from one between stays;
    * gates ``g = softmax(W h_t)`` over the parts; without any station in the input (s = S of the
      absorbing process), the table alone;
    * with ``move_decay``, the table's logits become those of a gravity model of the move:
      ``z_j − Σ_{side} c_side(t) · log(1 + d(x_side, j) / d₁)``, i.e. popularity times a truncated
      power law ``(d₁ + d)^(−c)`` of the distance (the form of human jump lengths, González et al.
      2008), where ``x_prev`` / ``x_next`` are the stations of the nearest filled slots before and
      after t, ``d₁`` the median distance of a station to its nearest one, and the exponents
      ``c = W' h_t + G[gap]`` (zero at init: the plain table) depend on the token and on how many
      slots away that neighbour is; the stations the input holds are left out of it (``−∞``): a
      move goes to a new place, a stay or a return is the copy's. Without that the decay's mode is
      the neighbour's own station, it learns to be a second copy, and its spill-over lands on the
      adjacent cells (GeoLife: median jump 0.34 km against 1.55 km real). Real moves on GeoLife
      have a heavy tail (28 % within the 16 nearest of 23,768 cells, 72 % within 1,024, 86 %
      within 4,096): a fixed kernel over the k nearest cells covers the first part only, and the
      table alone draws the rest city-wide.

    A location network with only the tied table head learned nothing in 250 steps on N ≈ 2,000
    (top-1 = truth 0.1 % at s = 1, DESIGN §1); copying is what a denoiser of mostly-unchanged
    tokens needs first. Returns log-probabilities ``(B, T, N)``.
    """

    near_idx: Tensor  # (N, k) nearest stations on the map (itself excluded)
    near_w: Tensor  # (N, k) kernel weights, rows sum to 1
    xy: Tensor  # (N, 2) station positions in units of d₁ (move_decay; zeros until coordinates are given)
    d_unit: Tensor  # () d₁: median distance of a station to its nearest one, km (move_decay)

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        d, T = cfg.d_model, cfg.seq_len
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.near = cfg.near_k > 0
        self.split = bool(getattr(cfg, "copy_split", False))
        G = 2 + int(self.near) + int(self.split)
        self.gate = nn.Linear(d, G)  # (copy, table[, near][, other]) logits
        self.T = T
        self.rel_bias = nn.Embedding(2 * T - 1, 1)  # b(Δ) at row Δ + T − 1; set by reset_bias_
        k = max(cfg.near_k, 1)
        # until coordinates are given, every station's only "neighbour" is itself (near = copy)
        self.register_buffer("near_idx", torch.arange(cfg.num_stations)[:, None].expand(-1, k).clone())
        self.register_buffer("near_w", torch.full((cfg.num_stations, k), 1.0 / k))
        self.decay: nn.Linear | None = None
        self.decay_gap: nn.Embedding | None = None
        if cfg.move_decay:
            self.decay = nn.Linear(d, 2)  # exponents of the (prev, next) neighbours
            self.decay_gap = nn.Embedding(T + 1, 2)  # row 0: no such neighbour; row g: g slots away
            self.register_buffer("xy", torch.zeros(cfg.num_stations, 2))
            self.register_buffer("d_unit", torch.tensor(1.0))
        # attention bias toward the nearest filled slot (before, after) by the context of those two
        # slots (the rows of gate_context): inside a stay the copy is the bracket's station, at a
        # boundary a return to an earlier station is likelier; 2 after reset_bias_, fitted by
        # init_context_
        self.motion = bool(getattr(cfg, "copy_motion", False))
        self.table_new = bool(getattr(cfg, "table_new", False))
        rows = 5 * 8 * (4 if self.motion else 1)
        self.nearest_bias = nn.Embedding(rows, 2) if cfg.copy_nearest else None  # biases, kept as a table
        # gate logits by the context of the nearest filled slots: none / before only / after only /
        # both with the same station / both with different ones, × 8 span lengths; zero at init
        self.gate_context = nn.Embedding(rows, G) if cfg.copy_nearest else None
        self.reset_bias_()

    @torch.no_grad()
    def reset_bias_(self) -> None:
        """``b(Δ) = −|Δ| / 2`` (call after a generic re-initialisation of the weights)."""
        T = self.T
        self.rel_bias.weight.copy_(-0.5 * torch.arange(-(T - 1), T).abs().float()[:, None])
        if self.nearest_bias is not None:
            self.nearest_bias.weight.fill_(2.0)
        if self.gate_context is not None:
            self.gate_context.weight.zero_()
        if self.decay is not None and self.decay_gap is not None:  # the plain table at init
            self.decay.weight.zero_()
            self.decay.bias.zero_()
            self.decay_gap.weight.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint of the build before the pull by context holds one (β_prev, β_next): every row
        key = prefix + "nearest_bias.weight"
        old = state_dict.get(key)
        if self.nearest_bias is not None and old is not None and tuple(old.shape) == (2, 1):
            state_dict[key] = old[:, 0][None, :].expand_as(self.nearest_bias.weight).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def context_index(source: Tensor, before: Tensor, after: Tensor, valid: Tensor | None = None) -> Tensor:
        """Row of ``gate_context`` per token ``(B, T)``: ``8 · kind + span``, kind 0 no filled slot,
        1 one before only, 2 one after only, 3 both holding the same station (inside a stay), 4 both
        holding different ones (a boundary); span = slots between them (or to the one) − 1, capped at 7.
        ``source`` ids or probabilities (their likeliest station).

        With ``valid (B, T)`` (``copy_motion``), ``+ 40 · (2 · moving_before + moving_after)``:
        ``moving_before`` when the slot just before the nearest filled slot before is filled too
        and holds another station (the user arrived there in that slot), ``moving_after`` likewise
        for the slot just after the nearest filled slot after."""
        ids = source if not source.is_floating_point() else source.argmax(-1)
        T = before.shape[1]
        motion = None
        if valid is not None:
            def moving(o: Tensor, beyond: Tensor) -> Tensor:  # o filled, beyond = its outer neighbour
                ok = (o >= 0) & (beyond >= 0) & (beyond < T)
                bc = beyond.clamp(0, T - 1)
                return ok & valid.gather(1, bc) & (ids.gather(1, bc) != ids.gather(1, o.clamp_min(0)))

            motion = 2 * moving(before, before - 1).long() + moving(after, after + 1).long()
        idx = torch.arange(T, device=before.device)
        hb, ha = before >= 0, after >= 0
        sb = ids.gather(1, before.clamp_min(0))
        sa = ids.gather(1, after.clamp_min(0))
        kind = torch.where(hb & ha, torch.where(sb == sa, 3, 4),
                           torch.where(hb, 1, torch.where(ha, 2, 0)))
        span = torch.where(hb & ha, after - before - 1,
                           torch.where(hb, idx - before, torch.where(ha, after - idx, 1)))
        row = 8 * kind + (span - 1).clamp(0, 7)
        return row if motion is None else row + 40 * motion

    def move_terms(self, h: Tensor, source: Tensor, valid: Tensor, rows: Tensor,
                   nearest: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The gravity terms added to the table logits of the wanted tokens: ``(M, N)``.

        ``h (M, d)`` those tokens' features; ``source (B, T)`` station ids, ``valid (B, T)``;
        ``nearest``: :func:`nearest_filled` of ``valid`` when the caller has it already."""
        assert self.decay is not None and self.decay_gap is not None
        T = valid.shape[1]
        before, after = nearest if nearest is not None else nearest_filled(valid)
        b, t = rows // T, rows % T
        coef = self.decay(h).float()  # (M, 2)
        sides = (before[b, t], after[b, t])  # (M,) slot or −1 each
        st = [source[b, o.clamp_min(0)].long().clamp(0, self.xy.shape[0] - 1) for o in sides]  # (M,)
        # the distance feature of each distinct source station once (rows share the stations of a
        # stay), a fixed function of the map: no graph through it
        uniq, inv = torch.unique(torch.cat(st), return_inverse=True)
        with torch.no_grad():
            x0 = self.xy[uniq]  # (U, 2), in units of d₁; direct differences (cdist's matmul cancels)
            f = torch.hypot(x0[:, :1] - self.xy[:, 0], x0[:, 1:] - self.xy[:, 1]).log1p_()  # (U, N)
        M = rows.numel()
        out: Tensor | None = None
        for side, other in enumerate(sides):
            has = other >= 0
            gap = torch.where(has, (other - t).abs(), 0)
            c = (coef[:, side] + self.decay_gap(gap)[:, side]) * has  # (M,): no neighbour, no term
            fs = f[inv[side * M:(side + 1) * M]]  # (M, N)
            out = fs.mul(-c[:, None]) if out is None else torch.addcmul(out, fs, -c[:, None])
        assert out is not None
        return out

    def forward(self, h: Tensor, keys: Tensor, source: Tensor, valid: Tensor, table: Tensor,
                rows: Tensor | None = None) -> Tensor:
        """``h, keys (B, T, d)``; ``source``: ids ``(B, T)`` or probabilities ``(B, T, N)`` of the
        input stations; ``valid (B, T)`` bool (the slot holds a station); ``table (B, T, N)`` logits.

        ``rows (M,)``: flat indices into the B·T tokens; then ``table`` is ``(M, N)`` (those tokens'
        rows) and so is the output: only the wanted rows cost O(N)."""
        B, T, d = h.shape
        idx = torch.arange(T, device=h.device)
        rel = self.rel_bias.weight[(idx[None, :] - idx[:, None]) + (self.T - 1), 0]  # (T, T): b(t' − t)
        scores = (self.q(h) @ self.k(keys).transpose(1, 2)) / math.sqrt(d) + rel  # (B, T, T)
        soft = source.is_floating_point()
        ids = source if not soft else source.argmax(-1)  # probabilities: their likeliest station
        # (B, T) nearest filled slot before / after each token (−1: none), for either option
        nearest = nearest_filled(valid) if self.nearest_bias is not None or self.decay is not None else None
        ctx_gate: Tensor | None = None
        if self.nearest_bias is not None and self.gate_context is not None and nearest is not None:
            ctx = self.context_index(ids, *nearest, valid if self.motion else None)  # (B, T)
            beta = self.nearest_bias(ctx)  # (B, T, 2): the pull toward the slot before / after
            for side, other in enumerate(nearest):
                hit = (other[..., None] == idx).to(beta.dtype)  # (B, T, T'): t' is that nearest slot of t
                scores = scores + beta[..., side:side + 1] * hit
            ctx_gate = self.gate_context(ctx).float()
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        anyv = valid.any(-1)[:, None, None]  # (B, 1, 1)
        attn = torch.softmax(scores, dim=-1).nan_to_num(0.0).float()  # (B, T, T); all-masked rows: 0
        glog = self.gate(h).float()  # (B, T, G): copy, table[, near][, other]
        if ctx_gate is not None:
            glog = glog + ctx_gate
        # no station in the input: only the table (the other gates closed)
        closed = torch.zeros_like(glog).masked_fill(~anyv, float("-inf"))
        closed[..., 1] = 0.0
        attn_o: Tensor | None = None
        if self.split:  # the copy of the bracketing stations and that of the others, apart
            assert nearest is not None
            bracket = torch.zeros_like(attn, dtype=torch.bool)  # (B, T, T'): t' holds a bracket station
            for other in nearest:
                st = station_at(ids, other)  # (B, T)
                bracket |= (ids[:, None, :] == st[:, :, None]) & (other >= 0)[:, :, None]
            rest = valid[:, None, :] & ~bracket
            attn_o = attn * rest
            attn = attn * bracket
            attn_o = attn_o / attn_o.sum(-1, keepdim=True).clamp_min(1e-30)
            attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-30)
            closed[..., -1] = closed[..., -1].masked_fill(~rest.any(-1), float("-inf"))
        gate = torch.softmax(glog + closed, dim=-1)  # (B, T, G)
        N = table.shape[-1]
        dense = rows is None
        if rows is None:
            rows = torch.arange(B * T, device=h.device)
        M = rows.numel()
        attn_r = attn.reshape(B * T, T)[rows]  # (M, T): the wanted tokens' attention over the slots
        gate_r = gate.reshape(B * T, -1)[rows]  # (M, G)
        table = table.reshape(M, N).float()
        if self.decay is not None:
            table = table + self.move_terms(h.reshape(B * T, d)[rows], ids, valid, rows, nearest)
        if self.decay is not None or self.table_new:
            # the move goes to a new place: the stations of the input are the copy's to give
            held = torch.zeros(M, N, device=h.device)  # (M, N): > 0 at the input's stations
            held.scatter_add_(1, ids.long().clamp(0, N - 1)[rows // T], valid[rows // T].float())
            table = table.masked_fill(held > 0, float("-inf"))
        p = gate_r[:, 1:2] * torch.softmax(table, dim=-1)  # (M, N)
        if soft:  # probabilities: the copy distribution is attn @ source, the near one that times K
            c = (attn @ source.to(p.dtype)).reshape(B * T, N)[rows]  # (M, N)
            p = p + gate_r[:, :1] * c
            if attn_o is not None:
                p = p + gate_r[:, -1:] * (attn_o @ source.to(p.dtype)).reshape(B * T, N)[rows]
            if self.near:
                k = self.near_idx.shape[1]
                cols = torch.arange(N, device=c.device).repeat_interleave(k)
                K = torch.sparse_coo_tensor(torch.stack([self.near_idx.reshape(-1), cols]),
                                            self.near_w.reshape(-1).to(c.dtype), (N, N),
                                            check_invariants=False)  # Kᵀ
                p = p + gate_r[:, 2:3] * torch.sparse.mm(K, c.t()).t()
        else:
            src = source.long().clamp(max=N - 1)[rows // T]  # (M, T); masked slots have weight 0 anyway
            p = p.scatter_add(-1, src, gate_r[:, :1] * attn_r)
            if attn_o is not None:
                p = p.scatter_add(-1, src, gate_r[:, -1:] * attn_o.reshape(B * T, T)[rows])
            if self.near:
                k = self.near_idx.shape[1]
                nbr = self.near_idx[src].reshape(M, T * k)  # (M, T·k)
                w = (attn_r[..., None] * self.near_w[src]).reshape(M, T * k)  # (M, T·k)
                p = p.scatter_add(-1, nbr, gate_r[:, 2:3] * w)
        logp = p.clamp_min(1e-30).log()  # (M, N)
        return logp.reshape(B, T, N) if dense else logp

    @torch.no_grad()
    def init_context_(self, locations: np.ndarray, *, seed: int = 0, draws: int = 8) -> None:
        """Start the context gate (``copy_nearest``) at the training set's odds: for each
        context row (:meth:`context_index`), ``log`` of the share of masked tokens whose true
        station is one the input holds (copy) against the rest (table, and near if on), over ``draws``
        random maskings of ``locations (U, T)`` at uniform rates. Adam moves a single logit by about
        the learning rate per step, so a gate bias learned from zero stays near zero for hundreds of
        steps; this is the unigram-prior idea of
        :meth:`~mstdiff.models.denoiser.MSTDiffDenoiser.init_station_prior_` for the gate.

        The pull toward the nearest filled slots (``nearest_bias``) starts, per context row, at the
        β of a grid 0, 0.5, …, 10 under which the head's attention at init (the relative-time bias
        plus β on those two slots) gives the true station of those tokens the highest likelihood
        (rows with fewer than 50 such tokens keep 2)."""
        if self.gate_context is None:
            return
        L = torch.as_tensor(np.asarray(locations), dtype=torch.long)
        if L.dim() != 2 or L.shape[1] != self.T:
            raise InputError(f"locations have shape {tuple(L.shape)}, expected (U, {self.T})")
        rows = self.gate_context.weight.shape[0]
        n, hit = torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64)
        hit_o = torch.zeros(rows, dtype=torch.float64)  # copies of a station outside the bracket
        betas = torch.arange(0.0, 10.01, 0.5)
        loglik = torch.zeros(rows, betas.numel(), dtype=torch.float64)  # copy log-likelihood by β
        T = L.shape[1]
        slot = torch.arange(T)
        rel_w = self.rel_bias.weight[:, 0].float()  # b(Δ) at Δ + T − 1
        g = torch.Generator().manual_seed(seed)
        for start in range(0, L.shape[0], 1024):
            Lb = L[start:start + 1024]
            for _ in range(draws):
                rate = torch.rand(Lb.shape[0], 1, generator=g)
                valid = torch.rand(Lb.shape, generator=g) >= rate  # (B, T) filled slots
                before, after = nearest_filled(valid)
                idx = self.context_index(Lb, before, after, valid if self.motion else None)  # (B, T)
                held = ((Lb[:, :, None] == Lb[:, None, :]) & valid[:, None, :]).any(-1)  # (B, T)
                m = ~valid
                n.index_add_(0, idx[m], torch.ones(int(m.sum()), dtype=torch.float64))
                hit.index_add_(0, idx[m], held[m].double())
                if self.split:
                    sides = [station_at(Lb, o) for o in (before, after)]
                    outside = held & (Lb != sides[0]) & (Lb != sides[1])  # held, not a bracket's
                    hit_o.index_add_(0, idx[m], outside[m].double())
                if self.nearest_bias is None:
                    continue
                bi, ti = (m & held).nonzero(as_tuple=True)  # masked tokens a copy can give
                v = valid[bi]  # (K, T)
                truth = (Lb[bi] == Lb[bi, ti][:, None]) & v
                bump = ((slot == before[bi, ti][:, None]) | (slot == after[bi, ti][:, None])).float()
                rel = rel_w[slot[None, :] - ti[:, None] + T - 1]  # (K, T)
                for j, beta in enumerate(betas.tolist()):
                    sc = (rel + beta * bump).masked_fill(~v, float("-inf"))
                    ll = sc.masked_fill(~truth, float("-inf")).logsumexp(-1) - sc.logsumexp(-1)
                    loglik[:, j].index_add_(0, idx[bi, ti], ll.double())
        p = (hit + 1.0) / (n + 2.0)  # a Laplace share: rows never seen stay at 1/2
        new = 1 - p
        cols = [p.log(), new.log()]
        if self.near:
            cols = [p.log(), (new / 2).log(), (new / 2).log()]
        if self.split:  # the copy's share in two: the bracket's stations and the others (Laplace)
            q = (hit_o + 0.5) / (hit + 1.0)
            cols = [(p * (1 - q)).log(), *cols[1:], (p * q).log()]
        w = torch.stack(cols, dim=1)
        self.gate_context.weight.copy_((w - w.mean(1, keepdim=True)).to(self.gate_context.weight))
        if self.nearest_bias is not None:
            best = betas[loglik.argmax(1)]
            best = torch.where(hit >= 50, best, torch.full_like(best, 2.0))  # too few copies: the default
            self.nearest_bias.weight.copy_(best[:, None].expand(-1, 2).to(self.nearest_bias.weight))

    @torch.no_grad()
    def set_coordinates_(self, lat: np.ndarray, lon: np.ndarray) -> None:
        """Fill the map kernel: for each station its ``near_k`` nearest stations (itself
        excluded; equirectangular km) with weights ``∝ exp(−dist / d₀)``, ``d₀`` the median distance
        to them. Stations without coordinates (NaN) keep themselves as their only neighbour."""
        if not (self.near or self.decay is not None):
            return
        from scipy.spatial import cKDTree

        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        N, k = self.near_idx.shape
        if lat.shape != (N,) or lon.shape != (N,):
            raise InputError(f"station coordinates have shape {lat.shape}, expected ({N},)")
        ok = np.isfinite(lat) & np.isfinite(lon)
        if ok.sum() <= k:
            logger.warning("copy head: %d stations with coordinates, the map kernel stays off", int(ok.sum()))
            return
        lat0 = float(np.mean(lat[ok]))
        xy = np.stack([lon * 111.32 * math.cos(math.radians(lat0)), lat * 110.57], axis=1)  # km
        good = np.flatnonzero(ok)
        tree = cKDTree(xy[good])
        if self.decay is not None:
            nn1 = tree.query(xy[good], k=2)[0][:, 1]
            pos = nn1[nn1 > 0]
            self.d_unit.fill_(max(float(np.median(pos)) if pos.size else 1.0, 1e-3))
            # stations without coordinates sit at the centre: their distances carry no information
            centred = (xy - xy[good].mean(0)) / float(self.d_unit)  # float32 keeps precision near 0
            self.xy.copy_(torch.from_numpy(np.where(ok[:, None], centred, 0.0)).to(self.xy))
            logger.info("copy head: move decay over map distances (unit %.3f km)", float(self.d_unit))
        if not self.near:
            return
        dist, j = tree.query(xy[good], k=k + 1)
        dist, j = dist[:, 1:], good[j[:, 1:]]  # drop the station itself
        d0 = max(float(np.median(dist)), 1e-3)
        w = np.exp(-(dist - dist[:, :1]) / d0)
        w /= w.sum(1, keepdims=True)
        idx = self.near_idx.clone()
        ww = self.near_w.clone()
        idx[torch.from_numpy(good)] = torch.from_numpy(j).to(idx)
        ww[torch.from_numpy(good)] = torch.from_numpy(w).to(ww)
        self.near_idx.copy_(idx)
        self.near_w.copy_(ww)
        logger.info("copy head: map kernel over %d nearest stations (median %.2f km)", k, d0)
