"""Training of MSTDiff (paper Algorithm 1) with exact resume; the trained model, its sampling
(Algorithm 2) and generation are :mod:`mstdiff.training.model` (re-exported here).

A trained model directory holds ``model.pt`` (EMA weights, configs, traffic scaler, the path of the
transition process), ``checkpoint.pt`` (everything needed to continue training exactly),
``history.jsonl`` (losses), ``config.yaml`` and ``meta.json``.

Reproducibility: data order comes from a generator seeded with ``(seed, epoch)``, diffusion noise
from one generator whose state is checkpointed, dropout from torch's default generator inside a
:func:`~mstdiff.training.utils.local_rng` scope whose state is checkpointed too. So an interrupted
run resumed with ``resume=True`` ends with the same weights as an uninterrupted one.

Data-parallel training: run the same command under ``torchrun --nproc_per_node K``; see
:mod:`mstdiff.training.distributed` for how batches, seeds and outputs are shared out. Optional
mixed precision (``amp``) and ``torch.compile`` (``compile``) are off by default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mstdiff.config import Check, between, dump_yaml, ge, gt, one_of
from mstdiff.data.dataset import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.diffusion.hybrid import HybridDiffusion
from mstdiff.diffusion.location import make_location_process
from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, atomic_write_text, check_output_dir, run_meta, write_json
from mstdiff.models.day_pattern import permute_labels
from mstdiff.models.denoiser import MSTDiffDenoiser
from mstdiff.models.losses import training_loss
from mstdiff.models.station_assigner import StationAssigner
from mstdiff.models.vqvae import VQVAE
from mstdiff.models.wavelet import dwt
from mstdiff.threads import set_threads
from mstdiff.training import distributed
from mstdiff.training.model import (
    CALIBRATION_SEED_OFFSET,
    ModelConfig,
    MSTDiff,
    activity_process,
    build_model,
    calibrate_decoder,
    check_pattern,
    check_sampling_options,
    check_station_table,
    fit_assigner,
    generate,
    has_traffic,
    load_transition,
    station_coordinates,
    trajectory_only_if_needed,
)
from mstdiff.training.utils import (
    EMA,
    Autocast,
    load_checkpoint,
    local_rng,
    lr_lambda,
    needs_grad_scaler,
    resolve_device,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

# the trained model's names are re-exported: code that imports them from here keeps working
__all__ = [
    "CALIBRATION_SEED_OFFSET",
    "MSTDiff",
    "ModelConfig",
    "PATTERN_SEED_OFFSET",
    "TrainConfig",
    "TrainResult",
    "activity_process",
    "build_model",
    "calibrate_decoder",
    "check_pattern",
    "check_sampling_options",
    "check_station_table",
    "encode_series",
    "generate",
    "has_traffic",
    "load_transition",
    "peak_rss_mb",
    "pretrain_vqvae_stage",
    "station_coordinates",
    "station_counts",
    "train_mstdiff",
    "trajectory_only_if_needed",
    "validation_loss",
]


@dataclass
class TrainConfig:
    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": ge(0), "max_steps": ge(0), "batch_size": ge(1), "lr": gt(0), "weight_decay": ge(0),
        "schedule": one_of("cosine", "step", "constant"), "warmup_steps": ge(0), "grad_clip": ge(0),
        "ema_decay": between(0, 1, open_hi=True), "loss_weights": ge(0), "val_batches": ge(0),
        "checkpoint_every": ge(1), "log_every": ge(1), "seed": ge(0), "num_threads": ge(1),
        "calibration_samples": ge(0), "calibration_batch_size": ge(1), "activity_weight": ge(0),
        "condition_rate": between(0, 1), "station_prior": ge(0),
        "station_prior_counts": one_of("slots", "arrivals"), "station_lr": ge(0),
    }

    epochs: int = 20  # passes over the training samples
    max_steps: int | None = None  # stop after this many optimiser steps (None: run all epochs)
    batch_size: int = 64  # samples per optimiser step (the global batch: split over torchrun's K ranks)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decay of matrices and embeddings (not biases / norms)
    schedule: str = "cosine"  # cosine | step | constant, after a linear warm-up
    warmup_steps: int = 50  # linear warm-up steps
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    ema_decay: float = 0.995  # EMA of weights used for validation and sampling
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)  # λ1 traffic MSE, λ2 KL, λ3 CE
    val_batches: int = 8  # validation batches per epoch (fixed noise: comparable across epochs)
    checkpoint_every: int = 200  # optimiser steps between checkpoints (and one per epoch)
    log_every: int = 25  # optimiser steps between history lines
    seed: int = 0  # seeds data order, noise, dropout and initial weights
    device: str = "auto"  # auto | cpu | cuda | cuda:K (under torchrun: auto/cuda → cuda:LOCAL_RANK)
    num_threads: int | None = None  # CPU threads of torch, Numba and DuckDB alike (None: their defaults)
    progress: bool = True  # tqdm progress bar (rank 0 only)
    amp: bool = False  # mixed precision: the network under autocast (bf16; fp16 + loss scaling on old GPUs)
    compile: bool = False  # torch.compile the denoiser (slow first steps; pays off on GPUs, long runs)
    # after training, the traffic decoder's zero / full-slot thresholds are set from this many of the
    # model's own samples so that both atoms get the training shares (0: keep the grid midpoints)
    calibration_samples: int = 256
    calibration_batch_size: int = 256  # samples per sampling batch of that calibration
    # with model.activity: also map the values of the active (class-1) slots of those samples onto
    # the training distribution of the values between the atoms, by rank
    # (TrafficScaler.calibrate_values); False: the traffic stream's values as they are
    calibrate_values: bool = False
    # start the station table head's biases at the log visit shares of the training set (+ this
    # pseudo-count per station), so the table head starts from the real marginal instead of uniform
    # over N (a far-away station drawn for a masked slot was the first failure at N = 23,768); 0: off
    station_prior: float = 0.0
    # what the prior counts: "slots" (every slot's station: where users are) or "arrivals" (the
    # first slot of each stay: where users go; what a move component draws)
    station_prior_counts: str = "slots"
    activity_weight: float = 1.0  # weight of the activity channel's masked CE (model.activity)
    # share of training samples given as the conditional sampler sees them (mstdiff.conditional):
    # observed location / activity tokens clean; 0 = unconditional training only
    condition_rate: float = 0.0
    # keep the EMA weights of the epoch with the lowest validation loss (val_total) instead of the
    # last epoch's: early stopping without stopping (a small set overfits a large station table)
    keep_best: bool = False
    # learning rate of the station table (its N embeddings and biases) as a factor of lr: the part
    # that memorises a small training set (0: kept at the knowledge-graph embeddings and the prior)
    station_lr: float = 1.0








@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, float]]
    seconds: float
    samples_per_second: float  # global: all ranks together
    peak_rss_mb: float  # this process
    rank: int = 0  # this process's rank under torchrun (only rank 0 wrote the outputs)
    world_size: int = 1  # number of processes that trained together


# ----------------------------------------------------------------------------- tensors


def encode_series(ds: PreparedDataset, scaler: TrafficScaler, device: torch.device) -> tuple[Tensor, Tensor]:
    """Clean wavelet coefficients ``w0 (U, T)`` of scaled traffic and station ids ``l0 (U, T)``."""
    m = torch.from_numpy(np.asarray(ds.traffic, dtype=np.float32)).to(device)
    w0 = dwt(scaler.encode(m))  # (U, T)
    l0 = torch.from_numpy(np.asarray(ds.locations, dtype=np.int64)).to(device)  # (U, T)
    return w0, l0


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024












# ----------------------------------------------------------------------------- training

PATTERN_SEED_OFFSET = 15_485_863  # the label mappings of epoch e use this + 1000 · train.seed + e


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


@torch.no_grad()
def validation_loss(model: MSTDiffDenoiser, hybrid: HybridDiffusion, w0: Tensor, l0: Tensor,
                    cfg: TrainConfig, a0: Tensor | None = None) -> dict[str, float]:
    """Mean loss parts over up to ``val_batches`` batches with fixed noise (same every call)."""
    if w0.shape[0] == 0:
        return {}
    was = model.training
    model.eval()
    gen = torch.Generator(device=w0.device).manual_seed(cfg.seed + 7919)
    sums: dict[str, float] = {}
    nb = 0
    for b in range(min(cfg.val_batches, math.ceil(w0.shape[0] / cfg.batch_size))):
        sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        _, parts = training_loss(model, hybrid, w0[sl], l0[sl], gen, cfg.loss_weights,
                                 a0=None if a0 is None else a0[sl], activity_weight=cfg.activity_weight)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        nb += 1
    model.train(was)
    return {f"val_{k}": v / nb for k, v in sums.items()}












def train_mstdiff(
    train: PreparedDataset,
    val: PreparedDataset | None,
    *,
    discrete: Any,
    vqvae: VQVAE | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | os.PathLike[str],
    transition_path: str | None = None,
    station_embeddings: Tensor | None = None,
    resume: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    calibration_sampling: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train MSTDiff (Algorithm 1) and write ``model.pt`` (EMA weights) into ``out_dir``.

    With ``resume=True`` and a ``checkpoint.pt`` in ``out_dir``, training continues exactly where it
    stopped. Ctrl-C writes a checkpoint before stopping, so nothing is lost. ``callback(step, parts)``
    is called after every optimiser step with the detached loss parts (means over the global batch).
    ``calibration_sampling``: the sampling options of generation (``generate.sampling``) under
    which the traffic decoder is calibrated on the model's own samples (``train.calibration_samples``).

    Under ``torchrun --nproc_per_node K`` (or inside a process group the caller initialised) every
    process runs this function: the denoiser is wrapped in DistributedDataParallel, each rank trains
    on its chunk of every global batch, and only rank 0 writes files, validates and shows progress
    (:mod:`mstdiff.training.distributed`). With K = 1 the result equals a plain run's bit for bit.
    """
    check_output_dir(out_dir, reuse=True)  # a file, a read-only or a full disk fails before any work
    ctx, device = distributed.setup(train_config.device)
    try:
        return _train(train, val, discrete=discrete, vqvae=vqvae, model_config=model_config,
                      cfg=train_config, out=Path(out_dir), transition_path=transition_path,
                      station_embeddings=station_embeddings, resume=resume, callback=callback,
                      ctx=ctx, device=device, calibration_sampling=calibration_sampling)
    finally:
        distributed.teardown(ctx)


