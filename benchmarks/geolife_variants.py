"""MSTDiff variants on GeoLife, chosen on a validation share of ``real.data`` (never on ``val.data``).

Reads a GeoLife run directory made by ``mstdiff benchmark configs/benchmark_geolife.yaml`` (its
``split/train`` and ``split/val``, the 10 % validation share, and, for variants that draw stations,
its ``embed`` and ``transition`` stages), trains one
variant of MSTDiff without traffic from ``configs/geolife.yaml`` with ``--set`` overrides on the
training part, draws as many samples as the validation share holds and prints, beside the Markov
chain and TimeGEO fitted on the same days: the six trajectory metrics as ratios to the floor
(validation share against the training part), changes and distinct stations per day, mean stay,
median / p90 jump, and stations used.

    python benchmarks/geolife_variants.py --run runs/bench-geolife --out runs/geolife-variants \\
        --name final3 --set model.denoiser.final_layers=3 --gen-seeds 0,1,2

A trained variant (``OUT/NAME/train/model.pt``) is not trained again: a second call with other
``--gen-seeds`` only generates and evaluates. ``--refit-assigner`` fits the station assigner again
on the training part with the config's ``model.pattern`` (after ``--set``): assigner options
(``kernel``, ``move_smoothing``, ``floor``, ...) compared on one trained network.

Writes ``OUT/NAME/`` (the trained model, the generated set, ``summary.json``). One heavy job:
run nothing else on a 2-core machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mstdiff.baselines import generate_dataset, make_baseline
from mstdiff.data import PreparedDataset
from mstdiff.metrics.evaluate import evaluate
from mstdiff.models.day_pattern import DayPatternConfig
from mstdiff.pipeline import load_run_config
from mstdiff.threads import set_threads
from mstdiff.training.mstdiff import MSTDiff, generate, load_transition, train_mstdiff

COLUMNS = ("distance_jsd", "radius_jsd", "distinctloc_jsd", "duration_jsd", "grank_jsd", "irank_jsd")
REPO = Path(__file__).resolve().parents[1]


def day_stats(ds: PreparedDataset) -> dict[str, float]:
    """Plain statistics of a set of user-days: what a JSD table can hide."""
    L = np.asarray(ds.locations)
    change = L[:, 1:] != L[:, :-1]
    distinct = np.array([np.unique(row).size for row in L])
    stays = L.size / (change.sum() + L.shape[0])  # slots per stay
    lat, lon = ds.stations["lat"].to_numpy(float), ds.stations["lon"].to_numpy(float)
    a, b = L[:, :-1][change], L[:, 1:][change]
    km = np.hypot((lat[a] - lat[b]) * 110.57, (lon[a] - lon[b]) * 111.32 * np.cos(np.radians(lat[a])))
    return {"changes_per_day": float(change.sum(1).mean()), "distinct_per_day": float(distinct.mean()),
            "mean_stay_slots": float(stays),
            "jump_km_median": float(np.median(km)) if km.size else 0.0,
            "jump_km_p90": float(np.percentile(km, 90)) if km.size else 0.0,
            "stations_used": int(np.unique(L).size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a GeoLife benchmark run directory")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "geolife.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--gen-seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    metavar="S,S,...", help="generation seeds (default: the config's); with several, "
                    "one row per seed and their mean and sd: one draw cannot separate close variants")
    ap.add_argument("--refit-assigner", action="store_true",
                    help="fit the station assigner again with the config's model.pattern (no training)")
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = load_run_config(args.config, args.overrides)
    train, val = (PreparedDataset.load(args.run / "split" / k) for k in ("train", "val"))
    # the day-pattern model reads no graph; a station-drawing variant needs the run's embed and
    # transition stages (missing ones stop it with the file's name)
    emb, discrete = None, None
    if not cfg.model.pattern.enabled:
        emb = torch.from_numpy(np.load(args.run / "embed" / "station_embeddings.npy")).float()
        discrete = load_transition(args.run / "transition")
    out = args.out / args.name
    t0 = time.perf_counter()
    if not (out / "train" / "model.pt").exists():
        train_mstdiff(train, val, discrete=discrete, vqvae=None,
                      model_config=cfg.model, train_config=cfg.train, out_dir=out / "train",
                      station_embeddings=emb, resume=True)
    train_s = time.perf_counter() - t0
    model = MSTDiff.load(out / "train").with_sampling(**cfg.generate.sampling)
    if args.refit_assigner:
        t1 = time.perf_counter()
        options = {k: getattr(cfg.model.pattern, k) for k in DayPatternConfig.ASSIGNER}
        model = model.refit_assigner(train, **options)
        print(f"assigner refitted in {time.perf_counter() - t1:.1f} s: {cfg.model.pattern}")
    seeds = args.gen_seeds or [cfg.generate.seed]
    sets: dict[str, PreparedDataset] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        gen_dir = out / ("generated" if seed == cfg.generate.seed else f"generated-seed{seed}")
        generate(model, train, val.n_samples, gen_dir, seed=seed,
                 batch_size=cfg.generate.batch_size, device="cpu", overwrite=True)
        sets[args.name if len(seeds) == 1 else f"{args.name} seed {seed}"] = PreparedDataset.load(gen_dir)
    gen_s = (time.perf_counter() - t0) / len(seeds)
    model_rows = list(sets)
    for name in ("markov", "timegeo"):
        path = args.out / f"_{name}"
        if not (path / "meta.json").exists():
            generate_dataset(make_baseline(name).fit(train), train, val.n_samples, seed=0).save(path)
        sets[name] = PreparedDataset.load(path)
    rep = evaluate(val, sets, None, reference=train, draws=args.draws, plots=False)
    floor = rep.floor_rows["floor"]
    summary: dict[str, dict[str, float]] = {"real (validation share)": day_stats(val)}

    def row(name: str) -> dict[str, float]:
        return {**{c: rep.rows[name][c] / floor[c] for c in COLUMNS}, **day_stats(sets[name])}

    for name in model_rows:
        summary[name] = row(name)
    if len(model_rows) > 1:  # the seeds' mean and sd right below them, then the baselines
        per_seed = [summary[name] for name in model_rows]
        summary[f"{args.name} mean"] = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
        summary[f"{args.name} sd"] = {k: float(np.std([r[k] for r in per_seed], ddof=1)) for k in per_seed[0]}
    for name in sets:
        if name not in model_rows:
            summary[name] = row(name)
    summary[model_rows[0]].update(train_seconds=train_s, generate_seconds=gen_s)
    stat_cols = ("changes_per_day", "distinct_per_day", "mean_stay_slots", "jump_km_median",
                 "jump_km_p90", "stations_used")
    head = "| set | " + " | ".join(c.removesuffix("_jsd") for c in COLUMNS + stat_cols) + " |"
    lines = [head, "|---|" + "---:|" * (len(COLUMNS) + len(stat_cols))]
    for name, row in summary.items():
        cells = [f"{row[c]:.2f}" if c in row else "" for c in COLUMNS + stat_cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("ratio to the floor (validation share), then plain statistics\n" + "\n".join(lines))
    info = {"overrides": args.overrides, "rows": summary}
    (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
