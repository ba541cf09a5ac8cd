"""Training and sampling throughput of MSTDiff at a given number of stations N and length T.

    python benchmarks/throughput.py                          # N in {500, 2000, 5000}, T in {48, 336}
    python benchmarks/throughput.py --n 2000 --t 48 --device cpu --out tp.json
    python benchmarks/throughput.py --transition RUN/transition --process graph --also-synthetic

``--transition PATH`` (a ``transition.pt`` written by ``mstdiff kg transition``, or its directory)
measures the graph process on that real graph instead of a synthetic one; N comes from the file.
``--also-synthetic`` adds, interleaved, the synthetic kNN graph at the same N. Every row records the
graph it used (``synthetic kNN`` or the file's path), its spectral bound ρ and the Chebyshev terms of
``Q̄_S`` (the cost of a transition product grows with them: the synthetic graph's ρ is about 3.5, a
real KG graph's can be several times larger).

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
from pathlib import Path
from typing import Any

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
from mstdiff.torchio import load_torch_file
from mstdiff.training.mstdiff import peak_rss_mb
from mstdiff.training.utils import resolve_device

SYNTHETIC = "synthetic kNN (k=8)"


def transition_file(path: str) -> Path:
    p = Path(path)
    return p / "transition.pt" if p.is_dir() else p


def graph_info(disc: GraphTransition) -> dict[str, Any]:
    """Spectral bound and Chebyshev terms of a transition (what a transition product costs)."""
    return {"rho": round(float(disc.rho), 3), "method": disc.method,
            "cheb_terms_max": int(disc.nterms_bar.max()),
            "cheb_terms_mean": round(float(disc.nterms_bar[1:].float().mean()), 1)}


def measure(n: int, T: int, args: argparse.Namespace, process: str = "graph",
            graph: str = SYNTHETIC) -> dict[str, Any]:
    """One row: ``graph`` is :data:`SYNTHETIC` or the path of a transition file (graph process)."""
    dev = resolve_device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"graph": "none (absorbing)" if process != "graph" else graph}
    if process == "graph":
        if graph == SYNTHETIC:
            disc = GraphTransition(synthetic_knn_rate(n, k=8), num_steps=args.steps)
        else:
            disc = GraphTransition.load(transition_file(graph))
            if disc.num_steps != args.steps:
                raise SystemExit(f"{graph} has S = {disc.num_steps} steps, --steps is {args.steps}")
        info.update(graph_info(disc))
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
    out = {"N": n, "T": T, "process": process, **info, "device": str(dev), "build_s": round(build, 2),
           "train_samples_per_s": round(train_sps, 2), "sample_samples_per_s": round(sample_sps, 3),
           "peak_rss_mb": round(peak_rss_mb(), 0), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=None, help="default 500 2000 5000")
    ap.add_argument("--transition", default=None,
                    help="transition.pt (or its directory) from `mstdiff kg transition`: the real graph; "
                    "N comes from it")
    ap.add_argument("--also-synthetic", action="store_true",
                    help="with --transition: also the synthetic kNN graph at the same N, interleaved")
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
    ap.add_argument("--reps", type=int, default=1,
                    help="repeat each row this many times, alternating the processes (--process both) "
                    "and graphs (--also-synthetic)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        set_threads(args.threads)
    graphs = [SYNTHETIC]
    sizes = args.n or [500, 2000, 5000]
    if args.transition is not None:
        path = transition_file(args.transition)
        if not path.exists():
            raise SystemExit(f"no transition file at {path} (create it with `mstdiff kg transition`)")
        n_file = int(load_torch_file(path, what="transition file",
                                     fix="create it with `mstdiff kg transition`")["num_states"])
        if args.n and args.n != [n_file]:
            raise SystemExit(f"--n {args.n} differs from the N = {n_file} of {path}")
        sizes = [n_file]
        graphs = [args.transition, SYNTHETIC] if args.also_synthetic else [args.transition]
    rows = []
    procs = ["graph", "absorbing"] * args.reps if args.process == "both" else [args.process] * args.reps
    print(f"{'N':>6} {'T':>4} {'process':>10} {'graph':>28} {'rho':>6} {'terms':>5} {'build s':>8} "
          f"{'train smp/s':>12} {'sample smp/s':>13} {'peak RSS MB':>12}")
    for T in args.t:
        for n in sizes:
            for proc in procs:
                for graph in (graphs if proc == "graph" else [SYNTHETIC]):
                    r = measure(n, T, args, proc, graph)
                    rows.append(r)
                    print(f"{n:>6} {T:>4} {proc:>10} {str(r['graph'])[-28:]:>28} {r.get('rho', '–'):>6} "
                          f"{r.get('cheb_terms_max', '–'):>5} {r['build_s']:>8} "
                          f"{r['train_samples_per_s']:>12} {r['sample_samples_per_s']:>13} "
                          f"{r['peak_rss_mb']:>12}", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
