"""Knowledge-graph triples on hand-made stations, and on the real Shanghai stations when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstdiff.errors import InputError
from mstdiff.kg.triples import (
    EARTH_RADIUS_KM,
    KGOptions,
    KnowledgeGraph,
    attach_poi_context,
    build_knowledge_graph,
    business_areas,
    delaunay_borders,
    grid_regions,
    load_poi_table,
    project_km,
    served_categories,
)

REF = (31.2, 121.4)
VISIT = "VisitedAfter"


def shared_data() -> Path:
    env = os.environ.get("MSTDIFF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def from_km(xy: np.ndarray, ref: tuple[float, float] = REF) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`project_km`: lat/lon of points given in km east/north of ``ref``."""
    xy = np.asarray(xy, dtype=np.float64)
    lat = ref[0] + np.rad2deg(xy[:, 1] / EARTH_RADIUS_KM)
    lon = ref[1] + np.rad2deg(xy[:, 0] / (EARTH_RADIUS_KM * np.cos(np.deg2rad(ref[0]))))
    return lat, lon


def station_table(xy: np.ndarray, **cols: object) -> pd.DataFrame:
    lat, lon = from_km(xy)
    return pd.DataFrame({"station_id": [f"s{i}" for i in range(len(lat))], "lat": lat, "lon": lon, **cols})


def test_projection_roundtrip_and_scale():
    xy = np.array([[0.0, 0.0], [3.0, -4.0], [-10.0, 25.0]])
    lat, lon = from_km(xy)
    np.testing.assert_allclose(project_km(lat, lon, REF), xy, atol=1e-9)
    # one degree of latitude is ~111.2 km
    one_degree = project_km(np.array([31.0]), np.array([121.0]), (30.0, 121.0))[0, 1]
    assert one_degree == pytest.approx(111.19, abs=0.01)


def test_grid_cells_on_hand_made_coordinates():
    xy = np.array([[0.1, 0.1], [0.9, 0.2], [1.1, 0.5], [-0.2, 0.3], [2.5, -1.5], [0.5, 1.0]])
    got = list(grid_regions(xy, 1.0))
    assert got == ["r0_0", "r0_0", "r1_0", "r-1_0", "r2_-2", "r0_1"]
    assert list(grid_regions(xy, 2.0)) == ["r0_0", "r0_0", "r0_0", "r-1_0", "r1_-1", "r0_0"]
    kg = build_knowledge_graph(station_table(xy), options=KGOptions(cell_km=1.0, ref_lat=REF[0],
                                                                    ref_lon=REF[1]))
    loc = kg.relation_triples("BaseLocateAt")
    assert len(loc) == 6
    names = [kg.entities[t] for t in loc[:, 2]]
    assert names == [f"region:{g}" for g in got]
    with pytest.raises(InputError):
        grid_regions(xy, 0.0)


def test_user_regions_replace_the_grid():
    xy = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    kg = build_knowledge_graph(station_table(xy, region=["A", "B", "A"]))
    tails = [kg.entities[t] for t in kg.relation_triples("BaseLocateAt")[:, 2]]
    assert tails == ["region:A", "region:B", "region:A"]


def test_delaunay_borders_on_a_square_grid_are_capped():
    # 4 x 4 grid with 1 km spacing: every Delaunay edge is a side (1 km) or a diagonal (1.41 km)
    g = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0)), -1).reshape(-1, 2)
    g = g + np.random.default_rng(0).normal(scale=1e-3, size=g.shape)  # general position
    e = delaunay_borders(g, max_km=1.2)
    d = np.linalg.norm(g[e[:, 0]] - g[e[:, 1]], axis=1)
    assert d.max() <= 1.2
    assert len(e) == 24  # all 2 * 4 * 3 grid sides, no diagonal
    assert len(delaunay_borders(g, max_km=1.5)) == 24 + 9  # plus one diagonal per cell
    far = np.vstack([g, [[50.0, 50.0]]])
    assert not np.isin(16, delaunay_borders(far, max_km=3.0))  # the far station borders nobody


def test_delaunay_handles_duplicates_collinear_and_tiny_inputs():
    assert delaunay_borders(np.zeros((1, 2))).shape == (0, 2)
    np.testing.assert_array_equal(delaunay_borders(np.array([[0.0, 0.0], [0.5, 0.0]])), [[0, 1]])
    line = np.stack([np.arange(5.0), np.zeros(5)], 1)
    e = delaunay_borders(line, max_km=1.5)
    assert {tuple(p) for p in e} == {(0, 1), (1, 2), (2, 3), (3, 4)}
    dup = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    e = {tuple(p) for p in delaunay_borders(dup)}
    assert (0, 3) in e and (1, 3) in e and (2, 3) in e


