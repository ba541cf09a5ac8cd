"""Plain statistics of a set of samples, to read beside the metrics (DEVELOPERS: "look at the samples").

A JSD table can hide a model that jumps station every slot or emits impossible traffic; these
numbers cannot. Each is a per-set summary, computed the same way for real and generated sets:

- ``zero_share``: share of slots with traffic exactly 0;
- ``full_share``: share of slots exactly at the largest possible value (``upper``: the slot length
  for connected minutes; not defined for units without a maximum, such as bytes);
- ``above_share``: share of slots above ``upper`` (impossible values; must be 0);
- ``at_own_max_share``: share of slots at the set's own largest value (a pile there is a cap);
- ``cap_share``: share of slots at the traffic decoder's cap (:func:`decode_cap`: twice the
  training maximum for units without a natural maximum; not defined for slot-bounded units, whose
  cap is ``upper``, a legitimate value);
- ``max_traffic``: the largest value;
- ``distinct_per_sample``: mean number of distinct stations per sample;
- ``changes_per_sample``: mean number of slots whose station differs from the previous slot's;
- ``mean_traffic``: mean traffic per slot; ``mean_by_hour``: mean traffic per hour of day
  (JSON only).

For a set without traffic (``traffic=False``: trajectories only, a model's placeholder zeros, a
real set of all-zero traffic) the traffic statistics are NaN ("n/a" in the table, never a
problem) and ``has_traffic`` is false; likewise the trajectory statistics for placeholder
locations (``has_locations`` false).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mstdiff.data.scaling import SLOT_BOUNDED_UNITS

SANITY_COLUMNS = ("zero_share", "full_share", "above_share", "cap_share", "max_traffic",
                  "distinct_per_sample", "changes_per_sample", "mean_traffic")


def decode_cap(train: Any, upper: float | None) -> float | None:
    """The value the traffic decoder clamps at for units without a maximum: ``2 · max`` of the
    training traffic (``mstdiff.data.scaling``); None where ``upper`` exists."""
    if upper is not None:
        return None
    t = np.asarray(getattr(train, "traffic", np.zeros(0)))
    if not getattr(train, "has_traffic", True) or not t.size or not t.max() > 0:
        return None  # no traffic to cap at
    return float(2 * t.max())


def traffic_upper(ds: Any) -> float | None:
    """The largest possible traffic value of a dataset's unit (slot length for minutes), or None."""
    meta = getattr(ds, "meta", {}) or {}
    if str(meta.get("traffic_unit", "")).lower() in SLOT_BOUNDED_UNITS and meta.get("bin_minutes"):
        return float(meta["bin_minutes"])
    return None


TRAFFIC_STATS = ("zero_share", "full_share", "above_share", "cap_share", "max_traffic", "at_own_max_share",
                 "mean_traffic")
LOCATION_STATS = ("distinct_per_sample", "changes_per_sample")


