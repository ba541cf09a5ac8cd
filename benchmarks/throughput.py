"""Training and sampling throughput of MSTDiff at a given number of stations N and length T.

    python benchmarks/throughput.py                          # N in {500, 2000, 5000}, T in {48, 336}
    python benchmarks/throughput.py --n 2000 --t 48 --device cpu --out tp.json

For each (N, T) and location process (``--process``: ``absorbing`` with the copy head, the default
model; ``graph``, the paper's configuration with the tied table head; ``both``: one after the other,
side by side in one run): a synthetic kNN station graph of the real graph's degree, the denoiser of
``configs/shanghai.yaml`` (or ``--d-model``/``--layers``), random station
sequences that stay at a few stations per sample (like real users). Reports training samples/s
(full optimiser steps: forward, KL through the transition, backward, AdamW), sampling samples/s
through all S steps, and peak memory (RSS; CUDA max allocated on GPU). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mstdiff.diffusion.absorbing import AbsorbingProcess
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridDiffusion
from mstdiff.kg.graph import synthetic_knn_rate
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.losses import training_loss
from mstdiff.threads import set_threads
from mstdiff.training.mstdiff import peak_rss_mb
from mstdiff.training.utils import resolve_device


def measure(n: int, T: int, args: argparse.Namespace, process: str = "graph") -> dict[str, float]:
    dev = resolve_device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    t0 = time.perf_counter()
    if process == "graph":
        disc = GraphTransition(synthetic_knn_rate(n, k=8), num_steps=args.steps)
    else:
        disc = AbsorbingProcess(n, args.steps)
    build = time.perf_counter() - t0
    hybrid = HybridDiffusion(GaussianDiffusion(GaussianConfig(num_steps=args.steps)), disc).to(dev)
    absorbing = process == "absorbing"
    model = MSTDiffDenoiser(DenoiserConfig(num_stations=n, seq_len=T, d_model=args.d_model,
                                           layers_per_stage=args.layers, use_vqvae=False,
                                           copy_head=absorbing, mask_token=absorbing),
                            generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)  # stations on a 40 km square: the copy head's map kernel
    model.set_station_coordinates_(31.0 + 0.36 * rng.random(n), 121.0 + 0.42 * rng.random(n))
    model.to(dev)
    opt = torch.optim.AdamW(model.optimizer_groups(0.01), lr=1e-3)
    B = args.batch
    base = torch.randint(0, n, (B, 3), generator=torch.Generator().manual_seed(1))
    l0 = base[:, torch.sort(torch.randint(0, 3, (T,), generator=torch.Generator().manual_seed(2))).values]
    l0, w0 = l0.to(dev), torch.randn(B, T, device=dev)
    times = []
    for i in range(args.train_steps + 1):  # the first step is warm-up
        t = time.perf_counter()
        loss, _ = training_loss(model, hybrid, w0, l0, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    train_sps = B / (sum(times) / len(times))
    t = time.perf_counter()
    hybrid.sample(model, args.sample_batch, T, g, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sample_sps = args.sample_batch / (time.perf_counter() - t)
    out = {"N": n, "T": T, "process": process, "device": str(dev), "build_s": round(build, 2),
           "train_samples_per_s": round(train_sps, 2), "sample_samples_per_s": round(sample_sps, 3),
           "peak_rss_mb": round(peak_rss_mb(), 0), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[500, 2000, 5000])
    ap.add_argument("--t", type=int, nargs="*", default=[48, 336])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50, help="diffusion steps S")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--process", choices=["absorbing", "graph", "both"], default="absorbing")
    ap.add_argument("--reps", type=int, default=1, help="with --process both: alternate this many times")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        set_threads(args.threads)
    rows = []
    procs = ["graph", "absorbing"] * args.reps if args.process == "both" else [args.process]
    print(f"{'N':>6} {'T':>4} {'process':>10} {'build s':>8} {'train smp/s':>12} {'sample smp/s':>13} "
          f"{'peak RSS MB':>12}")
    for T in args.t:
        for n in args.n:
            for proc in procs:
                r = measure(n, T, args, proc)
                rows.append(r)
                print(f"{n:>6} {T:>4} {proc:>10} {r['build_s']:>8} {r['train_samples_per_s']:>12} "
                      f"{r['sample_samples_per_s']:>13} {r['peak_rss_mb']:>12}", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
