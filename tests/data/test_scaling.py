import numpy as np
import pytest
import torch

from mstdiff.data.scaling import TrafficScaler


def test_round_trip_and_zeros():
    rng = np.random.default_rng(0)
    m = rng.gamma(0.5, 10.0, (50, 16)) * (rng.random((50, 16)) < 0.3)
    sc = TrafficScaler.fit(m)
    x = sc.encode(torch.from_numpy(m))
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std(unbiased=False)) - 1) < 1e-6
    back = sc.decode(x).numpy()
    np.testing.assert_allclose(back, m, rtol=1e-9, atol=1e-9)
    assert (back == 0).sum() == (m == 0).sum()


def test_small_values_snap_to_zero():
    sc = TrafficScaler.fit(np.array([[0.0, 2.0, 4.0]]))
    assert sc.zero_threshold == 1.0
    out = sc.decode(sc.encode(torch.tensor([0.5, 1.5, -3.0])))
    assert out.tolist()[0] == 0.0 and out.tolist()[2] == 0.0 and abs(out.tolist()[1] - 1.5) < 1e-6
    assert TrafficScaler.from_dict(sc.to_dict()) == sc


def test_constant_set_has_unit_std():
    assert TrafficScaler.fit(np.zeros((3, 8))).std == 1.0


def test_decode_is_capped_and_finite():
    sc = TrafficScaler.fit(np.array([[0.0, 1.0, 10.0]]))
    out = sc.decode(torch.tensor([1e6, float("nan"), float("inf"), -1e6]))
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(20.0, rel=1e-5) and out[2].item() == pytest.approx(20.0, rel=1e-5)
    assert out[1].item() == 0.0 and out[3].item() == 0.0
