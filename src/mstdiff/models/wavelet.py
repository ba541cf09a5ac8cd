"""Three-level Haar (db1) wavelet transform of traffic series, in pure torch.

The traffic branch of MSTDiff diffuses the wavelet coefficients of a series instead of the series
itself (DESIGN §1). For a series ``m`` of length ``T`` (a multiple of 8) the coefficients are
concatenated coarse to fine::

    w = [cA3 (T/8), cD3 (T/8), cD2 (T/4), cD1 (T/2)]        # length T

with the orthonormal Haar filters of PyWavelets' ``db1``: one level maps pairs ``(a, b)`` to
``cA = (a + b) / sqrt(2)`` and ``cD = (a - b) / sqrt(2)``. This is exactly
``np.concatenate(pywt.wavedec(m, "db1", level=3))`` (for even lengths PyWavelets' boundary mode
plays no role with a length-2 filter), and :func:`idwt` is its exact inverse. The transform is
orthonormal, so it preserves the Euclidean norm and white noise stays white: a Gaussian diffusion
on ``w`` is a Gaussian diffusion on ``m`` seen in another orthonormal basis.

All functions act on the last dimension of a tensor of any leading shape, are differentiable and
run on the tensor's device.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from mstdiff.data import check_T

logger = logging.getLogger(__name__)

LEVELS = 3
SCALES: tuple[str, ...] = ("cA3", "cD3", "cD2", "cD1")  # coefficient order in w, coarse to fine
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def scale_lengths(T: int) -> tuple[int, ...]:
    """Lengths of ``(cA3, cD3, cD2, cD1)`` for a series of length ``T``: ``(T/8, T/8, T/4, T/2)``."""
    check_T(T)
    return (T // 8, T // 8, T // 4, T // 2)


def scale_slices(T: int) -> dict[str, slice]:
    """Slices of each scale in the concatenated coefficient vector, in coefficient order.

    ``scale_slices(48) == {"cA3": slice(0, 6), "cD3": slice(6, 12), "cD2": slice(12, 24),
    "cD1": slice(24, 48)}``.
    """
    out: dict[str, slice] = {}
    start = 0
    for name, length in zip(SCALES, scale_lengths(T)):
        out[name] = slice(start, start + length)
        start += length
    return out


def scale_coeffs(w: Tensor, scale: str) -> Tensor:
    """The coefficients of one scale (``"cA3"``, ``"cD3"``, ``"cD2"`` or ``"cD1"``) of ``w (..., T)``."""
    if scale not in SCALES:
        raise ValueError(f"unknown wavelet scale {scale!r}; choose one of {SCALES}")
    return w[..., scale_slices(w.shape[-1])[scale]]


def dwt(x: Tensor) -> Tensor:
    """3-level Haar transform of ``x (..., T)`` → coefficients ``(..., T)``, coarse to fine."""
    T = x.shape[-1]
    check_T(T, where=f"wavelet transform of a tensor of shape {tuple(x.shape)}")
    details: list[Tensor] = []
    a = x
    for _ in range(LEVELS):
        pairs = a.unflatten(-1, (a.shape[-1] // 2, 2))  # (..., L/2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        details.append((even - odd) * _INV_SQRT2)  # cD_j, (..., L/2)
        a = (even + odd) * _INV_SQRT2  # cA_j, (..., L/2)
    # a = cA3; details = [cD1, cD2, cD3]
    return torch.cat([a, *reversed(details)], dim=-1)  # (..., T)


def idwt(w: Tensor) -> Tensor:
    """Exact inverse of :func:`dwt`: coefficients ``(..., T)`` → series ``(..., T)``."""
    T = w.shape[-1]
    check_T(T, where=f"inverse wavelet transform of a tensor of shape {tuple(w.shape)}")
    sl = scale_slices(T)
    a = w[..., sl["cA3"]]  # (..., T/8)
    for name in ("cD3", "cD2", "cD1"):
        d = w[..., sl[name]]  # same length as a
        even = (a + d) * _INV_SQRT2
        odd = (a - d) * _INV_SQRT2
        a = torch.stack([even, odd], dim=-1).flatten(-2)  # (..., 2L) interleaved
    return a
