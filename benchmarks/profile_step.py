"""Profile one MSTDiff training step and one sampling run, and measure optimisations side by side.

    python benchmarks/profile_step.py                       # N = 2000, T = 48, batch 64, 2 threads
    python benchmarks/profile_step.py --n 5000 --threads 1 --out benchmarks/results/profile

1. Where the time goes: wall time per region (denoiser forward, the location losses with their
   transition products, backward, optimiser; in sampling: denoiser, reverse location step with its
   draw, Gaussian step) and the torch.profiler top operators of a training step.
2. Before/after, through the library's own code (``joint_loss``, ``HybridDiffusion.step``):

   * ``before``: PyTorch operations only (``GraphTransition.fused = False``) and the dense reverse
     draw (``location_draw = "dense"``: ``p_θ(l_{s−1} | l_s)`` over all N stations per token);
   * ``after``: the fused Numba kernels (``mstdiff.diffusion.kernels``) and the exact two-stage
     draw (``GraphTransition.sample_reverse``).

   Both run **interleaved in the same process** (A, B, A, B, ...) on the same inputs and weights,
   so machine load hits both alike; the ratio of medians is reported. The losses agree to float
   round-off (checked here too).

The model is the denoiser of ``configs/shanghai.yaml`` (d_model 64, one layer per stage) on a
synthetic kNN station graph with the real graph's degree; locations stay at three stations per
sample, like real users. Prints Markdown tables and writes ``profile.json`` + ``profile.md``.
(Earlier results in ``results/profile`` and ``results/profile_threads2`` compare the Chebyshev
tiles and RCM order with the first implementation: the script at commit b3140ee.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
from mstdiff.diffusion.hybrid import HybridConfig, HybridDiffusion
from mstdiff.kg.graph import synthetic_knn_rate
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.models.losses import joint_loss


class Regions:
    """Wall-clock seconds per named region, summed over calls: ``with reg("name"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - t0


def setup(args: argparse.Namespace) -> dict[str, Any]:
    rate = synthetic_knn_rate(args.n, k=8)
    before = GraphTransition(rate, num_steps=args.steps)
    before.fused = False
    after = GraphTransition(rate, num_steps=args.steps)
    model = MSTDiffDenoiser(DenoiserConfig(num_stations=args.n, seq_len=args.t, d_model=args.d_model,
                                           layers_per_stage=1, final_layers=1, use_vqvae=False),
                            generator=torch.Generator().manual_seed(0))
    B = args.batch
    base = torch.randint(0, args.n, (B, 3), generator=torch.Generator().manual_seed(1))
    stay = torch.sort(torch.randint(0, 3, (args.t,), generator=torch.Generator().manual_seed(2))).values
    return {"before": before, "after": after, "model": model, "l0": base[:, stay],
            "w0": torch.randn(B, args.t, generator=torch.Generator().manual_seed(3)),
            "draw": {"before": "dense", "after": "two_stage"}}


def train_step(model: MSTDiffDenoiser, opt: torch.optim.Optimizer, disc: GraphTransition,
               gauss: GaussianDiffusion, w0: torch.Tensor, l0: torch.Tensor, seed: int,
               reg: Regions) -> float:
    """One optimiser step of the default loss λ = (1, 1, 0.1) (``joint_loss``), regions timed."""
    g = torch.Generator().manual_seed(seed)
    B = w0.shape[0]
    s = torch.randint(1, disc.num_steps + 1, (B,), generator=g)
    eps = torch.randn(w0.shape, generator=g)
    w_s = gauss.add_noise(w0, eps, s)
    with reg("forward noise (q_sample)"):
        l_s = disc.q_sample(l0, s, g)
    with reg("denoiser forward"):
        out = model(w_s, l_s, s)
    with reg("location KL + CE (transition products)"):
        loss, parts = joint_loss(out, eps, None, l0, l_s, s, disc)
    opt.zero_grad(set_to_none=True)
    with reg("backward"):
        loss.backward()
    with reg("optimiser"):
        opt.step()
    return float(parts["total"])


@torch.no_grad()
def sample_run(model: MSTDiffDenoiser, hybrid: HybridDiffusion, n: int, T: int, seed: int,
               reg: Regions) -> torch.Tensor:
    """Algorithm 2 over all S steps (``HybridDiffusion.sample``'s loop, with timers around its parts)."""
    g = torch.Generator().manual_seed(seed)
    disc = hybrid.discrete
    w = torch.randn(n, T, generator=g)
    loc = torch.randint(0, disc.num_states, (n, T), generator=g)
    cache = disc.row_cache()
    for step in range(hybrid.num_steps, 0, -1):
        s = torch.full((n,), step, dtype=torch.long)
        with reg("denoiser forward"):
            out = model(w, loc, s)
        with reg("reverse step (transition rows + draws, Gaussian step)"):
            nxt = hybrid.step(out, w, loc, s, g, cache)
        w, loc = nxt.w_prev, nxt.l_prev
    return loc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--t", type=int, default=48)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50, help="diffusion steps S")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="interleaved training steps per variant")
    ap.add_argument("--sample-reps", type=int, default=2, help="interleaved sampling runs per variant")
    ap.add_argument("--out", default="benchmarks/results/profile_fused")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st = setup(args)
    gauss = GaussianDiffusion(GaussianConfig(num_steps=args.steps))
    variants = ("before", "after")
    models = {v: copy.deepcopy(st["model"]) for v in variants}
    opts = {v: torch.optim.AdamW(models[v].optimizer_groups(0.01), lr=1e-3) for v in variants}
    hybrids = {v: HybridDiffusion(gauss, st[v], HybridConfig(location_draw=st["draw"][v])) for v in variants}

    # agreement of the two paths on the training loss (same weights, same noise, no dropout)
    losses = {v: train_step(copy.deepcopy(st["model"]).eval(),
                            torch.optim.SGD(st["model"].parameters(), lr=0.0),
                            st[v], gauss, st["w0"], st["l0"], seed=123, reg=Regions()) for v in variants}
    max_diff = abs(losses["before"] - losses["after"])

    train_times: dict[str, list[float]] = {v: [] for v in variants}
    train_regions = {v: Regions() for v in variants}
    for rep in range(args.reps + 1):  # rep 0 warms up
        for v in variants:
            reg = Regions()
            t0 = time.perf_counter()
            train_step(models[v], opts[v], st[v], gauss, st["w0"], st["l0"], seed=rep, reg=reg)
            if rep:
                train_times[v].append(time.perf_counter() - t0)
                for k, x in reg.seconds.items():
                    train_regions[v].seconds[k] += x / args.reps
    sample_times: dict[str, list[float]] = {v: [] for v in variants}
    sample_regions = {v: Regions() for v in variants}
    for rep in range(args.sample_reps):
        for v in variants:
            models[v].eval()
            reg = Regions()
            t0 = time.perf_counter()
            sample_run(models[v], hybrids[v], args.sample_batch, args.t, seed=rep, reg=reg)
            sample_times[v].append(time.perf_counter() - t0)
            for k, x in reg.seconds.items():
                sample_regions[v].seconds[k] += x / args.sample_reps
            models[v].train()

    # torch.profiler: top operators of one training step with the current build
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(models["after"], opts["after"], st["after"], gauss, st["w0"], st["l0"], seed=99,
                   reg=Regions())
    top = [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]]

    med = {k: {v: statistics.median(x[v]) for v in variants}
           for k, x in (("train", train_times), ("sample", sample_times))}
    result = {
        "setup": {"N": args.n, "T": args.t, "batch": args.batch, "sample_batch": args.sample_batch,
                  "S": args.steps, "d_model": args.d_model, "threads": args.threads, "reps": args.reps,
                  "sample_reps": args.sample_reps, "max_abs_diff_before_after": max_diff},
        "train_step_s": {v: [round(x, 4) for x in train_times[v]] for v in variants},
        "sample_run_s": {v: [round(x, 3) for x in sample_times[v]] for v in variants},
        "train_samples_per_s": {v: round(args.batch / med["train"][v], 2) for v in variants},
        "sample_samples_per_s": {v: round(args.sample_batch / med["sample"][v], 3) for v in variants},
        "speedup": {"train": round(med["train"]["before"] / med["train"]["after"], 2),
                    "sample": round(med["sample"]["before"] / med["sample"]["after"], 2)},
        "train_regions_s": {v: {k: round(x, 4) for k, x in train_regions[v].seconds.items()}
                            for v in variants},
        "sample_regions_s": {v: {k: round(x, 3) for k, x in sample_regions[v].seconds.items()}
                             for v in variants},
        "top_ops_train_step": top,
    }
    md = render(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "profile.md").write_text(md, encoding="utf-8")


