"""Evaluation protocol: every metric for every generated set, the floor over K draws, the report.

:func:`evaluate` compares each generated set with the held-out real set using the registry
:data:`~mstdiff.metrics.registry.METRICS` (:mod:`mstdiff.metrics.registry`: name, pure function,
inputs it needs, direction) over ``draws`` (default 5) random draws, and reports every value as
mean ± sd over the draws. Each draw has a **floor**: the same metrics between two
**user-disjoint** real sets of equal size n — what a perfect generator (a fresh draw of real
users) scores with n samples:

- without a reference set: the real set's users are split at random into two halves A and B
  (trimmed to equal size n); the floor is ``metrics(A, B)`` and each generated set is compared with
  A through a random subset of n of its samples;
- with ``reference`` (a second real set of other users, e.g. the train split against the test
  split): the whole real set R (n = |R|) against n samples drawn at random from the reference
  (floor; users the real set shares with the reference are left out, so the sides are
  user-disjoint), and against n samples of each generated set. Model and floor rows then use all
  of R. The reference side is drawn by sample, not by user, because that is what a generator of
  independent days produces: on Shanghai, reference draws that keep a user's days together copy the
  test split's clustering (1.7 days per user) and push the G-rank floor from 0.0047 to 0.0006, a
  level no generator of independent samples (nor a random copy of the train split) can reach.

Samples carry user ids (``samples.user``); where they are empty each sample is its own user. All
sets are first put on one station table by station id and coordinates
(:func:`~mstdiff.metrics.stations.align_stations`), never by order. With ``train`` (the generator's
training set) the report adds memorisation (:mod:`~mstdiff.metrics.privacy`) and train-on-synthetic
test-on-real scores (:mod:`~mstdiff.metrics.utility`).

A metric is **not applicable** (n/a) where a set lacks what it reads: traffic and joint metrics
when the real set (or the reference) has no traffic (``has_traffic`` false, placeholder traffic, or
traffic that is all zeros) or a generated set has none (``has_traffic`` false or a model's
placeholder zeros, ``meta["placeholder"]``); trajectory and joint metrics likewise for placeholder
locations. Such cells are not computed: NaN in :attr:`EvaluationResult.rows`, null in
``metrics.json`` with the reason in ``not_applicable`` (set → metric → reason), "n/a" in
``metrics.md``, never bold, left out of ratios; the plots and sanity statistics of what a set
lacks are left out too (:func:`missing_data`).

The report directory (written atomically) holds ``metrics.json`` (every value and draw, sizes,
config, location classes, provenance), ``metrics.md`` (:mod:`~mstdiff.metrics.report`) and PNG plots
under ``plots/``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, atomic_write_text, check_output_dir, run_meta, write_json
from mstdiff.metrics import joint, movesim, traffic, trajectory
from mstdiff.metrics.joint import location_classes
from mstdiff.metrics.pooled import concat_sets, group_sets, parse_generated, pooled_stats
from mstdiff.metrics.registry import (
    CONVENTIONS,
    METRICS,
    MOVESIM_METRICS,
    Metric,
    compute_metrics,
    conventions_metrics,
    get_metric,
    metric_context,
    metric_unit,
    missing_data,
    not_applicable,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Metric",
    "METRICS",
    "MOVESIM_METRICS",
    "CONVENTIONS",
    "conventions_metrics",
    "get_metric",
    "metric_context",
    "compute_metrics",
    "missing_data",
    "not_applicable",
    "EvaluationResult",
    "evaluate",
    "evaluate_dirs",
]


# --------------------------------------------------------------------------- result
@dataclass
class EvaluationResult:
    """Metrics of every generated set and of the floor (means, sds, draws) and what goes beside them."""

    rows: dict[str, dict[str, float]]  # generated set -> metric -> mean over draws
    sd: dict[str, dict[str, float]]  # generated set -> metric -> sd over draws
    floor_rows: dict[str, dict[str, float]]  # {"floor": metric -> mean}
    floor_sd: dict[str, dict[str, float]]
    draws: dict[str, dict[str, list[float]]]  # set or "floor" -> metric -> value per draw
    sizes: dict[str, Any]  # per row: real and generated samples per draw; whole-set sizes
    notes: list[str] = field(default_factory=list)  # footnotes of the Markdown table
    warnings: list[str] = field(default_factory=list)  # generated sets out of the real range
    config: dict[str, Any] = field(default_factory=dict)
    location_classes: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = METRICS
    plots: list[str] = field(default_factory=list)  # paths relative to the report directory
    sanity: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> plain statistics (sanity.py)
    memorisation: dict[str, dict[str, Any]] = field(default_factory=dict)  # privacy.py
    utility: dict[str, dict[str, float]] = field(default_factory=dict)  # utility.py (TSTR)
    stations: dict[str, Any] = field(default_factory=dict)  # alignment counts
    # set or "floor" -> metric -> why it is not computed (a set without traffic or locations)
    not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)
    # a row pooled over several generated sets -> {"sets": K, "per_set": [metric -> mean], ...}
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: Path | None = None

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @property
    def floor_of(self) -> dict[str, str]:
        return {name: "floor" for name in self.rows} if self.floor_rows else {}

    def ratio(self) -> dict[str, dict[str, float]]:
        """Each model's mean over the floor mean, per metric (NaN where the floor is 0 or missing)."""
        floor = self.floor_rows.get("floor", {})
        out: dict[str, dict[str, float]] = {}
        for name, row in self.rows.items():
            out[name] = {k: (v / floor[k] if floor.get(k) and math.isfinite(floor[k]) and floor[k] > 0
                             else float("nan")) for k, v in row.items()}
        return out

    def table(self) -> pd.DataFrame:
        """Rows: generated sets then the floor; columns: ``n`` (samples per side) and metric means."""
        records = [{"set": name, "n": self.sizes.get(name, {}).get("n"), **vals}
                   for name, vals in {**self.rows, **self.floor_rows}.items()]
        return pd.DataFrame.from_records(records).set_index("set")

    def applicable(self, name: str, metric: str) -> bool:
        """Whether ``metric`` applies to row ``name`` (a generated set or ``"floor"``)."""
        return metric not in self.not_applicable.get(name, {})

    def _nulls(self, table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``table`` with its not-applicable cells as None (null in JSON)."""
        return {name: {k: (None if not self.applicable(name, k) else v) for k, v in row.items()}
                for name, row in table.items()}

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio()
        return {
            "metrics": self._nulls(self.rows),
            "metrics_sd": self._nulls(self.sd),
            "floor": self._nulls(self.floor_rows),
            "floor_sd": self._nulls(self.floor_sd),
            "ratio_to_floor": {name: {k: v if self.applicable(name, k) and self.applicable("floor", k)
                                      else None for k, v in row.items()} for name, row in ratio.items()},
            "not_applicable": self.not_applicable,
            "pooled": self.pooled,
            "draws": {name: {k: v if self.applicable(name, k) else [None] * len(v) for k, v in row.items()}
                      for name, row in self.draws.items()},
            "sizes": self.sizes,
            "metric_info": {
                m.name: {"lower_is_better": m.lower_is_better, "group": m.group, "needs": list(m.needs),
                         "unit": metric_unit(m, self.config.get("traffic_unit")),
                         "description": m.description}
                for m in self.metrics
            },
            "location_classes": self.location_classes,
            "notes": self.notes,
            "warnings": self.warnings,
            "plots": self.plots,
            "sanity": self.sanity,
            "memorisation": self.memorisation,
            "utility": self.utility,
            "stations": self.stations,
            "config": self.config,
        }

    def to_markdown(self) -> str:
        from mstdiff.metrics.report import render_markdown

        return render_markdown(self)


# --------------------------------------------------------------------------- protocol
def _check_generated(real: PreparedDataset, generated: Mapping[str, PreparedDataset]) -> None:
    if not generated:
        raise InputError("no generated set to evaluate", where="evaluate",
                         fix="pass at least one generated dataset")
    for name, g in generated.items():
        where = f"generated set {name!r}"
        if not isinstance(g, PreparedDataset):
            raise InputError(f"expected a PreparedDataset, got {type(g).__name__}", where=where)
        if str(name).startswith("floor"):
            raise InputError("set names starting with 'floor' are reserved for the floor rows",
                             where=where, fix="rename the set")
        _check_like(real, g, where)
        if g.n_samples == 0:
            raise InputError("has no samples", where=where, fix="generate at least one sample")


def _check_like(real: PreparedDataset, g: PreparedDataset, where: str) -> None:
    if g.T != real.T:
        raise InputError(f"has T = {g.T} bins per sample but the real set has T = {real.T}",
                         where=where, fix="use windows of the real set's length")
    if g.bin_minutes != real.bin_minutes:
        raise InputError(f"has {g.bin_minutes}-min bins but the real set has {real.bin_minutes}-min bins",
                         where=where, fix="use the real set's bin size")


def _cap(ds: PreparedDataset, max_samples: int | None, rng: np.random.Generator) -> PreparedDataset:
    if max_samples is None or ds.n_samples <= max_samples:
        return ds
    return ds.subset(np.sort(rng.choice(ds.n_samples, size=max_samples, replace=False)))


def sample_users(ds: PreparedDataset) -> np.ndarray:
    """User id of every sample; an empty id makes the sample its own user."""
    if "user" in ds.samples:
        u = ds.samples["user"].astype(str).to_numpy().copy()
    else:
        u = np.array([""] * ds.n_samples)
    empty = (u == "") | (u == "nan") | (u == "None")
    u[empty] = [f"\x00sample{i}" for i in np.flatnonzero(empty)]
    return u


def _trim(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if idx.size <= n:
        return np.sort(idx)
    return np.sort(rng.choice(idx, size=n, replace=False))


def user_halves(users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices of two user-disjoint halves: users in random order, the first ones up to half
    of the samples go to A, the rest to B."""
    uniq, inv = np.unique(users, return_inverse=True)
    order = rng.permutation(uniq.size)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    counts = np.bincount(inv, minlength=uniq.size)[order]
    in_a_sorted = np.cumsum(counts) <= users.size / 2
    if not in_a_sorted.any() and uniq.size > 1:
        in_a_sorted[0] = True
    in_a = in_a_sorted[rank[inv]]
    return np.flatnonzero(in_a), np.flatnonzero(~in_a)


def user_subset(users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n samples taken user by user in random order (the last user's samples trimmed)."""
    uniq, inv = np.unique(users, return_inverse=True)
    order = rng.permutation(uniq.size)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    by_rank = np.argsort(rank[inv], kind="stable")  # samples grouped by user, users in random order
    return np.sort(by_rank[:n])


def _spread_note(n: int, bins: int) -> str:
    floor = (bins - 1) / (4 * n * math.log(2))
    return (f"With {bins} quantile bins and n = {n} per side, a JSD of ≈ {floor:.3f} "
            "((bins − 1) / (4 n ln 2)) is sampling noise alone")


def _movesim_note(max_distance: float | None, T: int) -> str:
    D = "–" if max_distance is None else f"{max_distance:.6g}"
    return ("Trajectory metrics in MoveSim conventions (Feng et al., KDD 2020; `mstdiff.metrics.movesim`): "
            "JSD in nats (natural log, 0 … ln 2 ≈ 0.693); squared coordinate distances in deg², no square "
            f"root; fixed-width bins, values outside dropped: distance 9,999 bins over [0, D), D = {D} deg², "
            "radius (no square root) 9,999 bins over [0, D²); duration without the last stay, d / T in bins "
            f"of 1/T (T = {T}); DailyLoc: distinct stations per day / S slots per day, bins of 1/S; "
            "G-rank and I-rank: the top-100 visit frequencies (global; mean individual by rank) in 99 bins "
            "of 0.01. The traffic and joint metrics keep our conventions (bits).")


def evaluate(
    real: PreparedDataset,
    generated: Mapping[str, PreparedDataset | Sequence[PreparedDataset]],
    out: Path | str | None = None,
    *,
    reference: PreparedDataset | None = None,
    train: PreparedDataset | None = None,
    draws: int = 5,
    seed: int = 0,
    floor: bool = True,
    plots: bool = True,
    max_samples: int | None = None,
    class_rule: str | None = None,
    overwrite: bool = False,
    conventions: str = "mstdiff",
    movesim_max_distance: float | None = None,
) -> EvaluationResult:
    """Compare every generated set with the real set over ``draws`` draws; optionally write the
    report to ``out``.

    ``real``: held-out real set. ``generated``: name → generated set with the same T and bin size
    (:class:`InputError` otherwise), or a list of sets of one model (e.g. one per generation seed):
    a row pooled over them, their mean ± the sd over the sets (:mod:`mstdiff.metrics.pooled`);
    station tables may differ between rows: stations are matched by id and coordinates.
    ``reference``: a second real set (other users) for the floor (module docstring).
    ``train``: the generators' training set, for memorisation and TSTR. ``seed`` drives every random
    choice through one ``numpy.random.Generator``. ``max_samples`` caps every set (random subset)
    for speed. ``floor=False``: no floor; each generated set is compared with the whole real set.
    ``class_rule`` picks the location-class rule of the joint metrics
    (:func:`~mstdiff.metrics.joint.location_classes`; default: automatic). ``conventions``:
    ``"mstdiff"`` (default, :data:`METRICS`) or ``"movesim"`` (:data:`MOVESIM_METRICS`: the
    trajectory metrics in MoveSim's conventions, floor and draws as for the default ones);
    ``movesim_max_distance`` fixes their distance scale D in deg² (default: the squared diameter of
    the shared station table; 247.3 is MoveSim's GeoLife constant).

    With ``out``, writes ``metrics.json``, ``metrics.md`` and (``plots``) ``plots/*.png`` into the
    directory atomically; an existing non-empty ``out`` needs ``overwrite=True``.
    """
    from mstdiff.metrics.sanity import dataset_sanity, decode_cap, sanity_problems, traffic_upper
    from mstdiff.metrics.stations import align_stations

    metrics = conventions_metrics(conventions)
    if movesim_max_distance is not None and not (math.isfinite(movesim_max_distance)
                                                 and movesim_max_distance > 0):
        raise InputError(f"movesim_max_distance = {movesim_max_distance} must be a number > 0",
                         where="evaluate", fix="use e.g. 247.3 (MoveSim's GeoLife constant) or leave it out")
    if out is not None:  # before the work: a file, a read-only or a full disk as --out fails at once
        empty = Path(out).is_dir() and not any(Path(out).iterdir())
        check_output_dir(out, overwrite=overwrite, reuse=empty)
    t0 = time.perf_counter()
    groups = group_sets(generated)
    # one set per row for the checks, plain statistics, memorisation and plots: a pooled row's sets
    # concatenated; its metrics are computed set by set (the draws loop)
    whole: dict[str, PreparedDataset] = {name: concat_sets(name, group) for name, group in groups.items()}
    _check_generated(real, whole)
    if real.n_samples == 0:
        raise InputError("the real set has no samples", where="evaluate")
    if max_samples is not None and max_samples < 1:
        raise InputError(f"max_samples = {max_samples} must be >= 1", where="evaluate")
    if draws < 1:
        raise InputError(f"draws = {draws} must be >= 1", where="evaluate", fix="use e.g. 5")
    for label, ds in (("reference", reference), ("train", train)):
        if ds is not None:
            _check_like(real, ds, f"{label} set")
            if ds.n_samples == 0:
                raise InputError(f"the {label} set has no samples", where="evaluate")
    rng = np.random.default_rng(seed)

    # one station table for every set, matched by id and coordinates
    named: dict[str, PreparedDataset] = {"\x00real": real}
    if reference is not None:
        named["\x00reference"] = reference
    if train is not None:
        named["\x00train"] = train
    named.update({str(k): v for k, v in whole.items()})
    aligned = align_stations(named)
    real_al = aligned.sets.pop("\x00real")
    ref_al = aligned.sets.pop("\x00reference", None)
    train_al = aligned.sets.pop("\x00train", None)
    station_info = aligned.to_dict()
    notes: list[str] = [line.replace("'\x00", "'").replace("\x00", "") for line in aligned.notes()]

    members: dict[str, list[PreparedDataset]] = {}
    for k in whole:
        al, sizes_k = aligned.sets[str(k)], [g.n_samples for g in groups[str(k)]]
        members[str(k)] = ([_cap(al, max_samples, rng)] if len(sizes_k) == 1 else
                           [_cap(al.subset(np.arange(a, a + n)), max_samples, rng)
                            for a, n in zip(np.cumsum([0, *sizes_k[:-1]]), sizes_k, strict=True)])
    gens = {k: m[0] if len(m) == 1 else concat_sets(k, m) for k, m in members.items()}
    real_used = _cap(real_al, max_samples, rng)
    U = real_used.n_samples
    users = sample_users(real_used)
    classes = location_classes(real_used.stations, real_used.locations, rule=class_rule)
    n_gen = min(g.n_samples for m in members.values() for g in m)

    ref_used: PreparedDataset | None = None
    ref_users: np.ndarray | None = None
    if floor and ref_al is not None:
        ref_used = _cap(ref_al, max_samples, rng)
        ref_users = sample_users(ref_used)
        shared = np.isin(ref_users, users)
        if shared.any():
            notes.append(f"{int(shared.sum())} reference sample(s) of users also in the real set were "
                         "left out of the floor (it must be user-disjoint).")
            ref_used = ref_used.subset(np.flatnonzero(~shared))
            ref_users = ref_users[~shared]
        if ref_used.n_samples == 0:
            raise InputError("the reference set has no user that the real set lacks", where="--reference",
                             fix="use real data of other users (e.g. the train split against the test split)")

    lacks_real = missing_data(real_al, real=True)
    lacks_ref = missing_data(ref_used, real=True) if ref_used is not None else {}
    na: dict[str, dict[str, str]] = {}
    for name, g in gens.items():
        na[name] = not_applicable({"the real set": lacks_real, name: missing_data(g)}, metrics)
    if floor:
        na["floor"] = not_applicable({"the real set": lacks_real, "the reference set": lacks_ref}, metrics)
    na = {k: v for k, v in na.items() if v}

    errors: list[str] = []
    values: dict[str, dict[str, list[float]]] = {name: {m.name: [] for m in metrics} for name in gens}
    # a pooled row: each of its sets' values per draw (the row's own values are their means)
    per_set: dict[str, list[dict[str, list[float]]]] = {
        name: [{m.name: [] for m in metrics} for _ in group]
        for name, group in members.items() if len(group) > 1}
    if floor:
        values["floor"] = {m.name: [] for m in metrics}
    sizes: dict[str, Any] = {"real_total": real.n_samples, "real": U,
                             **({"reference_total": reference.n_samples} if reference is not None else {})}
    if floor and U < 2 and ref_used is None:
        notes.append(f"The real set has {U} sample(s): no floor can be computed.")
        values.pop("floor")
        floor = False
    max_distance = None
    if conventions == "movesim":  # once: every row and draw uses the same bin edges
        max_distance = (movesim.squared_diameter(real_used.coords) if movesim_max_distance is None
                        else float(movesim_max_distance))
    n_used: list[int] = []
    for _k in range(draws):
        if floor and ref_used is None:
            ia, ib = user_halves(users, rng)
            n = min(ia.size, ib.size, n_gen)
            a = real_used.subset(_trim(ia, n, rng))
            b = real_used.subset(_trim(ib, n, rng))
        elif floor and ref_used is not None and ref_users is not None:
            n = min(U, ref_used.n_samples, n_gen)
            a = real_used if n == U else real_used.subset(_trim(np.arange(U), n, rng))
            b = ref_used.subset(_trim(np.arange(ref_used.n_samples), n, rng))
        else:
            n = min(U, n_gen)
            a = real_used if n == U else real_used.subset(_trim(np.arange(U), n, rng))
            b = None
        n_used.append(n)
        ctx = metric_context(a, class_rule=classes.rule)
        ctx["max_distance"] = max_distance
        if b is not None:
            got = compute_metrics(a, b, ctx, [m for m in metrics if m.name not in na.get("floor", {})],
                                  errors=errors)
            for m in metrics:
                values["floor"][m.name].append(got.get(m.name, math.nan))  # NaN: not applicable
        for name, group in members.items():
            gots = []
            for j, g in enumerate(group):
                gk = g if g.n_samples == n else g.subset(_trim(np.arange(g.n_samples), n, rng))
                gots.append(compute_metrics(a, gk, ctx,
                                            [m for m in metrics if m.name not in na.get(name, {})],
                                            errors=errors))
                if name in per_set:
                    for m in metrics:
                        per_set[name][j][m.name].append(gots[-1].get(m.name, math.nan))
            for m in metrics:
                got_m = np.array([got.get(m.name, math.nan) for got in gots], dtype=np.float64)
                values[name][m.name].append(float(got_m.mean()))
        if (not floor and draws > 1 and n == U
                and all(g.n_samples == n for group in members.values() for g in group)):
            break  # nothing random left to draw

    def stats(vals: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
        mean, sd = {}, {}
        for k, v in vals.items():
            arr = np.asarray(v, dtype=np.float64)
            ok = arr[np.isfinite(arr)]
            mean[k] = float(ok.mean()) if ok.size else float("nan")
            if ok.size > 1 and np.ptp(ok) > 0:
                sd[k] = float(ok.std(ddof=1))
            else:  # one draw, or the same value in every draw
                sd[k] = 0.0 if ok.size else float("nan")
        return mean, sd

    rows, sd = {}, {}
    pooled: dict[str, dict[str, Any]] = {}
    for name in gens:
        rows[name], sd[name] = stats(values[name])
        if name in per_set:  # mean over the sets, sd over the sets' means
            rows[name], sd[name], each = pooled_stats(per_set[name])
            pooled[name] = {"sets": len(each), "per_set": each,
                            "generated_totals": [g.n_samples for g in groups[name]]}
    floor_rows, floor_sd = {}, {}
    if floor:
        floor_rows["floor"], floor_sd["floor"] = stats(values["floor"])
    n_row = int(min(n_used))
    for name in gens:
        sizes[name] = {"n": n_row, "real_n": n_row, "generated_total": whole[name].n_samples}
    if floor:
        sizes["floor"] = {"n": n_row, "draws": len(n_used),
                          "kind": "real vs reference" if ref_used is not None else "user-disjoint halves"}
    if floor and ref_used is None and n_row < n_gen:
        notes.append(f"The floor splits the real set's users into two halves of {n_row} samples; "
                     f"generated sets were subsampled to {n_row} per draw so that every row has the "
                     "same n.")
    bins_of = ("the movesim_* metrics use fixed bins" if conventions == "movesim"
               else f"radius_jsd uses {trajectory.RADIUS_BINS} bins")
    notes.append(_spread_note(n_row, traffic.DEFAULT_BINS) + " (pooled traffic JSDs pool n · T values, "
                 f"so their floor is lower; {bins_of}).")
    if conventions == "movesim":
        notes.append(_movesim_note(max_distance, real.T))
    if max_samples is not None and any(g.n_samples > max_samples for g in whole.values()):
        notes.append(f"Sets larger than max_samples = {max_samples} were randomly subsampled.")
    notes.extend(f"Not computed: {e}" for e in errors)
    notes.extend(_not_applicable_notes(na))
    notes.append(f"Location classes ({classes.rule} rule): {', '.join(classes.names)}.")

    unit = real.meta.get("traffic_unit")
    config = {
        "seed": seed, "draws": draws, "floor": floor, "plots": plots, "max_samples": max_samples,
        "class_rule": classes.rule, "conventions": conventions, "jsd_base": 2, "bins": traffic.DEFAULT_BINS,
        "radius_bins": trajectory.RADIUS_BINS, "home_grid": trajectory.HOME_GRID,
        "n_levels": joint.N_LEVELS, "top_fraction": trajectory.TOP_FRACTION, "T": real.T,
        "bin_minutes": real.bin_minutes, "n_stations": len(aligned.stations), "traffic_unit": unit,
        "real_source": real.meta.get("source"),
        "reference_source": reference.meta.get("source") if reference is not None else None,
        "train_source": train.meta.get("source") if train is not None else None,
        "generated_sources": {name: g.meta.get("source") for name, g in whole.items()},
    }
    if conventions == "movesim":
        config.update(movesim_max_distance=max_distance, movesim_jsd_base="e",
                      movesim_distance_bins=movesim.DISTANCE_BINS, movesim_top_k=movesim.TOP_K,
                      movesim_rank_bins=movesim.RANK_BINS)
    upper = traffic_upper(real)  # None for units without a natural maximum (bytes, MB)
    cap = decode_cap(train if train is not None else real, upper)
    config["traffic_upper"] = upper
    config["decode_cap"] = cap

    def has(ds: PreparedDataset, kind: str, is_real: bool = False) -> bool:
        return kind not in missing_data(ds, real=is_real)

    sanity = {"real": dataset_sanity(real, upper=upper, cap=cap, traffic=has(real, "traffic", True))}
    if reference is not None:
        sanity["reference"] = dataset_sanity(reference, upper=upper, cap=cap,
                                             traffic=has(reference, "traffic", True))
    sanity.update({str(k): dataset_sanity(v, upper=upper, cap=cap, traffic=has(v, "traffic"),
                                          locations=has(v, "locations"))
                   for k, v in whole.items()})
    warnings = [f"{name}: {p}" for name in whole
                for p in sanity_problems(sanity["real"], sanity[str(name)])]

    memo: dict[str, dict[str, Any]] = {}
    util: dict[str, dict[str, float]] = {}
    if train_al is not None:
        from mstdiff.metrics.privacy import memorisation
        from mstdiff.metrics.utility import tstr

        t1 = time.perf_counter()
        real_traffic = has(train_al, "traffic", True) and has(real_al, "traffic", True)
        no_traffic = [k for k, g in aligned.sets.items() if not has(g, "traffic")]
        memo = memorisation(train_al, real_al, dict(aligned.sets), rng=rng, traffic=real_traffic,
                            no_traffic=no_traffic)
        util = tstr(train_al, real_al, dict(aligned.sets), traffic=real_traffic, no_traffic=no_traffic)
        logger.info("memorisation and TSTR in %.2f s", time.perf_counter() - t1)
        warnings += [f"{name}: memorises its training set (copies or near copies)"
                     for name, row in memo.items() if row.get("flagged")]

    result = EvaluationResult(rows=rows, sd=sd, floor_rows=floor_rows, floor_sd=floor_sd, draws=values,
                              sizes=sizes, notes=notes, warnings=warnings, config=config,
                              location_classes=classes.to_dict(), sanity=sanity, memorisation=memo,
                              utility=util, stations=station_info, metrics=metrics,
                              not_applicable=na, pooled=pooled)
    for w in warnings:
        logger.warning("OUT OF THE REAL RANGE: %s", w)
    logger.info("metrics of %d set(s) over %d draw(s) in %.2f s", len(gens), len(n_used),
                time.perf_counter() - t0)

    if out is not None:
        out = Path(out)
        replace = overwrite or (out.is_dir() and not any(out.iterdir()))
        with atomic_dir(out, overwrite=replace) as tmp:
            if plots:
                from mstdiff.metrics.plots import write_plots

                sets = {"real": real_used, **gens}
                paths = write_plots(sets, tmp / "plots", classes=classes, rng=rng,
                                    traffic=[k for k, v in sets.items() if has(v, "traffic", k == "real")],
                                    locations=[k for k, v in sets.items() if has(v, "locations")])
                result.plots = [str(p.relative_to(tmp)) for p in paths]
            payload = dict(result.to_dict(), run_meta=run_meta())
            write_json(tmp / "metrics.json", payload)
            atomic_write_text(tmp / "metrics.md", result.to_markdown())
        result.out = out
        logger.info("wrote %s in %.2f s", out, time.perf_counter() - t0)
    return result


def _not_applicable_notes(na: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One note per reason: which rows and metrics are n/a and why."""
    by_reason: dict[str, dict[str, list[str]]] = {}
    for name, row in na.items():
        for metric, why in row.items():
            by_reason.setdefault(why, {}).setdefault(name, []).append(metric)
    out = []
    for why, rows in by_reason.items():
        metrics = next(iter(rows.values()))
        what = ", ".join(metrics) if all(v == metrics for v in rows.values()) else "some metrics"
        out.append(f"n/a (not applicable, not computed) in row(s) {', '.join(rows)}: {what}. "
                   f"Reason: each {why}.")
    return out


def evaluate_dirs(
    real: Path | str,
    generated: Sequence[str],
    out: Path | str | None = None,
    *,
    reference: Path | str | None = None,
    train: Path | str | None = None,
    **kwargs: Any,
) -> EvaluationResult:
    """:func:`evaluate` on dataset directories; each generated entry is ``DIR``, ``NAME=DIR`` or
    ``NAME=DIR0,DIR1,...`` (one row pooled over the sets, :mod:`mstdiff.metrics.pooled`).

    Without a name the row is named after the directory. Keyword arguments go to :func:`evaluate`.
    """
    real_ds = PreparedDataset.load(real)
    gens: dict[str, list[PreparedDataset]] = {}
    for entry in generated:
        name, paths = parse_generated(entry)
        if name in gens:
            raise InputError(f"two generated sets are named {name!r}", where="--generated",
                             fix="name them: --generated NAME=DIR (NAME=DIR0,DIR1 pools sets in one row)")
        gens[name] = [PreparedDataset.load(p) for p in paths]
    return evaluate(real_ds, gens, out,
                    reference=PreparedDataset.load(reference) if reference is not None else None,
                    train=PreparedDataset.load(train) if train is not None else None, **kwargs)
