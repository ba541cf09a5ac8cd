"""The joint MSTDiff training objective (paper Algorithm 1, DESIGN §1)::

    L = λ1 · MSE(ε, ε̂) + λ2 · KL(q(l_{s-1} | l_s, l0) ‖ p_θ(l_{s-1} | l_s)) + λ3 · CE(l0, z)

- ``MSE`` over all coefficients (traffic branch, DDPM's simple loss);
- ``KL`` per token, summed over the N stations and averaged over the B·T tokens, with
  ``p_θ(l_{s-1} | l_s) = discrete.reverse_probs(z, l_s, s)``. At ``s = 1`` the true posterior is
  the one-hot of ``l0`` and the term is the negative log-likelihood ``−log p_θ(l0 | l_1)`` (the
  D3PM convention for the last term of the variational bound); it is computed as such, so it does
  not rely on the posterior being exactly one-hot in floating point;
- ``CE`` between the network's ``l0`` logits and ``l0``, averaged over tokens (D3PM's auxiliary
  loss; it gives a direct signal at large s where the posterior is nearly uniform).

Probabilities are clamped at ``1e-12`` before the logarithm; ``0 · log 0 = 0`` via ``xlogy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mstdiff.diffusion.common import supports_rows
from mstdiff.diffusion.hybrid import DenoiserOutputLike, DiscreteProcess, HybridDiffusion

logger = logging.getLogger(__name__)

PROB_FLOOR = 1e-12


@dataclass
class LossWeights:
    """λ weights of the joint objective."""

    traffic: float = 1.0  # λ1, ε-MSE of the wavelet coefficients
    trajectory: float = 1.0  # λ2, KL between true and predicted location posteriors
    prediction: float = 0.1  # λ3, auxiliary CE on l0 (D3PM uses a small weight for this term)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.traffic, self.trajectory, self.prediction)


def location_kl(posterior_true: Tensor, probs_pred: Tensor, l0: Tensor, s: Tensor) -> Tensor:
    """Mean over tokens of ``KL(q ‖ p)``, using ``−log p[l0]`` for the samples with ``s = 1``."""
    log_p = probs_pred.clamp_min(PROB_FLOOR).log()  # (B, T, N)
    q = posterior_true.to(log_p.dtype)  # (B, T, N)
    kl = (torch.special.xlogy(q, q.clamp_min(PROB_FLOOR)) - q * log_p).sum(-1)  # (B, T)
    nll = -log_p.gather(-1, l0.unsqueeze(-1)).squeeze(-1)  # (B, T)
    last = (s == 1).view(-1, *([1] * (kl.dim() - 1)))  # (B, 1)
    return torch.where(last, nll, kl).mean()


def joint_loss(
    out: DenoiserOutputLike,
    eps: Tensor,
    posterior_true: Tensor | None,
    l0: Tensor,
    l_s: Tensor,
    s: Tensor,
    discrete: DiscreteProcess,
    weights: LossWeights | tuple[float, float, float] = (1.0, 1.0, 0.1),
    rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached parts ``{"traffic_mse", "location_kl", "location_ce", "total"}``.

    ``posterior_true`` is ``q(l_{s-1} | l_s, l0) (B, T, N)``; pass ``None`` to compute it here with
    ``discrete.posterior(l0, l_s, s)``. ``rows``: the network gave the logits ``(M, N)`` of these
    flat token indices only (the masked tokens of the absorbing process, :func:`wanted_rows`).
    """
    lam = weights.as_tuple() if isinstance(weights, LossWeights) else tuple(float(x) for x in weights)
    # a network without traffic ("MSTDiff without traffic") predicts no ε: no traffic term
    mse = F.mse_loss(out.eps, eps) if out.eps is not None else torch.zeros((), device=l0.device)
    if rows is not None:  # logits of the masked tokens only (absorbing process): same values
        kl_sum, ce_sum = discrete.location_losses_rows(l0, out.logits, rows, l_s, s)  # type: ignore[attr-defined]
        total = lam[0] * mse + lam[1] * kl_sum / l0.numel() + lam[2] * ce_sum / l0.numel()
        return total, {"traffic_mse": mse.detach(), "location_kl": kl_sum.detach() / l0.numel(),
                       "location_ce": ce_sum.detach() / l0.numel(), "total": total.detach()}
    ce: Tensor | None = None
    if lam[1] == 0.0:  # no trajectory KL: skip the transition products entirely
        kl = torch.zeros((), device=mse.device)
    elif posterior_true is None and hasattr(discrete, "location_losses"):
        # fused fast path (same values): one softmax shared by the KL and the CE; at s = 1 the
        # true posterior is one-hot at l0 and the KL is −log p_θ(l0 | l_1)
        kl_tok, ce_tok = discrete.location_losses(l0, out.logits, l_s, s)
        kl, ce = kl_tok.mean(), ce_tok.mean()
    elif posterior_true is None and hasattr(discrete, "posterior_kl"):
        # fast path, same value as below: Q_s[:, l_s] is computed once for both posteriors; at
        # s = 1 (Q̄_0 = I) the true posterior is one-hot at l0 and the KL is −log p_θ(l0 | l_1)
        kl = discrete.posterior_kl(l0, out.logits, l_s, s).mean()
    else:
        if posterior_true is None:
            posterior_true = discrete.posterior(l0, l_s, s)
        probs_pred = discrete.reverse_probs(out.logits, l_s, s)  # (B, T, N)
        kl = location_kl(posterior_true, probs_pred, l0, s)
    if ce is None:
        ce = F.cross_entropy(out.logits.flatten(0, -2), l0.flatten())
    total = lam[0] * mse + lam[1] * kl + lam[2] * ce
    parts = {
        "traffic_mse": mse.detach(),
        "location_kl": kl.detach(),
        "location_ce": ce.detach(),
        "total": total.detach(),
    }
    return total, parts