def test_border_triples_are_symmetric():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 8, size=(60, 2))
    kg = build_knowledge_graph(station_table(xy), options=KGOptions(border_max_km=2.0))
    b = kg.relation_triples("BaseBorderBy")
    pairs = {(h, t) for h, _, t in b}
    assert pairs and all((t, h) in pairs for h, t in pairs)
    assert all(h != t for h, t in pairs)
    d = np.linalg.norm(xy[b[:, 0]] - xy[b[:, 2]], axis=1)
    assert d.max() <= 2.0 + 1e-6


def test_business_areas_rule():
    # two dense clusters (5 and 3 stations), one lonely dense station, sparse stations around
    dense_a = np.array([[0, 0], [0.5, 0], [1.0, 0], [0, 0.5], [0.5, 0.5]], dtype=float)
    dense_b = np.array([[10, 10], [10.5, 10], [11, 10]], dtype=float)
    lonely = np.array([[20.0, 0.0]])
    sparse_near = np.array([[1.8, 0.0]])  # within 1 km of cluster A's member (1, 0)
    sparse_far = np.array([[5.0, 5.0]])
    xy = np.vstack([dense_a, dense_b, lonely, sparse_near, sparse_far])
    density = np.array([100] * 5 + [90] * 3 + [95, 1, 1], dtype=float)
    area = business_areas(xy, density, quantile=0.2, link_km=1.0, min_size=3)
    assert list(area[:5]) == [0] * 5  # the larger area gets id 0
    assert list(area[5:8]) == [1] * 3
    assert area[8] == -1  # a cluster of one is not an area
    assert area[9] == 0  # a sparse station next to an area belongs to it
    assert area[10] == -1


def test_served_by_uses_location_quotient():
    xy = np.array([[0.0, 0.0], [0.3, 0.0], [10.0, 0.0], [10.3, 0.0]])
    counts = np.array([[10, 0], [10, 1], [1, 10], [0, 10]], dtype=float)  # food west, shops east
    served = served_categories(xy, counts, radius_km=1.0, min_count=1, min_lq=1.0)
    np.testing.assert_array_equal(served, [[True, False], [True, False], [False, True], [False, True]])
    everything = served_categories(xy, counts, radius_km=1.0, min_count=1, min_lq=0.0)
    assert everything.all()


def test_attach_poi_context_nearest_within_radius():
    stations = station_table(np.array([[0.0, 0.0], [5.0, 0.0], [20.0, 0.0]]))
    plat, plon = from_km(np.array([[0.1, 0.0], [0.4, 0.0], [5.3, 0.0]]))
    pois = pd.DataFrame({"lat": plat, "lon": plon, "poi_food": [1, 2, 3], "poi_shop": [4, 5, 6]})
    out = attach_poi_context(stations, pois, radius_km=0.5)
    assert out["poi_food"].tolist() == [1, 3, 0]  # nearest point, none within 0.5 km of the third
    assert out["poi_shop"].tolist() == [4, 6, 0]
    np.testing.assert_allclose(out["context_distance_km"].to_numpy()[:2], [0.1, 0.3], atol=1e-6)
    assert np.isnan(out["context_distance_km"].iloc[2])
    assert "poi_food" not in stations.columns  # the caller's table is not modified
    one_per_row = pd.DataFrame({"lat": plat, "lon": plon, "category": ["food", "food", "shop"]})
    counted = attach_poi_context(stations, one_per_row, radius_km=0.5)
    assert counted["poi_food"].tolist() == [2, 0, 0] and counted["poi_shop"].tolist() == [0, 1, 0]


def test_load_poi_table_renames_coordinates(tmp_path):
    p = tmp_path / "pois.csv"
    p.write_text("base_id,latitude,longitude,poi_A,poi_B\n1,31.2,121.4,3,4\n")
    t = load_poi_table(p)
    assert {"lat", "lon", "poi_A", "poi_B"} <= set(t.columns)
    bad = tmp_path / "bad.csv"
    bad.write_text("latitude,longitude,x\n31.2,121.4,1\n")
    with pytest.raises(InputError):
        load_poi_table(bad)


