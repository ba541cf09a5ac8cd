import numpy as np
import pytest
import torch

from mstdiff.data.scaling import VALUE_LEVELS, TrafficScaler
from mstdiff.errors import InputError


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
    sc = TrafficScaler.fit(np.array([[0.0, 2.5, 4.1]]))  # continuous values: half the smallest positive
    assert sc.resolution is None and sc.zero_threshold == 1.25
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


# ------------------------------------------------------------------ the data's domain (issue 11)
def minutes_like(seed: int = 0, shape: tuple[int, int] = (200, 48)) -> np.ndarray:
    """Connected minutes in 30-min slots: zeros, whole partial minutes and full slots."""
    rng = np.random.default_rng(seed)
    u = rng.random(shape)
    partial = rng.integers(1, 30, size=shape).astype(np.float64)
    return np.where(u < 0.5, 0.0, np.where(u < 0.75, partial, 30.0))


def test_decode_stays_in_range_on_the_grid_with_both_atoms():
    m = minutes_like()
    sc = TrafficScaler.fit(m, upper=30.0)
    assert sc.resolution == 1.0 and sc.upper == 30.0
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 3, size=(5000,)))  # far outside the data too
    out = sc.decode(x).numpy()
    assert out.min() >= 0 and out.max() <= 30.0
    np.testing.assert_array_equal(out, np.round(out))  # whole minutes
    assert (out == 0).any() and (out == 30).any()
    # exact round trip of the real values (both atoms and every partial value)
    np.testing.assert_array_equal(sc.decode(sc.encode(m)), m.astype(np.float32))


def test_calibration_gives_the_training_shares_of_zeros_and_full_slots():
    m = minutes_like(2)
    sc = TrafficScaler.fit(m, upper=30.0)
    rng = np.random.default_rng(3)
    blurred = sc.encode(m) + rng.normal(0, 0.3, size=m.shape).astype(np.float32)  # a model's blur
    before = sc.decode(blurred)
    cal = sc.calibrate(blurred)
    after = cal.decode(blurred)
    assert cal.calibrated and not sc.calibrated
    assert abs((after == 0).mean() - sc.zero_share) < 1e-3
    assert abs((after == 30).mean() - sc.full_share) < 1e-3
    # the uncalibrated midpoints lose part of the full-slot atom to the blur
    assert abs((before == 30).mean() - sc.full_share) > abs((after == 30).mean() - sc.full_share)
    partial = after[(after > 0) & (after < 30)]
    assert partial.min() >= 1 and partial.max() <= 29


def test_for_dataset_reads_the_domain_from_the_meta():
    class DS:
        def __init__(self, unit: str) -> None:
            self.traffic = minutes_like(4, (20, 8))
            self.meta = {"traffic_unit": unit, "bin_minutes": 30}

    assert TrafficScaler.for_dataset(DS("minutes")).upper == 30.0
    assert TrafficScaler.for_dataset(DS("bytes")).upper is None


def test_fit_rejects_values_above_the_possible_maximum():
    from mstdiff.errors import InputError

    with pytest.raises(InputError, match="possible maximum"):
        TrafficScaler.fit(np.array([[0.0, 31.0]]), upper=30.0)


def test_old_scaler_dicts_still_load():
    d = {"mean": 1.0, "std": 2.0, "zero_threshold": 0.5, "log_cap": 3.0}
    sc = TrafficScaler.from_dict(d)
    assert sc.upper is None and sc.full_threshold is None and not sc.calibrated


def test_activity_classes_and_decoding_with_them():
    m = minutes_like(5)
    sc = TrafficScaler.fit(m, upper=30.0)
    a = sc.activity(m)
    assert sc.activity_classes == 3
    np.testing.assert_array_equal(a, np.where(m == 0, 0, np.where(m == 30, 2, 1)))
    # the real series decodes exactly with its own classes
    np.testing.assert_array_equal(sc.decode_with_activity(sc.encode(m), a), m.astype(np.float32))
    # any continuous value: class 0 → 0, class 2 → 30, class 1 strictly between, on the grid
    x = np.random.default_rng(6).normal(0, 3, size=m.shape).astype(np.float32)
    out = sc.decode_with_activity(x, a)
    assert (out[a == 0] == 0).all() and (out[a == 2] == 30).all()
    assert out[a == 1].min() >= 1 and out[a == 1].max() <= 29
    np.testing.assert_array_equal(out, np.round(out))
    bytes_like = TrafficScaler.fit(np.array([[0.0, 3.5, 7.25]]))
    assert bytes_like.activity_classes == 2
    np.testing.assert_array_equal(bytes_like.activity(np.array([0.0, 0.1, 9.0])), [0, 1, 1])


def test_model_range_is_where_the_training_series_lie():
    rng = np.random.default_rng(4)
    m = rng.gamma(0.5, 30.0, (40, 16)) * (rng.random((40, 16)) < 0.4)
    sc = TrafficScaler.fit(m)
    lo, hi = sc.model_range()
    x = sc.encode(m)
    assert lo == pytest.approx(float(x.min()), abs=1e-5) and hi == pytest.approx(float(x.max()), abs=1e-5)
    assert float(sc.continuous(np.float32(hi))) == pytest.approx(m.max(), rel=1e-4)  # back at the maximum
    minutes = TrafficScaler.fit(np.minimum(m, 30.0), upper=30.0)
    assert float(minutes.continuous(np.float32(minutes.model_range()[1]))) == pytest.approx(30.0, rel=1e-4)
    # a scaler saved before the maximum was kept: the range reaches the log cap (2 · max)
    old = TrafficScaler.from_dict({k: v for k, v in sc.to_dict().items() if k != "train_max"})
    assert old.train_max is None
    assert float(old.continuous(np.float32(old.model_range()[1]))) == pytest.approx(2 * m.max(), rel=1e-4)


