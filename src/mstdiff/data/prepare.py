"""``prepare``: raw records of any supported source -> a :class:`PreparedDataset` (and its folder).

Sources and their reader functions (each option is a keyword argument of the reader):

============================  ==========================================================
``"shanghai-telecom"``        :func:`mstdiff.data.shanghai.prepare_shanghai`
``"app-usage"``               :func:`mstdiff.data.appusage.prepare_app_usage`
``"csv"``                     :func:`mstdiff.data.tabular.prepare_tabular` (CSV or Parquet)
``"movesim"``                 :func:`mstdiff.data.movesim.prepare_movesim` (trajectories only)
``"synthetic"``               :func:`mstdiff.data.synthetic.synthetic_city` (no raw input)
============================  ==========================================================

Example::

    from mstdiff.data.prepare import prepare
    ds = prepare("shanghai-telecom", Path("data/shanghai_telecom"), Path("runs/sh"), min_active_slots=5)
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mstdiff.data.dataset import PreparedDataset, normalisation_stats
from mstdiff.errors import InputError
from mstdiff.io import check_output_dir, run_meta

log = logging.getLogger(__name__)

SOURCES = ("shanghai-telecom", "app-usage", "csv", "movesim", "synthetic")


def reader(source: str) -> Callable[..., PreparedDataset]:
    """The reader function of ``source`` (imported lazily)."""
    if source == "shanghai-telecom":
        from mstdiff.data.shanghai import prepare_shanghai

        return prepare_shanghai
    if source == "app-usage":
        from mstdiff.data.appusage import prepare_app_usage

        return prepare_app_usage
    if source == "csv":
        from mstdiff.data.tabular import prepare_tabular

        return prepare_tabular
    if source == "movesim":
        from mstdiff.data.movesim import prepare_movesim

        return prepare_movesim
    if source == "synthetic":
        try:
            from mstdiff.data.synthetic import synthetic_city
        except ImportError as err:
            raise InputError("the synthetic source is not available in this installation",
                             where="--source synthetic", fix="update mstdiff") from err
        return synthetic_city
    raise InputError(f"unknown source {source!r}", where="--source", fix=f"use one of {list(SOURCES)}")


def source_options(source: str) -> dict[str, Any]:
    """Option names of ``source`` with their defaults (the reader's keyword arguments)."""
    sig = inspect.signature(reader(source))
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        or (source == "synthetic" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def _check_options(source: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = source_options(source)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(
            f"option(s) {unknown} do not apply to source {source!r}", where="prepare options",
            fix=f"the options of {source!r} are {sorted(allowed)}",
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def prepare(
    source: str,
    raw: Path | None,
    out: Path | None,
    *,
    overwrite: bool = False,
    **options: Any,
) -> PreparedDataset:
    """Read ``raw`` records of ``source``, bin them and (when ``out`` is given) write the dataset.

    ``options`` are the keyword arguments of the source's reader (see :func:`source_options`);
    an option that does not apply raises :class:`InputError`. ``raw`` is ignored for
    ``"synthetic"``. The output folder is written atomically; an existing one is replaced only
    with ``overwrite=True`` (checked before any work). Returns the dataset, whose ``meta`` holds
    source, bin_minutes, T, filters, counts, normalisation, traffic_unit, notes, the resolved
    options, the creation command and the time taken (a source without traffic, such as
    ``"movesim"``, says ``has_traffic: false`` and has no normalisation).
    """
    fn = reader(source)
    _check_options(source, fn, options)
    if out is not None:
        check_output_dir(out, overwrite=overwrite)  # before reading: a bad --out fails at once
    t0 = time.perf_counter()
    if source == "synthetic":
        if raw is not None:
            log.warning("--raw %s is ignored for the synthetic source", raw)
        ds = fn(**options)
    else:
        if raw is None:
            raise InputError(f"source {source!r} needs raw input", where="--raw",
                             fix="pass the raw records file or folder with --raw PATH")
        ds = fn(Path(raw), **options)
    seconds = time.perf_counter() - t0

    meta = dict(ds.meta)
    meta["source"] = meta.get("source", source)
    meta.setdefault("bin_minutes", 30)
    meta["T"] = ds.T
    meta.setdefault("traffic_unit", "unknown")
    meta.setdefault("filters", {})
    meta.setdefault("notes", [])
    counts = dict(meta.get("counts", {}))
    counts.update(
        samples=ds.n_samples, stations=ds.n_stations, users=int(ds.samples["user"].astype(str).nunique())
    )
    meta["counts"] = counts
    if ds.has_traffic:
        meta["normalisation"] = normalisation_stats(ds.traffic)
    else:  # trajectories only: no traffic statistics
        meta.pop("normalisation", None)
    resolved = {k: v for k, v in source_options(source).items() if v is not inspect.Parameter.empty}
    resolved.update(options)
    meta["options"] = dict(_jsonable(resolved), **meta.get("options", {}))
    meta["prepare_seconds"] = round(seconds, 3)
    meta.update({k: v for k, v in run_meta().items() if k not in meta})
    ds.meta = meta
    log.info("prepared %r in %.1f s", ds, seconds)
    if out is not None:
        ds.save(Path(out), overwrite=overwrite)
        log.info("wrote %s", out)
    return ds
