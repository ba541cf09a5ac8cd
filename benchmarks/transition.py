"""Benchmark of the graph transition (``mstdiff.diffusion.discrete.GraphTransition``).

For each N, on a synthetic kNN graph built like the real one (k = 8 neighbours in a 16-d clustered
embedding, 5 % longest edges cut, ``B = (A + Aᵀ)/2k``), each method runs in its own subprocess so that
its peak memory (``ru_maxrss``) is its own:

* ``eig``   — eigenbasis of R, rank-truncated per step (the default up to ``EIG_MAX_N``);
* ``cheb``  — Chebyshev series on the sparse R (the default above);
* ``dense`` — the published approach: dense float32 tables ``Q̄_s`` and ``Q_s`` of shape (S+1, N, N),
  where they fit in ``--dense-max-gb``.

Reported per method: build time, peak RSS, time per batch of 64 × 48 tokens (s uniform in 1..S) of
``q_sample``, ``reverse_probs`` (forward) and ``reverse_probs`` forward + backward of a KL loss, and
the largest deviation of ``reverse_probs`` from the ``eig`` result (N ≤ 2000) as a correctness check.

Usage::

    python benchmarks/transition.py                # N = 500, 2000, 5000, 10000
    python benchmarks/transition.py --n 2000 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (500, 2000, 5000, 10000)
B, T, S = 64, 48, 50


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _dense_tables(trans: Any) -> tuple[Any, Any]:
    """The (S+1, N, N) float32 tables Q̄ and Q, built from the eigenbasis (the comparison)."""
    import torch

    v = torch.tensor(trans.V.double().numpy())  # eig method
    lam = trans.lam.double()
    n = trans.num_states
    qbar = torch.empty(trans.num_steps + 1, n, n)
    qstep = torch.empty(trans.num_steps + 1, n, n)
    for s in range(trans.num_steps + 1):
        for table, t, keep in ((qbar, trans._alpha_bar64[s], float(trans.keep_bar[s])),
                               (qstep, float(trans.alpha[s]), float(trans.keep_step[s]))):
            g = (v * torch.exp(t * lam)) @ v.t()
            table[s] = (keep * g + (1.0 - keep) / n).float()
    return qbar, qstep


def make_graph(n: int, seed: int, path: Path) -> None:
    """The synthetic kNN graph (clustered 16-d embeddings, k = 8), saved for the workers."""
    from scipy import sparse

    from mstdiff.kg.graph import knn_graph

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 1), 16))
    emb = centres[rng.integers(0, centres.shape[0], n)] + 0.5 * rng.normal(size=(n, 16))
    sparse.save_npz(path, knn_graph(emb, 8))


def worker(n: int, method: str, threads: int, seed: int, reps: int, graph: Path) -> dict[str, Any]:
    import torch
    from scipy import sparse

    from mstdiff.diffusion.discrete import GraphTransition
    from mstdiff.kg.graph import graph_stats, rate_matrix

    torch.set_num_threads(threads)
    adj = sparse.load_npz(graph)
    rate = rate_matrix(adj, 8)
    stats = graph_stats(adj, rate)
    rss0 = _rss_mb()
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    trans = GraphTransition(rate, num_steps=S, method="eig" if method == "dense" else method)
    qbar = qstep = None
    if method == "dense":
        qbar, qstep = _dense_tables(trans)
        trans.V = torch.empty(0)  # keep only the tables
    build_s = time.perf_counter() - t0
    build_cpu_s = time.process_time() - c0

    gen = torch.Generator().manual_seed(seed)
    l0 = torch.randint(n, (B, T), generator=gen)
    logits = torch.randn(B, T, n, generator=gen)
    batches = [torch.randint(1, S + 1, (B,), generator=gen) for _ in range(reps)]

    def q_sample(s: torch.Tensor) -> torch.Tensor:
        if qbar is None:
            return trans.q_sample(l0, s, gen)
        rows = qbar[s[:, None], l0]  # (B, T, N) gather
        cdf = rows.cumsum(-1)
        u = torch.rand(B, T, 1, generator=gen) * cdf[..., -1:]
        return torch.searchsorted(cdf, u).squeeze(-1)

    def reverse(z: torch.Tensor, ls: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if qbar is None:
            return trans.reverse_probs(z, ls, s)
        assert qstep is not None
        probs = torch.softmax(z, -1)
        like = qstep[s[:, None], ls]  # Q_s[l_s, :]  (B, T, N)
        prior = torch.empty_like(probs)
        for sv in torch.unique(s).tolist():
            m = s == sv
            prior[m] = probs[m] @ qbar[sv - 1]
        p = like * prior
        return p / p.sum(-1, keepdim=True)

    out: dict[str, Any] = {"n": n, "method": method, "threads": threads, "graph": stats,
                           "build_s": build_s, "build_cpu_s": build_cpu_s, "rss_before_build_mb": rss0,
                           "loadavg_1min_start": load0}
    if method != "dense":
        out["rho"] = trans.rho
        if method == "cheb":
            out["cheb_terms_max"] = int(trans.nterms_bar.max())
        else:
            out["eig_rank_mean"] = float(trans.rank_bar[1:].float().mean())
    ls_list = [q_sample(s) for s in batches]  # warm-up and inputs

    def timed(key: str, fn: Any) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        for s, ls in zip(batches, ls_list):
            fn(s, ls)
        out[key] = (time.perf_counter() - w0) / reps
        out[key.replace("_s", "_cpu_s")] = (time.process_time() - c0) / reps

    timed("q_sample_s", lambda s, ls: q_sample(s))
    with torch.no_grad():
        reverse(logits, ls_list[0], batches[0])
        timed("reverse_probs_s", lambda s, ls: reverse(logits, ls, s))
    if qbar is None:
        z = logits.clone().requires_grad_(True)

        def fwd_bwd(s: torch.Tensor, ls: torch.Tensor) -> None:
            trans.posterior_kl(l0, z, ls, s).mean().backward()  # the training loss L_tj

        timed("reverse_fwd_bwd_s", fwd_bwd)
    out["peak_rss_mb"] = _rss_mb()
    if n <= 2000 and method != "eig":
        ref = GraphTransition(rate, num_steps=S, method="eig")  # after the timings: not in the peak
        with torch.no_grad():
            p = reverse(logits, ls_list[0], batches[0])
            p_ref = ref.reverse_probs(logits, ls_list[0], batches[0])
            out["max_abs_diff_vs_eig"] = float((p - p_ref).abs().max())
    out["loadavg_1min_end"] = os.getloadavg()[0]
    return out


def run(sizes: list[int], threads: int, dense_max_gb: float, eig_max_n: int, reps: int,
        timeout: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        methods = []
        if n <= eig_max_n:
            methods.append("eig")
        methods.append("cheb")
        dense_gb = 2 * (S + 1) * n * n * 4 / 1e9
        if dense_gb <= dense_max_gb and n <= eig_max_n:
            methods.append("dense")
        else:
            rows.append({"n": n, "method": "dense", "skipped": f"tables need {dense_gb:.1f} GB"})
        if n > eig_max_n:
            rows.append({"n": n, "method": "eig", "skipped": f"N > --eig-max-n {eig_max_n}"})
        graph = Path(tempfile.mkdtemp(prefix="mstdiff-bench-")) / f"knn{n}.npz"
        make_graph(n, 0, graph)
        for m in methods:
            cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--method", m,
                   "--threads", str(threads), "--reps", str(reps), "--graph", str(graph)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                rows.append({"n": n, "method": m, "skipped": f"timeout {timeout:.0f} s"})
                continue
            if res.returncode != 0:
                rows.append({"n": n, "method": m, "skipped": "failed: " + res.stderr.strip()[-300:]})
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(_fmt_row(rows[-1]), flush=True)
        shutil.rmtree(graph.parent, ignore_errors=True)
    return rows


def _fmt_row(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"| {r['n']:>6} | {r['method']:<5} | skipped: {r['skipped']} |"

    def f(key: str, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
        return fmt.format(r[key] * scale) if key in r else "-"

    def wc(key: str, scale: float = 1e3, nd: int = 0) -> str:
        cpu = key.replace("_s", "_cpu_s")
        if key not in r:
            return "-"
        return f"{r[key] * scale:.{nd}f} ({r[cpu] * scale:.{nd}f})"

    return (f"| {r['n']:>6} | {r['method']:<5} | {wc('build_s', 1.0, 1):>13} | "
            f"{f('peak_rss_mb', fmt='{:.0f}'):>7} | {wc('q_sample_s'):>13} | "
            f"{wc('reverse_probs_s'):>13} | {wc('reverse_fwd_bwd_s'):>13} | "
            f"{f('max_abs_diff_vs_eig', fmt='{:.1e}'):>8} | {r.get('loadavg_1min_end', 0):>4.1f} |")


HEADER = ("|      N | meth  | build s (cpu) | peak MB | q_sample ms (cpu) | reverse ms (cpu) "
          "| fwd+bwd ms (cpu) | Δ vs eig | load |\n"
          "|--------|-------|---------------|---------|-------------------|------------------|"
          "------------------|----------|------|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="run one size (default: 500 2000 5000 10000)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed batches per measurement")
    ap.add_argument("--dense-max-gb", type=float, default=2.0, help="largest dense tables to build")
    ap.add_argument("--eig-max-n", type=int, default=5000, help="largest N to try the eigenbasis on")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per method and size")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="cheb", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.n, args.method, args.threads, args.seed, args.reps, args.graph)))
        return
    sizes = [args.n] if args.n else list(SIZES)
    print(HEADER, flush=True)
    rows = run(sizes, args.threads, args.dense_max_gb, args.eig_max_n, args.reps, args.timeout)
    print("\n" + HEADER)
    for r in rows:
        print(_fmt_row(r))
    if args.out:
        args.out.write_text(json.dumps({"batch": [B, T], "num_steps": S, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
