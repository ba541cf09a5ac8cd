"""One thread count for every pool the package runs: PyTorch, Numba and DuckDB.

On a 2-core machine two pools that each take every core (torch's OpenMP pool and Numba's) fight
for them: a training run measured 49 steps in 25 minutes with Numba's default pool beside one
torch thread, and 539 steps in 12 minutes once Numba was bounded too (issue 11). :func:`set_threads`
bounds all of them at once; ``train.num_threads``, ``mstdiff --threads`` and the benchmarks call it.

* PyTorch: ``torch.set_num_threads(n)``;
* Numba: ``NUMBA_NUM_THREADS = n`` when Numba is not imported yet (its pool then has n threads and
  no more spin), else ``numba.set_num_threads(min(n, pool size))``;
* DuckDB: :func:`configured` is read by the binning stage when no ``threads`` option is given;
* ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set for child processes.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

_configured: int | None = None


def configured() -> int | None:
    """The count given to the last :func:`set_threads` call in this process (None: never called)."""
    return _configured


def set_threads(n: int | None) -> None:
    """Bound PyTorch, Numba and DuckDB to ``n`` threads (None: leave every pool as it is)."""
    global _configured
    if n is None:
        return
    n = int(n)
    if n < 1:
        from mstdiff.errors import InputError

        raise InputError(f"threads = {n} must be at least 1", fix="use e.g. 1 or the number of cores")
    _configured = n
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    else:
        import numba

        pool = int(getattr(numba.config, "NUMBA_NUM_THREADS", n))
        numba.set_num_threads(max(1, min(n, pool)))
    import torch

    # last: Numba's OpenMP threading layer can share torch's OpenMP runtime and reset its count
    torch.set_num_threads(n)
    logger.debug("threads: %d (torch, numba, duckdb)", n)
