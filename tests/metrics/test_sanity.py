import numpy as np

from mstdiff.metrics.sanity import sanity_markdown, sanity_stats


def test_sanity_statistics_by_brute_force():
    rng = np.random.default_rng(0)
    m = rng.choice([0.0, 5.0, 30.0, 31.0], size=(20, 48))
    loc = rng.integers(0, 4, size=(20, 48))
    st = sanity_stats(m, loc, upper=30.0, bin_minutes=30)
    assert st["zero_share"] == (m == 0).mean() and st["full_share"] == (m == 30).mean()
    assert st["above_share"] == (m > 30).mean() and st["max_traffic"] == 31.0
    assert st["distinct_per_sample"] == np.mean([len(set(r)) for r in loc])
    assert st["changes_per_sample"] == np.mean([sum(a != b for a, b in zip(r[:-1], r[1:])) for r in loc])
    assert len(st["mean_by_hour"]) == 24
    np.testing.assert_allclose(st["mean_by_hour"][0], m[:, :2].mean())
    assert "| x |" in sanity_markdown({"x": st}, upper=30.0)
