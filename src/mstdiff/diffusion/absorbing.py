"""Absorbing (masked) discrete diffusion of locations, with carry-over of unmasked tokens.

D3PM-absorbing (Austin et al. 2021, §3) in the parameterisation of MDLM (Sahoo et al. 2024, "SUBS":
zero-masking and carry-over). The states are the N stations plus one mask state ``m = N``.
With keep-probabilities ``ᾱ_0 = 1 > ᾱ_1 > … > ᾱ_S = 0``::

    q(l_s | l_0)            = ᾱ_s · onehot(l_0) + (1 − ᾱ_s) · onehot(m)
    q(l_{s−1} | l_s, l_0)   = onehot(l_s)                                   if l_s ≠ m
                            = u_s · onehot(l_0) + (1 − u_s) · onehot(m)     if l_s = m
    p_θ(l_{s−1} | l_s)      = the same with l_0 replaced by softmax(z)        (carry-over, zero-masking)
    u_s = (ᾱ_{s−1} − ᾱ_s) / (1 − ᾱ_s)                                        (probability to unmask)

so the KL of one step is ``u_s · CE(l_0, z)`` on the masked tokens and 0 elsewhere: the loss is a
weighted masked cross-entropy (MDLM eq. 10 in discrete time). ``Q̄_S`` is the point mass on the
mask (the stationary law): sampling starts from an all-masked sequence and each step unmasks some
tokens; a token once unmasked never changes (DESIGN §1, "Location noise: a choice of process").

Why this process and not the graph one: on Shanghai Telecom the graph process keeps a token with
probability < 0.07 per step for s ≥ 30 and its exact reverse kernel then freezes whatever the
first steps drew. Here a token is decided once, by the network, when it is unmasked, with all
tokens decided before it as context.

Sampling order (:meth:`AbsorbingProcess.sample_reverse`): ``"random"`` unmasks each masked token
independently with probability ``u_s`` (the exact ancestral step). ``"confidence"`` draws how many
tokens of a sample to unmask from the same binomial law, but unmasks the ones whose drawn station
is most probable first (MaskGIT, Chang et al. 2022): the count per step is the process's, the
order is the network's. ``"single"`` (:meth:`AbsorbingProcess.plan_single`) unmasks exactly one
token per network call, chosen uniformly among the masked ones, at the step that most plausibly
holds that many masked tokens: the random order in the limit S → ∞, where no two tokens of a
sample are drawn from one call without seeing each other (with S = 200 and T = 48, the random
order draws about 5.6 pairs of a day's tokens from the same call); T calls instead of S.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mstdiff.diffusion.common import check_steps, sample_categorical
from mstdiff.errors import InputError

ABSORBING_SCHEDULES = ("linear", "cosine")
UNMASK_ORDERS = ("random", "confidence", "single")
FORMAT = "mstdiff.AbsorbingProcess"


def absorbing_schedule(num_steps: int, kind: str = "linear") -> np.ndarray:
    """Keep-probabilities ``ᾱ_0..ᾱ_S`` (float64): ``ᾱ_0 = 1``, ``ᾱ_S = 0``, strictly decreasing.

    * ``"linear"`` (default, MDLM): ``ᾱ_s = 1 − s/S``, so ``u_s = 1/s``;
    * ``"cosine"``: ``ᾱ_s = cos(π s / 2S)`` (fewer tokens masked at small s).
    """
    if num_steps < 1:
        raise InputError(f"num_steps = {num_steps} must be at least 1", where="absorbing schedule")
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if kind == "linear":
        keep = 1.0 - u
    elif kind == "cosine":
        keep = np.cos(0.5 * np.pi * u)
    else:
        raise InputError(f"unknown absorbing schedule {kind!r}", where="location process",
                         fix=f"use one of {ABSORBING_SCHEDULES}")
    keep[0], keep[-1] = 1.0, 0.0
    return keep


class AbsorbingProcess(nn.Module):
    """Masked noise over N stations plus the mask state ``mask_id = N``; parameter-free (buffers only).

    Shapes: ``l0: Long[B, T]`` in ``0..N−1``; ``l_s: Long[B, T]`` in ``0..N`` (N = mask);
    ``s: Long[B]`` in ``0..S``; distributions are ``Float[B, T, N + 1]`` (last column = mask).
    """

    keep_bar: Tensor  # (S+1,) ᾱ_s, the probability that a token is still unmasked at step s
    unmask: Tensor  # (S+1,) u_s = (ᾱ_{s−1} − ᾱ_s) / (1 − ᾱ_s); u_0 = 0 (unused)

    def __init__(self, num_states: int, num_steps: int = 50, *, schedule: str = "linear") -> None:
        super().__init__()
        if num_states < 1:
            raise InputError(f"num_states = {num_states} must be positive", where="AbsorbingProcess")
        keep = absorbing_schedule(num_steps, schedule)
        unmask = np.zeros_like(keep)
        unmask[1:] = (keep[:-1] - keep[1:]) / (1.0 - keep[1:])
        self._n, self._S, self.schedule = int(num_states), int(num_steps), schedule
        self.register_buffer("keep_bar", torch.tensor(keep, dtype=torch.float32))
        self.register_buffer("unmask", torch.tensor(unmask, dtype=torch.float32))

    # ------------------------------------------------------------------ properties
    @property
    def num_states(self) -> int:
        """N, the stations (the mask is one more token: :attr:`mask_id`)."""
        return self._n

    @property
    def num_steps(self) -> int:
        return self._S

    @property
    def mask_id(self) -> int:
        return self._n

    @property
    def num_tokens(self) -> int:
        """N + 1: the stations and the mask."""
        return self._n + 1

    def stationary(self) -> Tensor:
        """``Q̄_S[x, :]`` for every x: the point mass on the mask, ``Float[N + 1]``."""
        p = torch.zeros(self.num_tokens, device=self.keep_bar.device)
        p[self.mask_id] = 1.0
        return p

    # ------------------------------------------------------------------ checks
    def _steps(self, loc: Tensor, s: Tensor | int, name: str, s_min: int = 0) -> Tensor:
        return check_steps(loc, s, name, self._S, s_min)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, l0: Tensor, s: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``l_s``: ``l0`` kept with probability ``ᾱ_s``, else the mask."""
        s = self._steps(l0, s, "l0")
        gen_device = generator.device if generator is not None else l0.device
        u = torch.rand(l0.shape, generator=generator, device=gen_device).to(l0.device)
        keep = self.keep_bar.to(l0.device)[s][:, None]  # (B, 1)
        return torch.where(u < keep, l0.long(), torch.full_like(l0.long(), self.mask_id))

    def marginal(self, l0: Tensor, s: Tensor) -> Tensor:
        """``q(l_s | l0)``: ``Float[B, T, N + 1]``."""
        s = self._steps(l0, s, "l0")
        keep = self.keep_bar[s].to(l0.device)[:, None, None]  # (B, 1, 1)
        out = torch.nn.functional.one_hot(l0.long(), self.num_tokens).float() * keep
        out[..., self.mask_id] = 1.0 - keep[..., 0]
        return out

    def posterior(self, x0: Tensor, l_s: Tensor, s: Tensor) -> Tensor:
        """``q(l_{s−1} | l_s, x0)`` for ids ``Long[B, T]`` or probabilities ``Float[B, T, N]`` over ``l0``."""
        s = self._steps(l_s, s, "l_s", s_min=1)
        if x0.dtype in (torch.int32, torch.int64):
            if x0.shape != l_s.shape:
                raise ValueError(f"x0 shape {tuple(x0.shape)} differs from l_s shape {tuple(l_s.shape)}")
            p0 = torch.nn.functional.one_hot(x0.long(), self._n).float()
        else:
            if x0.shape != (*l_s.shape, self._n):
                raise ValueError(f"x0 must be Float[B, T, N={self._n}], got {tuple(x0.shape)}")
            p0 = x0.float()
        u = self.unmask[s].to(l_s.device)[:, None, None]  # (B, 1, 1)
        masked = (l_s == self.mask_id).unsqueeze(-1)  # (B, T, 1)
        from_mask = torch.cat([u * p0, (1.0 - u).expand(*p0.shape[:-1], 1)], dim=-1)  # (B, T, N+1)
        stay = torch.nn.functional.one_hot(l_s.long(), self.num_tokens).to(from_mask.dtype)
        return torch.where(masked, from_mask, stay)

    def reverse_probs(self, logits_x0: Tensor, l_s: Tensor, s: Tensor) -> Tensor:
        """``p_θ(l_{s−1} | l_s)``: the posterior with ``l0 ~ softmax(logits)``; differentiable."""
        return self.posterior(torch.softmax(logits_x0.float(), dim=-1), l_s, s)

    # ------------------------------------------------------------------ loss
    def location_losses(self, l0: Tensor, logits_x0: Tensor, l_s: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Per token ``(KL(q(l_{s−1}|l_s,l0) ‖ p_θ(l_{s−1}|l_s)), masked CE)``, ``Float[B, T]`` each.

        KL ``= u_s · CE(l0, z)`` on masked tokens, 0 on the others (exact; at s = 1, ``u_1 = 1``
        and it is ``−log p_θ(l0 | l_1)``). The second term is the CE of the masked tokens divided
        by ``1 − ᾱ_s``: its mean over the tokens of a batch estimates, without bias, the mean CE per
        masked token at every step (the auxiliary loss of the objective).
        """
        s = self._steps(l_s, s, "l_s", s_min=1)
        if l0.shape != l_s.shape:
            raise ValueError(f"l0 shape {tuple(l0.shape)} differs from l_s shape {tuple(l_s.shape)}")
        b, t = l_s.shape
        nll = torch.nn.functional.cross_entropy(
            logits_x0.reshape(b * t, -1).float(), l0.reshape(-1).long(), reduction="none").reshape(b, t)
        masked = (l_s == self.mask_id).to(nll.dtype)
        u = self.unmask[s].to(nll.device)[:, None]  # (B, 1)
        frac = (1.0 - self.keep_bar[s]).to(nll.device)[:, None]  # (B, 1), > 0 for s ≥ 1
        return masked * u * nll, masked * nll / frac

    def location_losses_rows(self, l0: Tensor, logits_rows: Tensor, rows: Tensor, l_s: Tensor,
                             s: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`location_losses` summed over the tokens, from the logits of the masked tokens only.

        ``rows (M,)`` are the flat indices (into the B·T tokens) of the masked tokens of ``l_s`` in
        increasing order and ``logits_rows (M, N)`` their logits; the unmasked tokens contribute 0
        to both terms, so nothing else is needed. Returns the two sums (scalars): divided by B·T
        they equal the means of the dense per-token terms.
        """
        s = self._steps(l_s, s, "l_s", s_min=1)
        b, t = l_s.shape
        if rows.numel() == 0:
            zero = logits_rows.sum() * 0.0  # keeps the graph (every parameter gets a gradient)
            return zero, zero
        nll = torch.nn.functional.cross_entropy(logits_rows.float(), l0.reshape(-1)[rows].long(),
                                                reduction="none")  # (M,)
        sb = s[rows // t]  # (M,) each token's step
        u = self.unmask[sb].to(nll.device)
        frac = (1.0 - self.keep_bar[sb]).to(nll.device)
        return (u * nll).sum(), (nll / frac).sum()

    # ------------------------------------------------------------------ sampling
    def sample_prior(self, shape: tuple[int, int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """``l_S``: every token masked (``Q̄_S`` is the point mass on the mask)."""
        dev = device if device is not None else self.keep_bar.device
        return torch.full(shape, self.mask_id, dtype=torch.long, device=dev)

    def row_cache(self) -> None:
        """No rows to cache (the hybrid sampler asks every process for one)."""
        return None

    @torch.no_grad()
    def sample_reverse(
        self, logits_x0: Tensor, l_s: Tensor, s: Tensor, generator: torch.Generator | None = None,
        cache: Any = None, *, order: str = "random",
    ) -> Tensor:
        """``l_{s−1}``: unmasked tokens carried over; masked ones unmasked with ``softmax(z)``.

        ``order = "random"``: each masked token unmasks with probability ``u_s`` (exact).
        ``"confidence"``: ``k ~ Binomial(#masked, u_s)`` per sample, and the k masked tokens whose
        drawn station has the highest probability unmask.
        """
        s = self._steps(l_s, s, "l_s", s_min=1)
        b, t = l_s.shape
        if logits_x0.shape != (b, t, self._n):
            raise ValueError(f"logits must be Float[B, T, N={self._n}], got {tuple(logits_x0.shape)}")
        rows, k = self.plan_reverse(l_s, s, generator, order=order)
        return self.finish_reverse(logits_x0.reshape(b * t, self._n)[rows], rows, k, l_s, generator)

    @torch.no_grad()
    def plan_reverse(self, l_s: Tensor, s: Tensor, generator: torch.Generator | None = None, *,
                     order: str = "random") -> tuple[Tensor, Tensor | None]:
        """The first half of :meth:`sample_reverse`, which needs no network output: which tokens
        need the network's ``l0`` distribution at this step.

        Returns ``(rows, k)``: flat indices (into the B·T tokens, increasing) and, for the
        confidence order, how many tokens of each sample unmask (``k (B,)``; None for the random
        order). Random order: the masked tokens that unmask now (each with probability ``u_s``);
        confidence order: every masked token (the network ranks them). So a sampler can ask the
        network for those rows only (a token unmasks once in S steps).
        """
        if order not in UNMASK_ORDERS:
            raise InputError(f"unmask order {order!r} is unknown", fix=f"use one of {UNMASK_ORDERS}")
        if order == "single":
            raise InputError("unmask order 'single' chooses its own steps",
                             where="AbsorbingProcess.plan_reverse",
                             fix="call plan_single (HybridDiffusion.sample does)")
        s = self._steps(l_s, s, "l_s", s_min=1)
        b, t = l_s.shape
        masked = l_s == self.mask_id  # (B, T)
        u_s = self.unmask[s].to(l_s.device)  # (B,)
        gen_device = generator.device if generator is not None else l_s.device
        coin = torch.rand((b, t), generator=generator, device=gen_device).to(l_s.device)
        if order == "random":
            return (masked & (coin < u_s[:, None])).reshape(-1).nonzero().squeeze(-1), None
        k = (masked & (coin < u_s[:, None])).sum(-1)  # (B,) ~ Binomial(#masked, u_s)
        return masked.reshape(-1).nonzero().squeeze(-1), k

    def step_for_masked(self, masked: Tensor, T: int) -> Tensor:
        """The step at which ``masked`` of ``T`` masked tokens are most likely, for ``masked (B,)``
        in ``1..T``: ``argmax_s Binomial(masked; T, 1 − ᾱ_s)`` over ``s = 1..S`` (linear schedule:
        about ``S · masked / T``); ``Long[B]``."""
        if T < 1 or bool(((masked < 1) | (masked > T)).any()):
            raise ValueError(f"masked counts must lie in 1..T = {T}")
        keep = self.keep_bar[1:].double().to(masked.device)  # ᾱ_1..ᾱ_S
        j = masked.double()[:, None]
        tiny = torch.finfo(torch.float64).tiny
        ll = j * (1.0 - keep).clamp_min(tiny).log() + (T - j) * keep.clamp_min(tiny).log()  # (B, S)
        return ll.argmax(-1) + 1

    @torch.no_grad()
    def plan_single(self, l_s: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Order ``"single"``: one masked token of every sample that has one, uniformly at random,
        and the step to score it at (:meth:`step_for_masked` of the sample's masked count).

        Returns ``(rows, s)``: flat indices into the B·T tokens (increasing; one per sample with a
        masked token) and ``s (B,)`` (1 for a sample with none, whose row is absent). The token is
        then drawn by :meth:`finish_reverse` with ``k = None``.
        """
        b, t = l_s.shape
        masked = l_s == self.mask_id
        count = masked.sum(-1)
        gen_device = generator.device if generator is not None else l_s.device
        key = torch.rand((b, t), generator=generator, device=gen_device).to(l_s.device)
        pick = torch.where(masked, key, torch.full_like(key, -1.0)).argmax(-1)  # a uniform masked slot
        has = count > 0
        rows = (torch.arange(b, device=l_s.device) * t + pick)[has]
        s = torch.ones(b, dtype=torch.long, device=l_s.device)
        if bool(has.any()):
            s[has] = self.step_for_masked(count[has], t)
        return rows, s

    @torch.no_grad()
    def finish_reverse(self, logits_rows: Tensor, rows: Tensor, k: Tensor | None, l_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """The second half of :meth:`sample_reverse`: ``l_{s−1}`` from the logits ``(M, N)`` of the
        ``rows`` that :meth:`plan_reverse` returned (``k`` too)."""
        b, t = l_s.shape
        out = l_s.clone().reshape(-1)
        if not rows.numel():
            return l_s.clone()
        if logits_rows.shape != (rows.numel(), self._n):
            raise ValueError(f"logits must be Float[M={rows.numel()}, N={self._n}], "
                             f"got {tuple(logits_rows.shape)}")
        probs = torch.softmax(logits_rows.float(), dim=-1)
        x = sample_categorical(probs, generator).to(out.device)
        if k is None:  # random order: every planned row unmasks
            out[rows] = x
            return out.reshape(b, t)
        # confidence order: how many from the process, which ones from the network
        score = torch.full((b * t,), -math.inf, device=l_s.device)
        score[rows] = probs.gather(-1, x[:, None].to(probs.device)).squeeze(-1).to(score.device)
        cand = torch.full((b * t,), self.mask_id, dtype=torch.long, device=l_s.device)
        cand[rows] = x
        rank = score.reshape(b, t).argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = most confident
        unmask = (l_s == self.mask_id) & (rank < k[:, None])
        return torch.where(unmask, cand.reshape(b, t), l_s)

    # ------------------------------------------------------------------ files
    def state(self) -> dict[str, Any]:
        return {"format": FORMAT, "num_states": self._n, "num_steps": self._S, "schedule": self.schedule}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> AbsorbingProcess:
        if st.get("format") != FORMAT:
            raise InputError("not an AbsorbingProcess state", where="location process")
        return cls(int(st["num_states"]), int(st["num_steps"]), schedule=str(st["schedule"]))

    def extra_repr(self) -> str:
        return f"N={self._n}, S={self._S}, schedule={self.schedule!r}"