def _train(
    train: PreparedDataset,
    val: PreparedDataset | None,
    *,
    discrete: Any,
    vqvae: VQVAE | None,
    model_config: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    transition_path: str | None,
    station_embeddings: Tensor | None,
    resume: bool,
    callback: Callable[[int, dict[str, float]], None] | None,
    ctx: distributed.DistContext,
    device: torch.device,
    calibration_sampling: Mapping[str, Any] | None = None,
) -> TrainResult:
    K, rank, main = ctx.world_size, ctx.rank, ctx.is_main
    ckpt_path = out / "checkpoint.pt"
    distributed.check_batch_size(cfg.batch_size, K)
    problem = None
    if main and out.exists() and any(out.iterdir()) and not resume:
        problem = "training output directory is not empty"
    if distributed.broadcast_object(problem, ctx):  # rank 0 decides; every rank stops alike
        raise InputError("training output directory is not empty", where=str(out),
                         fix="pass --resume to continue it, or choose a new --out")
    if cfg.num_threads:
        set_threads(cfg.num_threads)  # torch, Numba and DuckDB alike
    scaler = TrafficScaler.for_dataset(train)
    model_config = trajectory_only_if_needed(model_config, train, log=main)
    if cfg.calibrate_values and model_config.denoiser.use_traffic and not model_config.activity:
        raise InputError("train.calibrate_values maps the values of the activity channel's active "
                         "slots: it needs model.activity: true", where="train.calibrate_values",
                         fix="set model.activity: true, or train.calibrate_values: false")
    pattern = model_config.pattern
    assigner: StationAssigner | None = None
    if pattern.enabled:  # the network learns day patterns over P labels; the assigner their stations
        check_pattern(model_config)
        pattern.validate_for(train.T)
        assigner = fit_assigner(train, pattern, graph=getattr(discrete, "rate", None))
        if main and station_embeddings is not None:
            logger.info("model.pattern: the station embeddings are not used (the network sees labels)")
        station_embeddings = None
    n_symbols = pattern.num_symbols(train.T) if pattern.enabled else train.n_stations
    discrete = make_location_process(model_config.location, num_states=n_symbols,
                                     num_steps=model_config.gaussian.num_steps,
                                     graph=None if pattern.enabled else discrete)
    model_config = dataclasses.replace(
        model_config,
        denoiser=dataclasses.replace(
            model_config.denoiser, num_stations=n_symbols, seq_len=train.T,
            mask_token=getattr(discrete, "mask_id", None) is not None,
            activity_classes=scaler.activity_classes if model_config.activity else 0),
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml({"model": model_config, "train": cfg}))

    w0, l0 = encode_series(train, scaler, device)
    wv, lv = encode_series(val, scaler, device) if val is not None else (w0[:0], l0[:0])
    labels: Tensor | None = None  # tokens "labels": each epoch maps them by fresh random injections
    if pattern.enabled:
        l0 = torch.from_numpy(pattern.encode(np.asarray(train.locations))).long().to(device)
        if val is not None:
            lv = torch.from_numpy(pattern.encode(np.asarray(val.locations))).long()
        if pattern.tokens == "labels":
            labels = l0
            if val is not None:  # one fixed mapping: the validation loss is comparable across epochs
                lv = permute_labels(lv, pattern.labels, torch.Generator().manual_seed(cfg.seed + 1))
        lv = lv.to(device)
    a0 = av = None
    if model_config.activity:  # slot activity classes of the real traffic (zero / partial / full)
        a0 = scaler.activity(torch.from_numpy(np.asarray(train.traffic, dtype=np.float32))).to(device)
        av = (scaler.activity(torch.from_numpy(np.asarray(val.traffic, dtype=np.float32))).to(device)
              if val is not None else a0[:0])
    denoiser, hybrid = build_model(model_config, discrete, vqvae, seed=cfg.seed,
                                   station_embeddings=station_embeddings,
                                   station_coords=None if pattern.enabled else station_coordinates(train))
    if cfg.station_prior > 0 and labels is None:  # (a resumed run then loads its own weights)
        denoiser.init_station_prior_(station_counts(l0.cpu().numpy(), n_symbols, cfg.station_prior_counts),
                                     cfg.station_prior)
    if model_config.denoiser.copy_nearest and model_config.denoiser.use_locations:
        denoiser.init_copy_context_(l0.cpu().numpy(), seed=cfg.seed)
    denoiser.to(device)
    hybrid.to(device)
    opt = torch.optim.AdamW(denoiser.optimizer_groups(
        cfg.weight_decay, None if cfg.station_lr == 1.0 else cfg.lr * cfg.station_lr), lr=cfg.lr)
    U, B = w0.shape[0], cfg.batch_size
    if U == 0:
        raise InputError("the training set is empty", where="train", fix="check the split fractions")
    per_epoch = math.ceil(U / B)
    total = min(cfg.epochs * per_epoch, cfg.max_steps or 10**12)  # optimiser steps in all
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, total, cfg.warmup_steps))
    ema = EMA(denoiser, cfg.ema_decay)
    # this rank's streams; rank 0 (and a single process) uses exactly seed + 1 and seed
    rseed = distributed.rank_seed(cfg.seed, rank)
    noise_gen = torch.Generator(device=device).manual_seed(rseed + 1)
    grad_scaler = (torch.amp.GradScaler(device.type)
                   if cfg.amp and device.type == "cuda" and needs_grad_scaler(device) else None)

    # position: the next batch to run is batch `batch` of epoch `epoch`
    step, epoch, batch = 0, 0, 0
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    rng_state: Tensor | None = None
    best: dict[str, Any] | None = None  # keep_best: {"epoch", "val_total", "state"} of the EMA weights
    if resume and ckpt_path.exists():
        restart = "delete it (and the rest of the directory) to train afresh, or choose a new --out"
        st = load_checkpoint(ckpt_path, device, what="training checkpoint", fix=restart)
        try:
            denoiser.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            ema.load_state_dict(st["ema"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputError(f"this checkpoint does not fit the model being trained ({first}): another "
                             "config or an incompatible version", where=str(ckpt_path), fix=restart) from None
        if grad_scaler is not None and st.get("grad_scaler"):
            grad_scaler.load_state_dict(st["grad_scaler"])
        streams = _rank_streams(st, rank, K)
        if streams is not None:
            noise_gen.set_state(streams["noise_gen"].cpu() if device.type == "cpu" else streams["noise_gen"])
            rng_state = streams["torch_rng"].cpu()
        if streams is None and rank == 1:
            saved = st.get("world_size", 1)
            why = (f"was written by {saved} process(es)" if saved != K
                   else "was written on an interrupt, with rank 0's streams only")
            logger.warning(
                "checkpoint %s %s: ranks 1..%d restart their noise and dropout streams from their "
                "seeds (training continues correctly, but not bit for bit like an uninterrupted run)",
                ckpt_path, why, K - 1)
        step, epoch, batch = st["step"], st["epoch"], st["batch"]
        history, running = st["history"], st["running"]
        best = st.get("best")
        if main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, step, epoch, batch)

    # the network as the loss calls it: DDP (any K), then torch.compile, then autocast
    net: Any = denoiser
    if ctx.active:
        def probe(m: torch.nn.Module) -> Tensor:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 104729)
            return training_loss(m, hybrid, w0[:2], l0[:2], g, cfg.loss_weights,
                                 a0=None if a0 is None else a0[:2], activity_weight=cfg.activity_weight)[0]

        unused = distributed.unused_parameters(denoiser, probe)
        if unused and main:
            logger.info("DDP: %d parameters get no gradient (%s...): find_unused_parameters on",
                        len(unused), ", ".join(unused[:3]))
        net = distributed.wrap_ddp(denoiser, device, find_unused_parameters=bool(unused))
    if cfg.compile:
        net = torch.compile(net)
    if cfg.amp:
        net = Autocast(net, device)

    def checkpoint(*, collective: bool = True) -> None:
        """Rank 0 writes; with K > 1 the ranks' random streams are gathered first (collective)."""
        mine = {"noise_gen": noise_gen.get_state(), "torch_rng": torch.get_rng_state()}
        streams = distributed.gather_objects(mine, ctx) if collective else None
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "model": denoiser.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "ema": ema.state_dict(), "noise_gen": mine["noise_gen"], "torch_rng": mine["torch_rng"],
            "rank_streams": streams if K > 1 else None, "world_size": K,
            "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            "step": step, "epoch": epoch, "batch": batch, "history": history, "running": running,
            "best": best,
        })

    def end_epoch() -> None:
        """Validate with the EMA weights (fixed noise; rank 0 only) and move to the next epoch."""
        nonlocal epoch, batch, best
        epoch, batch = epoch + 1, 0
        if not main:
            return
        vrec = validation_loss(cast(MSTDiffDenoiser, ema.shadow), hybrid, wv, lv, cfg, av)
        if vrec:
            history.append({"step": step, "epoch": epoch, **vrec})
            logger.info("epoch %d: %s", epoch, vrec)
            if cfg.keep_best and (best is None or vrec["val_total"] < best["val_total"]):
                best = {"epoch": epoch, "val_total": float(vrec["val_total"]),
                        "state": {k: v.detach().clone() for k, v in ema.shadow.state_dict().items()}}

    t0 = time.perf_counter()
    steps_at_start = step
    order, order_epoch = torch.empty(0, dtype=torch.long), -1
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (cfg.progress and main))
    with local_rng(rseed, rng_state):
        denoiser.train()
        try:
            while step < total:
                if batch == per_epoch:
                    end_epoch()
                    checkpoint()
                    continue
                if order_epoch != epoch:
                    order, order_epoch = _epoch_order(U, cfg.seed, epoch).to(device), epoch
                    if labels is not None:  # a function of (seed, epoch) alone: resume stays exact
                        g = torch.Generator().manual_seed(PATTERN_SEED_OFFSET + 1000 * cfg.seed + epoch)
                        l0 = permute_labels(labels.cpu(), pattern.labels, g).to(device)
                idx = order[batch * B:(batch + 1) * B]  # the global batch, the same on every rank
                loss, parts, n_local = _local_loss(net, hybrid, w0, l0, idx, noise_gen, cfg, ctx, a0)
                opt.zero_grad(set_to_none=True)
                if grad_scaler is not None:
                    grad_scaler.scale(loss).backward()
                    grad_scaler.unscale_(opt)
                else:
                    loss.backward()  # DDP: gradients averaged over the ranks here
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(denoiser.trainable_parameters(), cfg.grad_clip)
                if grad_scaler is not None:
                    grad_scaler.step(opt)
                    grad_scaler.update()
                else:
                    opt.step()
                sched.step()
                ema.update(denoiser)
                step, batch = step + 1, batch + 1
                values = _global_means(parts, n_local, int(idx.numel()), ctx)
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + v
                running["n"] = running.get("n", 0.0) + 1
                # the bar shows this step's loss (tqdm redraws at most a few times per second)
                bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)
                bar.update(1)
                if callback is not None:
                    callback(step, dict(values))
                if step % cfg.log_every == 0 or step == total:
                    n = running.pop("n")
                    rec = {"step": step, "epoch": epoch, "lr": float(sched.get_last_lr()[0]),
                           **{k: v / n for k, v in running.items()}}
                    history.append(rec)
                    running = {}
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
            if batch == per_epoch:  # the last epoch's validation
                end_epoch()
        except KeyboardInterrupt:
            if main:
                logger.warning("interrupted at step %d: writing %s (continue with --resume)", step, ckpt_path)
            # no collective here: the other ranks may be interrupted elsewhere (their streams restart)
            checkpoint(collective=K == 1)
            raise
        finally:
            bar.close()
        checkpoint()
    seconds = time.perf_counter() - t0
    done = step - steps_at_start
    sps = done * B / seconds if seconds > 0 else 0.0  # global samples (all ranks together)
    if main:
        if best is not None:
            ema.shadow.load_state_dict(best["state"])
            logger.info("keep_best: the EMA weights of epoch %d (val_total %.4f)", best["epoch"],
                        best["val_total"])
        ema.shadow.eval()
        bundle = MSTDiff(cast(MSTDiffDenoiser, ema.shadow), hybrid, scaler, model_config, assigner=assigner)
        if cfg.calibration_samples:
            # calibrated as it will be sampled (generate.sampling: e.g. clip_traffic changes what the
            # traffic stream puts out); the model is saved with its own sampling defaults
            under = bundle.with_sampling(**dict(calibration_sampling or {}))
            bundle.scaler = calibrate_decoder(under, min(cfg.calibration_samples, U), seed=cfg.seed,
                                              device=device, batch_size=cfg.calibration_batch_size,
                                              values=cfg.calibrate_values)
        meta = run_meta(stage="train", steps=step, epochs=epoch, samples_per_second=sps,
                        train_samples=U, val_samples=int(wv.shape[0]), device=str(device),
                        world_size=K, backend=ctx.backend, amp=cfg.amp, compile=cfg.compile,
                        trainable_parameters=denoiser.num_parameters(), peak_rss_mb=peak_rss_mb(),
                        seconds=seconds, best_epoch=best["epoch"] if best is not None else None)
        bundle.save(out / "model.pt", transition_path=transition_path, meta=meta)
        atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        write_json(out / "meta.json", meta)
    distributed.barrier(ctx)  # every rank returns once the outputs exist
    return TrainResult(out, step, history, seconds, sps, peak_rss_mb(), rank=rank, world_size=K)