def sanity_stats(traffic: np.ndarray, locations: np.ndarray, *, upper: float | None,
                 bin_minutes: float | None = None, cap: float | None = None, has_traffic: bool = True,
                 has_locations: bool = True) -> dict[str, Any]:
    """The statistics above for ``traffic (U, T)`` and ``locations (U, T)``; without traffic
    (locations) the traffic (trajectory) statistics are NaN."""
    m = np.asarray(traffic, dtype=np.float64)
    loc = np.asarray(locations)
    out: dict[str, Any] = {"n": int(m.shape[0]) if m.ndim == 2 else 0}
    if not has_traffic:
        out.update({k: float("nan") for k in TRAFFIC_STATS}, has_traffic=False)
    if not has_locations:
        out.update({k: float("nan") for k in LOCATION_STATS}, has_locations=False)
    if not has_traffic or not has_locations:
        rest = sanity_stats(m, loc, upper=upper, bin_minutes=bin_minutes, cap=cap)
        keep = (TRAFFIC_STATS + ("mean_by_hour",) if has_traffic else ()) + (LOCATION_STATS if has_locations
                                                                             else ())
        out.update({k: v for k, v in rest.items() if k in keep})
        return out
    n = m.size
    out["zero_share"] = float((m == 0).mean()) if n else float("nan")
    if upper is not None and n:
        out["full_share"] = float((m == upper).mean())
        out["above_share"] = float((m > upper * (1 + 1e-6)).mean())
    else:
        out["full_share"] = out["above_share"] = float("nan")
    out["cap_share"] = float((m >= cap * (1 - 1e-6)).mean()) if cap is not None and n else float("nan")
    out["max_traffic"] = float(m.max()) if n else float("nan")
    out["at_own_max_share"] = float((m == m.max()).mean()) if n and m.max() > 0 else 0.0
    if loc.size:
        s = np.sort(loc, axis=1)
        out["distinct_per_sample"] = float((1 + (np.diff(s, axis=1) != 0).sum(1)).mean())
        out["changes_per_sample"] = float((np.diff(loc, axis=1) != 0).sum(1).mean())
    else:
        out["distinct_per_sample"] = out["changes_per_sample"] = float("nan")
    out["mean_traffic"] = float(m.mean()) if n else float("nan")
    if bin_minutes and m.shape[1] and n:
        hour = (np.arange(m.shape[1]) * float(bin_minutes) / 60.0).astype(int) % 24
        out["mean_by_hour"] = [float(m[:, hour == h].mean()) if (hour == h).any() else None
                               for h in range(24)]
    return out


def dataset_sanity(ds: Any, *, upper: float | None, cap: float | None = None, traffic: bool | None = None,
                   locations: bool | None = None) -> dict[str, Any]:
    """:func:`sanity_stats` of a prepared dataset. ``traffic`` / ``locations``: whether the set has
    them (default: its ``has_traffic`` / ``has_locations``)."""
    return sanity_stats(ds.traffic, ds.locations, upper=upper, bin_minutes=getattr(ds, "bin_minutes", None),
                        cap=cap,
                        has_traffic=getattr(ds, "has_traffic", True) if traffic is None else traffic,
                        has_locations=getattr(ds, "has_locations", True) if locations is None else locations)


