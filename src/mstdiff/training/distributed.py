"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node K`` starts K processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. :func:`setup` sees them and joins the
process group (``gloo`` on CPU, ``nccl`` on CUDA with device ``cuda:LOCAL_RANK``); a group the
caller initialised already is used as it is. Without either, training runs in one process and
nothing here is used.

How a run is split (the same rules for any K, so K changes the speed, not the optimisation):

- Every rank computes the same epoch permutation and cuts the same global batches of
  ``batch_size`` samples; rank r takes the r-th of K contiguous, equal chunks
  (:func:`local_chunk`; ``batch_size % K == 0`` is required). The number of optimiser steps and
  the learning-rate schedule do not depend on K.
- Each rank's loss is the mean over its chunk; DDP averages the gradients over the ranks, so the
  update uses the gradient of the full-batch mean. A short last batch whose size K does not
  divide gets chunks that differ by one sample; :func:`chunk_weight` rescales each rank's loss so
  that the average is still the full-batch mean.
- Diffusion noise and dropout: rank r draws from its own generators, seeded with
  :func:`rank_seed` — rank 0 uses exactly the single-process seeds, so K = 1 reproduces a plain
  run bit for bit. For K > 1 the noise of a sample depends on which rank sees it, so runs with
  different K see different (equally distributed) noise and end with different weights.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mstdiff.errors import InputError
from mstdiff.training.utils import resolve_device

logger = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RANK_SEED_STRIDE = 2**32  # rank r > 0 seeds with seed + r·2³², so seeds below 2³² never collide


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (the defaults: a plain single process)."""

    rank: int = 0  # global rank of this process
    world_size: int = 1  # K, number of processes
    local_rank: int = 0  # rank on this machine (selects cuda:LOCAL_RANK)
    backend: str | None = None  # gloo | nccl while a process group is in use, else None
    owns_group: bool = False  # True: setup() initialised the group and teardown() destroys it

    @property
    def active(self) -> bool:
        """A process group is in use (also with one process): the model is wrapped in DDP."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs progress and validates."""
        return self.rank == 0


def torchrun_env() -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the environment set by torchrun, or None."""
    if not all(k in os.environ for k in ENV_VARS):
        return None
    try:
        rank, world, local = (int(os.environ[k]) for k in ENV_VARS)
    except ValueError:
        raise InputError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers: "
            + ", ".join(f"{k}={os.environ[k]!r}" for k in ENV_VARS),
            fix="launch with torchrun, or unset these variables for a single-process run",
        ) from None
    return rank, world, local


def launch_rank() -> int:
    """This process's rank as set by the launcher (0 when not launched by torchrun)."""
    env = torchrun_env()
    return env[0] if env is not None else 0


def _device_for(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: ``auto``/``cuda`` → ``cuda:LOCAL_RANK``, ``cpu`` → cpu."""
    if name in ("auto", "cuda") and (name == "cuda" or torch.cuda.is_available()):
        resolve_device("cuda")  # a clear error when CUDA is missing
        return torch.device("cuda", local_rank)
    dev = resolve_device(name)
    if dev.type == "cuda" and world_size > 1:
        raise InputError(
            f"device {name!r} names one GPU, but {world_size} processes are running",
            where="train.device", fix="use device: cuda (or auto); each process takes cuda:LOCAL_RANK",
        )
    return dev


def setup(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group of a torchrun launch (or the caller's); return it and this rank's device.

    With neither an initialised group nor the torchrun variables, this is a single process:
    ``(DistContext(), resolve_device(device_name))``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        env = torchrun_env()
        local = env[2] if env is not None else rank
        device = _device_for(device_name, local, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(rank, world, local, str(dist.get_backend()), owns_group=False), device
    env = torchrun_env()
    if env is None:
        return DistContext(), resolve_device(device_name)
    if not dist.is_available():
        raise InputError("launched by torchrun, but this PyTorch build has no torch.distributed",
                         fix="install a PyTorch build with distributed support")
    rank, world, local = env
    device = _device_for(device_name, local, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=world, device_id=device)
    else:
        dist.init_process_group(backend, rank=rank, world_size=world)
    logger.info("rank %d of %d: process group %s on %s", rank, world, backend, device)
    return DistContext(rank, world, local, backend, owns_group=True), device


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it (a caller's group is left alone)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active and ctx.world_size > 1:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.active or ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None on the others); ``[obj]`` without a group."""
    if not ctx.active or ctx.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s random streams: ``seed`` itself on rank 0, ``seed + rank·2³²`` else."""
    return int(seed) if rank == 0 else int(seed) + rank * RANK_SEED_STRIDE


def check_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size < 1 or batch_size % world_size:
        raise InputError(
            f"batch_size = {batch_size} cannot be split evenly over {world_size} processes",
            where="train.batch_size",
            fix=f"use a batch size divisible by {world_size} (batch_size is the global batch of all ranks)",
        )


def local_chunk(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous chunk of a global batch: sizes differ by at most one."""
    return torch.tensor_split(batch, world_size)[rank]


def chunk_weight(n_local: int, n_global: int, world_size: int) -> float:
    """Loss factor ``K · n_r / n`` so that the average over ranks of the weighted chunk means is the
    global-batch mean (1.0 whenever the chunks are equal)."""
    return world_size * n_local / n_global


def all_reduce_sum(x: Tensor, ctx: DistContext) -> Tensor:
    """Sum of ``x`` over the ranks (in place; ``x`` itself without a group)."""
    if ctx.active and ctx.world_size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.enable_grad()
def unused_parameters(module: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> list[str]:
    """Names of trainable parameters that get no gradient from ``loss_fn(module)``.

    DDP must be told (``find_unused_parameters=True``) when some exist, or the first backward pass
    waits forever for their gradients. The probe runs in eval mode (no dropout draws) and leaves
    ``.grad`` untouched; ``loss_fn`` should use its own generator.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    was = module.training
    module.eval()
    try:
        grads = torch.autograd.grad(loss_fn(module), [p for _, p in named], allow_unused=True)
    finally:
        module.train(was)
    return [n for (n, _), g in zip(named, grads) if g is None]


def wrap_ddp(module: nn.Module, device: torch.device, *, find_unused_parameters: bool) -> nn.Module:
    """``DistributedDataParallel(module)`` on this rank's device.

    Rank 0's weights and buffers are broadcast once, at construction; buffers are not re-broadcast
    before every forward pass, since nothing in the denoiser updates a buffer in training (the
    VQ-VAE is frozen).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # newer PyTorch renames broadcast_buffers (the per-forward sync) to forward_sync_buffers
    renamed = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    no_sync: dict[str, Any] = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    return DDP(module, device_ids=ids, output_device=device.index if ids else None,
               find_unused_parameters=find_unused_parameters, **no_sync)
