"""The metric registry: which metrics there are, what each reads, and when one does not apply.

:data:`METRICS` is every metric of DESIGN §3 in report order (the default conventions),
:data:`MOVESIM_METRICS` the MoveSim paper's trajectory metrics in their place
(``--conventions movesim``). A :class:`Metric` names a pure function and the data and context it
reads; :func:`compute_metrics` applies a set of them to two sets, :func:`missing_data` and
:func:`not_applicable` say which cannot apply to sets without traffic or locations. The protocol
that draws the sets and the floor is :mod:`mstdiff.metrics.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.metrics import joint, movesim, traffic, trajectory
from mstdiff.metrics.joint import LocationClasses, location_classes

logger = logging.getLogger(__name__)

__all__ = [
    "CONTEXT_INPUTS",
    "CONVENTIONS",
    "DATA_INPUTS",
    "METRICS",
    "MOVESIM_METRICS",
    "Metric",
    "compute_metrics",
    "conventions_metrics",
    "get_metric",
    "metric_context",
    "metric_unit",
    "missing_data",
    "not_applicable",
]

DATA_INPUTS = ("traffic", "locations")
CONTEXT_INPUTS = ("coords", "n_stations", "bin_minutes", "location_class", "max_distance")


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(real, generated, **context) -> float``.

    ``needs`` lists the data it reads: ``"traffic"`` and/or ``"locations"`` (with both, ``real`` and
    ``generated`` are ``(traffic, locations)`` pairs), plus context keywords among
    ``coords`` (``[N, 2]`` lat/lon), ``n_stations``, ``bin_minutes``, ``location_class``
    (``[N]`` class code per station) and ``max_distance`` (MoveSim's distance scale, None = from
    ``coords``). ``unit``: the unit of the values where :func:`metric_unit`'s rule does not fit.
    """

    name: str
    fn: Callable[..., float]
    needs: tuple[str, ...]
    lower_is_better: bool = True
    group: str = ""  # "traffic" | "trajectory" | "joint"
    unit: str = ""  # e.g. "nats"; empty: metric_unit decides by name

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
    Metric("home_cell_jsd", trajectory.home_cell_jsd, ("locations", "coords"), group="trajectory"),
    Metric("joint_jsd", joint.joint_jsd, ("traffic", "locations", "location_class"), group="joint"),
    Metric("joint_profile_rmse", joint.joint_profile_rmse,
           ("traffic", "locations", "location_class", "bin_minutes"), group="joint"),
)
"""Every metric of DESIGN §3, in report order. All are lower-is-better. The per-station visit JSD
(:func:`~mstdiff.metrics.trajectory.location_jsd`) is not among them: a generator of i.i.d. slots
from the training visits beats the real floor on it (issue 13); ``home_cell_jsd`` replaces it."""


def metric_unit(m: Metric, traffic_unit: str | None = None) -> str:
    """Unit of a metric's values: JSDs in bits (0..1), the periodic RMSE a share, the profile RMSE
    the traffic unit; a metric's own ``unit`` wins (the MoveSim JSDs are in nats)."""
    if m.unit:
        return m.unit
    if m.name.endswith("_jsd"):
        return "bits"
    if m.name == "traffic_periodic_rmse":
        return "share"
    return traffic_unit or "traffic unit"


CONVENTIONS = ("mstdiff", "movesim")

MOVESIM_METRICS: tuple[Metric, ...] = (
    *(m for m in METRICS if m.group == "traffic"),
    Metric("movesim_distance_jsd", movesim.distance_jsd, ("locations", "coords", "max_distance"),
           group="trajectory", unit="nats"),
    Metric("movesim_radius_jsd", movesim.radius_jsd, ("locations", "coords", "max_distance"),
           group="trajectory", unit="nats"),
    Metric("movesim_duration_jsd", movesim.duration_jsd, ("locations",), group="trajectory", unit="nats"),
    Metric("movesim_dailyloc_jsd", movesim.dailyloc_jsd, ("locations", "bin_minutes"), group="trajectory",
           unit="nats"),
    Metric("movesim_grank_jsd", movesim.grank_jsd, ("locations",), group="trajectory", unit="nats"),
    Metric("movesim_irank_jsd", movesim.irank_jsd, ("locations",), group="trajectory", unit="nats"),
    *(m for m in METRICS if m.group == "joint"),
)
"""``conventions="movesim"``: the trajectory group of :data:`METRICS` (``home_cell_jsd`` included)
replaced by the six MoveSim metrics of :mod:`~mstdiff.metrics.movesim` (natural-log JSD, nats); the
traffic and joint metrics are kept as they are (base 2, bits)."""


def conventions_metrics(conventions: str) -> tuple[Metric, ...]:
    """The metric set of ``conventions``: ``"mstdiff"`` (:data:`METRICS`, the default) or
    ``"movesim"`` (:data:`MOVESIM_METRICS`)."""
    if conventions == "mstdiff":
        return METRICS
    if conventions == "movesim":
        return MOVESIM_METRICS
    raise InputError(f"unknown conventions {conventions!r}", where="conventions",
                     fix=f"use one of {', '.join(CONVENTIONS)}")


def get_metric(name: str) -> Metric:
    for m in (*METRICS, *MOVESIM_METRICS):
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
        "max_distance": None,  # MoveSim distance scale: None = squared diameter of coords
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


def missing_data(ds: PreparedDataset, *, real: bool = False) -> dict[str, str]:
    """What ``ds`` lacks: ``{"traffic": why, "locations": why}`` for each of the two it has no data
    of (empty: it has both). A real set (``real=True``) whose traffic is all zeros has none."""
    out: dict[str, str] = {}
    ph = ds.meta.get("placeholder")
    ph = ph if isinstance(ph, dict) else {}
    if ds.meta.get("has_traffic", True) is False:
        out["traffic"] = "has no traffic (trajectories only)"
    elif "traffic" in ph:
        out["traffic"] = "placeholder traffic (zeros: its model does not generate traffic)"
    elif real and not np.asarray(ds.traffic).any():
        out["traffic"] = "its traffic is all zeros (no traffic recorded)"
    if "locations" in ph:
        out["locations"] = "placeholder locations (station 0: its model does not generate locations)"
    return out


def not_applicable(lacks: Mapping[str, Mapping[str, str]],
                   metrics: Sequence[Metric] = METRICS) -> dict[str, str]:
    """Metric → reason for the metrics that read data one of the compared sets lacks.

    ``lacks``: set label (e.g. ``"the real set"``) → :func:`missing_data` of that set."""
    out: dict[str, str] = {}
    for m in metrics:
        for label, missing in lacks.items():
            kind = next((k for k in DATA_INPUTS if k in m.needs and k in missing), None)
            if kind is not None:
                out[m.name] = f"needs {kind}: {label} {missing[kind]}"
                break
    return out
