"""Training plumbing shared by MSTDiff and the learned baselines.

EMA of weights, atomic checkpoints, learning-rate schedules, device selection, a process-local
RNG scope (so dropout is reproducible without seeding the caller's global RNG) and mixed precision.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mstdiff.errors import InputError
from mstdiff.io import atomic_write_bytes
from mstdiff.torchio import from_plain, load_torch_file, to_plain

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} requested but CUDA is not available",
            where="train.device", fix="use device: cpu (or auto), or install the CUDA build of PyTorch",
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r} ({exc})", where="train.device",
                         fix="use auto, cpu, cuda or cuda:K") from None


def loading_device(name: str, owner: str) -> torch.device:
    """The device a saved model is loaded onto: ``name`` (``"auto"``, ``"cuda"``, ...) where it is
    available, else the CPU with a warning, so a model trained on a GPU still loads without one."""
    try:
        return resolve_device(name)
    except InputError:
        logger.warning("%s: device %r unavailable, loading on CPU", owner, name)
        return torch.device("cpu")


@contextlib.contextmanager
def local_rng(seed: int, state: torch.Tensor | None = None) -> Iterator[None]:
    """Seed (or restore) torch's default CPU generator inside the block only.

    Dropout and parameter initialisation draw from torch's global generator; this scope makes them
    reproducible while leaving the caller's global RNG state as it was.
    """
    with torch.random.fork_rng(devices=[]):
        if state is not None:
            torch.set_rng_state(state)
        else:
            torch.manual_seed(seed)
        yield


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``shadow ← decay · shadow + (1 − decay) · θ`` after each optimiser step, with the usual warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so early averages are not dominated by the init.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for s, p in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if s.dtype.is_floating_point:
                s.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                s.copy_(p)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow.load_state_dict(state["shadow"])


def lr_lambda(kind: str, total_steps: int, warmup_steps: int = 0, step_every: int = 1000,
              gamma: float = 0.5, min_factor: float = 0.05) -> Any:
    """Multiplicative LR factor per step: linear warm-up then ``cosine``, ``step`` or ``constant``."""
    if kind not in ("cosine", "step", "constant"):
        raise InputError(f"unknown lr schedule {kind!r}", where="train.schedule",
                         fix="use cosine, step or constant")

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind == "step":
            return gamma ** ((step - warmup_steps) // max(step_every, 1))
        progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file then rename: a crash never leaves a truncated checkpoint.

    numpy arrays are stored as tensors (:func:`mstdiff.torchio.to_plain`) so the file loads with
    ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(to_plain(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
    what: str = "checkpoint", fix: str = "train first, or point to the run directory's checkpoint",
) -> dict[str, Any]:
    """A file written by :func:`save_checkpoint`, read without running code
    (:func:`mstdiff.torchio.load_torch_file`)."""
    return from_plain(load_torch_file(path, what=what, fix=fix, map_location=map_location))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- mixed precision


def autocast_dtype(device: torch.device) -> torch.dtype:
    """Low-precision compute type of ``torch.autocast``: bfloat16 on CPU and on GPUs that support it
    (Ampere and later), else float16 (which needs a gradient scaler, :func:`needs_grad_scaler`)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def needs_grad_scaler(device: torch.device) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range."""
    return autocast_dtype(device) == torch.float16


def _to_float32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to_float32(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple
        return type(x)(*(_to_float32(v) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_to_float32(v) for v in x)
    return x


class Autocast:
    """Call ``model`` under ``torch.autocast`` and hand its outputs back in float32.

    Only the network runs in low precision: everything the caller does with the outputs (the
    softmax, the KL through the transition matrices, the cross-entropy and the MSE of the loss)
    stays in float32 because it runs outside the autocast region. Weights, gradients and optimiser
    state stay float32 (autocast casts per operation).
    """

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device_type = device.type
        self.dtype = autocast_dtype(device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        return _to_float32(out)