def station_counts(locations: np.ndarray, n_stations: int, what: str = "slots") -> np.ndarray:
    """Visits per station of ``locations (U, T)``: every slot (``"slots"``) or the first slot of each
    stay (``"arrivals"``: slot 0 and every slot whose station differs from the one before)."""
    L = np.asarray(locations)
    if what == "slots":
        return np.bincount(L.ravel(), minlength=n_stations)
    if what != "arrivals":
        raise InputError(f"station counts {what!r}", fix="use 'slots' or 'arrivals'")
    first = np.ones(L.shape, dtype=bool)
    first[:, 1:] = L[:, 1:] != L[:, :-1]
    return np.bincount(L[first], minlength=n_stations)


def _rank_streams(st: dict[str, Any], rank: int, world_size: int) -> dict[str, Tensor] | None:
    """This rank's saved noise and dropout generator states, or None when the checkpoint lacks them."""
    if rank == 0:
        return {"noise_gen": st["noise_gen"], "torch_rng": st["torch_rng"]}
    streams = st.get("rank_streams")
    if streams is None or st.get("world_size", 1) != world_size:
        return None
    return streams[rank]


def _local_loss(
    net: Any, hybrid: HybridDiffusion, w0: Tensor, l0: Tensor, idx: Tensor, noise_gen: torch.Generator,
    cfg: TrainConfig, ctx: distributed.DistContext, a0: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor], int]:
    """This rank's loss on its chunk of the global batch ``idx``, its parts and the chunk size.

    The loss is the chunk mean, rescaled when a short last batch leaves unequal chunks, so that
    DDP's average over the ranks is the global-batch mean (a rank with an empty chunk runs one
    sample with weight 0, as DDP needs every rank in every backward pass).
    """
    if ctx.world_size == 1:
        loss, parts = training_loss(net, hybrid, w0[idx], l0[idx], noise_gen, cfg.loss_weights,
                                    a0=None if a0 is None else a0[idx], activity_weight=cfg.activity_weight,
                                    condition_rate=cfg.condition_rate)
        return loss, parts, int(idx.numel())
    mine = distributed.local_chunk(idx, ctx.rank, ctx.world_size)
    n_local = int(mine.numel())
    weight = distributed.chunk_weight(n_local, int(idx.numel()), ctx.world_size)
    if n_local == 0:
        mine = idx[:1]
    loss, parts = training_loss(net, hybrid, w0[mine], l0[mine], noise_gen, cfg.loss_weights,
                                a0=None if a0 is None else a0[mine], activity_weight=cfg.activity_weight,
                                condition_rate=cfg.condition_rate)
    return (loss * weight if weight != 1.0 else loss), parts, n_local


