"""Urban knowledge graph of base stations: entities, relations and triples.

Four relations (MSTDiff paper, §III; the urban-KG convention of Tsinghua FIB-lab works):

``BaseLocateAt``  station -> region
    The region is the user's ``region`` column when the station table has one; otherwise a square
    grid cell of ``cell_km`` (default 1 km) on a local equirectangular projection (:func:`project_km`)
    whose reference point (default: the median station) is a grid corner.
``BaseBelongTo``  station -> business area
    Business areas are not given by any public data set at hand, so they are derived by this rule
    (documented in :func:`business_areas`): stations whose POI total (sum of the ``poi_*`` columns,
    or, without POI columns, the number of stations within ``area_link_km``) is at or above the
    ``area_quantile`` quantile are "dense"; dense stations are clustered by single linkage at
    ``area_link_km``; clusters of at least ``area_min_size`` stations are business areas; every
    station within ``area_link_km`` of an area member belongs to the area of its nearest member.
    A user-given ``business_area`` column replaces the rule.
``BaseBorderBy``  station <-> station
    Stations whose Voronoi cells share a border: the edges of the Delaunay triangulation
    (``scipy.spatial.Delaunay`` on projected coordinates), kept when not longer than ``border_max_km``,
    written in both directions. Co-located stations border each other.
``ServedBy``  station -> POI category
    For each station, POI counts are summed over all stations within ``served_radius_km`` (itself
    included). A category is linked when that sum is at least ``served_min_count`` and its location
    quotient (local share of the category over its city-wide share) is at least ``served_min_lq``,
    so the relation marks the categories a neighbourhood is *characterised* by, not merely contains.

``VisitedAfter``  station -> station (optional, off by default: ``visit_top_k = 0``)
    A visit-based relation for station sets without POIs: ``a -> b`` when users of the training
    trajectories moved from ``a`` to ``b`` in consecutive slots (``b != a``) at least
    ``visit_min_count`` times; each station keeps its ``visit_top_k`` most frequent successors (ties
    by station index). Built from the training split only (``mstdiff kg build`` on a split directory
    reads ``train/``), so held-out users never enter the graph. Appended after the four relations
    above, whose ids do not change.

Stations without POI columns of their own (e.g. Shanghai Telecom) get them from a table of points
with POI counts (e.g. a table of Shanghai stations with 14 POI-category counts) through
:func:`attach_poi_context`.

Without any POI data (e.g. GeoLife on the MoveSim grid: coordinates only) the graph holds
``BaseLocateAt`` (grid cells), ``BaseBelongTo`` (areas by station density) and ``BaseBorderBy``;
``ServedBy`` keeps its relation index but has no triples, and ``summary()["relations_empty"]`` says
why. The relation list is the same for every station set, so relation ids never shift.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay, QhullError, cKDTree

from mstdiff.config import Check, between, ge, gt
from mstdiff.errors import InputError
from mstdiff.io import atomic_write_text, read_json, write_json

logger = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088
POI_PREFIX = "poi_"

RELATIONS = ("BaseLocateAt", "BaseBelongTo", "BaseBorderBy", "ServedBy")
VISIT_RELATION = "VisitedAfter"
STATION_TYPE = "station"
NO_POI_REASON = "no POI data: the station table has no poi_* columns and no POI table was given"


# ---------------------------------------------------------------------------------------- geometry
def project_km(
    lat: np.ndarray, lon: np.ndarray, ref: tuple[float, float] | None = None
) -> np.ndarray:
    """Local equirectangular projection to kilometres: ``(N, 2)`` array of (x east, y north).

    ``x = R·Δlon·cos(lat0)``, ``y = R·Δlat`` (radians, R = 6371.0088 km) around ``ref = (lat0, lon0)``,
    by default the median station. Distortion is below 0.5 % within ~100 km of ``ref``, enough for a
    city.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if ref is None:
        ref = (float(np.median(lat)), float(np.median(lon))) if lat.size else (0.0, 0.0)
    lat0, lon0 = ref
    x = EARTH_RADIUS_KM * np.deg2rad(lon - lon0) * np.cos(np.deg2rad(lat0))
    y = EARTH_RADIUS_KM * np.deg2rad(lat - lat0)
    return np.stack([x, y], axis=1)


