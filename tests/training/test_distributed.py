"""Data-parallel MSTDiff training (DDP under torchrun, gloo on CPU), mixed precision and compile.

The 2-process tests launch the real CLI (`mstdiff train`) with ``python -m torch.distributed.run``
through ``ddp_cli_worker.py``, which records what each rank wrote and its final weights.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mstdiff.config import dump_yaml
from mstdiff.data import PreparedDataset
from mstdiff.data.scaling import TrafficScaler
from mstdiff.data.synthetic import synthetic_city
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.diffusion.gaussian import GaussianConfig
from mstdiff.errors import InputError
from mstdiff.kg.graph import synthetic_knn_rate
from mstdiff.models.denoiser import DenoiserConfig
from mstdiff.models.losses import training_loss
from mstdiff.training import distributed
from mstdiff.training.mstdiff import (
    ModelConfig,
    TrainConfig,
    _epoch_order,
    build_model,
    encode_series,
    load_transition,
    station_coordinates,
    train_mstdiff,
)
from mstdiff.training.utils import Autocast, lr_lambda

S = 8
WORKER = Path(__file__).with_name("ddp_cli_worker.py")
OUTPUTS = {"config.yaml", "checkpoint.pt", "model.pt", "history.jsonl", "meta.json"}


def model_config(dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(
        denoiser=DenoiserConfig(d_model=16, n_heads=2, layers_per_stage=1, final_layers=1, dropout=dropout,
                                use_vqvae=False),
        gaussian=GaussianConfig(num_steps=S),
    )


def train_config(**kw) -> TrainConfig:
    # 21 samples, batch 8: batches of 8, 8, 5 per epoch; the last one splits 3 + 2 over two ranks
    base = dict(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=2,
                seed=1, device="cpu", progress=False, val_batches=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A prepared dataset, a transition and a run config on disk, as the CLI reads them."""
    root = tmp_path_factory.mktemp("ddp")
    city = synthetic_city(n_users=21, n_stations=20, days=1, seed=3)
    city.save(root / "train")
    city.subset(np.arange(8)).save(root / "val")
    rate = synthetic_knn_rate(city.n_stations, k=4, seed=0)
    GraphTransition(rate, num_steps=S).save(root / "transition.pt")
    (root / "run.yaml").write_text(dump_yaml({"model": model_config(), "train": train_config()}))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(files: Path, spy: Path, *, nproc: int = 2, crash_at: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(WORKER), str(spy), str(crash_at), "--",
           "--train", str(files / "train"), "--val", str(files / "val"),
           "--transition", str(files / "transition.pt"), "--config", str(files / "run.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def in_process(files: Path, out: Path, **kw):
    return train_mstdiff(
        PreparedDataset.load(files / "train"), PreparedDataset.load(files / "val"),
        discrete=load_transition(files / "transition.pt"), vqvae=None,
        model_config=kw.pop("model_config", model_config()), train_config=train_config(**kw), out_dir=out,
    )


def final_raw_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def emulate_ranks(files: Path, world_size: int) -> dict[str, torch.Tensor]:
    """One process doing what K DDP ranks do together: per step, each rank's chunk of the global batch
    with that rank's noise generator; the gradient of the mean of the (weighted) chunk losses is the
    average of the ranks' gradients, which is what DDP applies."""
    train, cfg = PreparedDataset.load(files / "train"), train_config()
    mcfg = model_config()
    mcfg = dataclasses.replace(mcfg, denoiser=dataclasses.replace(
        mcfg.denoiser, num_stations=train.n_stations, seq_len=train.T))
    w0, l0 = encode_series(train, TrafficScaler.fit(train.traffic), torch.device("cpu"))
    denoiser, hybrid = build_model(mcfg, load_transition(files / "transition.pt"), None, seed=cfg.seed,
                                   station_coords=station_coordinates(train))
    opt = torch.optim.AdamW(denoiser.optimizer_groups(cfg.weight_decay), lr=cfg.lr)
    U, B = w0.shape[0], cfg.batch_size
    per_epoch = -(-U // B)
    total = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, total, cfg.warmup_steps))
    gens = [torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, r) + 1) for r in range(world_size)]
    denoiser.train()
    for step in range(total):
        epoch, b = divmod(step, per_epoch)
        idx = _epoch_order(U, cfg.seed, epoch)[b * B:(b + 1) * B]
        loss = torch.zeros(())
        for r in range(world_size):
            mine = distributed.local_chunk(idx, r, world_size)
            part, _ = training_loss(denoiser, hybrid, w0[mine], l0[mine], gens[r], cfg.loss_weights)
            loss = loss + part * distributed.chunk_weight(len(mine), len(idx), world_size) / world_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.trainable_parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
    return denoiser.state_dict()


