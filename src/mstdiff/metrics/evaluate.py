"""Evaluation protocol: every metric for every generated set, the floor row, and the report.

:func:`evaluate` compares each generated set with the held-out real set using the registry
:data:`METRICS` (name, pure function, inputs it needs, direction) and adds a **floor** row: the same
metrics between two disjoint random subsets of the real set of the generated set's size, i.e. what
a perfect generator (a fresh draw of real data) would score on this data with this many samples.
If the real set has fewer than twice that many samples, the floor uses two disjoint halves of the
real set and the report says so in a footnote. By default each generated set is compared with the
first of the two floor subsets, so model and floor rows rest on the same sample sizes.

The report directory (written atomically) holds ``metrics.json`` (every value, sizes, config,
location classes, provenance), ``metrics.md`` (a Markdown table with the floor row) and PNG plots
under ``plots/``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, atomic_write_text, check_output_dir, run_meta, write_json
from mstdiff.metrics import joint, traffic, trajectory
from mstdiff.metrics.joint import LocationClasses, location_classes

logger = logging.getLogger(__name__)

__all__ = [
    "Metric",
    "METRICS",
    "get_metric",
    "metric_context",
    "compute_metrics",
    "EvaluationResult",
    "evaluate",
    "evaluate_dirs",
]

DATA_INPUTS = ("traffic", "locations")
CONTEXT_INPUTS = ("coords", "n_stations", "bin_minutes", "location_class")


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(real, generated, **context) -> float``.

    ``needs`` lists the data it reads: ``"traffic"`` and/or ``"locations"`` (with both, ``real`` and
    ``generated`` are ``(traffic, locations)`` pairs), plus context keywords among
    ``coords`` (``[N, 2]`` lat/lon), ``n_stations``, ``bin_minutes`` and ``location_class``
    (``[N]`` class code per station).
    """

    name: str
    fn: Callable[..., float]
    needs: tuple[str, ...]
    lower_is_better: bool = True
    group: str = ""  # "traffic" | "trajectory" | "joint"

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in DATA_INPUTS + CONTEXT_INPUTS]
        if unknown or not any(n in DATA_INPUTS for n in self.needs):
            raise ValueError(f"metric {self.name!r}: bad needs {self.needs}")

    @property
    def description(self) -> str:
        """First paragraph of the function's docstring."""
        doc = (self.fn.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(doc.split())

    def compute(self, real: Any, generated: Any, context: Mapping[str, Any]) -> float:
        """Apply to two objects with ``.traffic`` and ``.locations`` arrays (e.g. datasets)."""
        data = [n for n in DATA_INPUTS if n in self.needs]
        kwargs = {n: context[n] for n in self.needs if n in CONTEXT_INPUTS}
        if len(data) == 1:
            a, b = getattr(real, data[0]), getattr(generated, data[0])
        else:
            a, b = (real.traffic, real.locations), (generated.traffic, generated.locations)
        return float(self.fn(a, b, **kwargs))


METRICS: tuple[Metric, ...] = (
    Metric("traffic_volume_jsd", traffic.traffic_volume_jsd, ("traffic",), group="traffic"),
    Metric("traffic_diff_jsd", traffic.traffic_diff_jsd, ("traffic",), group="traffic"),
    Metric("traffic_periodic_rmse", traffic.daily_periodic_rmse, ("traffic", "bin_minutes"),
           group="traffic"),
    Metric("distance_jsd", trajectory.distance_jsd, ("locations", "coords"), group="trajectory"),
    Metric("radius_jsd", trajectory.radius_jsd, ("locations", "coords"), group="trajectory"),
    Metric("distinctloc_jsd", trajectory.distinctloc_jsd, ("locations",), group="trajectory"),
    Metric("duration_jsd", trajectory.duration_jsd, ("locations",), group="trajectory"),
    Metric("grank_jsd", trajectory.grank_jsd, ("locations", "n_stations"), group="trajectory"),
    Metric("irank_jsd", trajectory.irank_jsd, ("locations",), group="trajectory"),
    Metric("location_jsd", trajectory.location_jsd, ("locations", "n_stations"), group="trajectory"),
    Metric("joint_jsd", joint.joint_jsd, ("traffic", "locations", "location_class"), group="joint"),
    Metric("joint_profile_rmse", joint.joint_profile_rmse,
           ("traffic", "locations", "location_class", "bin_minutes"), group="joint"),
)
"""Every metric of DESIGN §3, in report order. All are lower-is-better."""


def get_metric(name: str) -> Metric:
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(m.name for m in METRICS)}")