def _coords(table: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray]:
    cols = {c.lower(): c for c in table.columns}
    lat_c = cols.get("lat") or cols.get("latitude")
    lon_c = cols.get("lon") or cols.get("longitude") or cols.get("lng")
    if lat_c is None or lon_c is None:
        raise InputError(
            f"no coordinate columns (has {list(table.columns)[:8]}...)", where=where,
            fix="provide columns 'lat' and 'lon' (or 'latitude' and 'longitude') in degrees",
        )
    lat = pd.to_numeric(table[lat_c], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(table[lon_c], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(lat) & np.isfinite(lon))
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} rows have missing or non-numeric coordinates "
            f"(first row {int(np.argmax(bad))})",
            where=where, fix="drop those rows or fill their coordinates",
        )
    return lat, lon


def poi_columns(table: pd.DataFrame) -> list[str]:
    """The POI-count columns of a table: those named ``poi_<category>``."""
    return [c for c in table.columns if str(c).startswith(POI_PREFIX)]


# ---------------------------------------------------------------------------------------- POI context
def load_poi_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a POI table (CSV, TSV or Parquet) with ``lat``/``lon`` (or ``latitude``/``longitude``).

    Two layouts are accepted: points with ``poi_<category>`` count columns (e.g. stations with POI
    counts), or one row per POI with a ``category`` column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("POI table not found", where=str(path), fix="pass an existing CSV/TSV/Parquet file")
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    else:
        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        table = pd.read_csv(path, sep=sep)
    lat, lon = _coords(table, str(path))
    table = table.copy()
    table["lat"], table["lon"] = lat, lon
    if not poi_columns(table) and "category" not in table.columns:
        raise InputError(
            "POI table has neither 'poi_*' count columns nor a 'category' column", where=str(path),
            fix="name count columns 'poi_<category>' or give one POI per row with a 'category' column",
        )
    return table


def attach_poi_context(
    stations: pd.DataFrame, poi_table: pd.DataFrame, radius_km: float = 0.5
) -> pd.DataFrame:
    """Stations with ``poi_*`` counts taken from a POI table by nearest-neighbour matching.

    * ``poi_table`` with ``poi_<category>`` columns (points with counts, e.g. another operator's
      stations): each station copies the counts of its nearest point if that point is within
      ``radius_km``, else zeros.
    * ``poi_table`` with a ``category`` column (one row per POI): each POI is counted at its nearest
      station if that station is within ``radius_km``.

    Distances use a ``scipy.spatial.cKDTree`` on :func:`project_km` coordinates (reference: the
    median station). Returns a copy of ``stations`` with the ``poi_*`` columns (replacing existing
    ones) and ``context_distance_km`` (distance to the matched point; NaN when unmatched; with the
    per-POI layout, the mean distance of the POIs counted).
    """
    if radius_km <= 0:
        raise InputError(f"radius_km = {radius_km} must be positive", where="attach_poi_context")
    lat, lon = _coords(stations, "station table")
    plat, plon = _coords(poi_table, "POI table")
    ref = (float(np.median(lat)), float(np.median(lon))) if lat.size else (0.0, 0.0)
    xy = project_km(lat, lon, ref)
    pxy = project_km(plat, plon, ref)
    out = stations.drop(columns=poi_columns(stations)).copy()
    cols = poi_columns(poi_table)
    if cols:
        counts = poi_table[cols].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy(np.float64)
        dist, idx = cKDTree(pxy).query(xy, k=1, distance_upper_bound=radius_km)
        hit = np.isfinite(dist)
        vals = np.zeros((len(stations), len(cols)))
        vals[hit] = counts[idx[hit]]
        for j, c in enumerate(cols):
            out[c] = vals[:, j]
        out["context_distance_km"] = np.where(hit, dist, np.nan)
        logger.info("POI context: %d of %d stations matched within %.2f km", int(hit.sum()), len(hit),
                    radius_km)
    elif "category" in poi_table.columns:
        cats = poi_table["category"].astype(str).to_numpy()
        names = np.unique(cats)
        dist, idx = cKDTree(xy).query(pxy, k=1, distance_upper_bound=radius_km)
        hit = np.isfinite(dist)
        cat_idx = np.searchsorted(names, cats)
        mat = np.zeros((len(stations), names.size))
        np.add.at(mat, (idx[hit], cat_idx[hit]), 1.0)
        for j, c in enumerate(names):
            out[POI_PREFIX + c] = mat[:, j]
        dsum = np.bincount(idx[hit], weights=dist[hit], minlength=len(stations))
        n = mat.sum(1)
        out["context_distance_km"] = np.where(n > 0, dsum / np.maximum(n, 1), np.nan)
        logger.info("POI context: %d of %d POIs counted at a station within %.2f km", int(hit.sum()),
                    hit.size, radius_km)
    else:
        raise InputError("POI table has neither 'poi_*' count columns nor a 'category' column",
                         where="POI table")
    return out


