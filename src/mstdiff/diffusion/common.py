"""Small pieces shared by the noise processes (no network code, no process of its own)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def supports_rows(model: Any) -> bool:
    """Whether a network (possibly wrapped by DDP, autocast or torch.compile) takes ``rows=``: the
    flat indices of the tokens whose location logits are wanted (the others' are not computed)."""
    for _ in range(4):
        if getattr(type(model), "supports_rows", False):
            return True
        inner = next((getattr(model, a) for a in ("module", "model", "_orig_mod") if hasattr(model, a)), None)
        if inner is None:
            return False
        model = inner
    return False


def check_steps(loc: Tensor, s: Tensor | int, name: str, num_steps: int, s_min: int = 0) -> Tensor:
    """Validate ``loc: Long[B, T]`` and its steps; return ``s`` as ``Long[B]`` (a scalar is broadcast)."""
    if loc.dim() != 2:
        raise ValueError(f"{name} must be Long[B, T], got shape {tuple(loc.shape)}")
    s = torch.as_tensor(s, device=loc.device).long().reshape(-1)
    if s.numel() == 1 and loc.shape[0] != 1:
        s = s.expand(loc.shape[0])
    if s.numel() != loc.shape[0]:
        raise ValueError(f"s must have one step per sample: {s.numel()} for B = {loc.shape[0]}")
    if s.numel() and (int(s.min()) < s_min or int(s.max()) > num_steps):
        raise ValueError(
            f"timesteps must be in [{s_min}, {num_steps}], got [{int(s.min())}, {int(s.max())}]")
    return s


def sample_categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs (..., N)`` (rows need not be normalised): Long[...].

    Inverse-CDF sampling with one uniform per row, drawn on the generator's device, so the result
    does not depend on where ``probs`` lives. A state of probability 0 is never drawn.
    """
    cdf = probs.double().cumsum(-1)  # (..., N); float64 keeps the cumulative sums exact enough
    gen_device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[:-1], generator=generator, device=gen_device, dtype=torch.float64).to(
        probs.device
    )
    target = (u * cdf[..., -1]).unsqueeze(-1)  # (..., 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (...)
    return idx.clamp_(max=probs.shape[-1] - 1)