def metric_context(real: PreparedDataset, classes: LocationClasses | None = None, *,
                   class_rule: str | None = None) -> dict[str, Any]:
    """Context of the metric calls that compare ``real`` with a generated set (from the REAL side)."""
    if classes is None:
        classes = location_classes(real.stations, real.locations, rule=class_rule)
    return {
        "coords": real.coords,
        "n_stations": real.n_stations,
        "bin_minutes": real.bin_minutes,
        "location_class": classes.codes,
    }


def compute_metrics(real: Any, generated: Any, context: Mapping[str, Any],
                    metrics: Sequence[Metric] = METRICS, errors: list[str] | None = None,
                    ) -> dict[str, float]:
    """Every metric of ``metrics`` between ``real`` and ``generated``.

    A metric that cannot be computed for this input (it raises :class:`InputError`, e.g. the
    periodic metric on windows shorter than a day) gives NaN and a line in ``errors``.
    """
    out: dict[str, float] = {}
    for m in metrics:
        try:
            out[m.name] = m.compute(real, generated, context)
        except InputError as exc:
            logger.warning("metric %s not computed: %s", m.name, exc)
            out[m.name] = float("nan")
            if errors is not None and str(exc) not in errors:
                errors.append(f"{m.name}: {exc}")
    return out


# --------------------------------------------------------------------------- result
def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.4g}"


@dataclass
class EvaluationResult:
    """Metrics of every generated set and of the floor, with what is needed to report them."""

    rows: dict[str, dict[str, float]]  # generated set -> metric -> value
    floor_rows: dict[str, dict[str, float]]  # floor row label -> metric -> value
    floor_of: dict[str, str]  # generated set -> label of its floor row
    sizes: dict[str, Any]  # samples per set; floor subset sizes
    notes: list[str] = field(default_factory=list)  # footnotes of the Markdown table
    config: dict[str, Any] = field(default_factory=dict)
    location_classes: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = METRICS
    plots: list[str] = field(default_factory=list)  # paths relative to the report directory
    sanity: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> plain statistics (sanity.py)
    out: Path | None = None

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def table(self) -> pd.DataFrame:
        """Rows: generated sets then floor rows; columns: ``n`` and every metric."""
        records = []
        for name, vals in self.rows.items():
            records.append({"set": name, "n": self.sizes.get(name), **vals})
        for name, vals in self.floor_rows.items():
            records.append({"set": name, "n": self.sizes.get(name, {}).get("n"), **vals})
        return pd.DataFrame.from_records(records).set_index("set")

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.rows,
            "floor": self.floor_rows,
            "floor_of": self.floor_of,
            "sizes": self.sizes,
            "metric_info": {
                m.name: {"lower_is_better": m.lower_is_better, "group": m.group, "needs": list(m.needs),
                         "description": m.description}
                for m in self.metrics
            },
            "location_classes": self.location_classes,
            "notes": self.notes,
            "plots": self.plots,
            "sanity": self.sanity,
            "config": self.config,
        }

    def to_markdown(self) -> str:
        """Markdown table: one row per generated set and the floor row(s); best value bolded."""
        names = self.metric_names
        arrows = {m.name: "↓" if m.lower_is_better else "↑" for m in self.metrics}
        best: dict[str, float] = {}
        for m in self.metrics:
            finite = [r[m.name] for r in self.rows.values() if math.isfinite(r.get(m.name, math.nan))]
            if finite:
                best[m.name] = min(finite) if m.lower_is_better else max(finite)
        header = ["set", "n", *[f"{n} {arrows[n]}" for n in names]]
        lines = ["| " + " | ".join(header) + " |", "|:---|---:|" + "---:|" * len(names)]
        for set_name, row in self.rows.items():
            cells = []
            for n in names:
                v = row.get(n, math.nan)
                s = _fmt(v)
                cells.append(f"**{s}**" if n in best and math.isfinite(v) and v == best[n] else s)
            lines.append(f"| {set_name} | {self.sizes.get(set_name, '')} | " + " | ".join(cells) + " |")
        for label, frow in self.floor_rows.items():
            info = self.sizes.get(label, {})
            mark = " †" if info.get("halves") else ""
            cells = [_fmt(frow.get(n, math.nan)) for n in names]
            lines.append(f"| **{label}**{mark} | {info.get('n', '')} | " + " | ".join(cells) + " |")
        foot = [
            "",
            "↓ lower is better, ↑ higher is better. **Bold**: best generated set per column (floor "
            "rows excluded). **floor**: the same metrics between two disjoint random subsets of the "
            "real set of the generated set's size — the best any generator can show on this data.",
            "JSD in base 2 (0..1) on shared bin edges from the union of both sets; see metrics.json "
            "`metric_info` for each definition and binning.",
        ]
        foot += [f"- {n}" for n in self.notes]
        text = "\n".join(lines + foot) + "\n"
        if self.sanity:
            from mstdiff.metrics.sanity import sanity_markdown

            text += ("\n## Sanity statistics\n\nWhole sets (not subsampled): what a JSD can hide "
                     "(`mstdiff.metrics.sanity`).\n\n"
                     + sanity_markdown(self.sanity, upper=self.config.get("traffic_upper")))
        return text


