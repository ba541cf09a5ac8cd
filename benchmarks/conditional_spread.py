"""How sure and how right are the traffic draws for given trajectories? (issue 17 diagnosis)

For ``--n`` samples of ``--real`` (the training split shows what the model memorised, the validation
split what carries over to unseen users), K draws of traffic given the real trajectories, beside K
random training days (the marginal) and, with ``--unconditional``, K unconditional draws:

* CRPS and the coverage of the central 90 % interval, per slot (``mstdiff.metrics.paired``);
* the spread of a day's total over the K draws of one condition ("within"), the spread of the
  K-draw means across conditions ("between"), and the correlation of those means with the real
  totals: a model that knows a day's traffic from its trajectory has a high correlation; one that
  is sure but wrong has a small within spread, a large between spread and no correlation.

    python benchmarks/conditional_spread.py --model runs/bench-sh/models/mstdiff/train \\
        --train runs/bench-sh/split/train --real runs/bench-sh/split/val --n 100 --k 10 \\
        --sample location_temperature=0.9 --sample condition_weight=1 --out spread.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from conditional import common_arguments, random_days, setup  # benchmarks/conditional.py
from mstdiff.conditional import observed_from
from mstdiff.metrics import paired
from mstdiff.training.mstdiff import MSTDiff


def spread(draws: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Scores of ``draws (n, K, T)`` against ``truth (n, T)``."""
    tot = draws.sum(2)  # (n, K) daily totals
    return {"crps": paired.crps(draws, truth), "cover90": paired.interval_coverage(draws, truth, 0.9),
            "zero_share": float((draws == 0).mean()), "mean": float(draws.mean()),
            "total_sd_within": float(tot.std(1).mean()), "total_sd_between": float(tot.mean(1).std()),
            "total_corr": float(np.corrcoef(tot.mean(1), truth.sum(1))[0, 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap, model_required=True)
    ap.add_argument("--unconditional", action="store_true", help="also K unconditional draws")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args()
    opts, train, _, cond = setup(args)
    n, K, T = cond.n_samples, args.k, cond.T
    model = MSTDiff.load(args.model).with_sampling(**opts)
    rows: dict[str, dict[str, float]] = {}
    rows["random training days"] = spread(random_days(train, n, K, args.seed), cond.traffic)
    obs = observed_from("locations", cond, train).rows(np.repeat(np.arange(n), K))
    tr, _ = model.generate(generator=torch.Generator().manual_seed(args.seed + 10), condition=obs,
                           batch_size=256)
    rows["MSTDiff given the trajectories"] = spread(tr.reshape(n, K, T), cond.traffic)
    if args.unconditional:
        un, _ = model.generate(n * K, generator=torch.Generator().manual_seed(args.seed + 1), batch_size=256)
        rows["MSTDiff unconditional"] = spread(un.reshape(n, K, T), cond.traffic)
    cols = list(next(iter(rows.values())))
    print("| draws | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "real": str(args.real), "n": n, "k": K,
                                    "seed": args.seed, "sampling": opts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
