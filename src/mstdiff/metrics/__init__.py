"""Evaluation metrics (DESIGN §3) as pure functions, and the evaluation report.

Every metric is a pure function ``(real, generated, **context) -> float`` over arrays of the
prepared format (traffic ``[U, T]``, locations ``[U, T]``); none pairs sample i of one set with
sample i of the other. JSDs are in base 2 on shared bin edges (:mod:`mstdiff.metrics.jsd`).

- :mod:`~mstdiff.metrics.traffic`: ``traffic_volume_jsd``, ``traffic_diff_jsd``,
  ``daily_periodic_rmse``.
- :mod:`~mstdiff.metrics.trajectory`: ``distance_jsd``, ``radius_jsd``, ``distinctloc_jsd``,
  ``duration_jsd``, ``grank_jsd``, ``irank_jsd``, ``location_jsd``.
- :mod:`~mstdiff.metrics.movesim` (optional, ``evaluate(conventions="movesim")``): the six
  trajectory metrics in MoveSim's conventions (squared degree distances, natural-log JSD, fixed bins).
- :mod:`~mstdiff.metrics.joint`: ``joint_jsd``, ``joint_profile_rmse``.
- :mod:`~mstdiff.metrics.evaluate`: the registry :data:`METRICS` and :func:`evaluate` (report with
  the floor row; plots from :mod:`~mstdiff.metrics.plots`).
"""

from mstdiff.metrics.evaluate import (
    METRICS,
    MOVESIM_METRICS,
    EvaluationResult,
    Metric,
    compute_metrics,
    evaluate,
    evaluate_dirs,
    get_metric,
    metric_context,
)
from mstdiff.metrics.joint import (
    LocationClasses,
    class_hour_profile,
    joint_jsd,
    joint_profile_rmse,
    level_edges,
    location_classes,
    traffic_levels,
)
from mstdiff.metrics.jsd import discrete_jsd, histogram_jsd, jsd, shared_edges
from mstdiff.metrics.traffic import (
    daily_periodic_rmse,
    periodic_strength,
    quantile_rmse,
    traffic_diff_jsd,
    traffic_volume_jsd,
)
from mstdiff.metrics.trajectory import (
    distance_jsd,
    distinct_locations,
    distinctloc_jsd,
    duration_jsd,
    grank_jsd,
    haversine_km,
    irank_jsd,
    location_jsd,
    radius_jsd,
    radius_of_gyration,
    rank_profile,
    stay_durations,
    step_distances,
)

__all__ = [
    "METRICS",
    "MOVESIM_METRICS",
    "EvaluationResult",
    "LocationClasses",
    "Metric",
    "class_hour_profile",
    "compute_metrics",
    "daily_periodic_rmse",
    "discrete_jsd",
    "distance_jsd",
    "distinct_locations",
    "distinctloc_jsd",
    "duration_jsd",
    "evaluate",
    "evaluate_dirs",
    "get_metric",
    "grank_jsd",
    "haversine_km",
    "histogram_jsd",
    "irank_jsd",
    "joint_jsd",
    "joint_profile_rmse",
    "jsd",
    "level_edges",
    "location_jsd",
    "location_classes",
    "metric_context",
    "periodic_strength",
    "quantile_rmse",
    "radius_jsd",
    "radius_of_gyration",
    "rank_profile",
    "shared_edges",
    "stay_durations",
    "step_distances",
    "traffic_diff_jsd",
    "traffic_levels",
    "traffic_volume_jsd",
]