def test_knowledge_graph_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 6, size=(40, 2))
    st = station_table(xy, poi_food=rng.integers(0, 20, 40), poi_shop=rng.integers(0, 20, 40))
    kg = build_knowledge_graph(st, options=KGOptions(area_quantile=0.5))
    kg.save(tmp_path / "kg")
    back = KnowledgeGraph.load(tmp_path / "kg")
    assert back.entities == kg.entities and back.entity_types == kg.entity_types
    assert back.relations == kg.relations and back.n_stations == 40
    np.testing.assert_array_equal(back.triples, kg.triples)
    summary = kg.summary()
    assert summary["triples"]["ServedBy"] > 0 and summary["entities"]["station"] == 40
    assert kg.entities[:3] == ["station:s0", "station:s1", "station:s2"]  # stations first, in order
    with pytest.raises(InputError):
        KnowledgeGraph.load(tmp_path / "nothing")


def test_a_graph_without_pois_says_what_it_holds_and_why_served_by_is_empty(tmp_path, caplog):
    """GeoLife-like: coordinates only. Regions from the grid, areas from station density, borders."""
    import logging

    rng = np.random.default_rng(4)
    xy = np.concatenate([rng.uniform(0, 2, size=(60, 2)), rng.uniform(8, 20, size=(40, 2))])
    with caplog.at_level(logging.INFO, logger="mstdiff.kg.triples"):
        kg = build_knowledge_graph(station_table(xy))
    s = kg.summary()
    assert s["relations"] == ["BaseLocateAt", "BaseBelongTo", "BaseBorderBy", "ServedBy"]  # stable ids
    assert s["relations_present"] == ["BaseLocateAt", "BaseBelongTo", "BaseBorderBy"]
    assert s["triples"]["ServedBy"] == 0 and "poi" not in s["entities"]
    assert "no POI data" in s["relations_empty"]["ServedBy"]
    assert s["triples"]["BaseBelongTo"] > 0 and kg.meta["areas_from"].startswith("station density")
    assert sum(kg.meta["area_sizes"]) == s["triples"]["BaseBelongTo"]
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("knowledge graph:")]
    assert line and "BaseBorderBy" in line[0] and "ServedBy empty (no POI data" in line[0]
    kg.save(tmp_path / "kg")
    back = KnowledgeGraph.load(tmp_path / "kg")
    assert back.summary()["relations_empty"] == s["relations_empty"]


def test_visited_after_keeps_the_most_frequent_successors():
    from mstdiff.kg.triples import visit_successors

    loc = np.array([[0, 1, 1, 2, 0, 1],   # moves 0->1, 1->2, 2->0, 0->1
                    [0, 2, 0, 1, 3, 3],   # 0->2, 2->0, 0->1, 1->3
                    [3, 0, 2, 2, 2, 2]])  # 3->0, 0->2
    got = visit_successors(loc, 4, top_k=1, min_count=2)
    np.testing.assert_array_equal(got, [[0, 1], [2, 0]])  # 0->1 (3 moves) beats 0->2 (2)
    got = visit_successors(loc, 4, top_k=2, min_count=1)
    np.testing.assert_array_equal(got, [[0, 1], [0, 2], [1, 2], [1, 3], [2, 0], [3, 0]])  # ties by index
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert VISIT not in build_knowledge_graph(station_table(xy)).relations  # off by default
    kg = build_knowledge_graph(station_table(xy), options=KGOptions(visit_top_k=1), locations=loc)
    assert kg.relations[:4] == ["BaseLocateAt", "BaseBelongTo", "BaseBorderBy", "ServedBy"]
    assert kg.relations[4] == VISIT and kg.summary()["triples"][VISIT] == 2
    np.testing.assert_array_equal(kg.relation_triples(VISIT)[:, [0, 2]], [[0, 1], [2, 0]])
    with pytest.raises(InputError):
        build_knowledge_graph(station_table(xy), options=KGOptions(visit_top_k=1))