def render(r: dict[str, Any]) -> str:
    su = r["setup"]
    lines = [f"N = {su['N']}, T = {su['T']}, batch {su['batch']} (sampling {su['sample_batch']}), "
             f"S = {su['S']}, d_model {su['d_model']}, {su['threads']} threads; medians of {su['reps']} "
             f"training steps and "
             f"{su['sample_reps']} sampling runs per variant, interleaved; |loss before − after| = "
             f"{su['max_abs_diff_before_after']:.1e}", "",
             "| | before | after | speed-up |", "|---|---:|---:|---:|",
             f"| training samples/s | {r['train_samples_per_s']['before']} | "
             f"{r['train_samples_per_s']['after']} | {r['speedup']['train']}x |",
             f"| sampling samples/s (all S steps) | {r['sample_samples_per_s']['before']} | "
             f"{r['sample_samples_per_s']['after']} | {r['speedup']['sample']}x |", ""]
    for title, key in (("Training step", "train_regions_s"), ("Sampling run", "sample_regions_s")):
        lines += [f"{title}, seconds per region:", "", "| region | before | after |", "|---|---:|---:|"]
        for k in r[key]["after"]:
            lines.append(f"| {k} | {r[key]['before'].get(k, 0):.3f} | {r[key]['after'][k]:.3f} |")
        lines.append("")
    lines += ["Top operators of one training step (after), torch.profiler self CPU time:", "",
              "| operator | self CPU ms | calls |", "|---|---:|---:|"]
    lines += [f"| {e['op']} | {e['self_cpu_ms']} | {e['calls']} |" for e in r["top_ops_train_step"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