# --------------------------------------------------------------------------- protocol
def _check_generated(real: PreparedDataset, generated: Mapping[str, PreparedDataset]) -> None:
    if not generated:
        raise InputError("no generated set to evaluate", where="evaluate",
                         fix="pass at least one generated dataset")
    real_ids = real.stations["station_id"].astype(str).to_numpy()
    for name, g in generated.items():
        where = f"generated set {name!r}"
        if not isinstance(g, PreparedDataset):
            raise InputError(f"expected a PreparedDataset, got {type(g).__name__}", where=where)
        if str(name).startswith("floor"):
            raise InputError("set names starting with 'floor' are reserved for the floor rows",
                             where=where, fix="rename the set")
        if g.n_stations != real.n_stations:
            raise InputError(
                f"has N = {g.n_stations} stations but the real set has N = {real.n_stations}; location "
                "indices only mean the same station on the same station table",
                where=where,
                fix="generate on the real set's station table (e.g. real.with_series(...)) or prepare the "
                "real set with the station table the generator was trained on",
            )
        if g.T != real.T:
            raise InputError(f"has T = {g.T} bins per sample but the real set has T = {real.T}",
                             where=where, fix="generate windows of the real set's length")
        if g.bin_minutes != real.bin_minutes:
            raise InputError(f"has {g.bin_minutes}-min bins but the real set has {real.bin_minutes}-min bins",
                             where=where, fix="generate with the real set's bin size")
        if g.n_samples == 0:
            raise InputError("has no samples", where=where, fix="generate at least one sample")
        if not np.array_equal(g.stations["station_id"].astype(str).to_numpy(), real_ids):
            logger.warning("%s: station ids differ from the real set's (same N = %d); "
                           "assuming the same order", where, real.n_stations)


def _cap(ds: PreparedDataset, max_samples: int | None, rng: np.random.Generator) -> PreparedDataset:
    if max_samples is None or ds.n_samples <= max_samples:
        return ds
    return ds.subset(np.sort(rng.choice(ds.n_samples, size=max_samples, replace=False)))


@dataclass
class _FloorDraw:
    """Two disjoint random real subsets for the generated sets of one size."""

    label: str
    a: PreparedDataset  # reference subset: the real side of the floor and of matched model rows
    b: PreparedDataset
    context: dict[str, Any]  # metric context of `a`
    halves: bool


def _draw_floor(real: PreparedDataset, n: int, label: str, rng: np.random.Generator,
                class_rule: str | None) -> _FloorDraw:
    U = real.n_samples
    halves = U < 2 * n
    m = U // 2 if halves else n
    perm = rng.permutation(U)
    a = real.subset(np.sort(perm[:m]))
    b = real.subset(np.sort(perm[m:2 * m]))
    return _FloorDraw(label, a, b, metric_context(a, class_rule=class_rule), halves)


