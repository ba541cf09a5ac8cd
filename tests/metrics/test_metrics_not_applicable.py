"""Metrics that a set cannot have: traffic of a set without traffic, trajectories of placeholder
locations. They are n/a (never 0.0000, never bold), null in metrics.json with a reason, and their
plots, sanity statistics, memorisation and TSTR parts are left out."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import mstdiff.metrics.plots as plots
from mstdiff.baselines import Markov, generate_dataset
from mstdiff.cli import cli
from mstdiff.data.dataset import PreparedDataset, split_dataset
from mstdiff.data.synthetic import synthetic_city
from mstdiff.metrics import METRICS, evaluate
from mstdiff.metrics.evaluate import missing_data, not_applicable

TRAFFIC = [m.name for m in METRICS if "traffic" in m.needs]  # traffic and joint metrics
TRAJECTORY = [m.name for m in METRICS if "traffic" not in m.needs]


@pytest.fixture(scope="module")
def city():
    ds = synthetic_city(n_users=60, n_stations=30, days=2, seed=3)
    return split_dataset(ds, (0.5, 0.0, 0.5), seed=0)


def without_traffic(ds: PreparedDataset) -> PreparedDataset:
    meta = {k: v for k, v in ds.meta.items() if k != "normalisation"}
    return PreparedDataset(np.zeros_like(ds.traffic), ds.locations, ds.stations, ds.samples,
                           dict(meta, has_traffic=False))


def row_cells(md: str, name: str) -> dict[str, str]:
    """Metric -> cell text of row ``name`` of the metrics table."""
    header = next(line for line in md.splitlines() if line.startswith("| set | n (real / gen)"))
    metrics = [h.split(" ")[0] for h in header.strip("|").split(" | ")[2:]]
    line = next(line for line in md.splitlines()
                if line.startswith((f"| {name} | ", f"| **{name}** | ")) and " / " in line)
    cells = [c.strip() for c in line.strip().strip("|").split(" | ")[2:]]
    return dict(zip(metrics, cells))


def spy_plots(monkeypatch) -> dict[str, list[str]]:
    drawn: dict[str, list[str]] = {}
    for fn in ("plot_series", "plot_trajectories", "plot_class_profiles"):
        original = getattr(plots, fn)

        def spy(sets, *args, _fn=fn, _orig=original, **kwargs):
            drawn[_fn] = list(sets)
            return _orig(sets, *args, **kwargs)

        monkeypatch.setattr(plots, fn, spy)
    return drawn


def test_missing_data_and_not_applicable():
    ds = synthetic_city(n_users=5, n_stations=20, days=1, seed=0)
    assert missing_data(ds) == {}
    assert "trajectories only" in missing_data(without_traffic(ds))["traffic"]
    zero = ds.with_series(np.zeros_like(ds.traffic), ds.locations, source="z")
    assert missing_data(zero) == {} and "all zeros" in missing_data(zero, real=True)["traffic"]
    ph = ds.with_series(ds.traffic, ds.locations, source="p", placeholder={"locations": "zeros"})
    assert set(missing_data(ph)) == {"locations"}
    na = not_applicable({"the real set": {}, "gen": missing_data(ph)})
    assert set(na) == set(TRAJECTORY) | {"joint_jsd", "joint_profile_rmse"}
    assert na["radius_jsd"] == "needs locations: gen placeholder locations (station 0: its model does not " \
                               "generate locations)"


def test_placeholder_baseline_output_is_na_not_zero_nor_bold(city, tmp_path, monkeypatch):
    train, test = city["train"], city["test"]
    markov = generate_dataset(Markov().fit(train, progress=False), train, test.n_samples, seed=0,
                              progress=False)
    assert "traffic" in markov.meta["placeholder"] and not markov.has_traffic
    copy = train.subset(np.arange(test.n_samples))
    drawn = spy_plots(monkeypatch)
    res = evaluate(test, {"markov": markov, "copy": copy}, tmp_path / "e", reference=train, train=train,
                   draws=2, seed=0)
    md = (tmp_path / "e" / "metrics.md").read_text()
    cells = row_cells(md, "markov")
    for m in TRAFFIC:
        assert cells[m] == "n/a", (m, cells[m])
    for m in TRAJECTORY:
        assert cells[m] not in ("n/a", "–") and math.isfinite(res.rows["markov"][m])
    assert all(row_cells(md, "copy")[m] != "n/a" for m in METRICS_NAMES)
    assert all(row_cells(md, "floor")[m] != "n/a" for m in METRICS_NAMES)
    assert "placeholder traffic" in md and "n/a: not applicable" in md
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for m in TRAFFIC:
        assert data["metrics"]["markov"][m] is None and data["metrics_sd"]["markov"][m] is None
        assert data["ratio_to_floor"]["markov"][m] is None
        assert data["draws"]["markov"][m] == [None, None]
        assert "placeholder traffic" in data["not_applicable"]["markov"][m]
        assert isinstance(data["metrics"]["copy"][m], float)
    assert set(data["not_applicable"]) == {"markov"}
    assert isinstance(data["ratio_to_floor"]["markov"]["radius_jsd"], float)
    # sanity: no traffic statistics (and so no 'zero slots' warning) for the placeholder
    assert data["sanity"]["markov"]["has_traffic"] is False
    zero_share = data["sanity"]["markov"]["zero_share"]
    assert zero_share is None or math.isnan(zero_share)
    sanity = md[md.index("## Sanity statistics"):md.index("## Memorisation")]
    sanity_row = next(line for line in sanity.splitlines() if line.startswith("| markov | "))
    assert sanity_row.split(" | ")[2:7] == ["n/a"] * 5 and sanity_row.split(" | ")[7] != "n/a"
    assert "| n/a |" in md[md.index("## Memorisation"):md.index("## Usefulness")]
    assert not any("zero slots" in w or "mean traffic" in w for w in res.warnings if w.startswith("markov"))
    # memorisation and TSTR: no traffic part for the placeholder set
    assert res.memorisation["markov"]["copy_share"] is None
    assert res.memorisation["markov"]["traffic_used"] is False
    assert isinstance(res.memorisation["copy"]["copy_share"], float)
    assert "ridge_mae" not in res.utility["markov"] and "ridge_mae" in res.utility["copy"]
    # plots: traffic ones without the placeholder set, the trajectory map with it
    assert drawn["plot_series"] == ["real", "copy"] and drawn["plot_class_profiles"] == ["real", "copy"]
    assert drawn["plot_trajectories"] == ["real", "markov", "copy"]


METRICS_NAMES = [m.name for m in METRICS]


def test_real_set_without_traffic_makes_every_traffic_metric_na(city, tmp_path, monkeypatch):
    train, test = without_traffic(city["train"]), without_traffic(city["test"])
    markov = generate_dataset(Markov().fit(train, progress=False), train, test.n_samples, seed=0,
                              progress=False)
    assert markov.meta["has_traffic"] is False
    noise = city["test"].with_series(np.random.default_rng(0).exponential(3.0, test.traffic.shape),
                                     test.locations[::-1], source="noise")  # traffic, but no real to match
    drawn = spy_plots(monkeypatch)
    res = evaluate(test, {"markov": markov, "noise": noise}, tmp_path / "e", reference=train, train=train,
                   draws=2)
    md = (tmp_path / "e" / "metrics.md").read_text()
    for row in ("markov", "noise", "floor"):
        cells = row_cells(md, row)
        assert all(cells[m] == "n/a" for m in TRAFFIC), (row, cells)
        assert all(cells[m] != "n/a" for m in TRAJECTORY), (row, cells)
    assert "0.0000" not in "".join(row_cells(md, "markov")[m] for m in TRAFFIC)
    assert "the real set has no traffic (trajectories only)" in md
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(data["not_applicable"]) == {"markov", "noise", "floor"}
    assert all(data["floor"]["floor"][m] is None for m in TRAFFIC)
    assert all(isinstance(data["floor"]["floor"][m], float) for m in TRAJECTORY)
    assert "plot_series" not in drawn and "plot_class_profiles" not in drawn
    assert drawn["plot_trajectories"] == ["real", "markov", "noise"]
    assert not (tmp_path / "e" / "plots" / "series.png").exists()
    assert (tmp_path / "e" / "plots" / "distributions.png").exists()
    assert data["sanity"]["real"]["has_traffic"] is False and res.config["decode_cap"] is None
    assert not [w for w in res.warnings if "decoder cap" in w or "zero slots" in w]
    assert all(r["copy_share"] is None for r in res.memorisation.values())
    assert all("ridge_mae" not in r and "mlp_mae" not in r for r in res.utility.values())
    assert "markov_acc1" in res.utility["markov"]


def test_all_zero_real_traffic_is_na_and_a_zero_placeholder_is_not_bold(city, tmp_path):
    train, test = city["train"], city["test"]
    zero_test = test.with_series(np.zeros_like(test.traffic), test.locations, source="zero real",
                                 users=test.samples["user"].tolist())
    ph = train.with_series(np.zeros((test.n_samples, test.T)), train.locations[:test.n_samples],
                           source="p", placeholder={"traffic": "zeros"})
    noise = train.with_series(np.random.default_rng(1).exponential(3.0, (test.n_samples, test.T)),
                              train.locations[::-1][:test.n_samples], source="noise")
    res = evaluate(zero_test, {"placeholder": ph, "noise": noise}, tmp_path / "e", draws=3, plots=False)
    md = (tmp_path / "e" / "metrics.md").read_text()
    assert "**0.0000" not in md
    for row in ("placeholder", "noise", "floor"):
        assert all(row_cells(md, row)[m] == "n/a" for m in TRAFFIC)
    assert "its traffic is all zeros" in md
    assert all(math.isnan(res.rows["placeholder"][m]) for m in TRAFFIC)
    assert math.isnan(res.ratio()["placeholder"]["traffic_volume_jsd"])


def test_cli_evaluate_on_prepared_sets_without_traffic_npy(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, n in (("real.data", 40), ("val.data", 20)):
        (raw / name).write_text("".join(" ".join(map(str, np.repeat(rng.integers(0, 25, 4), 4))) + "\n"
                                        for _ in range(n)))
    (raw / "gps").write_text("".join(f"{39.9 + 0.01 * (i % 5)} {116.3 + 0.01 * (i // 5)}\n"
                                     for i in range(25)))
    r = CliRunner()
    assert r.invoke(cli, ["prepare", "--source", "movesim", "--raw", str(raw), "--out",
                          str(tmp_path / "d")]).exit_code == 0
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--by", "part",
                         "--train", "real", "--val", "val", "--test", "val"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["evaluate", "--real", str(tmp_path / "s" / "test"), "--generated",
                         f"train={tmp_path / 's' / 'train'}", "--reference", str(tmp_path / "s" / "train"),
                         "--out", str(tmp_path / "e"), "--no-plots", "--draws", "2"])
    assert res.exit_code == 0, res.output
    cells = row_cells(res.output, "train")
    assert all(cells[m] == "n/a" for m in TRAFFIC) and all(cells[m] != "n/a" for m in TRAJECTORY)
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert data["metrics"]["train"]["traffic_volume_jsd"] is None
    assert "no traffic" in data["not_applicable"]["train"]["joint_jsd"]