def sanity_markdown(stats: dict[str, dict[str, Any]], *, upper: float | None) -> str:
    """A Markdown table, one row per set."""
    head = ["set", "n", "zero slots", f"at max ({upper:g})" if upper is not None else "at max", "above max",
            "at decode cap", "max", "distinct stations / sample", "changes / sample", "mean traffic"]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    problems: list[str] = []
    real = stats.get("real")
    for name, st in stats.items():
        if real is not None and name not in ("real", "reference"):
            problems += [f"{name}: {p}" for p in sanity_problems(real, st)]
        no_tr = st.get("has_traffic") is False
        no_loc = st.get("has_locations") is False

        def pct(v: Any, na: bool = no_tr) -> str:
            return "n/a" if na else "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"

        def num(v: Any, na: bool = no_tr) -> str:
            return "n/a" if na else "–" if v is None or not np.isfinite(v) else f"{v:.2f}"

        lines.append(f"| {name} | {st.get('n', '')} | {pct(st['zero_share'])} | {pct(st['full_share'])} | "
                     f"{pct(st['above_share'])} | {pct(st.get('cap_share', float('nan')))} | "
                     f"{num(st['max_traffic'])} | "
                     f"{num(st['distinct_per_sample'], no_loc)} | {num(st['changes_per_sample'], no_loc)} | "
                     f"{num(st['mean_traffic'])} |")
    lines.append("")
    if any(st.get("has_traffic") is False or st.get("has_locations") is False for st in stats.values()):
        lines.append("n/a: the set has no traffic (or no locations) of its own; those statistics are "
                     "left out.")
        lines.append("")
    lines.append("Sanity checks: " + ("all generated sets pass." if not problems else
                                      f"**WARNING: {len(problems)} problem(s), generated set(s) out of the "
                                      "real range.**"))
    lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def sanity_problems(real: dict[str, Any], gen: dict[str, Any], *, tolerance: float = 0.5) -> list[str]:
    """What is implausible in a generated set's statistics against the real set's (empty: none).

    Impossible values (above the maximum), a pile of values at one largest value (a decoder cap:
    more than 1 % of slots at the set's maximum where the real set has under 0.1 % at its own,
    for units without a natural maximum), and distinct stations or changes per sample, or the share
    of zero slots, off the real ones by more than ``tolerance`` (relative; zero slots: absolute);
    more than 0.1 % of slots at the decoder cap; mean traffic off by more than a factor 3.
    """
    out: list[str] = []
    if np.isfinite(gen.get("cap_share", np.nan)) and gen["cap_share"] > 0.001:
        out.append(f"{100 * gen['cap_share']:.1f} % of slots at the decoder cap (twice the training maximum)")
    if np.isfinite(gen.get("above_share", np.nan)) and gen["above_share"] > 0:
        out.append(f"{100 * gen['above_share']:.2f} % of slots above the possible maximum")
    if gen.get("at_own_max_share", 0.0) > 0.01 and real.get("at_own_max_share", 0.0) < 0.001:
        out.append(f"{100 * gen['at_own_max_share']:.1f} % of slots at one largest value "
                   f"({gen['max_traffic']:.4g}): a decoder cap, not data")
    for key, what in (("distinct_per_sample", "distinct stations per sample"),
                      ("changes_per_sample", "location changes per sample")):
        r, g = real.get(key, np.nan), gen.get(key, np.nan)
        if np.isfinite(r) and np.isfinite(g) and abs(g - r) > tolerance * max(r, 1.0):
            out.append(f"{what}: {g:.2f} against {r:.2f} real")
    r, g = real.get("mean_traffic", np.nan), gen.get("mean_traffic", np.nan)
    if np.isfinite(r) and np.isfinite(g) and r > 0 and not 1 / 3 <= g / r <= 3:
        out.append(f"mean traffic {g:.4g} against {r:.4g} real")
    r, g = real.get("zero_share", np.nan), gen.get("zero_share", np.nan)
    if np.isfinite(r) and np.isfinite(g) and abs(g - r) > tolerance * 0.3:
        out.append(f"zero slots: {100 * g:.1f} % against {100 * r:.1f} % real")
    return out


def report_problems(report_dir: Any) -> tuple[str, list[str]]:
    """The sanity table and problems of an evaluation report (``metrics.json`` of ``mstdiff evaluate``)."""
    import json
    from pathlib import Path

    path = Path(report_dir)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.exists():
        from mstdiff.errors import InputError

        raise InputError("no evaluation report", where=str(path), fix="run `mstdiff evaluate` first")
    data = json.loads(path.read_text())
    stats = data.get("sanity") or {}
    upper = (data.get("config") or {}).get("traffic_upper")
    real = stats.get("real", {})
    problems = [f"{name}: {p}" for name, st in stats.items() if name not in ("real", "reference")
                for p in sanity_problems(real, st)]
    return sanity_markdown(stats, upper=upper), problems


def compare_sanity(real: Any, generated: Any, *, names: tuple[str, str] = ("real", "generated"),
                   ) -> tuple[str, list[str]]:
    """The sanity table of a generated set beside a real one (e.g. ``mstdiff generate`` against its
    ``--like`` set) and its problems."""
    upper = traffic_upper(real)
    cap = decode_cap(real, upper)
    stats = {"real": dataset_sanity(real, upper=upper, cap=cap),
             names[1]: dataset_sanity(generated, upper=upper, cap=cap)}
    problems = sanity_problems(stats["real"], stats[names[1]])
    table = sanity_markdown(stats, upper=upper).replace("| real |", f"| {names[0]} |", 1)
    return table, problems
