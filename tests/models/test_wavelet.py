import numpy as np
import pytest
import pywt
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mstdiff.errors import InputError
from mstdiff.models.wavelet import SCALES, dwt, idwt, scale_coeffs, scale_lengths, scale_slices


@pytest.mark.parametrize("T", [8, 48, 336])
def test_dwt_matches_pywavelets(T):
    rng = np.random.default_rng(T)
    x = rng.normal(size=(5, T)) * rng.uniform(0.1, 10.0, size=(5, 1))
    ours = dwt(torch.from_numpy(x)).numpy()
    for row, mine in zip(x, ours):
        ref = pywt.wavedec(row, "db1", level=3)  # [cA3, cD3, cD2, cD1]
        np.testing.assert_allclose(mine, np.concatenate(ref), rtol=1e-12, atol=1e-12)
        for name, coeffs in zip(SCALES, ref):
            np.testing.assert_allclose(mine[scale_slices(T)[name]], coeffs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [8, 48, 336])
def test_idwt_is_exact_inverse_and_matches_waverec(T):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(3, T)))
    w = dwt(x)
    torch.testing.assert_close(idwt(w), x, rtol=0, atol=1e-12)
    ref = pywt.waverec(pywt.wavedec(x[0].numpy(), "db1", level=3), "db1")
    np.testing.assert_allclose(idwt(w)[0].numpy(), ref, atol=1e-12)
    # and the other way round: any coefficient vector is the transform of its inverse
    torch.testing.assert_close(dwt(idwt(x)), x, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3))
def test_round_trip_and_norm_preserved_property(k, seed, batch):
    T = 8 * k
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, generator=g, dtype=torch.float64)
    w = dwt(x)
    assert w.shape == x.shape
    torch.testing.assert_close(idwt(w), x, rtol=0, atol=1e-12)
    # orthonormal transform: Euclidean norm is preserved
    torch.testing.assert_close(w.norm(dim=-1), x.norm(dim=-1))


def test_leading_dims_float32_and_constant_series():
    x = torch.ones(2, 3, 48)
    w = dwt(x)
    assert w.shape == (2, 3, 48) and w.dtype == torch.float32
    # a constant series has no detail: only cA3 = 1 * 8 / sqrt(8) = sqrt(8)
    torch.testing.assert_close(scale_coeffs(w, "cA3"), torch.full((2, 3, 6), 8**0.5))
    assert float(w[..., 6:].abs().max()) < 1e-6


def test_gradients_flow_through_both_transforms():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt(t), (x,))
    assert torch.autograd.gradcheck(lambda t: idwt(t), (x,))


def test_scale_slices_and_lengths():
    assert scale_lengths(48) == (6, 6, 12, 24)
    assert scale_slices(48) == {
        "cA3": slice(0, 6),
        "cD3": slice(6, 12),
        "cD2": slice(12, 24),
        "cD1": slice(24, 48),
    }
    assert list(scale_slices(336).values())[-1] == slice(168, 336)
    with pytest.raises(ValueError):
        scale_coeffs(torch.zeros(1, 48), "cD4")


@pytest.mark.parametrize("T", [0, 4, 50, 100])
def test_bad_T_is_a_clear_input_error(T):
    with pytest.raises(InputError, match="divisible by 8"):
        dwt(torch.zeros(2, T))
    with pytest.raises(InputError):
        idwt(torch.zeros(2, T))
    with pytest.raises(InputError):
        scale_slices(T)