def test_the_value_map_puts_active_slots_on_the_training_values_by_rank():
    rng = np.random.default_rng(7)
    m = rng.gamma(0.6, 8.0, (300, 24)) * (rng.random((300, 24)) < 0.3)  # MB-like: zeros and positives
    sc = TrafficScaler.fit(m)
    pos = m[m > 0]
    want_q = (np.quantile(np.log1p(pos), VALUE_LEVELS) - sc.mean) / sc.std
    np.testing.assert_allclose(sc.positive_quantiles, want_q)
    # a model whose active slots come out too low: model-space values shifted down and squeezed
    a = (rng.random((200, 24)) < 0.3).astype(np.int64)
    x = np.where(a == 1, 0.5 * rng.normal(-0.3, 1.0, a.shape), -0.4).astype(np.float32)
    before = sc.decode_with_activity(x, a)
    cal = sc.calibrate_values(x[a == 1])
    after = cal.decode_with_activity(x, a, generator=torch.Generator().manual_seed(0))
    assert (after[a == 0] == 0).all() and (before[a == 0] == 0).all()
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    want = np.quantile(pos, qs)
    got, raw = np.quantile(after[a == 1], qs), np.quantile(before[a == 1], qs)
    np.testing.assert_allclose(got, want, rtol=0.08)  # the training values' shares
    assert np.abs(np.log(raw / want)).max() > 0.5  # what it corrects
    order = np.argsort(x[a == 1], kind="stable")  # the order of the values is kept (ties: one value)
    assert (np.diff(cal.decode_with_activity(x, a)[a == 1][order]) >= -1e-6).all()
    again = cal.decode_with_activity(x, a, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(after, again)  # the same draws, the same values
    back = TrafficScaler.from_dict(cal.to_dict())  # saved with the model
    assert back == cal
    np.testing.assert_array_equal(back.decode_with_activity(x, a, generator=torch.Generator().manual_seed(0)),
                                  after)


def test_the_value_map_keeps_minutes_between_the_atoms_and_needs_the_training_quantiles():
    m = minutes_like(8)
    sc = TrafficScaler.fit(m, upper=30.0)
    inner = m[(m > 0) & (m < 30)]
    assert sc.positive_quantiles[0] == pytest.approx((np.log1p(inner.min()) - sc.mean) / sc.std)
    a = sc.activity(m)
    x = np.random.default_rng(2).normal(0, 2, size=m.shape).astype(np.float32)
    out = sc.calibrate_values(x[a == 1]).decode_with_activity(x, a)
    assert (out[a == 2] == 30).all() and out[a == 1].min() >= 1 and out[a == 1].max() <= 29
    np.testing.assert_array_equal(out, np.round(out))
    old = TrafficScaler.from_dict({"mean": 1.0, "std": 2.0, "zero_threshold": 0.5})
    with pytest.raises(InputError, match="positive values"):
        old.calibrate_values(np.zeros(4))


def test_the_value_map_spreads_a_tie_over_its_share():
    rng = np.random.default_rng(3)
    pos = rng.gamma(0.8, 5.0, 5000) + 0.01
    sc = TrafficScaler.fit(np.concatenate([np.zeros(5000), pos])[None, :])
    # a model's active values: 40 % piled up at the lower clip, the rest spread above it
    lo, _ = sc.model_range()
    x = np.where(rng.random(4000) < 0.4, lo, rng.uniform(lo, lo + 3.0, 4000))
    cal = sc.calibrate_values(x)
    u = rng.random(x.shape)
    y = cal.map_values(x, u)
    target = np.asarray(sc.positive_quantiles)
    # the mapped values have the training values' quantiles (levels 0.05 .. 0.95), the tie included
    got = np.quantile(y, np.linspace(0.05, 0.95, 19))
    want = np.interp(np.linspace(0.05, 0.95, 19), VALUE_LEVELS, target)
    np.testing.assert_allclose(got, want, atol=0.06)
    assert np.unique(np.round(y[x == lo], 6)).size > 100  # not one spike
    mid = cal.map_values(x)  # no draws: the middle of the tie's range, one value
    assert np.unique(mid[x == lo]).size == 1
    assert np.interp(0.2, VALUE_LEVELS, target) == pytest.approx(mid[x == lo][0], abs=0.05)
    # a value held once maps exactly to its level; below and above the sample, to the ends
    np.testing.assert_allclose(cal.map_values(np.array([cal.value_from[120]])), [target[120]])
    np.testing.assert_allclose(cal.map_values(np.array([-9.0, 9.0])), [target[0], target[-1]])
    assert (np.diff(cal.map_values(np.sort(x))) >= -1e-12).all()  # monotone without draws


def test_a_float32_value_at_the_clip_joins_the_tie_there():
    rng = np.random.default_rng(4)
    sc = TrafficScaler.fit(np.concatenate([np.zeros(2000), rng.gamma(0.8, 5.0, 2000) + 0.01])[None, :])
    lo, _ = sc.model_range()
    x = np.where(rng.random(3000) < 0.3, lo - 1.0, rng.uniform(lo, lo + 3.0, 3000))  # below: clipped to lo
    cal = sc.calibrate_values(x)
    lo32 = np.float64(np.float32(lo))  # what a float32 sample clamped at the bound holds
    assert lo32 != lo
    y = cal.map_values(np.full(500, lo32), rng.random(500))
    assert y.min() < np.interp(0.05, VALUE_LEVELS, sc.positive_quantiles)  # spread from the bottom
    assert y.max() > np.interp(0.25, VALUE_LEVELS, sc.positive_quantiles)  # over the tie's share