def _global_means(parts: dict[str, Tensor], n_local: int, n_global: int,
                  ctx: distributed.DistContext) -> dict[str, float]:
    """Loss parts as means over the global batch (chunk means weighted by chunk size, summed over ranks)."""
    if ctx.world_size == 1:
        return {k: float(v) for k, v in parts.items()}
    keys = list(parts)
    vec = torch.stack([parts[k].detach().double() for k in keys]) * n_local  # (P,)
    vec = distributed.all_reduce_sum(vec, ctx) / n_global
    return dict(zip(keys, vec.tolist()))






# ----------------------------------------------------------------------------- VQ-VAE stage


def pretrain_vqvae_stage(
    train: PreparedDataset,
    out_dir: str | os.PathLike[str],
    config: Any = None,
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> VQVAE:
    """Pre-train the VQ-VAE on one coefficient set of the scaled training traffic (paper eq. 9).

    Writes ``vqvae.pt`` (config + weights + per-epoch history), ``history.json`` and ``meta.json``
    with the final codebook perplexity and dead-code count. Dead codes are logged as a warning.
    """
    from mstdiff.models.vqvae import VQVAEConfig, pretrain_vqvae
    from mstdiff.models.wavelet import scale_coeffs

    config = config or VQVAEConfig()
    if not has_traffic(train):
        raise InputError("the training set has no traffic: there is nothing for the VQ-VAE to encode",
                         where="pretrain-vqvae", fix="skip this stage: MSTDiff trains without traffic "
                         "(and without a VQ-VAE) on a dataset of trajectories only")
    dev = resolve_device(device)
    scaler = TrafficScaler.for_dataset(train)
    w0, _ = encode_series(train, scaler, dev)
    coeffs = scale_coeffs(w0, config.scale)  # (U, L)
    t0 = time.perf_counter()
    model, history = pretrain_vqvae(coeffs, config, seed=seed, device=dev, progress=progress)
    last = history[-1] if history else {}
    if last.get("dead_codes", 0):
        logger.warning("VQ-VAE: %d of %d codes unused in the last epoch (perplexity %.1f)",
                       last["dead_codes"], config.num_codes, last.get("perplexity", float("nan")))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_checkpoint(tmp / "vqvae.pt", history=history)
        write_json(tmp / "history.json", history)
        write_json(tmp / "meta.json", run_meta(
            stage="pretrain-vqvae", config=dataclasses.asdict(config), seed=seed, device=str(dev),
            train_samples=train.n_samples, seconds=time.perf_counter() - t0, final=last))
    return model
