"""Sampling speed of a trained MSTDiff model: dense reverse draw against the two-stage draw.

    python benchmarks/sample_trained.py --model runs/bench-sh/models/mstdiff/train --n 128 \\
        --threads 1 --out benchmarks/results/sample_trained

The model and its transition are read from the training directory (``model.pt``). Two variants run
**interleaved** (A, B, A, B, ...) on the same model and seed:

* ``before``: PyTorch operations only (``GraphTransition.fused = False``) and the dense reverse
  draw (``location_draw = "dense"``);
* ``after``: the defaults, fused Numba kernels and the exact two-stage draw.

Both draw from the same law (``tests/diffusion/test_kernels.py``); they use the random stream
differently, so the samples differ. Prints a Markdown table and writes ``sample_trained.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mstdiff.training.mstdiff import MSTDiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="training directory or its model.pt")
    ap.add_argument("--n", type=int, default=128, help="samples per run (one batch)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved runs per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = MSTDiff.load(args.model)
    disc = model.hybrid.discrete
    variants = {"before": (False, "dense"), "after": (True, "two_stage")}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.reps):
        for v, (fused, draw) in variants.items():
            disc.fused = fused
            model.hybrid.config.location_draw = draw
            t0 = time.perf_counter()
            model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(x) for v, x in times.items()}
    result = {
        "model": str(args.model), "N": disc.num_states, "T": model.config.denoiser.seq_len,
        "S": disc.num_steps, "n": args.n, "threads": args.threads, "reps": args.reps,
        "run_s": {v: [round(x, 2) for x in times[v]] for v in variants},
        "samples_per_s": {v: round(args.n / med[v], 3) for v in variants},
        "speedup": round(med["before"] / med["after"], 2),
    }
    print(f"N = {result['N']}, T = {result['T']}, S = {result['S']}, {args.n} samples per run, "
          f"{args.threads} thread(s), medians of {args.reps} interleaved runs\n")
    print("| | before (dense draw, PyTorch ops) | after (two-stage draw, fused) | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| sampling samples/s (all S steps) | {result['samples_per_s']['before']} | "
          f"{result['samples_per_s']['after']} | {result['speedup']}x |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sample_trained.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