# ----------------------------------------------------------------------------- pure helpers


def test_batch_split_covers_the_global_batch_and_weights_give_its_mean():
    x = torch.randn(13)
    for K in (1, 2, 3, 5, 13, 16):
        chunks = [distributed.local_chunk(x, r, K) for r in range(K)]
        assert torch.equal(torch.cat(chunks), x)
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
        # mean over ranks of the weighted chunk means (empty chunks weigh 0) = global mean
        avg = sum(distributed.chunk_weight(len(c), len(x), K) * (c.mean() if len(c) else 0.0)
                  for c in chunks) / K
        assert float(avg) == pytest.approx(float(x.mean()), abs=1e-6)
    assert distributed.chunk_weight(4, 8, 2) == 1.0
    distributed.check_batch_size(8, 4)
    with pytest.raises(InputError, match="divisible by 2"):
        distributed.check_batch_size(7, 2)


def test_rank_seeds_rank0_is_the_plain_seed_and_ranks_differ():
    assert distributed.rank_seed(7, 0) == 7
    seeds = {distributed.rank_seed(s, r) for s in range(4) for r in range(4)}
    assert len(seeds) == 16


def test_unused_parameter_probe():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

    net = Net()
    names = distributed.unused_parameters(net, lambda m: m.used(torch.ones(1, 2)).sum())
    assert names == ["unused.weight", "unused.bias"]
    assert all(p.grad is None for p in net.parameters())


def test_single_process_without_torchrun(monkeypatch):
    for k in distributed.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    ctx, device = distributed.setup("cpu")
    assert ctx == distributed.DistContext() and not ctx.active and device.type == "cpu"


# ----------------------------------------------------------------------------- one process


def test_world_size_one_equals_plain_run(files, tmp_path, monkeypatch):
    """K = 1 in a process group (from torchrun's variables, or the caller's) = plain run, bit for bit."""
    mc = model_config(dropout=0.1)  # dropout on: the dropout stream must match too
    plain = in_process(files, tmp_path / "plain", model_config=mc)
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    env_run = in_process(files, tmp_path / "env", model_config=mc)
    assert env_run.world_size == 1 and not dist.is_initialized()  # its own group, destroyed at the end
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        caller = in_process(files, tmp_path / "caller", model_config=mc)
        assert dist.is_initialized()  # the caller's group is left alone
    finally:
        dist.destroy_process_group()
    for res in (env_run, caller):
        assert res.history == plain.history and res.steps == plain.steps
        for name in ("model.pt",):
            a = torch.load(plain.out_dir / name, weights_only=True)["state_dict"]
            b = torch.load(res.out_dir / name, weights_only=True)["state_dict"]
            assert all(torch.equal(a[k], b[k]) for k in a)
        a, b = final_raw_weights(plain.out_dir), final_raw_weights(res.out_dir)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_amp_on_cpu_runs_with_finite_loss(files, tmp_path):
    res = in_process(files, tmp_path / "amp", amp=True, max_steps=3, log_every=1)
    losses = [h["total"] for h in res.history if "total" in h]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert (tmp_path / "amp" / "model.pt").exists()
    # the wrapper computes the network in bfloat16 and hands float32 back to the loss
    train = PreparedDataset.load(files / "train")
    mcfg = dataclasses.replace(model_config(), denoiser=dataclasses.replace(
        model_config().denoiser, num_stations=train.n_stations, seq_len=train.T))
    denoiser, _ = build_model(mcfg, load_transition(files / "transition.pt"), None, seed=0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, train.T, generator=g)
    loc = torch.randint(0, train.n_stations, (2, train.T), generator=g)
    s = torch.tensor([1, 5])
    full, half = denoiser(w, loc, s), Autocast(denoiser, torch.device("cpu"))(w, loc, s)
    assert half.eps.dtype == half.logits.dtype == torch.float32
    assert not torch.equal(full.logits, half.logits)
    torch.testing.assert_close(half.logits, full.logits, atol=0.05, rtol=0.05)


