"""Conditional generation on a trained model: three tasks, paired scores, against references.

Tasks (on ``--n`` real samples of ``--real``, ``--k`` draws per condition):

* ``traffic | locations`` — traffic for the real trajectories. Scores: CRPS and energy score per
  sample against the real traffic, coverage of the 50 % / 90 % intervals; the volume JSD of all
  draws against the whole real split (the generated modality's unconditional metric); joint metrics of
  (generated traffic, real locations) against the real set. References: the unconditional model
  (K of its samples per condition), a class-hour baseline (K draws from the training traffic
  seen at the same station class and hour) and the traffic of the K training days whose station
  sequences agree with the given one on the most slots.
* ``locations | traffic`` — trajectories for the real traffic. Scores: top-1 / top-5 station
  accuracy per slot (stations ranked by votes of the K draws), mean distance of a draw's station
  to the real one. References: the unconditional model and a Markov chain (given nothing).
* ``fill after 18:00`` — both modalities observed before 18:00, generated after. Scores on the
  generated slots only. References: the unconditional model and "carry forward" (the last observed
  station held; traffic from the class-hour baseline at it).

    python benchmarks/conditional.py --model runs/bench-sh/models/mstdiff/train \\
        --train runs/bench-sh/split/train --real runs/bench-sh/split/test --n 100 --k 10 \\
        --sample location_temperature=0.9 --out benchmarks/results/conditional

Prints a Markdown table and writes ``results.json`` / ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mstdiff.baselines import make_baseline
from mstdiff.conditional import mask_rule, observed_from
from mstdiff.data import PreparedDataset
from mstdiff.metrics import paired
from mstdiff.metrics.joint import joint_jsd, joint_profile_rmse, location_classes
from mstdiff.metrics.traffic import traffic_volume_jsd
from mstdiff.threads import set_threads
from mstdiff.training.mstdiff import MSTDiff


def class_hour_sampler(train: PreparedDataset, codes: np.ndarray, rng: np.random.Generator):
    """K draws of traffic per slot from the training values at the same (station class, slot)."""
    T = train.T
    pools: dict[tuple[int, int], np.ndarray] = {}
    cls = codes[train.locations]  # (U, T)
    for c in np.unique(cls):
        for t in range(T):
            vals = train.traffic[:, t][cls[:, t] == c]
            pools[(int(c), t)] = vals if vals.size else train.traffic[:, t]

    def draw(locations: np.ndarray, K: int) -> np.ndarray:
        n = locations.shape[0]
        out = np.empty((n, K, T), dtype=np.float32)
        for i in range(n):
            for t in range(T):
                pool = pools.get((int(codes[locations[i, t]]), t), train.traffic[:, t])
                out[i, :, t] = rng.choice(pool, size=K)
        return out

    return draw


def nearest_days_sampler(train: PreparedDataset, rng: np.random.Generator):
    """K draws of traffic per condition: the traffic of the K training days whose station sequences
    agree with the given one on the most slots (ties broken at random): how much a trajectory says
    about its traffic when the days that share it are looked up directly."""
    L = np.asarray(train.locations)
    tr = np.asarray(train.traffic, dtype=np.float32)

    def draw(locations: np.ndarray, K: int) -> np.ndarray:
        out = np.empty((locations.shape[0], K, train.T), dtype=np.float32)
        for i, row in enumerate(locations):
            agree = (L == row[None, :]).sum(1) + rng.random(L.shape[0])  # the fraction breaks ties
            out[i] = tr[np.argsort(-agree)[:K]]
        return out

    return draw


def traffic_scores(draws, truth, mask=None) -> dict[str, float]:
    return {"crps": paired.crps(draws, truth, mask), "energy": paired.energy_score(draws, truth, mask),
            "cover50": paired.interval_coverage(draws, truth, 0.5, mask),
            "cover90": paired.interval_coverage(draws, truth, 0.9, mask)}


def volume_jsd(real_traffic: np.ndarray, draws: np.ndarray) -> dict[str, float]:
    """The unconditional traffic metric of the generated modality: the volume JSD of all n·K draws
    against the whole real split."""
    return {"volume_jsd": traffic_volume_jsd(real_traffic, draws.reshape(-1, draws.shape[-1]))}


def joint_floor(real_pair, train: PreparedDataset, codes: np.ndarray, n: int, seed: int,
                draws: int = 5) -> dict[str, float]:
    """The joint metrics of n real (traffic, locations) pairs of other users (training days)
    against the n real pairs: what another draw of real users scores (mean and sd over draws)."""
    rng = np.random.default_rng(seed + 6)
    jj, jr = [], []
    for _ in range(draws):
        idx = rng.choice(train.n_samples, size=n, replace=False)
        pair = (np.asarray(train.traffic)[idx], np.asarray(train.locations)[idx])
        jj.append(joint_jsd(real_pair, pair, codes))
        jr.append(joint_profile_rmse(real_pair, pair, codes))
    return {"joint_jsd": float(np.mean(jj)), "joint_jsd_sd": float(np.std(jj)),
            "joint_rmse": float(np.mean(jr)), "joint_rmse_sd": float(np.std(jr))}


def location_scores(draws, truth, lat, lon, mask=None) -> dict[str, float]:
    return {"top1": paired.location_accuracy(draws, truth, 1, mask),
            "top5": paired.location_accuracy(draws, truth, 5, mask),
            "dist_km": paired.location_distance_km(draws, truth, lat, lon, mask)}


def common_arguments(ap: argparse.ArgumentParser, *, model_required: bool) -> None:
    """The options shared with ``conditional_spread.py``: the model, the sets, the conditions'
    count and draws, the seed, the threads and the sampling options."""
    ap.add_argument("--model", type=Path, required=model_required)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--real", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", action="append", default=[], metavar="KEY=VALUE")


def setup(args: argparse.Namespace) -> tuple[dict[str, object], PreparedDataset, PreparedDataset,
                                             PreparedDataset]:
    """From the :func:`common_arguments`: set the threads; return the sampling options, the
    training set, the real set and the conditions (a seeded pick of ``--n`` real samples, in order)."""
    set_threads(args.threads)
    opts = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sample)}
    train, real = PreparedDataset.load(args.train), PreparedDataset.load(args.real)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(real.n_samples, size=min(args.n, real.n_samples), replace=False))
    return opts, train, real, real.subset(pick)


def random_days(train: PreparedDataset, n: int, K: int, seed: int) -> np.ndarray:
    """The traffic of ``K`` random training days per condition ``(n, K, T)``: the marginal."""
    pick = np.random.default_rng(seed + 5).integers(0, train.n_samples, (n, K))
    return np.asarray(train.traffic, dtype=np.float32)[pick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap, model_required=False)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reveal", default="immediate", choices=["scheduled", "immediate"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--references-only", action="store_true",
                    help="only the model-free references of traffic | locations (no --model needed)")
    args = ap.parse_args()
    opts, train, real, cond = setup(args)
    n, K, T = cond.n_samples, args.k, cond.T
    lat = train.stations["lat"].to_numpy(float)
    lon = train.stations["lon"].to_numpy(float)
    codes = location_classes(train.stations, train.locations).codes
    truth_l = observed_from("locations", cond, train).locations  # on the train station table
    truth_m = cond.traffic
    results: dict[str, dict[str, float]] = {}
    references(results, train, truth_l, truth_m, codes, K, args.seed, real.traffic)
    if args.references_only:
        write(results, args, n, K, opts)
        return
    if args.model is None:
        ap.error("--model is needed (or --references-only)")
    model = MSTDiff.load(args.model).with_sampling(**opts)
    dev = torch.device("cpu")
    rep = np.repeat(np.arange(n), K)

    def draws(kind, mask=None, seed=0):
        obs = observed_from(kind, cond, train, mask).rows(rep)
        t0 = time.perf_counter()
        tr, lo = model.generate(generator=torch.Generator().manual_seed(seed), condition=obs,
                                device=dev, batch_size=args.batch_size, progress=True, reveal=args.reveal)
        return tr.reshape(n, K, T), lo.reshape(n, K, T), time.perf_counter() - t0

    t0 = time.perf_counter()
    un_tr, un_lo = model.generate(n * K, generator=torch.Generator().manual_seed(args.seed + 1),
                                  device=dev, batch_size=args.batch_size, progress=True)
    un_tr, un_lo = un_tr.reshape(n, K, T), un_lo.reshape(n, K, T)
    secs_un = time.perf_counter() - t0
    class_hour = class_hour_sampler(train, codes, np.random.default_rng(args.seed + 2))
    markov = make_baseline("markov").fit(train, progress=False).generate(n * K, seed=args.seed + 3,
                                                                          progress=False)
    mk_lo = markov.locations.reshape(n, K, T)

    # traffic | locations
    c_tr, _, secs = draws("locations", seed=args.seed + 10)
    results["traffic|locations: MSTDiff conditional"] = {**traffic_scores(c_tr, truth_m),
                                                          **volume_jsd(real.traffic, c_tr), "seconds": secs}
    results["traffic|locations: MSTDiff unconditional"] = {
        **traffic_scores(un_tr, truth_m), **volume_jsd(real.traffic, un_tr), "seconds": secs_un}
    # joint metrics of (one draw of traffic, the locations it was drawn for) against the real pairs
    real_pair = (truth_m, truth_l)
    for name, tr, lo in [("traffic|locations: MSTDiff conditional", c_tr[:, 0], truth_l),
                         ("traffic|locations: MSTDiff unconditional", un_tr[:, 0], un_lo[:, 0])]:
        results[name]["joint_jsd"] = joint_jsd(real_pair, (tr, lo), codes)
        results[name]["joint_rmse"] = joint_profile_rmse(real_pair, (tr, lo), codes)

    # locations | traffic
    _, c_lo, secs = draws("traffic", seed=args.seed + 20)
    results["locations|traffic: MSTDiff conditional"] = {**location_scores(c_lo, truth_l, lat, lon),
                                                          "seconds": secs}
    results["locations|traffic: MSTDiff unconditional"] = location_scores(un_lo, truth_l, lat, lon)
    results["locations|traffic: Markov (given nothing)"] = location_scores(mk_lo, truth_l, lat, lon)

    # fill after 18:00
    gen_mask = mask_rule("after=18:00", n, T, bin_minutes=cond.bin_minutes)
    f_tr, f_lo, secs = draws("both", gen_mask, seed=args.seed + 30)
    results["fill 18:00-24:00: MSTDiff conditional"] = {
        **traffic_scores(f_tr, truth_m, gen_mask), **location_scores(f_lo, truth_l, lat, lon, gen_mask),
        "seconds": secs}
    results["fill 18:00-24:00: MSTDiff unconditional"] = {
        **traffic_scores(un_tr, truth_m, gen_mask), **location_scores(un_lo, truth_l, lat, lon, gen_mask)}
    last = int(np.argmax(gen_mask[0])) - 1
    carry = truth_l.copy()
    carry[:, gen_mask[0]] = truth_l[:, [last]]
    carry_draws = np.repeat(carry[:, None, :], K, axis=1)
    results["fill 18:00-24:00: carry forward + class-hour"] = {
        **traffic_scores(class_hour(carry, K), truth_m, gen_mask),
        **location_scores(carry_draws, truth_l, lat, lon, gen_mask)}

    write(results, args, n, K, opts)


def references(results: dict[str, dict[str, float]], train: PreparedDataset, truth_l: np.ndarray,
               truth_m: np.ndarray, codes: np.ndarray, K: int, seed: int, real_traffic: np.ndarray) -> None:
    """The model-free references of traffic | locations (same seeds as before the split), and the
    floor of the joint metrics (other users' real pairs)."""
    n = truth_l.shape[0]
    class_hour = class_hour_sampler(train, codes, np.random.default_rng(seed + 2))
    ch = class_hour(truth_l, K)
    results["traffic|locations: class-hour baseline"] = {**traffic_scores(ch, truth_m),
                                                          **volume_jsd(real_traffic, ch)}
    nearest = nearest_days_sampler(train, np.random.default_rng(seed + 4))
    nd = nearest(truth_l, K)
    results["traffic|locations: nearest training days"] = {**traffic_scores(nd, truth_m),
                                                            **volume_jsd(real_traffic, nd)}
    any_days = random_days(train, n, K, seed)  # (n, K, T)
    results["traffic|locations: random training days"] = {**traffic_scores(any_days, truth_m),
                                                           **volume_jsd(real_traffic, any_days)}
    results["traffic|locations: floor (other users' real pairs)"] = joint_floor(
        (truth_m, truth_l), train, codes, n, seed)


def write(results: dict[str, dict[str, float]], args: argparse.Namespace, n: int, K: int,
          opts: dict[str, object]) -> None:
    cols = ["crps", "energy", "cover50", "cover90", "volume_jsd", "top1", "top5", "dist_km", "joint_jsd",
            "joint_jsd_sd", "joint_rmse", "joint_rmse_sd", "seconds"]
    lines = ["| task: model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"model": str(args.model) if args.model else None, "real": str(args.real),
            "train": str(args.train), "n": n, "k": K,
            "seed": args.seed, "sampling": opts, "reveal": args.reveal, "results": results}
    (args.out / "results.json").write_text(json.dumps(info, indent=2) + "\n")
    (args.out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
