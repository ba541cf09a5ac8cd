"""Plain statistics of sets of user-days: what a JSD table can hide.

    python benchmarks/day_stats.py real=runs/bench-geolife/split/test \\
        mstdiff=runs/bench-geolife/models/mstdiff/generated markov=runs/bench-geolife/models/markov/generated

Prints one Markdown row per prepared dataset (``NAME=DIR``) and writes ``--json`` if given. Columns:
changes / day (slots at another station than the slot before), returns / day (stays at a station
the day held before, not the one just left: the ``RETURN`` move tokens), one-slot blips A-X-A / day,
the share of interior stays (neither the first nor the last of a day) of one and of two slots,
chains / day (runs of six or more one-slot stays), the median jump in km between consecutive
stations, distinct stations / day and the stations used by the whole set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mstdiff.data import PreparedDataset
from mstdiff.metrics.trajectory import distinct_locations, step_distances
from mstdiff.models.day_pattern import encode_moves

COLUMNS = ("changes_per_day", "returns_per_day", "blips_per_day", "interior_1_slot", "interior_2_slots",
           "chains6_per_day", "jump_km_median", "distinct_per_day", "stations_used")


def stays(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stations and lengths of the runs of one day."""
    start = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    return row[start], np.diff(np.r_[start, row.size])


def day_stats(ds: PreparedDataset) -> dict[str, float]:
    L = np.asarray(ds.locations)
    U = L.shape[0]
    change = L[:, 1:] != L[:, :-1]
    blips = chains = 0
    interior: list[np.ndarray] = []
    for row in L:
        where, length = stays(row)
        if length.size > 2:
            interior.append(length[1:-1])
            blips += int(((length[1:-1] == 1) & (where[:-2] == where[2:])).sum())
        one = np.r_[0, (length == 1).astype(int), 0]
        edges = np.flatnonzero(np.diff(one))
        chains += int(((edges[1::2] - edges[::2]) >= 6).sum())
    inner = np.concatenate(interior) if interior else np.zeros(0, dtype=int)
    km = step_distances(L, ds.coords)[change]
    return {
        "changes_per_day": float(change.sum(1).mean()),
        "returns_per_day": float((encode_moves(L) >= 2).sum(1).mean()),
        "blips_per_day": blips / U,
        "interior_1_slot": float((inner == 1).mean()) if inner.size else 0.0,
        "interior_2_slots": float((inner == 2).mean()) if inner.size else 0.0,
        "chains6_per_day": chains / U,
        "jump_km_median": float(np.median(km)) if km.size else 0.0,
        "distinct_per_day": float(distinct_locations(L).mean()),
        "stations_used": int(np.unique(L).size),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = {}
    for spec in args.sets:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"{spec!r}: write NAME=DIR")
        rows[name] = day_stats(PreparedDataset.load(Path(path)))
    print("| set | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS))
    for name, r in rows.items():
        cells = [f"{r[c]:.0%}" if c.startswith("interior") else
                 f"{r[c]:,}" if c == "stations_used" else f"{r[c]:.2f}" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