def condition_masks(shape: tuple[int, ...], rate: float, generator: torch.Generator | None,
                    device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Per-slot "observed" masks ``(B, T)`` for the locations and the activity classes: each sample is
    conditioned with probability ``rate``, then as one of three tasks with equal probability —
    locations given (all slots), traffic given (activity, all slots), or both given on a prefix of
    random length (half the time) or on a random share of the slots."""
    B, T = shape
    gd = generator.device if generator is not None else torch.device("cpu")

    def rand(*size: int) -> Tensor:
        return torch.rand(size, generator=generator, device=gd).to(device)

    on = rand(B) < rate
    task = (rand(B) * 3).long().clamp(max=2)  # 0 locations, 1 traffic, 2 both
    cut = (rand(B) * (T - 1)).long() + 1  # prefix length 1..T-1
    prefix = torch.arange(T, device=device)[None, :] < cut[:, None]
    share = rand(B, 1)
    scattered = rand(B, T) < share
    part = torch.where(rand(B, 1) < 0.5, prefix, scattered)
    every = torch.ones(B, T, dtype=torch.bool, device=device)
    none = torch.zeros_like(every)
    m_l = torch.where((task == 0)[:, None], every, torch.where((task == 2)[:, None], part, none))
    m_a = torch.where((task == 1)[:, None], every, torch.where((task == 2)[:, None], part, none))
    return m_l & on[:, None], m_a & on[:, None]


def wanted_rows(hybrid: HybridDiffusion, l_s: Tensor) -> Tensor | None:
    """Flat indices of the tokens whose location logits the loss reads, or None for all of them.

    The absorbing process's loss is 0 on unmasked tokens (they are carried over), so with sampled
    ids as the network's input only the masked tokens need the O(N) head: about half of them,
    averaged over the steps. The graph process's KL reads every token.
    """
    mask_id = getattr(hybrid.discrete, "mask_id", None)
    if (mask_id is None or not hasattr(hybrid.discrete, "location_losses_rows")
            or hybrid.config.location_input != "sampled"):
        return None
    return (l_s.reshape(-1) == mask_id).nonzero().squeeze(-1)


def training_loss(
    model: Any,
    hybrid: HybridDiffusion,
    w0: Tensor,
    l0: Tensor,
    generator: torch.Generator | None,
    weights: LossWeights | tuple[float, float, float] = (1.0, 1.0, 0.1),
    a0: Tensor | None = None,
    activity_weight: float = 1.0,
    condition_rate: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One draw of Algorithm 1 for a batch: ``s ~ U{1..S}``, noise both branches, one network call, loss.

    ``w0 (B, T)`` are the clean wavelet coefficients, ``l0 (B, T)`` the station ids. With an
    activity stream (``hybrid.activity``), ``a0 (B, T)`` are the slot activity classes: they are
    noised to the same step and their masked cross-entropy (per masked token, as the locations')
    joins the total with weight ``activity_weight`` (part ``"activity_ce"``).

    ``condition_rate`` (conditional generation, :mod:`mstdiff.conditional`): that share of the
    samples is trained as the conditional sampler sees them, with the observed tokens of the
    absorbing streams given clean at every step (:func:`condition_masks`): all locations (traffic
    given trajectories), all activity classes (trajectories given traffic), or both on a prefix or a
    random share of the slots (filling gaps). Given tokens carry no loss (they are not masked).
    """
    s = hybrid.sample_steps(w0.shape[0], generator, w0.device)  # (B,)
    w_s, eps, l_s = hybrid.noise(w0, l0, s, generator)
    act = getattr(hybrid, "activity", None)
    m_l = m_a = None
    if condition_rate > 0 and getattr(hybrid.discrete, "mask_id", None) is not None:
        m_l, m_a = condition_masks(l0.shape, condition_rate, generator, l0.device)
        l_s = torch.where(m_l, l0.long(), l_s)
    rows = wanted_rows(hybrid, l_s) if supports_rows(model) else None
    extra = {} if rows is None else {"rows": rows}
    if act is None:
        out = model(w_s, hybrid.location_input(l0, l_s, s), s, **extra)
        return joint_loss(out, eps, None, l0, l_s, s, hybrid.discrete, weights, rows=rows)
    if a0 is None:
        raise ValueError("the hybrid has an activity stream: pass the activity classes a0 (B, T)")
    a_s = act.q_sample(a0, s, generator)  # (B, T)
    if m_a is not None:
        a_s = torch.where(m_a, a0.long(), a_s)
    out = model(w_s, hybrid.location_input(l0, l_s, s), s, activity=a_s, **extra)
    total, parts = joint_loss(out, eps, None, l0, l_s, s, hybrid.discrete, weights, rows=rows)
    _, ce_tok = act.location_losses(a0, out.activity_logits, a_s, s)
    ce = ce_tok.mean()
    parts = {**parts, "activity_ce": ce.detach()}
    total = total + activity_weight * ce
    parts["total"] = total.detach()
    return total, parts
