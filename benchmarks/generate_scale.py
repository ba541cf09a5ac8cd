"""Generation of many users with bounded memory: peak RSS and time against the number of samples.

    python benchmarks/generate_scale.py                      # 1,000, 10,000 and 100,000 samples
    python benchmarks/generate_scale.py --n 1000 100000 --stations 2000 --steps 50

``mstdiff generate`` samples in batches and streams each batch into ``.npy`` memory maps inside an
atomic output directory, so memory is set by the batch size, not by the number of samples. This
script checks that: for each n, a child process builds a (randomly initialised) MSTDiff of the given
size on a synthetic station graph, calls :func:`mstdiff.training.mstdiff.generate` for n samples
and reports its own peak RSS (``VmHWM`` of ``/proc/self/status``) and the time. The cost of sampling
does not depend on the weights, so an untrained model measures the same thing as a trained one.
Defaults are small (N = 100, d_model 16, S = 5) so that 100,000 samples take minutes on 2 cores;
raise them to measure the default model. Prints a Markdown table, writes results.json/results.md
under --results (default benchmarks/results/generate_scale).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "generate_scale"


def _vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run in the child: build the model, generate ``args.worker_n`` samples, report."""
    import numpy as np
    import torch

    from mstdiff.data.scaling import TrafficScaler
    from mstdiff.data.synthetic import synthetic_city
    from mstdiff.diffusion.discrete import GraphTransition
    from mstdiff.diffusion.gaussian import GaussianConfig, GaussianDiffusion
    from mstdiff.diffusion.hybrid import HybridDiffusion
    from mstdiff.kg.graph import synthetic_knn_rate
    from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
    from mstdiff.training.mstdiff import ModelConfig, MSTDiff, generate

    torch.set_num_threads(args.threads)
    rss_imports = _vm_hwm_mb()
    like = synthetic_city(n_users=20, n_stations=args.stations, days=1, seed=0)
    N = like.n_stations
    cfg = ModelConfig(denoiser=DenoiserConfig(num_stations=N, seq_len=like.T, d_model=args.d_model,
                                              layers_per_stage=1, final_layers=1, use_vqvae=False),
                      gaussian=GaussianConfig(num_steps=args.steps))
    den = MSTDiffDenoiser(cfg.denoiser, generator=torch.Generator().manual_seed(0)).eval()
    disc = GraphTransition(synthetic_knn_rate(N, k=8), num_steps=args.steps)
    model = MSTDiff(den, HybridDiffusion(GaussianDiffusion(cfg.gaussian), disc),
                    TrafficScaler.fit(np.asarray(like.traffic)), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = generate(model, like, args.worker_n, Path(tmp) / "gen", seed=0, batch_size=args.batch_size,
                       device="cpu", progress=args.progress)
        seconds = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "gen").iterdir()) / 2**20
        assert out.n_samples == args.worker_n
    return {"n": args.worker_n, "stations": N, "T": like.T, "seconds": round(seconds, 2),
            "samples_per_s": round(args.worker_n / seconds, 1), "peak_rss_mb": round(_vm_hwm_mb(), 1),
            "rss_after_imports_mb": round(rss_imports, 1), "output_mb": round(size_mb, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    ap.add_argument("--stations", type=int, default=100)
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="diffusion steps S")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true", help="show the generation progress bar")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--worker-n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_n is not None:
        print(json.dumps(worker(args)))
        return
    rows = []
    header = "| samples | N | T | seconds | samples/s | peak RSS MB | RSS after imports MB | output MB |"
    print(header + "\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        cmd = [sys.executable, __file__, "--worker-n", str(n), "--stations", str(args.stations),
               "--d-model", str(args.d_model), "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--threads", str(args.threads)]
        cmd += ["--progress"] if args.progress else []
        res = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE,
                             stderr=None if args.progress else subprocess.PIPE)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"| {r['n']:,} | {r['stations']} | {r['T']} | {r['seconds']} | {r['samples_per_s']} | "
              f"{r['peak_rss_mb']} | {r['rss_after_imports_mb']} | {r['output_mb']} |", flush=True)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    setup = {k: getattr(args, k) for k in ("stations", "d_model", "steps", "batch_size", "threads")}
    (out / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    md = [f"`python benchmarks/generate_scale.py` ({setup})", "", header,
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['n']:,} | {r['stations']} | {r['T']} | {r['seconds']} | {r['samples_per_s']} | "
           f"{r['peak_rss_mb']} | {r['rss_after_imports_mb']} | {r['output_mb']} |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
