"""Real-vs-real floor and two trivial generators on a prepared dataset (default: Shanghai Telecom).

    python benchmarks/floor.py                      # prepares ../shared/data/shanghai_telecom
    python benchmarks/floor.py --data DIR --out benchmarks/results/floor_shanghai

Steps: prepare (if --data is not given) → seeded user-level split → evaluate the test split as
"real" against
  - ``train``: the train split, subsampled to the test size (a real-vs-real comparison),
  - ``shuffled``: the same samples with their time order shuffled (traffic and location together),
  - ``first-location``: the same samples with every slot at the sample's first location.
The trivial generators must be clearly worse than the floor on the metrics designed to catch them
(shuffling: first-difference JSD, periodic RMSE, Distance, Duration; freezing: Distance, Radius,
DistinctLoc, Duration, ranks). Writes metrics.json / metrics.md / plots under --out and prints the table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mstdiff.data import PreparedDataset, split_dataset
from mstdiff.data.prepare import prepare
from mstdiff.metrics.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]


def shuffled_time(ds: PreparedDataset, rng: np.random.Generator) -> PreparedDataset:
    """Each sample's slots in a random order (the same permutation for traffic and location)."""
    perm = np.argsort(rng.random(ds.traffic.shape), axis=1)
    return ds.with_series(np.take_along_axis(ds.traffic, perm, 1), np.take_along_axis(ds.locations, perm, 1),
                          source="trivial:shuffled-time")


def first_location(ds: PreparedDataset) -> PreparedDataset:
    """Every slot of a sample at the sample's first location; traffic unchanged."""
    loc = np.repeat(ds.locations[:, :1], ds.T, axis=1)
    return ds.with_series(ds.traffic, loc, source="trivial:first-location")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="prepared dataset (default: prepare Shanghai)")
    ap.add_argument("--raw", type=Path, default=REPO.parent / "shared" / "data" / "shanghai_telecom")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "floor_shanghai")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.data is None:
        if not args.raw.is_dir():
            raise SystemExit(f"raw data folder {args.raw} not found: pass --raw or --data")
        ds = prepare("shanghai-telecom", args.raw, Path(tempfile.mkdtemp()) / "data")
    else:
        ds = PreparedDataset.load(args.data)
    parts = split_dataset(ds, (0.8, 0.1, 0.1), seed=args.seed)
    test, train = parts["test"], parts["train"]
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(train.n_samples, size=test.n_samples, replace=False))
    same = train.subset(pick)
    generated = {
        "train": same,
        "shuffled": shuffled_time(same, rng),
        "first-location": first_location(same),
    }
    res = evaluate(test, generated, args.out, seed=args.seed, overwrite=True)
    print(ds.summary())
    print()
    print(res.to_markdown())
    print(f"\nU={ds.n_samples} N={ds.n_stations} T={ds.T}; test={test.n_samples}, train={train.n_samples}; "
          f"{time.perf_counter() - t0:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
