"""The Markdown report of an evaluation (``metrics.md``): what a person reads first.

Sections, each only where it has content: a warning block (generated sets out of the real range,
memorisation), the metrics table (mean ± sd over the draws, floor row, units in the header, n per
row), the ratio of every model to the floor mean, the legend of what the tables use, the notes,
the sanity statistics, memorisation and train-on-synthetic test-on-real scores.

Bold rule: in each column, the best generated set is bold only when there are two or more sets and
its mean beats the second best by more than the spread ``sqrt(s_best² + s_second²)``, where a
row's ``s`` is its sd over the draws, or the floor's sd where the row's is 0 (a model row is
deterministic when the whole real set and the whole generated set are compared in every draw;
the floor's sd is then the sampling noise of a set of that size).

A cell that is not applicable (:attr:`EvaluationResult.not_applicable`: a set without traffic or
locations) reads "n/a", is never bold and has no ratio.
"""

from __future__ import annotations

import math
from typing import Any

from mstdiff.metrics.evaluate import EvaluationResult, metric_unit

__all__ = ["render_markdown", "bold_cells", "fmt"]

NA = "n/a"


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None or not isinstance(v, int | float) or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.4g}"


def _pm(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return fmt(mean) if not math.isfinite(sd) else f"{fmt(mean)} ± {fmt(sd)}"


def _spread(res: EvaluationResult, name: str, metric: str, floor_sd: dict[str, float]) -> float:
    sd = res.sd.get(name, {}).get(metric, math.nan)
    if not math.isfinite(sd) or sd == 0:
        sd = floor_sd.get(metric, math.nan)
    return sd


def _applies(res: EvaluationResult, name: str, metric: str) -> bool:
    return metric not in getattr(res, "not_applicable", {}).get(name, {})


def bold_cells(res: EvaluationResult) -> dict[str, str]:
    """Metric → the set whose cell is bold (see the module docstring)."""
    out: dict[str, str] = {}
    floor_sd = res.floor_sd.get("floor", {})
    for m in res.metrics:
        cand = [(v[m.name], name) for name, v in res.rows.items()
                if math.isfinite(v.get(m.name, math.nan)) and _applies(res, name, m.name)]
        if len(cand) < 2:
            continue
        cand.sort(reverse=not m.lower_is_better)
        (b, best), (s, second) = cand[0], cand[1]

        sp = math.hypot(_spread(res, best, m.name, floor_sd), _spread(res, second, m.name, floor_sd))
        if math.isfinite(sp) and sp > 0 and abs(s - b) > sp:
            out[m.name] = best
    return out


def _metrics_table(res: EvaluationResult, bold: dict[str, str]) -> list[str]:
    unit = res.config.get("traffic_unit")
    arrows = {m.name: "↓" if m.lower_is_better else "↑" for m in res.metrics}
    header = ["set", "n (real / gen)",
              *[f"{m.name} {arrows[m.name]} [{metric_unit(m, unit)}]" for m in res.metrics]]
    lines = ["| " + " | ".join(header) + " |", "|:---|---:|" + "---:|" * len(res.metrics)]
    for name, row in res.rows.items():
        n = res.sizes.get(name, {}).get("n", "")
        cells = []
        for m in res.metrics:
            s = res.sd.get(name, {}).get(m.name, math.nan)
            if not _applies(res, name, m.name):
                cells.append(NA)
                continue
            c = _pm(row.get(m.name, math.nan), math.nan if s == 0 else s)
            cells.append(f"**{c}**" if bold.get(m.name) == name else c)
        lines.append(f"| {name} | {n} / {n} | " + " | ".join(cells) + " |")
    for label, frow in res.floor_rows.items():
        n = res.sizes.get(label, {}).get("n", "")
        cells = [_pm(frow.get(m.name, math.nan), res.floor_sd.get(label, {}).get(m.name, math.nan))
                 if _applies(res, label, m.name) else NA for m in res.metrics]
        lines.append(f"| **{label}** | {n} / {n} | " + " | ".join(cells) + " |")
    return lines


def _ratio_table(res: EvaluationResult) -> list[str]:
    ratio = res.ratio()
    lines = ["| set | " + " | ".join(m.name for m in res.metrics) + " |",
             "|:---|" + "---:|" * len(res.metrics)]
    for name, row in ratio.items():
        lines.append(f"| {name} | " + " | ".join(
            fmt(row.get(m.name), 2) if _applies(res, name, m.name) and _applies(res, "floor", m.name) else NA
            for m in res.metrics) + " |")
    return lines


def _legend(res: EvaluationResult, bold: dict[str, str]) -> list[str]:
    draws = res.sizes.get("floor", {}).get("draws") or res.config.get("draws")
    kind = res.sizes.get("floor", {}).get("kind", "")
    lines = []
    dirs = {m.lower_is_better for m in res.metrics}
    lines.append("All columns: lower is better (↓)." if dirs == {True}
                 else "↓ lower is better, ↑ higher is better.")
    if res.config.get("conventions") == "movesim":
        lines.append("Conventions: **movesim** — the trajectory metrics (movesim_*) follow MoveSim "
                     "(Feng et al., KDD 2020; `mstdiff.metrics.movesim`), in nats; traffic and joint "
                     "metrics as by default.")
    else:
        lines.append("Conventions: mstdiff (the default; `--conventions movesim` gives MoveSim's).")
    lines.append(f"Cells: mean ± sd over {draws} draw(s); n: samples on each side of a comparison per draw.")
    pooled = getattr(res, "pooled", {})
    for k in sorted({p["sets"] for p in pooled.values()}):
        names = ", ".join(n for n, p in pooled.items() if p["sets"] == k)
        lines.append(f"Pooled row(s) {names}: {k} generated sets of one model (e.g. generation seeds), "
                     "each compared as a single set; the cell is their mean, ± the sd over the sets' "
                     "means (the spread from one generated set to the next; metrics.json `pooled` has "
                     "each set's values). Plain statistics and memorisation read the sets concatenated.")
    if any(v == 0 for row in res.sd.values() for v in row.values()):
        lines.append("A model cell without ± is the same in every draw (the whole real set against the whole "
                     "generated set); its sampling spread is the floor's sd.")
    if res.floor_rows:
        what = ("the whole real set and an equal number of samples drawn at random from the reference "
                "set (other users)"
                if kind == "real vs reference" else
                "two user-disjoint halves of the real set (users split at random, trimmed to equal n)")
        lines.append(f"**floor**: the same metrics between {what}: what a fresh draw of real users "
                     "scores, the best a generator can show. Each model row compares the same real side "
                     "with n samples of the generated set.")
    if any(getattr(res, "not_applicable", {}).values()):
        lines.append("n/a: not applicable, not computed: the metric reads traffic (or locations) that a "
                     "compared set does not have (see the notes and metrics.json `not_applicable`).")
    if bold:
        lines.append("**Bold**: the best generated set of a column, only where it beats the second best "
                     "by more than their combined spread (sd over draws; the floor's where a row's is 0).")
    units = sorted({metric_unit(m, res.config.get("traffic_unit")) for m in res.metrics})
    if "bits" in units:
        lines.append("[bits]: Jensen–Shannon divergence in base 2 (0 identical … 1 disjoint), on bin edges "
                     "shared by both sets (see metrics.json `metric_info`).")
    if "nats" in units:
        lines.append("[nats]: Jensen–Shannon divergence in natural log (0 identical … ln 2 ≈ 0.693 "
                     "disjoint), on MoveSim's fixed-width bins; values outside their range are dropped "
                     "(see the notes).")
    if "share" in units:
        lines.append("[share]: RMSE of the per-sample share of the daily bin in the one-sided amplitude "
                     "spectrum (`|rfft(m)|[k] / Σ_j |rfft(m)|[j]`, DC bin included).")
    return lines


def _memo_table(memo: dict[str, dict[str, Any]]) -> list[str]:
    head = ["set", "n", "exact copies: locations", "… of moving samples",
            "exact copies: (locations, traffic)",
            "DCR p5", "DCR median", "DCR p5 / held-out", "DCR median / held-out", "MIA AUC", "flag"]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    def pct(v: Any) -> str:
        return NA if v is None else f"{100 * v:.1f} %"

    for name, r in memo.items():
        label = "held-out real (chance level)" if name == "heldout" else name
        lines.append(
            f"| {label} | {r['n']} | {100 * r['copy_loc_share']:.1f} % | "
            f"{100 * r.get('copy_moving_share', float('nan')):.1f} % | {pct(r.get('copy_share'))} | "
            f"{fmt(r['dcr_p5'], 3)} | {fmt(r['dcr_median'], 3)} | {fmt(r['dcr_p5_ratio'], 2)} | "
            f"{fmt(r['dcr_median_ratio'], 2)} | {fmt(r['mia_auc'], 3)} | "
            f"{'**COPIES**' if r.get('flagged') else ''} |")
    return lines


def _utility_table(util: dict[str, dict[str, float]], unit: str | None) -> list[str]:
    cols = [("markov_acc1", "next loc. acc@1 (first-order)"), ("markov_acc5", "acc@5"),
            ("markov_hour_acc1", "acc@1 (first-order × hour)"), ("markov_hour_acc5", "acc@5"),
            ("ridge_mae", f"next-slot traffic MAE, ridge [{unit or 'traffic unit'}]"),
            ("mlp_mae", "MAE, MLP")]
    lines = ["| fitted on | " + " | ".join(c[1] for c in cols) + " |", "|:---|" + "---:|" * len(cols)]
    for name, r in util.items():
        cells = []
        for key, _ in cols:
            if key not in r:  # a traffic score of a set without traffic (or of windows too short)
                cells.append(NA)
                continue
            v = r[key]
            ratio = r.get(f"{key}_ratio")
            cells.append(fmt(v, 3) + (f" ({fmt(ratio, 2)})" if ratio is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(res: EvaluationResult) -> str:
    """The whole ``metrics.md`` text."""
    from mstdiff.metrics.sanity import sanity_markdown

    out: list[str] = []
    if res.warnings:
        out.append(f"> **WARNING: {len(res.warnings)} problem(s) — generated set(s) out of the real "
                   "range or copying the training set; their metrics below are not to be trusted:**")
        out += [f"> - {w}" for w in res.warnings]
        out.append("")
    bold = bold_cells(res)
    out += _metrics_table(res, bold)
    if res.floor_rows:
        out += ["", "Ratio to the floor mean (1 = as close to the real set as another draw of real users):",
                ""] + _ratio_table(res)
    out += [""] + _legend(res, bold)
    out += [f"- {n}" for n in res.notes]
    if res.sanity:
        out += ["", "## Sanity statistics", "",
                "Whole sets (not subsampled): what a JSD can hide (`mstdiff.metrics.sanity`).", "",
                sanity_markdown(res.sanity, upper=res.config.get("traffic_upper")).rstrip("\n")]
    if res.memorisation:
        out += ["", "## Memorisation (against the training set)", "",
                "Exact copies: share of samples equal to a training sample. DCR: distance to the closest "
                "training sample (share of slots at another station + mean |Δ traffic| / sd of the "
                "training traffic), over the held-out real set's; MIA AUC: membership inference from the "
                "distance to the closest generated sample (0.5 = no leak). **COPIES**: copies (whole "
                "samples, "
                "or location sequences of samples that visit 2+ stations) above chance by more than "
                "max(2 %, 3 s.e.), DCR p5 ratio < 0.5 or AUC > 0.6 (`mstdiff.metrics.privacy`)."
                + (" For a set without traffic (n/a) the distance is the location term alone."
                   if any(r.get("traffic_used") is False for r in res.memorisation.values()) else ""), ""]
        out += _memo_table(res.memorisation)
    if res.utility:
        out += ["", "## Usefulness: train on synthetic, test on real (TSTR)", "",
                "Predictors fitted on each set, scored on the real set; in brackets TSTR / TRTR "
                "(1 = as useful as the real training split; for the MAE lower is better, so a ratio "
                "above 1 is worse) (`mstdiff.metrics.utility`).", ""]
        out += _utility_table(res.utility, res.config.get("traffic_unit"))
    return "\n".join(out) + "\n"