def evaluate(
    real: PreparedDataset,
    generated: Mapping[str, PreparedDataset],
    out: Path | str | None = None,
    *,
    seed: int = 0,
    floor: bool = True,
    plots: bool = True,
    max_samples: int | None = None,
    match_floor: bool = True,
    class_rule: str | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Compare every generated set with the real set; optionally write the report to ``out``.

    ``real``: held-out real set. ``generated``: name → generated set on the same station table
    (same N, T and bin size; :class:`InputError` otherwise). ``seed`` drives every random choice
    (sample caps, floor subsets, plotted examples) through one ``numpy.random.Generator``.
    ``max_samples`` caps the samples used per generated set (random subset) for speed.

    Floor (``floor=True``): for each distinct generated-set size n, two disjoint random subsets A
    and B of the real set of n samples each (two halves of the real set if it has fewer than 2n
    samples, with a footnote); the floor row is ``metrics(A, B)``.

    ``match_floor=True`` (default) compares each generated set with the subset A of its floor, so
    that the model row and the floor row have the same sample sizes and the floor is what a perfect
    generator (a fresh real draw) would score; in the halves case the generated set is subsampled
    to the half size. ``match_floor=False`` (or ``floor=False``) compares with the whole real set
    (capped by ``max_samples``): less noise in the model rows, but then a model can beat the floor
    by sampling luck. Data-dependent context (popularity classes, traffic levels, G-rank) comes from
    the real side of each comparison. ``class_rule`` picks the location-class rule of the joint
    metrics (:func:`~mstdiff.metrics.joint.location_classes`; default: automatic).

    With ``out``, writes ``metrics.json``, ``metrics.md`` and (``plots``) ``plots/*.png`` into the
    directory atomically; an existing non-empty ``out`` needs ``overwrite=True``.
    """
    if out is not None:  # before the work: a file, a read-only or a full disk as --out fails at once
        check_output_dir(out, overwrite=overwrite, reuse=Path(out).is_dir() and not any(Path(out).iterdir()))
    t0 = time.perf_counter()
    _check_generated(real, generated)
    if real.n_samples == 0:
        raise InputError("the real set has no samples", where="evaluate")
    if max_samples is not None and max_samples < 1:
        raise InputError(f"max_samples = {max_samples} must be >= 1", where="evaluate")
    rng = np.random.default_rng(seed)

    U = real.n_samples
    gens = {str(k): _cap(v, max_samples, rng) for k, v in generated.items()}
    real_used = _cap(real, max_samples, rng)  # the whole-real-set reference, also for the plots
    classes = location_classes(real_used.stations, real_used.locations, rule=class_rule)
    full_context = metric_context(real_used, classes)

    errors: list[str] = []
    notes: list[str] = []
    sizes: dict[str, Any] = {"real": real_used.n_samples, "real_total": U}
    floor_rows: dict[str, dict[str, float]] = {}
    draws: dict[int, _FloorDraw] = {}
    if floor:
        distinct = sorted({g.n_samples for g in gens.values()})
        for n in distinct:
            label = "floor" if len(distinct) == 1 else f"floor (n={n})"
            if U < 2:
                notes.append(f"{label}: the real set has {U} sample(s); no floor can be computed.")
                continue
            d = _draw_floor(real, n, label, rng, class_rule)
            draws[n] = d
            floor_rows[label] = compute_metrics(d.a, d.b, d.context, errors=errors)
            sizes[label] = {"n": d.a.n_samples, "generated_n": n, "halves": d.halves}
            if d.halves:
                extra = (f" Generated sets of {n} samples were subsampled to {d.a.n_samples} and compared "
                         "with the first half, so that their rows and the floor have equal sizes."
                         if match_floor else "")
                notes.append(
                    f"† {label}: the real set has U = {U} < 2 × {n} samples, so the floor compares two "
                    f"disjoint halves of the real set ({d.a.n_samples} samples each).{extra}"
                )

    rows: dict[str, dict[str, float]] = {}
    floor_of: dict[str, str] = {}
    reference: dict[str, int] = {}
    for name, g in gens.items():
        d_or_none = draws.get(g.n_samples)
        if d_or_none is not None:
            floor_of[name] = d_or_none.label
        if match_floor and d_or_none is not None:
            ref, ctx = d_or_none.a, d_or_none.context
            if g.n_samples > ref.n_samples:
                g = g.subset(np.sort(rng.choice(g.n_samples, size=ref.n_samples, replace=False)))
        else:
            ref, ctx = real_used, full_context
        rows[name] = compute_metrics(ref, g, ctx, errors=errors)
        sizes[name] = g.n_samples
        reference[name] = ref.n_samples
    sizes["reference"] = reference
    if match_floor and draws:
        notes.append("Each generated set is compared with a random real subset of its own size (the "
                     "first subset of its floor row), so model and floor rows have equal sample sizes.")
    if max_samples is not None and any(g.n_samples > max_samples for g in generated.values()):
        notes.append(f"Generated sets larger than max_samples = {max_samples} were randomly subsampled.")
    notes.extend(f"Not computed: {e}" for e in errors)
    notes.append(f"Location classes ({classes.rule} rule): {', '.join(classes.names)}.")

    config = {
        "seed": seed, "floor": floor, "match_floor": match_floor, "plots": plots,
        "max_samples": max_samples, "class_rule": classes.rule, "jsd_base": 2, "bins": traffic.DEFAULT_BINS,
        "n_levels": joint.N_LEVELS, "top_fraction": trajectory.TOP_FRACTION, "T": real.T,
        "bin_minutes": real.bin_minutes, "n_stations": real.n_stations,
        "real_source": real.meta.get("source"),
        "generated_sources": {name: g.meta.get("source") for name, g in generated.items()},
    }
    from mstdiff.metrics.sanity import dataset_sanity, traffic_upper

    upper = traffic_upper(real)  # None for units without a natural maximum (bytes, MB)
    config["traffic_upper"] = upper
    sanity = {"real": dataset_sanity(real, upper=upper),
              **{str(k): dataset_sanity(v, upper=upper) for k, v in generated.items()}}
    result = EvaluationResult(rows=rows, floor_rows=floor_rows, floor_of=floor_of, sizes=sizes,
                              notes=notes, config=config, location_classes=classes.to_dict(),
                              sanity=sanity)
    logger.info("metrics of %d set(s) in %.2f s", len(gens), time.perf_counter() - t0)

    if out is not None:
        out = Path(out)
        replace = overwrite or (out.is_dir() and not any(out.iterdir()))
        with atomic_dir(out, overwrite=replace) as tmp:
            if plots:
                from mstdiff.metrics.plots import write_plots

                sets = {"real": real_used, **gens}
                paths = write_plots(sets, tmp / "plots", classes=classes, rng=rng)
                result.plots = [str(p.relative_to(tmp)) for p in paths]
            payload = dict(result.to_dict(), run_meta=run_meta())
            write_json(tmp / "metrics.json", payload)
            atomic_write_text(tmp / "metrics.md", result.to_markdown())
        result.out = out
        logger.info("wrote %s in %.2f s", out, time.perf_counter() - t0)
    return result


def evaluate_dirs(
    real: Path | str,
    generated: Sequence[str],
    out: Path | str | None = None,
    **kwargs: Any,
) -> EvaluationResult:
    """:func:`evaluate` on dataset directories; each generated entry is ``DIR`` or ``NAME=DIR``.

    Without a name the row is named after the directory. Keyword arguments go to :func:`evaluate`.
    """
    real_ds = PreparedDataset.load(real)
    gens: dict[str, PreparedDataset] = {}
    for entry in generated:
        name, sep, path = str(entry).partition("=")
        if not sep:
            name, path = Path(entry).name, str(entry)
        if not name:
            raise InputError(f"empty set name in {entry!r}", where="--generated", fix="use NAME=DIR")
        if name in gens:
            raise InputError(f"two generated sets are named {name!r}", where="--generated",
                             fix="name them: --generated NAME=DIR")
        gens[name] = PreparedDataset.load(path)
    return evaluate(real_ds, gens, out, **kwargs)