# ---------------------------------------------------------------------------------------- relations
def grid_regions(xy_km: np.ndarray, cell_km: float = 1.0) -> np.ndarray:
    """Grid-cell label ``"r{ix}_{iy}"`` per point, ``ix = floor(x / cell_km)`` (projected km)."""
    if cell_km <= 0:
        raise InputError(f"cell_km = {cell_km} must be positive", where="region grid")
    ij = np.floor(np.asarray(xy_km, dtype=np.float64) / cell_km).astype(np.int64)
    return np.array([f"r{i}_{j}" for i, j in ij], dtype=object)


def _voronoi_pairs(pts: np.ndarray) -> np.ndarray:
    """Delaunay edges ``(E, 2)`` (``i < j``) of distinct points; collinear points chain in order."""
    m = pts.shape[0]
    if m < 2:
        return np.zeros((0, 2), dtype=np.int64)
    centred = pts - pts.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if m == 2 or sv[1] <= 1e-9 * sv[0]:  # collinear: neighbours are consecutive along the line
        order = np.argsort(centred @ vt[0], kind="stable")
        return np.sort(np.stack([order[:-1], order[1:]], 1), axis=1).astype(np.int64)
    try:
        simplices = Delaunay(pts).simplices
    except QhullError:
        simplices = Delaunay(pts, qhull_options="QJ").simplices
    e = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
    return np.unique(np.sort(e, axis=1), axis=0).astype(np.int64)


def delaunay_borders(xy_km: np.ndarray, max_km: float = 3.0) -> np.ndarray:
    """Station pairs whose Voronoi cells share a border, as ``(E, 2)`` int array (``i < j``).

    The Voronoi neighbours of a point set are the edges of its Delaunay triangulation. Edges longer
    than ``max_km`` are dropped (borders between far-apart stations at the edge of the covered area
    are artefacts of the triangulation, not adjacency). Stations at identical coordinates border each
    other and share their coordinate's neighbours. Collinear inputs fall back to a joggled
    triangulation (Qhull option ``QJ``).
    """
    xy = np.asarray(xy_km, dtype=np.float64)
    n = xy.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    uniq, inverse = np.unique(xy, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = uniq.shape[0]
    pairs_u = _voronoi_pairs(uniq)
    if pairs_u.size:
        d = np.linalg.norm(uniq[pairs_u[:, 0]] - uniq[pairs_u[:, 1]], axis=1)
        pairs_u = pairs_u[d <= max_km]
    # expand unique-coordinate pairs to station pairs; co-located stations border each other
    members = [[] for _ in range(m)]  # type: list[list[int]]
    for i, u in enumerate(inverse):
        members[u].append(i)
    out = []
    for u, v in pairs_u:
        for a in members[u]:
            for b in members[v]:
                out.append((min(a, b), max(a, b)))
    for group in members:
        for ia in range(len(group)):
            for ib in range(ia + 1, len(group)):
                out.append((group[ia], group[ib]))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.asarray(out, dtype=np.int64), axis=0)


