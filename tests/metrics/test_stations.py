import numpy as np
import pandas as pd
import pytest

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.metrics import compute_metrics, metric_context
from mstdiff.metrics.stations import align_stations


def _set(stations, loc, seed=0):
    rng = np.random.default_rng(seed)
    U, T = loc.shape
    samples = pd.DataFrame({"user": [f"u{i}" for i in range(U)], "start": [""] * U})
    return PreparedDataset(rng.gamma(1.0, 3.0, (U, T)), loc, stations, samples, {"bin_minutes": 30})


def _table(n, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"station_id": [f"s{i}" for i in range(n)], "lat": rng.uniform(31, 31.4, n),
                         "lon": rng.uniform(121, 121.5, n)})


def test_a_separately_prepared_set_is_matched_by_id_not_by_order():
    full = _table(30)
    rng = np.random.default_rng(2)
    model = _set(full, rng.integers(0, 30, (20, 48)))
    # "other users of the same city": a table of the 12 stations they visit, in another order
    keep = rng.permutation(30)[:12]
    sub = full.iloc[keep].reset_index(drop=True)
    real = _set(sub, rng.integers(0, 12, (15, 48)), seed=3)
    al = align_stations({"real": real, "gen": model})
    ids = al.stations["station_id"].to_numpy()
    # every slot still points at the same station id as before
    sub_ids, full_ids = sub["station_id"].to_numpy(), full["station_id"].to_numpy()
    np.testing.assert_array_equal(ids[al.sets["real"].locations], sub_ids[real.locations])
    np.testing.assert_array_equal(ids[al.sets["gen"].locations], full_ids[model.locations])
    assert len(al.stations) == 30 and al.matched_by_id["gen"] == 12 and al.added["gen"] == 18
    unknown = ~np.isin(full["station_id"].to_numpy()[model.locations], sub["station_id"].to_numpy())
    assert al.unknown_slots["gen"] == int(unknown.sum()) > 0
    assert al.first_unknown_slots["gen"] == 0
    assert any("unknown to the real set" in line for line in al.notes())


def test_same_data_on_a_permuted_table_scores_zero():
    full = _table(25)
    rng = np.random.default_rng(4)
    real = _set(full, rng.integers(0, 25, (60, 48)))
    perm = rng.permutation(25)  # new row i holds old station perm[i]
    inv = np.argsort(perm)
    moved = PreparedDataset(real.traffic, inv[real.locations], full.iloc[perm].reset_index(drop=True),
                            real.samples, real.meta)
    al = align_stations({"real": real, "gen": moved})
    vals = compute_metrics(al.sets["real"], al.sets["gen"], metric_context(al.sets["real"]))
    assert all(v == 0.0 for v in vals.values()), vals


def test_renumbered_ids_match_by_coordinates_and_conflicts_are_errors():
    full = _table(10)
    real = _set(full, np.tile(np.arange(10), (3, 5))[:, :48] % 10)
    renum = full.assign(station_id=[str(i) for i in range(10)])
    al = align_stations({"real": real, "gen": _set(renum, real.locations)})
    assert al.matched_by_coords["gen"] == 10 and al.added["gen"] == 0
    np.testing.assert_array_equal(al.sets["gen"].locations, real.locations)
    moved = full.assign(lat=full["lat"] + 0.01)
    with pytest.raises(InputError, match="other coordinates"):
        align_stations({"real": real, "gen": _set(moved, real.locations)})
