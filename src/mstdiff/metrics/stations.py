"""Put several datasets on one station table: match stations by id (and coordinates), never by order.

A real set prepared separately (other users of the same city) has its own station table: only the
stations its users visit, in its own order. Location indices are positions in a table, so two sets
can only be compared after their indices are translated to one table. :func:`align_stations`
builds that table (the first set's stations in their order, then every station of the other sets
that the first lacks) and re-indexes every set onto it:

- stations are matched by ``station_id`` (as text); a matched id whose coordinates differ by more
  than ``tolerance_deg`` is an :class:`~mstdiff.errors.InputError` (two different station files);
- stations whose ids are absent from the first table are matched by exact coordinates (rounded to
  1e-6°) to a first-table station that no id matched, which catches tables re-numbered 0..N-1;
- everything else is added as a new station, and :class:`Alignment` counts, per set, the slots
  spent on stations that the first set's table lacks (``unknown_slots``) and the slots of the first
  set on stations the other set's table lacks (``first_unknown_slots``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Alignment", "align_stations"]


@dataclass
class Alignment:
    """Sets re-indexed onto one station table, with what did not match."""

    sets: dict[str, PreparedDataset]
    stations: pd.DataFrame
    matched_by_id: dict[str, int] = field(default_factory=dict)
    matched_by_coords: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)  # stations the first table lacks
    unknown_slots: dict[str, int] = field(default_factory=dict)  # its slots on those stations
    first_unknown_slots: dict[str, int] = field(default_factory=dict)  # first set's slots it lacks

    def to_dict(self) -> dict[str, Any]:
        return {"n_stations": len(self.stations), "matched_by_id": self.matched_by_id,
                "matched_by_coords": self.matched_by_coords, "added": self.added,
                "unknown_slots": self.unknown_slots, "first_unknown_slots": self.first_unknown_slots}

    def notes(self, first: str = "real") -> list[str]:
        """One line per set that did not match the first table one to one."""
        out = []
        for name, ds in self.sets.items():
            if name not in self.added:
                continue
            slots = ds.locations.size
            if self.added[name] or self.matched_by_coords[name] or self.first_unknown_slots[name]:
                out.append(
                    f"stations of {name!r}: {self.matched_by_id[name]} matched by id, "
                    f"{self.matched_by_coords[name]} by coordinates, {self.added[name]} unknown to "
                    f"the {first} set ({self.unknown_slots[name]} of {slots} slots on them); "
                    f"{self.first_unknown_slots[name]} slots of the {first} set are on stations "
                    f"{name!r}'s table lacks.")
        return out


def _key(df: pd.DataFrame) -> np.ndarray:
    return df["station_id"].astype(str).to_numpy()


def align_stations(sets: Mapping[str, PreparedDataset], *, tolerance_deg: float = 1e-4) -> Alignment:
    """Re-index every set onto one station table whose first rows are the first set's (see module)."""
    names = list(sets)
    if not names:
        raise InputError("no dataset to align", where="align_stations")
    first = sets[names[0]]
    base = first.stations.reset_index(drop=True).copy()
    base["station_id"] = _key(base)
    ids0 = base["station_id"].to_numpy()
    if len(set(ids0)) != len(ids0):
        raise InputError(f"the station table of {names[0]!r} has repeated station ids", where=names[0],
                         fix="prepare it again (station ids must be unique)")
    table = base
    index_of = {sid: i for i, sid in enumerate(ids0)}
    coord_key0 = {(round(float(a), 6), round(float(b), 6)): i
                  for i, (a, b) in enumerate(base[["lat", "lon"]].to_numpy(dtype=float))}
    out = Alignment(sets={}, stations=base)
    locs: dict[str, np.ndarray] = {names[0]: first.locations}
    n_total = len(base)
    for name in names[1:]:
        ds = sets[name]
        st = ds.stations.reset_index(drop=True)
        ids = _key(st)
        coords = st[["lat", "lon"]].to_numpy(dtype=float)
        remap = np.full(len(st), -1, dtype=np.int64)
        known = np.array([sid in index_of for sid in ids], dtype=bool)
        if known.any():
            pos = np.array([index_of[sid] for sid in ids[known]], dtype=np.int64)
            ref = table[["lat", "lon"]].to_numpy(dtype=float)[pos]
            bad = np.abs(ref - coords[known]).max(axis=1) > tolerance_deg
            bad &= np.isfinite(ref).all(axis=1) & np.isfinite(coords[known]).all(axis=1)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"{int(bad.sum())} station id(s) of {name!r} have other coordinates than in "
                    f"{names[0]!r}, e.g. {ids[known][j]!r}: {tuple(coords[known][j])} vs {tuple(ref[j])}",
                    where=f"station table of {name!r}",
                    fix="prepare both sets from the same station file")
            remap[known] = pos
        used_base = set(remap[remap >= 0].tolist())
        by_coords = 0
        for jj in np.flatnonzero(~known).tolist():
            i = coord_key0.get((round(coords[jj, 0], 6), round(coords[jj, 1], 6)))
            if i is not None and i not in used_base:
                remap[jj] = i
                used_base.add(i)
                by_coords += 1
        new = np.flatnonzero(remap < 0)
        if new.size:
            # a station added by an earlier set keeps its index
            fresh = []
            for jj in new.tolist():
                sid = ids[jj]
                if sid in index_of:
                    remap[jj] = index_of[sid]
                else:
                    index_of[sid] = n_total
                    remap[jj] = n_total
                    n_total += 1
                    fresh.append(jj)
            if fresh:
                rows = st.iloc[fresh].copy()
                rows["station_id"] = ids[fresh]
                table = pd.concat([table, rows], ignore_index=True)
        loc = remap[ds.locations]
        out.matched_by_id[name] = int((known & (remap < len(base))).sum())
        out.matched_by_coords[name] = by_coords
        out.added[name] = int((remap >= len(base)).sum())
        out.unknown_slots[name] = int((loc >= len(base)).sum())
        lacks = np.ones(len(base), dtype=bool)
        lacks[remap[remap < len(base)]] = False
        out.first_unknown_slots[name] = int(lacks[first.locations].sum())
        locs[name] = loc
    table = table.reset_index(drop=True)
    for name in names:
        ds = sets[name]
        out.sets[name] = PreparedDataset(ds.traffic, locs[name], table, ds.samples, dict(ds.meta))
    out.stations = table
    for line in out.notes(names[0]):
        logger.warning(line)
    return out

