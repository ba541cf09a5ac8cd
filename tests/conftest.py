"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$MSTDIFF_SHARED_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("MSTDIFF_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder; skips the test when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"real data folder {path} not found (set MSTDIFF_SHARED_DATA to the folder holding "
            "shanghai_telecom/ and tsinghua_app_usage/)"
        )
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test models run fastest on one thread (and do not fight over shared CI cores).

    Autouse for every test, so test files need no fixture of their own.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
