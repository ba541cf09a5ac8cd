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


def test_sanity_problems_flag_impossible_values_caps_and_jumping():
    from mstdiff.metrics.sanity import sanity_problems

    rng = np.random.default_rng(1)
    real_m = rng.choice([0.0, 5.0, 30.0], size=(30, 48))
    stay = np.repeat(rng.integers(0, 5, size=(30, 1)), 48, axis=1)
    real = sanity_stats(real_m, stay, upper=30.0)
    assert sanity_problems(real, sanity_stats(real_m, stay, upper=30.0)) == []
    jumpy = rng.integers(0, 50, size=(30, 48))
    bad = sanity_stats(np.where(real_m == 30, 45.0, real_m), jumpy, upper=30.0)
    text = " ".join(sanity_problems(real, bad))
    assert "above the possible maximum" in text and "changes per sample" in text
    assert "distinct stations" in text
    # an unbounded unit: a pile of values at one cap
    real_b = sanity_stats(rng.gamma(1.0, 2.0, size=(30, 48)), stay, upper=None)
    capped = sanity_stats(np.minimum(rng.gamma(1.0, 20.0, size=(30, 48)), 7.5), stay, upper=None)
    assert any("decoder cap" in p for p in sanity_problems(real_b, capped))


def test_decode_cap_share_and_generate_report_against_the_like_set():
    import pandas as pd

    from mstdiff.data.dataset import PreparedDataset
    from mstdiff.metrics.sanity import compare_sanity, decode_cap

    rng = np.random.default_rng(2)
    st = pd.DataFrame({"station_id": ["a", "b", "c"], "lat": [31.0, 31.1, 31.2],
                       "lon": [121.0, 121.1, 121.2]})
    samples = pd.DataFrame({"user": [f"u{i}" for i in range(40)], "start": [""] * 40})
    meta = {"bin_minutes": 30, "traffic_unit": "bytes"}
    real = PreparedDataset(rng.gamma(1.0, 2.0, (40, 48)), rng.integers(0, 3, (40, 48)), st, samples, meta)
    cap = decode_cap(real, None)
    assert cap == 2 * real.traffic.max() and decode_cap(real, 30.0) is None
    m = real.traffic.copy()
    m[:, :10] = cap  # 10 of 48 slots at the decoder's cap
    bad = real.with_series(m, real.locations, source="gen")
    st_bad = sanity_stats(bad.traffic, bad.locations, upper=None, cap=cap)
    assert st_bad["cap_share"] == 10 / 48
    table, problems = compare_sanity(real, bad, names=("train (--like)", "generated"))
    assert "| train (--like) |" in table and "at decode cap" in table and "WARNING" in table
    assert any("decoder cap" in p for p in problems)
    assert compare_sanity(real, real)[1] == []
