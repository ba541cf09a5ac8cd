"""Reading ``.pt`` files without running code from them.

Every file the package reads with PyTorch goes through :func:`load_torch_file`: PyTorch's
restricted unpickler (``weights_only=True``) accepts tensors, plain containers, numbers and strings
only, so a crafted file cannot execute anything on load. Files written by the package hold nothing
else (configs as plain dicts, RNG states as tensors). Every way such a file can be wrong (missing,
truncated, not a PyTorch file, holding other objects) becomes an :class:`~mstdiff.errors.InputError`
that names the file and says what to do.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mstdiff.errors import InputError

_NDARRAY = "__ndarray__"


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars replaced by tensors and Python numbers, so that the
    restricted unpickler can read it back (:func:`from_plain` restores the arrays)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biufc":
            return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj)).clone()}
        return {_NDARRAY: obj.astype(str).tolist(), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    import numpy as np

    if isinstance(obj, dict):
        if _NDARRAY in obj and set(obj) <= {_NDARRAY, "shape"}:
            v = obj[_NDARRAY]
            if isinstance(v, torch.Tensor):
                return v.numpy()
            return np.asarray(v, dtype=str).reshape(obj.get("shape", [len(v)]))
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def load_torch_file(
    path: str | os.PathLike[str], *, what: str, fix: str,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """The dict stored in ``path`` by ``torch.save``, read with the restricted unpickler.

    ``what`` names the kind of file in messages (``"MSTDiff model file"``), ``fix`` says which
    command writes it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"expected a {what}, found a directory", where=str(path), fix=fix)
    if not path.is_file():
        raise InputError(f"{what} not found", where=str(path), fix=fix)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "GLOBAL" in str(exc):
            raise InputError(
                f"refused to read this {what}: it holds Python objects other than tensors and plain "
                "data, and loading them could run code (files written by mstdiff never do)",
                where=str(path), fix=f"use a file written by mstdiff; {fix}",
            ) from None
        raise InputError(f"not a readable {what} ({first})", where=str(path), fix=fix) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = path.stat().st_size
        hint = "empty file" if size == 0 else "truncated or not a PyTorch file"
        raise InputError(f"cannot read this {what}: {hint} ({msg[:160]})", where=str(path),
                         fix=f"the file is damaged: {fix}") from None
    if not isinstance(payload, dict):
        raise InputError(f"not a {what}: holds a {type(payload).__name__}, not the package's record",
                         where=str(path), fix=fix)
    return payload
