"""Report plots: metric distributions real vs generated, example series, trajectory maps.

Figures are drawn on the Agg canvas directly (no pyplot state), so the module works headless
and never changes the caller's matplotlib backend. Every function takes ``sets``, an ordered
mapping name → dataset whose first entry is the real set, and writes one PNG.

A set without traffic (trajectories only, or a model's placeholder zeros) is left out of the
traffic panels and plots, and one with placeholder locations out of the trajectory ones
(:func:`write_plots` ``traffic`` / ``locations``); where the real set lacks traffic, the traffic
plots are not drawn at all.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mstdiff.metrics import joint, trajectory
from mstdiff.metrics.jsd import histogram_counts
from mstdiff.metrics.traffic import periodic_strength, traffic_differences

logger = logging.getLogger(__name__)

__all__ = [
    "distribution_values",
    "plot_distributions",
    "plot_series",
    "plot_trajectories",
    "plot_class_profiles",
    "write_plots",
]

DPI = 110
MAX_POOLED = 200_000  # pooled values per set drawn in a histogram (evenly thinned beyond)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return ["black"] + [cmap(i % 10) for i in range(max(n - 1, 0))]


def _new_figure(w: float, h: float) -> Figure:
    # fixed margins instead of constrained layout: layout solving costs more than drawing
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.95 / w, right=1 - 0.25 / w, bottom=0.75 / h, top=1 - 0.4 / h,
                        wspace=0.38, hspace=0.55)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _unit_label(label: str, ds: Any) -> str:
    unit = str(ds.meta.get("traffic_unit", "unknown"))
    return label if unit in ("", "unknown", "None") else f"{label} ({unit})"


def _thin(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size > MAX_POOLED:
        x = x[:: int(np.ceil(x.size / MAX_POOLED))]
    return x


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def distribution_values(ds: Any, bin_minutes: int | None = None, *, traffic: bool = True,
                        locations: bool = True) -> dict[str, np.ndarray]:
    """The per-slot / per-sample quantities behind the metrics, for plotting.

    Keys: ``traffic volume`` (log1p m), ``traffic difference`` (signed log1p of Δm), ``daily
    periodic`` (periodic strength), ``distance`` (log1p km), ``radius`` (log1p km), ``distinctloc``,
    ``duration`` (slots). ``traffic=False`` (``locations=False``) leaves out the traffic
    (trajectory) ones.
    """
    bm = int(bin_minutes if bin_minutes is not None else ds.bin_minutes)
    coords = ds.coords
    out: dict[str, np.ndarray] = {}
    if traffic:
        out["traffic volume"] = np.log1p(_thin(ds.traffic))
        out["traffic difference"] = _signed_log1p(_thin(traffic_differences(ds.traffic)))
    if locations:
        out.update({
            "distance": np.log1p(_thin(trajectory.step_distances(ds.locations, coords))),
            "radius": np.log1p(trajectory.radius_of_gyration(ds.locations, coords)),
            "distinctloc": trajectory.distinct_locations(ds.locations) / max(ds.T, 1),
            "duration": trajectory.stay_durations(ds.locations).astype(np.float64),
        })
    if traffic:
        try:
            out["daily periodic"] = periodic_strength(ds.traffic, bm)
        except ValueError as exc:  # window shorter than a day (InputError is a ValueError)
            logger.info("no periodic panel: %s", exc)
    return out


def _having(sets: Mapping[str, Any], names: Collection[str] | None, attr: str) -> list[str]:
    """Names of the sets that have ``attr`` ("traffic" / "locations"): ``names``, or by their flags."""
    if names is not None:
        return [n for n in sets if n in names]
    return [n for n, ds in sets.items() if getattr(ds, f"has_{attr}", True)]


_XLABEL = {
    "traffic volume": "log(1 + traffic)",
    "traffic difference": "sign(Δ) log(1 + |Δ traffic|)",
    "daily periodic": "daily share of |FFT|",
    "distance": "log(1 + km) between consecutive slots",
    "radius": "log(1 + radius of gyration, km)",
    "distinctloc": "distinct locations / T",
    "duration": "stay length (slots)",
}


def _hist_panel(ax: Any, title: str, values: dict[str, np.ndarray], colors: list[Any],
                discrete: bool = False) -> None:
    u = np.concatenate([v for v in values.values() if v.size])
    if u.size == 0:
        ax.set_title(f"{title} (no data)")
        return
    if discrete:
        lo, hi = float(u.min()), float(np.quantile(u, 0.995))
        step = np.min(np.diff(np.unique(u))) if np.unique(u).size > 1 else 1.0
        edges = np.arange(lo - step / 2, hi + step, step)
        if edges.size > 80:
            edges = np.linspace(edges[0], edges[-1], 81)
    else:
        lo, hi = float(np.quantile(u, 0.0005)), float(np.quantile(u, 0.9995))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 41)
    for (name, v), c in zip(values.items(), colors):
        if v.size == 0:
            continue
        h = histogram_counts(v, edges)
        ax.stairs(h / h.sum(), edges, label=name, color=c, lw=1.6 if name == "real" else 1.2)
    ax.set_title(title)
    ax.set_xlabel(_XLABEL.get(title, title))
    ax.set_ylabel("share")
    if title in ("duration", "distance", "traffic volume", "traffic difference", "radius"):
        ax.set_yscale("log")


def plot_distributions(sets: Mapping[str, Any], path: Path, *, classes: joint.LocationClasses | None = None,
                       traffic: Collection[str] | None = None, locations: Collection[str] | None = None,
                       ) -> Path:
    """One panel per metric distribution (real vs each generated set), like a paper figure.

    ``traffic`` / ``locations``: names of the sets that have them (default: by their
    ``has_traffic`` / ``has_locations``); the others are left out of those panels, and a panel is
    drawn only where the real set has what it shows."""
    names = list(sets)
    color = dict(zip(names, _colors(len(names))))
    real = sets[names[0]]
    tr = _having(sets, traffic, "traffic")
    lo = _having(sets, locations, "locations")
    tr = tr if names[0] in tr else []
    lo = lo if names[0] in lo else []
    both = [n for n in tr if n in lo]
    per_set = {name: distribution_values(ds, real.bin_minutes, traffic=name in tr, locations=name in lo)
               for name, ds in sets.items()}
    keys = [k for k in _XLABEL if k in per_set[names[0]]]
    n_panels = len(keys) + (3 if lo else 0) + (1 if both else 0)
    ncols = 4
    nrows = max(1, int(np.ceil(n_panels / ncols)))
    fig = _new_figure(4.0 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        vals = {n: per_set[n][key] for n in names if key in per_set[n]}
        _hist_panel(ax, key, vals, [color[n] for n in vals], discrete=key in ("distinctloc", "duration"))
    i = len(keys)

    if lo:
        # G-rank: global visit frequency by each set's own station rank (top 10 %)
        ax = axes[i]
        k = trajectory.top_count(real.n_stations)
        for n in lo:
            prof = trajectory.global_rank_profile(sets[n].locations, real.n_stations)
            ax.plot(np.arange(1, k + 1), prof[:k], label=n, color=color[n], lw=1.2)
        ax.set_yscale("log")
        ax.set_title("G-rank")
        ax.set_xlabel("global rank of the station (top 10 %)")
        ax.set_ylabel("visit share")

        # Home cell: where the samples' main stations lie, on the real set's quantile grid
        ax = axes[i + 1]
        q = np.arange(1, trajectory.HOME_GRID) / trajectory.HOME_GRID
        rc = real.coords[np.asarray(real.locations).ravel()]
        lat_cuts, lon_cuts = np.unique(np.quantile(rc[:, 0], q)), np.unique(np.quantile(rc[:, 1], q))
        n_cells = (lat_cuts.size + 1) * (lon_cuts.size + 1)
        for n in lo:
            ds = sets[n]
            h = np.bincount(trajectory.home_cells(ds.locations, ds.coords, lat_cuts, lon_cuts),
                            minlength=n_cells)
            ax.plot(np.arange(n_cells), h / max(h.sum(), 1), marker=".", label=n, color=color[n], lw=1.0)
        ax.set_title("home cell")
        ax.set_xlabel("grid cell of the main station")
        ax.set_ylabel("share of samples")

        # I-rank: mean visit frequency by own rank
        ax = axes[i + 2]
        for n in lo:
            prof = trajectory.rank_profile(sets[n].locations)
            r = min(prof.size, 20)
            ax.plot(np.arange(1, r + 1), prof[:r], marker=".", label=n, color=color[n], lw=1.2)
        ax.set_yscale("log")
        ax.set_title("I-rank")
        ax.set_xlabel("own rank of the station")
        ax.set_ylabel("visit frequency")
        i += 3

    if both:
        # Joint: share of each (class, traffic level) cell
        ax = axes[i]
        if classes is None:
            classes = joint.location_classes(real.stations, real.locations)
        edges = joint.level_edges(real.traffic)
        n_lev = edges.size + 2
        for n in both:
            ds = sets[n]
            h = joint.joint_histogram(ds.traffic, ds.locations, classes.codes, classes.n_classes,
                                      edges).ravel()
            ax.stairs(h / max(h.sum(), 1.0), np.arange(h.size + 1), label=n, color=color[n], lw=1.2)
        for ci in range(1, classes.n_classes):
            ax.axvline(ci * n_lev, color="0.85", lw=0.8, zorder=0)
        ax.set_xticks((np.arange(classes.n_classes) + 0.5) * n_lev)
        ax.set_xticklabels([str(x)[:8] for x in classes.names], rotation=60, fontsize=7)
        ax.set_title(f"joint: (location class, traffic level 0..{n_lev - 1})")
        ax.set_ylabel("share of slots")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    if n_panels:
        handles = {label: h for a in axes[:n_panels] for h, label in zip(*a.get_legend_handles_labels())}
        axes[0].legend([handles[n] for n in names if n in handles], [n for n in names if n in handles],
                       fontsize=8)
    return _save(fig, path)


def plot_series(sets: Mapping[str, Any], path: Path, *, rng: np.random.Generator, n_examples: int = 3,
                ) -> Path:
    """A few example traffic series of each set (rows: sets; columns: random samples)."""
    names = list(sets)
    colors = _colors(len(names))
    fig = _new_figure(3.6 * n_examples, 2.0 * len(names) + 0.4)
    axes = fig.subplots(len(names), n_examples, squeeze=False, sharex=True)
    for r, (name, ds) in enumerate(sets.items()):
        idx = np.sort(rng.choice(ds.n_samples, size=min(n_examples, ds.n_samples), replace=False))
        hours = np.arange(ds.T) * ds.bin_minutes / 60.0
        for c in range(n_examples):
            ax = axes[r, c]
            if c >= idx.size:
                ax.set_visible(False)
                continue
            ax.plot(hours, ds.traffic[idx[c]], color=colors[r], lw=1.0, drawstyle="steps-post")
            ax.set_title(f"{name} #{idx[c]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(_unit_label("traffic", ds), fontsize=8)
            if r == len(names) - 1:
                ax.set_xlabel("hours from window start")
    return _save(fig, path)


def sample_extent(sets: Mapping[str, Any], q: float = 0.005, margin: float = 0.05,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) box around where the samples are: the ``q`` .. ``1 - q`` quantiles of the visited
    coordinates of every set (slot-weighted) plus a ``margin`` of the box size, not the bounding box of
    the station table (a few far-away stations would shrink every trajectory to a dot)."""
    pts = []
    for ds in sets.values():
        c = ds.coords
        loc = np.asarray(ds.locations).ravel()
        if loc.size:
            pts.append(c[loc[:: max(1, loc.size // 50_000)]])
    allp = np.concatenate(pts) if pts else np.zeros((0, 2))
    allp = allp[np.isfinite(allp).all(axis=1)]
    if allp.size == 0:
        return np.array([-90.0, -180.0]), np.array([90.0, 180.0])
    lo, hi = np.quantile(allp, q, axis=0), np.quantile(allp, 1 - q, axis=0)
    pad = np.maximum((hi - lo) * margin, 1e-3)
    return lo - pad, hi + pad


def plot_trajectories(sets: Mapping[str, Any], path: Path, *, rng: np.random.Generator,
                      n_examples: int = 5) -> Path:
    """Station map (grey) with a few trajectories of each set as lines (one panel per set)."""
    names = list(sets)
    real = sets[names[0]]
    coords = real.coords
    ncols = min(len(names), 4)
    nrows = int(np.ceil(len(names) / ncols))
    fig = _new_figure(4.6 * ncols, 4.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    aspect = 1.0 / max(np.cos(np.radians(float(np.mean(coords[:, 0])))), 1e-3) if len(coords) else 1.0
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    lo, hi = sample_extent(sets)
    inside = ((coords >= lo) & (coords <= hi)).all(axis=1)
    for ax, (name, ds) in zip(axes, sets.items()):
        ax.scatter(coords[inside, 1], coords[inside, 0],
                   s=float(np.clip(4000 / max(int(inside.sum()), 1), 2, 12)), color="0.7", lw=0, zorder=0)
        idx = rng.choice(ds.n_samples, size=min(n_examples, ds.n_samples), replace=False)
        for j, i in enumerate(idx):
            loc = ds.locations[i]
            keep = np.ones(loc.size, dtype=bool)
            keep[1:] = loc[1:] != loc[:-1]  # one point per stay
            pts = coords[loc[keep]]
            ax.plot(pts[:, 1], pts[:, 0], "-o", ms=3, lw=1.0, color=cmap(j % 10), alpha=0.85)
        ax.set_title(f"{name}: {idx.size} trajectories", fontsize=10)
        ax.set_xlabel("lon")
        ax.set_ylabel("lat")
        ax.set_xlim(lo[1], hi[1])
        ax.set_ylim(lo[0], hi[0])
        ax.set_aspect(aspect, adjustable="box")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_class_profiles(sets: Mapping[str, Any], path: Path, classes: joint.LocationClasses,
                        max_classes: int = 12) -> Path:
    """Mean traffic per hour of day in each location class (the joint profile metric), log scale.

    A log axis keeps a realistic curve readable next to a generated set whose traffic is orders of
    magnitude off; class names are wrapped, not cut."""
    import textwrap

    names = list(sets)
    colors = _colors(len(names))
    real = sets[names[0]]
    profiles = {n: joint.class_hour_profile(ds.traffic, ds.locations, classes.codes, ds.bin_minutes,
                                            classes.n_classes) for n, ds in sets.items()}
    slots = sum(count.sum(axis=1) for _mean, count in profiles.values())
    order = np.argsort(-profiles[names[0]][1].sum(axis=1), kind="stable")
    order = order[slots[order] > 0][:max_classes]  # classes no set visits have no profile
    if order.size == 0:
        order = np.arange(min(1, classes.n_classes))
    ncols = min(4, order.size)
    nrows = int(np.ceil(order.size / ncols))
    fig = _new_figure(3.8 * ncols, 3.0 * nrows)
    fig.subplots_adjust(top=1 - 0.6 / (3.0 * nrows), hspace=0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, c in zip(axes, order):
        for (n, (mean, _count)), col in zip(profiles.items(), colors):
            y = np.where(mean[c] > 0, mean[c], np.nan)
            ax.plot(np.arange(24), y, label=n, color=col, lw=1.4 if n == names[0] else 1.0)
        if any((mean[c] > 0).any() for mean, _count in profiles.values()):
            ax.set_yscale("log")
        ax.set_title("\n".join(textwrap.wrap(f"class {classes.names[c]}", 30)), fontsize=8)
        ax.set_xlabel("hour of day")
        ax.set_ylabel(_unit_label("mean traffic", real), fontsize=8)
    for ax in axes[order.size:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def write_plots(sets: Mapping[str, Any], directory: Path, *, classes: joint.LocationClasses,
                rng: np.random.Generator, traffic: Collection[str] | None = None,
                locations: Collection[str] | None = None) -> list[Path]:
    """All report plots into ``directory``; returns their paths.

    ``traffic`` / ``locations``: names of the sets that have them (default: by the sets'
    ``has_traffic`` / ``has_locations``). The traffic series and class profiles are drawn for the
    sets with traffic (not at all where the real set has none), the trajectory map for the sets
    with locations."""
    directory = Path(directory)
    names = list(sets)
    tr = _having(sets, traffic, "traffic")
    lo = _having(sets, locations, "locations")
    tr = tr if names and names[0] in tr else []
    lo = lo if names and names[0] in lo else []
    both = [n for n in tr if n in lo]
    paths = [plot_distributions(sets, directory / "distributions.png", classes=classes, traffic=tr,
                                locations=lo)]
    if tr:
        paths.append(plot_series({n: sets[n] for n in tr}, directory / "series.png", rng=rng))
    if lo:
        paths.append(plot_trajectories({n: sets[n] for n in lo}, directory / "trajectories.png", rng=rng))
    if both:
        paths.append(plot_class_profiles({n: sets[n] for n in both}, directory / "class_profiles.png",
                                         classes))
    return paths
