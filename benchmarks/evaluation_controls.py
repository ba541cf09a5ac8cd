"""Control "generators" for checking the evaluation protocol on a benchmark run (issue 13).

    python benchmarks/evaluation_controls.py --run runs/bench-sh --out /tmp/controls [--seed 0]

Writes three prepared datasets of the test split's size under --out, from the run's splits:

- ``copy-train``: random samples of the train split, unchanged (a generator that copies its
  training set: fidelity at the floor, memorisation must flag it);
- ``real-val``: the validation split (real users the generators never saw: fidelity at the floor,
  memorisation must not flag it);
- ``iid-visits``: every slot's station drawn i.i.d. from the train split's visit distribution and
  every slot's traffic i.i.d. from its slot values (the generator that games a per-station visit
  JSD; the headline metrics must put it above the floor).

Then evaluate them with the models, e.g.
``mstdiff evaluate --real RUN/split/test --reference RUN/split/train --train RUN/split/train
--generated copy-train=OUT/copy-train ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mstdiff.data import PreparedDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="benchmark run directory (with split/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train = PreparedDataset.load(args.run / "split" / "train")
    test = PreparedDataset.load(args.run / "split" / "test")
    val = PreparedDataset.load(args.run / "split" / "val")
    rng = np.random.default_rng(args.seed)
    n = test.n_samples
    copy = train.subset(np.sort(rng.choice(train.n_samples, size=n, replace=False)),
                        source="control:copy-train")
    visits = np.bincount(train.locations.ravel(), minlength=train.n_stations) / train.locations.size
    loc = rng.choice(train.n_stations, size=(n, train.T), p=visits)
    m = rng.choice(train.traffic.ravel(), size=(n, train.T))
    iid = train.with_series(m, loc, source="control:iid-visits")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, ds in (("copy-train", copy), ("real-val", val), ("iid-visits", iid)):
        ds.save(args.out / name, overwrite=True)
        print(f"{name}: {ds.n_samples} samples -> {args.out / name}")


if __name__ == "__main__":
    main()
