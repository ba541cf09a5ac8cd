"""Ranks of ``mstdiff train`` under torchrun, with spies (a helper of test_distributed.py, not a test).

    python -m torch.distributed.run --nproc_per_node K tests/training/ddp_cli_worker.py \
        SPY_DIR CRASH_AT -- <arguments of `mstdiff train` but --out>

Runs the real CLI command three times in one launch (starting processes is the slow part):

1. ``SPY_DIR/full``: an uninterrupted run, in a process group that ``train_mstdiff`` initialises
   from torchrun's variables and destroys (the path of ``torchrun ... mstdiff train``);
2. ``SPY_DIR/crashed``: the same run, failing on every rank inside optimiser step CRASH_AT (after
   the weight update, before the step is counted: a crash that only the regular checkpoints
   survive); the surviving checkpoint is copied to ``SPY_DIR/crashed_checkpoint.pt``;
3. the same command with ``--resume`` on ``SPY_DIR/crashed``.

Runs 2 and 3 share a group this script initialises (on a fresh file store: a second group on
torchrun's store, right after the first one was destroyed, can read the first one's stale
rendezvous keys and hang), which ``train_mstdiff`` uses and leaves alone.

and records in ``SPY_DIR``: ``writes_rank{r}.txt``, every file this rank wrote through the
training and model modules' writers, and ``weights_rank{r}_{full,crashed}.pt``, this rank's final raw and
EMA weights (to check that the ranks agree).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import mstdiff.training.model as tmodel
import mstdiff.training.mstdiff as tm
from mstdiff.cli import cli

RANK = int(os.environ.get("RANK", "0"))


class SimulatedCrash(RuntimeError):
    pass


def spy_writers(spy_dir: Path) -> None:
    log = spy_dir / f"writes_rank{RANK}.txt"
    log.touch()
    for module in (tm, tmodel):  # training writes checkpoints and logs; the trained model its model.pt
        for name in ("save_checkpoint", "atomic_write_text", "write_json"):
            original = getattr(module, name, None)
            if original is None:
                continue

            def spy(path, *args, _original=original, _name=name, **kwargs):
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(f"{_name} {Path(path).name}\n")
                return _original(path, *args, **kwargs)

            setattr(module, name, spy)


class SpyEMA(tm.EMA):
    """Remembers the model it averages (the unwrapped denoiser) and can crash at a given step."""

    instances: list[SpyEMA] = []
    crash_at = 0

    def __init__(self, model, decay=0.999):
        super().__init__(model, decay)
        self.model = model
        self.calls = 0
        SpyEMA.instances.append(self)

    def update(self, model):
        self.calls += 1
        if self.crash_at and self.calls == self.crash_at:
            raise SimulatedCrash(f"simulated crash in step {self.calls}")
        super().update(model)


def train(args: list[str], spy_dir: Path, tag: str) -> None:
    cli.main(args=["train", *args], standalone_mode=False)
    ema = SpyEMA.instances[-1]
    torch.save({"model": ema.model.state_dict(), "ema": ema.shadow.state_dict()},
               spy_dir / f"weights_rank{RANK}_{tag}.pt")


def main() -> int:
    spy_dir, crash_at, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4:]
    assert sys.argv[3] == "--", sys.argv
    spy_dir.mkdir(parents=True, exist_ok=True)
    spy_writers(spy_dir)
    tm.EMA = SpyEMA
    train([*args, "--out", str(spy_dir / "full")], spy_dir, "full")
    crashed = [*args, "--out", str(spy_dir / "crashed")]
    dist.init_process_group("gloo", init_method=f"file://{spy_dir / 'store'}", rank=RANK,
                            world_size=int(os.environ["WORLD_SIZE"]))
    try:
        SpyEMA.crash_at = crash_at
        try:
            train(crashed, spy_dir, "crashed")
            raise AssertionError("the run did not crash")
        except SimulatedCrash:
            pass
        if RANK == 0:
            shutil.copy(spy_dir / "crashed" / "checkpoint.pt", spy_dir / "crashed_checkpoint.pt")
        SpyEMA.crash_at = 0
        train([*crashed, "--resume"], spy_dir, "crashed")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
