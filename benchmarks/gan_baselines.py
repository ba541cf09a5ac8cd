"""Train one baseline of a benchmark config on an existing benchmark run directory, as the benchmark would.

Fits ``NAME`` (``make_baseline(NAME, baseline_config(NAME, config))``, ``embeddings: run`` bound to
``--run``) on ``RUN/split/train`` (validation monitored on ``RUN/split/val``), generates as many
samples as ``RUN/split/test`` with ``generate.seed``, and writes what ``mstdiff benchmark`` reads
back (``RUN/models/NAME/generated``), plus ``model.pt``, the GAN checkpoints (resumed when present)
and ``cost.json`` (wall time of fitting and generation, peak RSS of this process, training history).
Evaluate afterwards with ``mstdiff evaluate`` against ``RUN/split/test``.

``--traffic-from RUN/models/OTHER/model.pt`` reuses the fitted traffic part of another pair with the
same traffic settings (checked) and fits only this pair's trajectory part: ``adaptive+replay`` from
``adaptive+markov`` trains ADAPTIVE once (the benchmark itself would train the same model twice, with
the same seed and so the same result).

    python benchmarks/gan_baselines.py --run runs/bench-sh --config configs/benchmark_shanghai.yaml \\
        --model mshgan+markov
    python benchmarks/gan_baselines.py ... --model adaptive+replay \
        --traffic-from runs/bench-sh/models/adaptive+markov/model.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from mstdiff.baselines import Baseline, Pair, generate_dataset, make_baseline
from mstdiff.config import to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.io import write_json
from mstdiff.pipeline import baseline_config, load_benchmark_config
from mstdiff.training.mstdiff import peak_rss_mb


def _settings(model: Baseline) -> dict:
    """A model's config without the per-directory checkpoint path."""
    cfg = to_dict(model.config)
    if isinstance(cfg.get("train"), dict):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "checkpoint"}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="benchmark run directory: split/ (and embed/)")
    ap.add_argument("--config", type=Path, required=True, help="benchmark config naming the model's settings")
    ap.add_argument("--model", required=True, help="model name, e.g. mshgan+markov")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing generated set")
    ap.add_argument("--traffic-from", type=Path, help="model.pt of a pair whose fitted traffic part to reuse")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = load_benchmark_config(args.config, args.set)
    model = make_baseline(args.model, baseline_config(args.model, cfg))
    out = args.run / "models" / args.model
    for part in getattr(model, "parts", (model,)):
        bind = getattr(part, "bind_run_dir", None)
        if callable(bind):
            bind(args.run)
        train_cfg = getattr(part.config, "train", None)
        if train_cfg is not None and hasattr(train_cfg, "checkpoint") and train_cfg.checkpoint is None:
            train_cfg.checkpoint = str(out / f"checkpoint-{part.name}.pt")  # resume after an interruption
    if (out / "generated" / "meta.json").exists() and not args.overwrite:
        raise SystemExit(f"{out / 'generated'} exists; pass --overwrite to replace it")
    train, val, test = (PreparedDataset.load(args.run / "split" / k) for k in ("train", "val", "test"))
    n = cfg.generate.n or test.n_samples

    t0 = time.perf_counter()
    if args.traffic_from is not None:
        if not isinstance(model, Pair):
            raise SystemExit("--traffic-from needs a pair")
        donor = Baseline.load(args.traffic_from)
        traffic = getattr(donor, "traffic_model", donor)
        if traffic.name != model.traffic_model.name or _settings(traffic) != _settings(model.traffic_model):
            raise SystemExit(f"{args.traffic_from}: its {traffic.name} was fitted with other settings")
        model.location_model.fit(train, val=val)
        first, second = model.parts
        model = Pair(traffic if first is model.traffic_model else first,
                     traffic if second is model.traffic_model else second)
    else:
        model.fit(train, val=val)
    t_fit = time.perf_counter() - t0
    model.save(out / "model.pt")
    t1 = time.perf_counter()
    generate_dataset(model, train, n, cfg.generate.seed).save(out / "generated", overwrite=True)
    t_gen = time.perf_counter() - t1
    history = {p.name: getattr(p, "history", None) for p in getattr(model, "parts", (model,))}
    cost = {
        "model": args.model, "fit_seconds": round(t_fit, 1), "generate_seconds": round(t_gen, 1),
        "seconds": round(t_fit + t_gen, 1), "peak_rss_mb": round(peak_rss_mb(), 1), "n": n,
        "config": to_dict(model.config),
        "history": {k: list(getattr(h, "epochs", [])) for k, h in history.items() if h is not None},
    }
    write_json(out / "cost.json", cost)
    print(json.dumps({k: v for k, v in cost.items() if k not in ("config", "history")}))


if __name__ == "__main__":
    main()
