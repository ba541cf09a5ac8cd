"""Train one MSTDiff variant on a prepared run directory's split, sample it and evaluate on validation.

The development loop of the fidelity work (choose and tune on the validation split, never on the
test split): one variant per call, the same data, stages and seed, so variants compare at equal
budget side by side. Prints the metrics table with the floor, the sanity statistics (zero slots,
full slots, distinct stations and changes per sample) and the network's per-step l0 accuracy, and
writes them under ``--out``.

    python benchmarks/fidelity.py --run runs/sh --config configs/shanghai.yaml --name absorbing \\
        --out runs/fidelity --set train.epochs=12
    python benchmarks/fidelity.py ... --name graph --set model.location.process=graph
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mstdiff.config import to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.metrics.evaluate import evaluate
from mstdiff.models.vqvae import VQVAE
from mstdiff.pipeline import load_run_config
from mstdiff.threads import set_threads
from mstdiff.training.mstdiff import MSTDiff, encode_series, generate, load_transition, train_mstdiff


@torch.no_grad()
def step_accuracy(model: MSTDiff, ds: PreparedDataset, steps: list[int], seed: int = 0) -> dict[int, float]:
    """Top-1 accuracy of the network's l0 prediction on the noised tokens of ``ds`` at each step."""
    w0, l0 = encode_series(ds, model.scaler, torch.device("cpu"))
    w0, l0 = w0[:256], l0[:256]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s_ in steps:
        s = torch.full((w0.shape[0],), s_, dtype=torch.long)
        w_s, _, l_s = model.hybrid.noise(w0, l0, s, g)
        extra = {}
        if model.hybrid.activity is not None:  # noise the activity channel to the same step
            a0 = model.scaler.activity(torch.from_numpy(np.asarray(ds.traffic[:256], dtype=np.float32)))
            extra["activity"] = model.hybrid.activity.q_sample(a0, s, g)
        pred = model.denoiser(w_s, model.hybrid.location_input(l0, l_s, s), s, **extra).logits.argmax(-1)
        changed = l_s != l0  # tokens the noise changed (masked or moved)
        out[s_] = {"all": float((pred == l0).float().mean()),
                   "noised": float((pred == l0)[changed].float().mean()) if changed.any() else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True,
                    help="run directory with split/ embed/ transition/ vqvae/")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-from", default=None, help="sample the trained model of this variant name")
    ap.add_argument("--sample", action="append", default=[], metavar="KEY=VALUE",
                    help="sampling option of model.hybrid, e.g. unmask_order=confidence")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    cfg = load_run_config(args.config, args.overrides)
    run, out = args.run, args.out / args.name
    train = PreparedDataset.load(run / "split" / "train")
    val = PreparedDataset.load(run / "split" / "val")
    t0 = time.perf_counter()
    train_dir = args.out / args.model_from / "train" if args.model_from else out / "train"
    if not (train_dir / "model.pt").exists():
        emb = torch.from_numpy(np.load(run / "embed" / "station_embeddings.npy")).float()
        vq = VQVAE.load(run / "vqvae" / "vqvae.pt") if cfg.model.denoiser.use_vqvae else None
        train_mstdiff(train, val, discrete=load_transition(run / "transition"), vqvae=vq,
                      model_config=cfg.model, train_config=cfg.train, out_dir=train_dir,
                      transition_path=str((run / "transition" / "transition.pt").resolve()),
                      station_embeddings=emb, resume=True)
    train_s = time.perf_counter() - t0
    model = MSTDiff.load(train_dir / "model.pt")
    if args.sample:
        import dataclasses

        import yaml

        opts = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in args.sample)}
        model.hybrid.config = dataclasses.replace(model.hybrid.config, **opts)
        model.config = dataclasses.replace(model.config, hybrid=model.hybrid.config)
    if not (out / "generated" / "meta.json").exists():
        generate(model, train, val.n_samples, out / "generated", seed=cfg.generate.seed,
                 batch_size=cfg.generate.batch_size, device="cpu", overwrite=True)
    gen = PreparedDataset.load(out / "generated")
    res = evaluate(val, {args.name: gen}, out / "evaluate", seed=0, plots=False, overwrite=True)
    acc = step_accuracy(model, val, [1, 5, 10, 25, 40, cfg.model.gaussian.num_steps])
    meta = json.loads((train_dir / "meta.json").read_text())
    summary = {"name": args.name, "overrides": args.overrides, "sample": args.sample,
               "model_from": args.model_from, "train_seconds": meta.get("seconds"),
               "steps": meta.get("steps"), "wall_seconds": train_s, "step_accuracy": acc,
               "metrics": res.rows[args.name], "floor": next(iter(res.floor_rows.values()), {}),
               "sanity": res.sanity, "model": to_dict(cfg.model)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(res.to_markdown())
    print("l0 accuracy by step:", json.dumps(acc))
    print(f"training: {meta.get('steps')} steps in {meta.get('seconds', 0):.0f} s")


if __name__ == "__main__":
    main()