def test_build_kg_dir_reads_training_trajectories_for_visits(tmp_path):
    from mstdiff.data import PreparedDataset
    from mstdiff.kg.stages import build_kg_dir

    rng = np.random.default_rng(5)
    st = station_table(rng.uniform(0, 5, size=(12, 2)))
    ds = PreparedDataset(
        traffic=np.zeros((6, 8), np.float32), locations=np.tile([[0, 1, 2, 3, 4, 5, 6, 7]], (6, 1)),
        stations=st, samples=pd.DataFrame({"user": list("abcdef"), "start": [""] * 6}),
        meta={"source": "test"})
    ds.save(tmp_path / "ds")
    plain = build_kg_dir(tmp_path / "ds", tmp_path / "kg")
    from mstdiff.io import read_json

    params = read_json(plain / "meta.json")["params"]
    assert "visit_top_k" not in params["options"] and "locations_sha256" not in params  # as before
    out = build_kg_dir(tmp_path / "ds", tmp_path / "kgv", visit_top_k=3)
    kg = KnowledgeGraph.load(out)
    assert kg.summary()["triples"][VISIT] == 7  # 0->1, 1->2, ..., 6->7, each seen 6 times
    assert "locations_sha256" in read_json(out / "meta.json")["params"]


def test_duplicate_station_ids_are_rejected():
    st = station_table(np.array([[0.0, 0.0], [1.0, 0.0]]))
    st["station_id"] = ["a", "a"]
    with pytest.raises(InputError):
        build_knowledge_graph(st)


def test_build_kg_dir_is_resumable(tmp_path):
    from mstdiff.data import PreparedDataset
    from mstdiff.kg.stages import build_kg_dir

    rng = np.random.default_rng(3)
    st = station_table(rng.uniform(0, 5, size=(30, 2)))
    ds = PreparedDataset(
        traffic=rng.random((4, 8)).astype(np.float32), locations=rng.integers(0, 30, (4, 8)),
        stations=st, samples=pd.DataFrame({"user": list("abcd"), "start": [""] * 4}),
        meta={"source": "test"})
    ds.save(tmp_path / "ds")
    pois = pd.DataFrame({"lat": st["lat"], "lon": st["lon"], "poi_x": rng.integers(0, 9, 30)})
    pois.to_csv(tmp_path / "pois.csv", index=False)
    out = build_kg_dir(tmp_path / "ds", tmp_path / "kg", tmp_path / "pois.csv", cell_km=2.0)
    kg = KnowledgeGraph.load(out)
    assert kg.n_stations == 30 and kg.summary()["triples"]["ServedBy"] > 0
    stamp = (out / "meta.json").stat().st_mtime_ns
    build_kg_dir(tmp_path / "ds", tmp_path / "kg", tmp_path / "pois.csv", cell_km=2.0)
    assert (out / "meta.json").stat().st_mtime_ns == stamp  # up to date: skipped
    with pytest.raises(InputError):
        build_kg_dir(tmp_path / "ds", tmp_path / "kg", tmp_path / "pois.csv", cell_km=1.0)
    with pytest.raises(InputError):
        build_kg_dir(tmp_path / "ds", tmp_path / "kg2", no_such_option=1)
    build_kg_dir(tmp_path / "ds", tmp_path / "kg", tmp_path / "pois.csv", cell_km=1.0, overwrite=True)
    assert KnowledgeGraph.load(out).meta["options"]["cell_km"] == 1.0


@pytest.mark.realdata
def test_shanghai_stations_with_poi_context():
    root = shared_data()
    st_path = root / "shanghai_telecom" / "base_stations_all.csv"
    poi_path = root / "tsinghua_app_usage" / "llmapp_sample" / "location.csv"
    if not (st_path.exists() and poi_path.exists()):
        pytest.skip(f"real data absent under {root} (set MSTDIFF_SHARED_DATA to the shared data folder)")
    raw = pd.read_csv(st_path)
    st = pd.DataFrame({"station_id": raw["id"].astype(str), "lat": raw["latitude"], "lon": raw["longitude"]})
    pois = load_poi_table(poi_path)
    ctx = attach_poi_context(st, pois, radius_km=0.5)
    assert len([c for c in ctx.columns if c.startswith("poi_")]) == 14
    matched = ctx["context_distance_km"].notna().mean()
    assert 0.7 < matched < 1.0  # most Shanghai stations have a POI point within 500 m
    kg = build_knowledge_graph(st, pois)
    s = kg.summary()
    assert s["n_stations"] == 3042 and s["triples"]["BaseLocateAt"] == 3042
    assert s["entities"]["poi"] == 14 and s["entities"]["area"] >= 5
    borders = kg.relation_triples("BaseBorderBy")
    assert 4 < len(borders) / 3042 < 8  # a planar triangulation has < 6 neighbours on average
    served_per_station = s["triples"]["ServedBy"] / 3042
    assert 2 < served_per_station < 10
