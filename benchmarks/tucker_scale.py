"""TuckER at scale: epoch time and held-out link prediction per 1-N scoring, side by side in one run.

    python benchmarks/tucker_scale.py --kg KG_DIR --threads 2                # timing + quality
    python benchmarks/tucker_scale.py --synthetic-stations 2000 --threads 2  # a Shanghai-like city
    python benchmarks/tucker_scale.py --kg KG_DIR --timing-only --rounds 2

``KG_DIR`` is the output of ``mstdiff kg build``. The triples are split as ``mstdiff kg embed`` splits
them (``--holdout 0.1``, ``--split-seed 0``; both directions of a border on one side).

**Timing**: one epoch per variant, the variants interleaved (A, B, C, A, B, C, ...) for ``--rounds``
rounds, so that the load of a shared machine hits them alike; the median is reported. An epoch here is
a ``train_tucker`` call with ``epochs=1`` (it includes the query grouping and the model's creation,
well under a second).

**Quality**: each variant of ``--quality`` is trained for its epochs and scored on the held-out
triples (filtered MRR / Hits@k, overall and per relation, as ``mstdiff kg embed`` reports them), with
its training time. ``--eval-every K`` adds the held-out MRR every K epochs (a learning curve).

Variants are ``NAME:key=value,key=value`` with keys of ``TuckerConfig`` (``scoring``, ``batch_size``,
``lr``, ``negatives``, ``epochs``, ...). Defaults: ``before`` = ``scoring=dense`` (the textbook 1-N
loss of the previous build) against the fast ``full`` (same loss, exact) and ``sampled`` scorings.
Prints tables and writes ``tucker_scale.json`` and ``tucker_scale.md`` under ``--results``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstdiff.kg.triples import KnowledgeGraph
from mstdiff.kg.tucker import (
    TuckerConfig,
    evaluate_link_prediction,
    rank_metrics,
    rank_triples,
    split_triples,
    train_tucker,
)
from mstdiff.threads import set_threads

TIMING = ["before:scoring=dense", "full:scoring=full", "sampled:scoring=sampled",
          "sampled-b512:scoring=sampled,batch_size=512"]
QUALITY = ["full:scoring=full", "sampled-b512:scoring=sampled,batch_size=512"]


def parse_variant(text: str, base: dict[str, Any]) -> tuple[str, TuckerConfig]:
    name, _, spec = text.partition(":")
    kw = dict(base)
    types = {k: type(v) for k, v in asdict(TuckerConfig()).items()}
    for item in filter(None, spec.split(",")):
        key, _, val = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown TuckerConfig field {key!r} in {text!r}")
        kw[key] = None if val == "None" else types[key](val)
    return name, TuckerConfig(**kw)


def synthetic_kg(n_stations: int, seed: int) -> KnowledgeGraph:
    """The knowledge graph of a synthetic city (stations with POI counts, like Shanghai's)."""
    from mstdiff.data.synthetic import simulate_city
    from mstdiff.kg.triples import build_knowledge_graph

    city = simulate_city(n_stations=n_stations, n_users=50, days=1, seed=seed)
    return build_knowledge_graph(city.dataset.stations)


def per_relation(model: Any, test: np.ndarray, kg: KnowledgeGraph) -> dict[str, dict[str, float]]:
    """Held-out metrics per relation from one ranking of the whole test set (both directions)."""
    ranks = rank_triples(lambda h, r: model(h, r), test, kg.triples, kg.n_relations)
    rel = np.concatenate([test[:, 1], test[:, 1]])
    out = {"all": rank_metrics(ranks)}
    for r, name in enumerate(kg.relations):
        if (rel == r).any():
            out[name] = rank_metrics(ranks[rel == r])
    return out


def timing(kg: KnowledgeGraph, train: np.ndarray, variants: list[tuple[str, TuckerConfig]],
           rounds: int) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for rnd in range(rounds):
        for name, cfg in variants:
            one = TuckerConfig(**{**asdict(cfg), "epochs": 1})
            t = time.perf_counter()
            train_tucker(train, kg.n_entities, kg.n_relations, one, progress=False)
            times[name].append(time.perf_counter() - t)
            print(f"  round {rnd + 1}: {name:>14} {times[name][-1]:7.1f} s/epoch", flush=True)
    return {name: {"epoch_s_median": statistics.median(v), "epoch_s": v,
                   "scoring": cfg.resolved_scoring(kg.n_entities), "batch_size": cfg.batch_size,
                   "negatives": cfg.negatives, "threads": cfg.num_threads}
            for (name, cfg), v in zip(variants, times.values())}


def quality(kg: KnowledgeGraph, train: np.ndarray, test: np.ndarray, name: str, cfg: TuckerConfig,
            eval_every: int, checkpoint_dir: Path | None = None) -> dict[str, Any]:
    curve: list[dict[str, float]] = []
    spent = {"eval": 0.0}

    def on_epoch(epoch: int, model: Any) -> None:
        if eval_every and epoch % eval_every == 0 and epoch < cfg.epochs:
            t = time.perf_counter()
            m = evaluate_link_prediction(model, test, kg.triples, kg.n_relations)
            model.train()
            curve.append({"epoch": epoch, "mrr": m["mrr"], "hits@10": m["hits@10"]})
            spent["eval"] += time.perf_counter() - t
            print(f"  {name}: epoch {epoch}: held-out MRR {m['mrr']:.4f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:  # a checkpoint, as `kg embed` writes one
        ckpt = (checkpoint_dir or Path(tmp)) / f"{name}.pt"
        t = time.perf_counter()
        res = train_tucker(train, kg.n_entities, kg.n_relations, cfg, progress=False, on_epoch=on_epoch,
                           checkpoint=ckpt)
        train_s = time.perf_counter() - t - spent["eval"]
    if res.resumed_from_epoch:
        print(f"  {name}: resumed from epoch {res.resumed_from_epoch} ({ckpt}): train_s counts the rest",
              flush=True)
    t = time.perf_counter()
    metrics = per_relation(res.model, test, kg)
    eval_s = time.perf_counter() - t
    curve.append({"epoch": cfg.epochs, "mrr": metrics["all"]["mrr"], "hits@10": metrics["all"]["hits@10"]})
    print(f"  {name}: {cfg.epochs} epochs in {train_s:.0f} s, held-out MRR {metrics['all']['mrr']:.4f} "
          f"Hits@10 {metrics['all']['hits@10']:.4f}", flush=True)
    return {"name": name, "config": asdict(cfg), "scoring": cfg.resolved_scoring(kg.n_entities),
            "train_s": train_s, "epoch_s": train_s / max(cfg.epochs, 1), "eval_s": eval_s,
            "metrics": metrics, "curve": curve, "resumed_from_epoch": res.resumed_from_epoch,
            "final_loss": res.history[-1]["loss"] if res.history else None}


def markdown(info: dict[str, Any], times: dict[str, Any], qual: list[dict[str, Any]]) -> str:
    lines = [f"# TuckER at scale: {info['graph']}", "",
             f"{info['n_entities']:,} entities ({info['n_stations']:,} stations), "
             f"{info['n_train']:,} training and {info['n_test']:,} held-out triples, "
             f"threads {info['threads']}.", ""]
    if times:
        lines += ["| variant | scoring | batch | negatives | threads | s / epoch (median) | rounds "
                  "| vs first |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        first = next(iter(times.values()))["epoch_s_median"]
        for name, r in times.items():
            neg = r["negatives"] if r["scoring"] == "sampled" else "–"
            rounds = ", ".join(f"{v:.1f}" for v in r["epoch_s"])
            lines.append(f"| {name} | {r['scoring']} | {r['batch_size']} | {neg} | {r['threads']} | "
                         f"{r['epoch_s_median']:.1f} | {rounds} | {first / r['epoch_s_median']:.2f}x |")
        lines.append("")
    if qual:
        rels = [k for k in qual[0]["metrics"] if k != "all"]
        lines += ["| variant | scoring | batch | epochs | train s | s / epoch | MRR | Hits@1 | Hits@10 | "
                  + " | ".join(f"MRR {r}" for r in rels) + " |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(rels)]
        for q in qual:
            m = q["metrics"]["all"]
            c = q["config"]
            per = " | ".join(f"{q['metrics'][r]['mrr']:.4f}" if r in q["metrics"] else "–" for r in rels)
            lines.append(f"| {q['name']} | {q['scoring']} | {c['batch_size']} | {c['epochs']} | "
                         f"{q['train_s']:.0f} | {q['epoch_s']:.1f} | {m['mrr']:.4f} | {m['hits@1']:.4f} | "
                         f"{m['hits@10']:.4f} | {per} |")
        if info.get("random"):
            r = info["random"]
            lines.append(f"| random embeddings | – | – | 0 | – | – | {r['mrr']:.4f} | {r['hits@1']:.4f} | "
                         f"{r['hits@10']:.4f} | " + " | ".join("–" for _ in rels) + " |")
        curves = [q for q in qual if len(q["curve"]) > 1]
        if curves:
            lines += ["", "Held-out MRR by epoch:", ""]
            for q in curves:
                pts = ", ".join(f"{c['epoch']}: {c['mrr']:.4f}" for c in q["curve"])
                lines.append(f"- {q['name']}: {pts}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--kg", type=Path, help="a `mstdiff kg build` directory")
    src.add_argument("--synthetic-stations", type=int, help="build the KG of a synthetic city of this size")
    ap.add_argument("--seed", type=int, default=0, help="synthetic city seed")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (TuckerConfig.num_threads)")
    ap.add_argument("--timing", nargs="*", default=TIMING, metavar="NAME:k=v,...")
    ap.add_argument("--quality", nargs="*", default=QUALITY, metavar="NAME:k=v,...")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--eval-every", type=int, default=0, help="held-out MRR every K epochs (0: at the end)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/tucker_scale"))
    ap.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="keep the quality runs' checkpoints here (a rerun resumes them)")
    args = ap.parse_args()
    set_threads(args.threads)
    torch.set_num_threads(args.threads)

    if args.kg is not None:
        kg, graph = KnowledgeGraph.load(args.kg), str(args.kg)
    else:
        kg = synthetic_kg(args.synthetic_stations, args.seed)
        graph = f"synthetic city, {args.synthetic_stations} stations"
    sym = tuple(i for i, r in enumerate(kg.relations) if r == "BaseBorderBy")
    train, test = split_triples(kg.triples, args.holdout, np.random.default_rng(args.split_seed),
                                symmetric_relations=sym)
    base = {"num_threads": args.threads}
    info: dict[str, Any] = {"graph": graph, "n_entities": kg.n_entities, "n_stations": kg.n_stations,
                            "n_train": int(len(train)), "n_test": int(len(test)), "threads": args.threads,
                            "triples": kg.summary()["triples"]}
    print(f"{graph}: {kg.n_entities:,} entities, {len(train):,} training / {len(test):,} held-out triples",
          flush=True)
    times: dict[str, Any] = {}
    if not args.quality_only:
        times = timing(kg, train, [parse_variant(v, base) for v in args.timing], args.rounds)
    qual: list[dict[str, Any]] = []
    if not args.timing_only:
        for v in args.quality:
            name, cfg = parse_variant(v, base)
            qual.append(quality(kg, train, test, name, cfg, args.eval_every, args.checkpoint_dir))
        from mstdiff.kg.tucker import random_embedding_baseline

        info["random"] = random_embedding_baseline(test, kg.triples, kg.n_entities, kg.n_relations,
                                                   TuckerConfig(**base))
    md = markdown(info, times, qual)
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "tucker_scale.md").write_text(md)
    (args.results / "tucker_scale.json").write_text(json.dumps(
        {"info": info, "timing": times, "quality": qual}, indent=2))


if __name__ == "__main__":
    main()