def business_areas(
    xy_km: np.ndarray,
    density: np.ndarray,
    *,
    quantile: float = 0.75,
    link_km: float = 1.0,
    min_size: int = 3,
) -> np.ndarray:
    """Business-area id per station (``-1``: none), by the rule in the module docstring.

    1. dense stations: ``density >= quantile(density, quantile)`` and ``density > 0``;
    2. single-linkage clusters of dense stations at ``link_km`` (connected components of the graph
       "within ``link_km``");
    3. clusters with at least ``min_size`` stations are areas, numbered by decreasing size;
    4. each station within ``link_km`` of an area member belongs to the area of its nearest member.
    """
    xy = np.asarray(xy_km, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    n = xy.shape[0]
    area = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return area
    thr = np.quantile(density, quantile)
    dense = np.flatnonzero((density >= thr) & (density > 0))
    if dense.size < max(min_size, 1):
        return area
    pairs = cKDTree(xy[dense]).query_pairs(link_km, output_type="ndarray")
    g = sparse.coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(dense.size, dense.size)
    )
    _, labels = connected_components(g, directed=False)
    sizes = np.bincount(labels)
    keep = np.flatnonzero(sizes >= min_size)
    if keep.size == 0:
        return area
    order = keep[np.argsort(-sizes[keep], kind="stable")]
    new_id = np.full(sizes.size, -1, dtype=np.int64)
    new_id[order] = np.arange(order.size)
    member = dense[new_id[labels] >= 0]
    member_area = new_id[labels[new_id[labels] >= 0]]
    dist, idx = cKDTree(xy[member]).query(xy, k=1, distance_upper_bound=link_km)
    hit = np.isfinite(dist)
    area[hit] = member_area[idx[hit]]
    return area