def test_compile_flag(files, tmp_path, monkeypatch):
    """``compile=True`` goes through torch.compile (the eager backend here: inductor's C++ build of
    the forward and backward graphs takes minutes on CPU, which is no test of our plumbing)."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this PyTorch build")
    calls = []
    real = torch.compile

    def eager_compile(model, **kw):
        calls.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    res = in_process(files, tmp_path / "c", compile=True, max_steps=2, log_every=1)
    assert len(calls) == 1 and res.steps == 2
    assert np.isfinite([h["total"] for h in res.history if "total" in h]).all()


# ----------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def two_ranks(files, tmp_path_factory):
    """One launch of two processes: a full run, a run that crashes in step 6, its resumption."""
    spy = tmp_path_factory.mktemp("two") / "spy"
    proc = torchrun(files, spy, crash_at=6)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return spy, proc


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_ranks_cli_outputs_and_rank_agreement(two_ranks):
    spy, proc = two_ranks
    assert {p.name for p in (spy / "full").iterdir()} == OUTPUTS  # no stray temp files
    assert (spy / "writes_rank1.txt").read_text() == ""  # only rank 0 wrote (in all three runs)
    assert {line.split()[1] for line in (spy / "writes_rank0.txt").read_text().splitlines()} == OUTPUTS
    assert proc.stdout.count("steps in") == 2 and "over 2 processes" in proc.stdout  # rank 0's summaries
    for run in ("full", "crashed"):
        r0, r1 = load(spy / f"weights_rank0_{run}.pt"), load(spy / f"weights_rank1_{run}.pt")
        for part in ("model", "ema"):  # DDP invariant: every rank holds the same weights
            assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part])
    meta = load(spy / "full" / "model.pt")["meta"]
    assert meta["world_size"] == 2 and meta["backend"] == "gloo" and meta["steps"] == 6


def test_two_ranks_equal_the_averaged_gradient_of_their_chunks(files, two_ranks):
    """With two ranks, each step applies the gradient of the global-batch mean (DDP averaging of the
    chunk means; the short last batch splits 3 + 2 and is reweighted). The noise differs from a
    one-process run with the same batch (each rank has its own noise generator), so the reference
    is one process that feeds each chunk with that rank's noise stream."""
    spy, _ = two_ranks
    ref = emulate_ranks(files, world_size=2)
    got = final_raw_weights(spy / "full")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4, msg=k)


def test_two_ranks_resume_after_crash_is_exact(two_ranks):
    """A crash in step 6 loses everything after the checkpoint of step 4; --resume restores every
    rank's noise and dropout streams from it and ends with the uninterrupted run's weights and history."""
    spy, _ = two_ranks
    st = load(spy / "crashed_checkpoint.pt")
    assert st["step"] == 4 and st["world_size"] == 2 and len(st["rank_streams"]) == 2
    a, b = load(spy / "full" / "model.pt")["state_dict"], load(spy / "crashed" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (spy / "full" / "history.jsonl").read_text() == (spy / "crashed" / "history.jsonl").read_text()
