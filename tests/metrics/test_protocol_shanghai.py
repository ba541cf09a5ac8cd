"""The evaluation protocol on Shanghai Telecom (issue 13); skips where the real data is absent."""

import numpy as np
import pytest

from mstdiff.data import split_dataset
from mstdiff.data.prepare import prepare
from mstdiff.metrics.evaluate import sample_users, user_halves
from mstdiff.metrics.trajectory import home_cell_jsd, location_jsd


@pytest.fixture(scope="module")
def shanghai_splits(shared_data, tmp_path_factory):
    raw = shared_data / "shanghai_telecom"
    if not raw.is_dir():
        pytest.skip(f"{raw} not found")
    ds = prepare("shanghai-telecom", raw, tmp_path_factory.mktemp("sh") / "data")
    return split_dataset(ds, (0.8, 0.1, 0.1), seed=0)


def test_iid_visit_generator_is_below_the_floor_on_location_jsd_not_on_home_cell_jsd(shanghai_splits):
    train, test = shanghai_splits["train"], shanghai_splits["test"]
    N, coords = test.n_stations, test.coords
    rng = np.random.default_rng(0)
    visits = np.bincount(train.locations.ravel(), minlength=N) / train.locations.size
    users = sample_users(test)
    old_floor, old_iid, new_floor, new_iid = [], [], [], []
    for _ in range(5):
        ia, ib = user_halves(users, rng)
        a, b = test.locations[ia], test.locations[ib]
        iid = rng.choice(N, size=b.shape, p=visits)  # every slot i.i.d. from the training visits
        old_floor.append(location_jsd(a, b, N))
        old_iid.append(location_jsd(a, iid, N))
        new_floor.append(home_cell_jsd(a, b, coords))
        new_iid.append(home_cell_jsd(a, iid, coords))
    assert np.mean(old_iid) < np.mean(old_floor) - 3 * np.std(old_floor)  # gamed (0.60 vs 0.77)
    assert np.mean(new_iid) > np.mean(new_floor)  # not gamed