def served_categories(
    xy_km: np.ndarray,
    counts: np.ndarray,
    *,
    radius_km: float = 1.0,
    min_count: float = 1.0,
    min_lq: float = 1.0,
) -> np.ndarray:
    """``(N, C)`` boolean: category c serves station i (rule in the module docstring).

    ``local[i] = sum of counts[j] over stations j within radius_km of i``;
    ``lq[i, c] = (local[i, c] / local[i].sum()) / (counts[:, c].sum() / counts.sum())``;
    served when ``local >= min_count`` and ``lq >= min_lq``.
    """
    xy = np.asarray(xy_km, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    n, c = counts.shape
    if n == 0 or c == 0:
        return np.zeros((n, c), dtype=bool)
    pairs = cKDTree(xy).query_pairs(radius_km, output_type="ndarray")
    rows = np.concatenate([np.arange(n), pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([np.arange(n), pairs[:, 1], pairs[:, 0]])
    w = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    local = np.asarray(w @ counts)
    total = counts.sum(0)
    city_share = total / max(total.sum(), 1e-12)
    local_share = local / np.maximum(local.sum(1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        lq = np.where(city_share > 0, local_share / city_share, 0.0)
    return (local >= min_count) & (lq >= min_lq)


def visit_successors(locations: np.ndarray, n: int, top_k: int, min_count: int = 2) -> np.ndarray:
    """``VisitedAfter`` pairs ``(a, b)`` (``(E, 2)`` int64, sorted by ``a``, then by count, then ``b``).

    Moves ``a -> b`` are consecutive slots of one trajectory with ``b != a``; per ``a`` the ``top_k``
    most frequent successors with at least ``min_count`` moves are kept, ties broken by station index.
    """
    loc = np.asarray(locations, dtype=np.int64)
    if loc.ndim != 2:
        raise InputError(f"locations must be (U, T), got shape {loc.shape}", where="VisitedAfter")
    if loc.size and (loc.min() < 0 or loc.max() >= n):
        raise InputError(f"locations index outside the {n} stations", where="VisitedAfter")
    a, b = loc[:, :-1].ravel(), loc[:, 1:].ravel()
    move = a != b
    if not move.any():
        return np.zeros((0, 2), dtype=np.int64)
    key, count = np.unique(a[move] * n + b[move], return_counts=True)
    src, dst = key // n, key % n
    keep = count >= min_count
    src, dst, count = src[keep], dst[keep], count[keep]
    order = np.lexsort((dst, -count, src))  # by source, most frequent first, then index
    src, dst = src[order], dst[order]
    first = np.searchsorted(src, src, side="left")
    rank = np.arange(src.size) - first
    sel = rank < top_k
    return np.stack([src[sel], dst[sel]], 1).astype(np.int64)


# ---------------------------------------------------------------------------------------- the graph
@dataclass
class KnowledgeGraph:
    """Entities, relations and ``(head, relation, tail)`` integer triples.

    Stations are entities ``0 .. n_stations-1`` in station-table order, so their embeddings are the
    first ``n_stations`` rows of any entity-embedding matrix.
    """

    entities: list[str]  # entity names, e.g. "station:17", "region:r3_-2", "area:0", "poi:Dining"
    entity_types: list[str]  # "station", "region", "area" or "poi", aligned with `entities`
    relations: list[str]  # relation names; triples index this list
    triples: np.ndarray  # (M, 3) int64: head entity, relation, tail entity
    n_stations: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.triples = np.asarray(self.triples, dtype=np.int64).reshape(-1, 3)
        if len(self.entities) != len(self.entity_types):
            raise ValueError("entities and entity_types differ in length")
        if self.triples.size:
            if self.triples[:, [0, 2]].min() < 0 or self.triples[:, [0, 2]].max() >= len(self.entities):
                raise ValueError("triple entity index out of range")
            if self.triples[:, 1].min() < 0 or self.triples[:, 1].max() >= len(self.relations):
                raise ValueError("triple relation index out of range")

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    def relation_triples(self, name: str) -> np.ndarray:
        """Triples of one relation, ``(M_r, 3)``."""
        r = self.relations.index(name)
        return self.triples[self.triples[:, 1] == r]

    def summary(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for t in self.entity_types:
            types[t] = types.get(t, 0) + 1
        per_rel = np.bincount(self.triples[:, 1], minlength=self.n_relations) if self.triples.size else (
            np.zeros(self.n_relations, dtype=np.int64))
        counts = {r: int(c) for r, c in zip(self.relations, per_rel)}
        reasons = dict(self.meta.get("empty_relations", {}))
        return {
            "n_entities": self.n_entities,
            "n_stations": self.n_stations,
            "entities": types,
            "relations": list(self.relations),
            "n_triples": int(self.triples.shape[0]),
            "triples": counts,
            "relations_present": [r for r in self.relations if counts[r]],
            "relations_empty": {r: reasons.get(r, "no triples") for r in self.relations if not counts[r]},
        }

    def describe(self) -> str:
        """One line: stations, entities by type, triples per relation, and why a relation is empty."""
        s = self.summary()
        ents = ", ".join(f"{v:,} {k}" for k, v in s["entities"].items())
        rels = ", ".join(f"{r} {c:,}" for r, c in s["triples"].items() if c)
        line = f"{s['n_triples']:,} triples over {ents}: {rels}"
        if "regions_from" in self.meta:
            line += f"; regions from {self.meta['regions_from']}, areas from {self.meta.get('areas_from')}"
        sizes = self.meta.get("area_sizes")
        if sizes:
            line += f" ({len(sizes)} areas, largest {max(sizes):,} stations)"
        for r, why in s["relations_empty"].items():
            line += f"; {r} empty ({why})"
        return line

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``entities.tsv``, ``triples.tsv`` (names) and ``summary.json`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        ent = "index\tname\ttype\n" + "".join(
            f"{i}\t{n}\t{t}\n" for i, (n, t) in enumerate(zip(self.entities, self.entity_types))
        )
        atomic_write_text(path / "entities.tsv", ent)
        names = np.asarray(self.entities, dtype=object)
        rels = np.asarray(self.relations, dtype=object)
        h, r, t = self.triples.T
        lines = [f"{a}\t{b}\t{c}\n" for a, b, c in zip(names[h], rels[r], names[t])]
        atomic_write_text(path / "triples.tsv", "head\trelation\ttail\n" + "".join(lines))
        write_json(path / "summary.json", dict(self.summary(), meta=self.meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnowledgeGraph:
        path = Path(path)
        missing = [f for f in ("entities.tsv", "triples.tsv", "summary.json") if not (path / f).exists()]
        if missing:
            raise InputError(
                f"not a knowledge-graph directory: missing {', '.join(missing)}", where=str(path),
                fix="create it with `mstdiff kg build`",
            )
        summary = read_json(path / "summary.json")
        ent = pd.read_csv(path / "entities.tsv", sep="\t", dtype=str, keep_default_na=False,
                          quoting=3)
        tri = pd.read_csv(path / "triples.tsv", sep="\t", dtype=str, keep_default_na=False, quoting=3)
        entities = ent["name"].tolist()
        index = {n: i for i, n in enumerate(entities)}
        relations = list(summary["relations"])
        rindex = {n: i for i, n in enumerate(relations)}
        try:
            triples = np.stack([
                tri["head"].map(index).to_numpy(dtype=np.int64),
                tri["relation"].map(rindex).to_numpy(dtype=np.int64),
                tri["tail"].map(index).to_numpy(dtype=np.int64),
            ], axis=1) if len(tri) else np.zeros((0, 3), dtype=np.int64)
        except (ValueError, TypeError) as exc:  # a name not in entities.tsv maps to NaN
            raise InputError("triples.tsv names an unknown entity or relation", where=str(path),
                             fix="rebuild the graph with `mstdiff kg build`") from exc
        return cls(entities, ent["type"].tolist(), relations, triples, int(summary["n_stations"]),
                   dict(summary.get("meta", {})))


@dataclass
class KGOptions:
    """Parameters of :func:`build_knowledge_graph` (saved in ``meta.json``)."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "cell_km": gt(0), "border_max_km": gt(0), "area_quantile": between(0, 1), "area_link_km": gt(0),
        "area_min_size": ge(1), "served_radius_km": gt(0), "served_min_count": ge(0),
        "served_min_lq": ge(0), "ref_lat": between(-90, 90), "ref_lon": between(-180, 180),
        "visit_top_k": ge(0), "visit_min_count": ge(1),
    }

    cell_km: float = 1.0  # grid cell side for BaseLocateAt (ignored when stations have `region`)
    border_max_km: float = 3.0  # longest Delaunay edge kept as BaseBorderBy (~90 % of Shanghai's)
    area_quantile: float = 0.75  # POI-total quantile above which a station is "dense"
    area_link_km: float = 1.0  # single-linkage distance for business areas
    area_min_size: int = 3  # smallest business area, in dense stations
    served_radius_km: float = 1.0  # neighbourhood radius for ServedBy
    served_min_count: float = 1.0  # at least this many POIs of the category in the neighbourhood
    served_min_lq: float = 1.0  # and a location quotient at least this
    ref_lat: float | None = None  # projection / grid reference point (default: median station)
    ref_lon: float | None = None
    visit_top_k: int = 0  # VisitedAfter: most frequent successors kept per station (0: no relation)
    visit_min_count: int = 2  # VisitedAfter: fewest observed moves a -> b for a triple


def _clean(name: object) -> str:
    return str(name).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def build_knowledge_graph(
    stations: pd.DataFrame, poi_table: pd.DataFrame | None = None, *,
    poi_radius_km: float = 0.5, options: KGOptions | None = None,
    locations: np.ndarray | None = None,
) -> KnowledgeGraph:
    """Build the station knowledge graph (relations as in the module docstring).

    ``stations``: ``station_id, lat, lon`` plus optional ``poi_*`` count columns, ``region`` and
    ``business_area`` columns. ``poi_table``: optional POI context attached with
    :func:`attach_poi_context` (``poi_radius_km``) before the relations are derived.
    ``locations``: ``(U, T)`` station indices of the training trajectories, needed (only) for
    ``VisitedAfter`` (``options.visit_top_k > 0``).
    """
    opt = options or KGOptions()
    if opt.visit_top_k > 0 and locations is None:
        raise InputError("visit_top_k > 0 needs the training trajectories", where="knowledge graph",
                         fix="pass locations= (mstdiff kg build reads them from the dataset)")
    if "station_id" not in stations.columns:
        raise InputError("station table lacks a 'station_id' column", where="station table")
    ids = stations["station_id"].map(_clean)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"{len(dup)} duplicate station ids (e.g. {dup.iloc[0]!r})", where="station table",
                         fix="make station_id unique")
    if poi_table is not None:
        stations = attach_poi_context(stations, poi_table, poi_radius_km)
    lat, lon = _coords(stations, "station table")
    n = len(stations)
    ref = None if opt.ref_lat is None or opt.ref_lon is None else (opt.ref_lat, opt.ref_lon)
    xy = project_km(lat, lon, ref)

    entities = [f"station:{i}" for i in ids]
    types = [STATION_TYPE] * n
    index: dict[str, int] = {}

    def entity(name: str, typ: str) -> int:
        key = f"{typ}:{_clean(name)}"
        if key not in index:
            index[key] = len(entities)
            entities.append(key)
            types.append(typ)
        return index[key]

    triples: list[np.ndarray] = []
    meta: dict[str, Any] = {"options": opt.__dict__.copy(), "n_stations": n}

    # BaseLocateAt
    if "region" in stations.columns:
        regions = stations["region"].astype(str).to_numpy()
        meta["regions_from"] = "column"
    else:
        regions = grid_regions(xy, opt.cell_km)
        meta["regions_from"] = f"grid {opt.cell_km} km"
    tails = np.array([entity(r, "region") for r in regions], dtype=np.int64)
    triples.append(np.stack([np.arange(n), np.zeros(n, np.int64), tails], 1))

    # BaseBelongTo
    cols = poi_columns(stations)
    counts = (stations[cols].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy(np.float64)
              if cols else np.zeros((n, 0)))
    if "business_area" in stations.columns:
        raw = stations["business_area"]
        ok = raw.notna().to_numpy() & (raw.astype(str).str.len() > 0).to_numpy()
        heads = np.flatnonzero(ok)
        tails = np.array([entity(a, "area") for a in raw.astype(str).to_numpy()[ok]], dtype=np.int64)
        meta["areas_from"] = "column"
    else:
        if cols:
            density = counts.sum(1)
            meta["areas_from"] = "POI totals"
        else:
            pairs = cKDTree(xy).query_pairs(opt.area_link_km, output_type="ndarray")
            density = np.bincount(pairs.ravel(), minlength=n).astype(np.float64)
            meta["areas_from"] = f"station density (stations within {opt.area_link_km:g} km; no POI columns)"
        area = business_areas(xy, density, quantile=opt.area_quantile, link_km=opt.area_link_km,
                              min_size=opt.area_min_size)
        heads = np.flatnonzero(area >= 0)
        tails = np.array([entity(str(a), "area") for a in area[heads]], dtype=np.int64)
        meta["area_sizes"] = np.bincount(area[heads]).tolist() if heads.size else []
    triples.append(np.stack([heads, np.ones(heads.size, np.int64), tails], 1))

    # BaseBorderBy (both directions)
    e = delaunay_borders(xy, opt.border_max_km)
    both = np.concatenate([e, e[:, ::-1]]) if e.size else np.zeros((0, 2), np.int64)
    triples.append(np.stack([both[:, 0], np.full(len(both), 2, np.int64), both[:, 1]], 1))

    # ServedBy
    if cols:
        served = served_categories(xy, counts, radius_km=opt.served_radius_km,
                                   min_count=opt.served_min_count, min_lq=opt.served_min_lq)
        cat_ids = np.array([entity(c[len(POI_PREFIX):], "poi") for c in cols], dtype=np.int64)
        si, ci = np.nonzero(served)
        triples.append(np.stack([si, np.full(si.size, 3, np.int64), cat_ids[ci]], 1))
        meta["poi_categories"] = [c[len(POI_PREFIX):] for c in cols]
    else:
        meta["empty_relations"] = {"ServedBy": NO_POI_REASON}
        logger.warning("no POI data (no poi_* columns, no POI table): ServedBy is empty and business "
                       "areas come from station density; pass --poi-table to add POI context")

    relations = list(RELATIONS)
    if opt.visit_top_k > 0:
        assert locations is not None
        pairs = visit_successors(locations, n, opt.visit_top_k, opt.visit_min_count)
        triples.append(np.stack([pairs[:, 0], np.full(len(pairs), len(relations), np.int64),
                                 pairs[:, 1]], 1))
        relations.append(VISIT_RELATION)
        meta["visits_from"] = f"{int(np.asarray(locations).shape[0])} training trajectories"
        if not len(pairs):
            meta.setdefault("empty_relations", {})[VISIT_RELATION] = (
                f"no station pair moved between at least {opt.visit_min_count} times")

    kg = KnowledgeGraph(entities, types, relations, np.concatenate(triples), n, meta)
    logger.info("knowledge graph: %s", kg.describe())
    return kg
