"""The copy head's gravity terms (``move_decay``) at N = 23,768: the distance feature once per
distinct source station (this build) against once per masked row (the previous build), side by side.

The rows of a training batch share their source stations (the masked slots of one stay have the
same nearest filled slots), so the (M, N) distance feature was mostly recomputed. Both versions run
forward and backward on the same masked batch, alternating, and must give the same values.

    python benchmarks/move_terms.py --threads 2 --out benchmarks/results/throughput/move_terms.json

With ``--days DIR`` (a prepared GeoLife dataset, e.g. a run's ``split/train``) the masked batches
are real user-days; otherwise synthetic days of a few stays on a random map of N stations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mstdiff.data import PreparedDataset
from mstdiff.models.copy_head import CopyHead, nearest_filled
from mstdiff.models.denoiser import DenoiserConfig, MSTDiffDenoiser
from mstdiff.threads import set_threads


def per_row_move_terms(head: CopyHead, h: Tensor, source: Tensor, valid: Tensor, rows: Tensor) -> Tensor:
    """The previous build's version: the distance feature of every masked row's source station."""
    assert head.decay is not None and head.decay_gap is not None
    T = valid.shape[1]
    before, after = nearest_filled(valid)
    b, t = rows // T, rows % T
    coef = head.decay(h).float()
    out: Tensor | None = None
    for side, other in enumerate((before[b, t], after[b, t])):
        has = other >= 0
        gap = torch.where(has, (other - t).abs(), 0)
        c = (coef[:, side] + head.decay_gap(gap)[:, side]) * has
        st = source[b, other.clamp_min(0)].long().clamp(0, head.xy.shape[0] - 1)
        with torch.no_grad():
            x0 = head.xy[st]
            f = torch.hypot(x0[:, :1] - head.xy[:, 0], x0[:, 1:] - head.xy[:, 1]).log1p_()
        out = f.mul(-c[:, None]) if out is None else torch.addcmul(out, f, -c[:, None])
    assert out is not None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=23768)
    ap.add_argument("--days", type=Path, default=None, help="a prepared dataset of user-days (T = 48)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    T, d = 48, 64
    rng = np.random.default_rng(0)
    if args.days is not None:
        ds = PreparedDataset.load(args.days)
        N = ds.n_stations
        L = np.asarray(ds.locations)
        lat, lon = ds.stations["lat"].to_numpy(float), ds.stations["lon"].to_numpy(float)
        source = f"{args.days.name} ({L.shape[0]} user-days)"
    else:
        N = args.n
        lat, lon = 39.9 + 0.3 * rng.random(N), 116.3 + 0.4 * rng.random(N)
        L = np.repeat(rng.integers(0, N, (2048, 6)), T // 6, axis=1)
        source = "synthetic days of 6 stays"
    cfg = DenoiserConfig(num_stations=N, seq_len=T, d_model=d, n_heads=4, layers_per_stage=1,
                         use_vqvae=False, use_traffic=False, near_k=0, move_decay=True, mask_token=True)
    net = MSTDiffDenoiser(cfg, generator=torch.Generator().manual_seed(0))
    net.set_station_coordinates_(lat, lon)
    head = net.copy
    assert head is not None and head.decay is not None and head.decay_gap is not None
    with torch.no_grad():
        head.decay.weight.normal_(0, 0.1)
        head.decay_gap.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {"per_row": [], "per_source": []}
    rows_seen, sources_seen = [], []
    for rep in range(args.reps):
        pick = torch.from_numpy(rng.integers(0, L.shape[0], args.batch))
        ids = torch.from_numpy(L).long()[pick]
        rate = torch.rand(args.batch, 1, generator=g)
        valid = torch.rand(args.batch, T, generator=g) >= rate
        rows = (~valid).reshape(-1).nonzero().squeeze(-1)
        h = torch.randn(rows.numel(), d, generator=g)
        outs = {}
        for name in (("per_row", "per_source") if rep % 2 == 0 else ("per_source", "per_row")):
            head.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            if name == "per_row":
                out = per_row_move_terms(head, h, ids, valid, rows)
            else:
                out = head.move_terms(h, ids, valid, rows)
            out.square().mean().backward()
            times[name].append(time.perf_counter() - t0)
            outs[name] = out.detach()
        torch.testing.assert_close(outs["per_row"], outs["per_source"], rtol=1e-5, atol=1e-5)
        before, after = nearest_filled(valid)
        b, t = rows // T, rows % T
        st = torch.cat([ids[b, o.clamp_min(0)] for o in (before[b, t], after[b, t])])
        rows_seen.append(rows.numel())
        sources_seen.append(int(torch.unique(st).numel()))
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"N": N, "T": T, "batch": args.batch, "days": source, "threads": args.threads, "reps": args.reps,
           "masked_rows_mean": float(np.mean(rows_seen)),
           "distinct_sources_mean": float(np.mean(sources_seen)),
           "seconds_median": med, "speedup": med["per_row"] / med["per_source"]}
    print(f"{'version':12s} {'median s (fwd+bwd)':>20s}")
    for k, v in med.items():
        print(f"{k:12s} {v:20.4f}")
    print(f"rows {res['masked_rows_mean']:.0f}, distinct source stations {res['distinct_sources_mean']:.0f}, "
          f"speed-up {res['speedup']:.2f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
