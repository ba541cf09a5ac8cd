"""Memorisation of the training set by a generator: exact copies, distance to closest record, MIA.

All three compare a generated set G with the training set Tr (the records the generator saw) and
with a held-out real set H (records it did not see; the evaluation's real set):

- ``copy_loc_share``: share of G's samples whose location sequence equals a training sample's
  exactly; ``copy_moving_share``: the same among samples that visit two or more stations (a day at
  one station repeats many real users' days and identifies nobody); ``copy_share``: the same for
  the whole (location, traffic) sample. H's shares are the level real data reach by chance.
- DCR, distance to closest record: for a sample x, ``min over training samples y of d(x, y)`` with

      d(x, y) = mean_t [l_t(x) != l_t(y)] + mean_t |m_t(x) - m_t(y)| / s

  (``s`` = standard deviation of the training traffic, so both terms are of order 1). Reported as
  the 5th percentile and the median of G's DCRs over those of H (``dcr_p5_ratio``,
  ``dcr_median_ratio``): about 1 for a generator that does not copy, well below 1 for one that does.
- MIA AUC: a distance-based membership-inference attack. Members: a random subset of the training
  set of the size of H; non-members: H. The attacker scores each record by its distance to the
  closest generated sample (smaller: "member"); the AUC of that score (0.5: no leak, 1: every
  member recognised). A generator that copies a share c of a training set of size |Tr| raises it
  by only about c · |G| / (2 |Tr|), so it is a weak signal next to the copy share and the DCR.

Without traffic (``traffic=False``: the real sets have none; ``no_traffic``: generated sets with
none, e.g. a trajectory model's placeholder zeros) the distance is the location term alone and
``copy_share`` (which compares traffic) is None; for a generated set without traffic its DCR
ratios are taken against H's location-only DCR. ``traffic_used`` says which applied.

``flagged`` is true when G copies more than H does by chance (a copy share, whole samples or moving
location sequences, above H's by more than ``max(2 %, 3 standard errors)``), when its DCR 5th
percentile ratio is below 0.5, or when the MIA AUC exceeds 0.6.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = ["distance_to_closest", "memorisation", "mia_auc"]

CHUNK = 32  # query samples per block of the distance computation


def _row_keys(*arrays: np.ndarray) -> set[bytes]:
    parts = [np.ascontiguousarray(a) for a in arrays]
    return {b"".join(p[i].tobytes() for p in parts) for i in range(parts[0].shape[0])}


def _copy_share(query: tuple[np.ndarray, ...], train: tuple[np.ndarray, ...]) -> float:
    keys = _row_keys(*train)
    parts = [np.ascontiguousarray(a) for a in query]
    n = parts[0].shape[0]
    if n == 0:
        return float("nan")
    return sum(b"".join(p[i].tobytes() for p in parts) in keys for i in range(n)) / n


def _moving_copy_share(loc: np.ndarray, train_keys: set[bytes]) -> float:
    srt = np.sort(loc, axis=1)
    moving = np.flatnonzero((srt[:, 1:] != srt[:, :-1]).any(axis=1)) if loc.shape[1] > 1 else np.zeros(0, int)
    if moving.size == 0:
        return 0.0
    rows = np.ascontiguousarray(loc[moving])
    return sum(rows[i].tobytes() in train_keys for i in range(rows.shape[0])) / moving.size


def _margin(p: float, n: int) -> float:
    return max(0.02, 3 * float(np.sqrt(max(p, 1.0 / max(n, 1)) * (1 - p) / max(n, 1))))


def distance_to_closest(q_loc: np.ndarray, q_m: np.ndarray | None, r_loc: np.ndarray, r_m: np.ndarray | None,
                        scale: float) -> np.ndarray:
    """For each query sample, ``min_y d(x, y)`` over the reference samples (see the module), ``[Q]``.

    With ``q_m`` or ``r_m`` None the distance is the location term alone (sets without traffic)."""
    q_loc = np.asarray(q_loc)
    r_loc = np.asarray(r_loc)
    use_m = q_m is not None and r_m is not None
    if use_m:
        q_m = np.asarray(q_m, dtype=np.float32) / np.float32(scale)
        r_m = np.asarray(r_m, dtype=np.float32) / np.float32(scale)
    out = np.empty(q_loc.shape[0])
    for s in range(0, q_loc.shape[0], CHUNK):
        ql = q_loc[s:s + CHUNK, None, :]
        d = (ql != r_loc[None]).mean(axis=2)
        if use_m:
            d = d + np.abs(q_m[s:s + CHUNK, None, :] - r_m[None]).mean(axis=2)  # type: ignore[index]
        out[s:s + CHUNK] = d.min(axis=1)
    return out


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """AUC that a smaller score means "member": P(s_member < s_non) + ½ P(equal) (Mann–Whitney)."""
    a = np.asarray(member_scores, dtype=np.float64)
    b = np.asarray(nonmember_scores, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size)
    ranks[order] = np.arange(1, allv.size + 1)
    # average ranks of ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    u_big = ranks[a.size:].sum() - b.size * (b.size + 1) / 2  # pairs where non-member ranks higher
    return float(u_big / (a.size * b.size))


def memorisation(train: Any, heldout: Any, generated: dict[str, Any], *,
                 rng: np.random.Generator, traffic: bool = True,
                 no_traffic: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Memorisation statistics (module docstring) of every generated set and of ``heldout`` itself.

    All sets must be on one station table (:func:`mstdiff.metrics.stations.align_stations`).
    The row ``heldout`` gives the chance level (its DCR ratios are 1 by definition).
    ``traffic=False``: the real sets have no traffic; ``no_traffic``: names of generated sets
    without traffic (both: location-only distances, no ``copy_share``).
    """
    tl = train.locations
    tm = train.traffic if traffic else None
    scale = (float(np.std(tm)) or 1.0) if tm is not None else 1.0

    def dcr_stats(with_m: bool) -> tuple[float, float]:
        d = distance_to_closest(heldout.locations, heldout.traffic if with_m else None, tl,
                                tm if with_m else None, scale)
        return float(np.quantile(d, 0.05)), float(np.median(d))

    h_dcr = {traffic: dcr_stats(traffic)}
    h_p5, h_med = h_dcr[traffic]
    n_mem = min(heldout.n_samples, train.n_samples)
    members = np.sort(rng.choice(train.n_samples, size=n_mem, replace=False))
    h_copy_loc = _copy_share((heldout.locations,), (tl,))
    h_copy = _copy_share((heldout.locations, heldout.traffic), (tl, tm)) if tm is not None else None
    loc_keys = _row_keys(tl)
    h_moving = _moving_copy_share(heldout.locations, loc_keys)
    out: dict[str, dict[str, Any]] = {
        "heldout": {"n": heldout.n_samples, "copy_loc_share": h_copy_loc, "copy_moving_share": h_moving,
                    "copy_share": h_copy,
                    "dcr_p5": h_p5, "dcr_median": h_med, "dcr_p5_ratio": 1.0,
                    "dcr_median_ratio": 1.0, "mia_auc": float("nan"), "flagged": False,
                    "traffic_used": traffic}}
    for name, g in generated.items():
        use_m = traffic and name not in no_traffic
        if use_m not in h_dcr:
            h_dcr[use_m] = dcr_stats(use_m)
        hp5, hmed = h_dcr[use_m]
        gm, mm = (g.traffic, tm) if use_m else (None, None)
        dcr = distance_to_closest(g.locations, gm, tl, mm, scale)
        p5, med = float(np.quantile(dcr, 0.05)), float(np.median(dcr))
        s_mem = distance_to_closest(tl[members], mm[members] if mm is not None else None, g.locations, gm,
                                    scale)
        s_non = distance_to_closest(heldout.locations, heldout.traffic if use_m else None, g.locations, gm,
                                    scale)
        row: dict[str, Any] = {
            "n": g.n_samples,
            "copy_loc_share": _copy_share((g.locations,), (tl,)),
            "copy_moving_share": _moving_copy_share(g.locations, loc_keys),
            "copy_share": (_copy_share((g.locations, g.traffic), (tl, tm))
                           if use_m and tm is not None else None),
            "dcr_p5": p5, "dcr_median": med,
            "dcr_p5_ratio": p5 / hp5 if hp5 > 0 else float("nan"),
            "dcr_median_ratio": med / hmed if hmed > 0 else float("nan"),
            "mia_auc": mia_auc(s_mem, s_non), "traffic_used": use_m}
        copies = (row["copy_share"] is not None and h_copy is not None
                  and row["copy_share"] > h_copy + _margin(h_copy, g.n_samples))
        row["flagged"] = bool(
            copies
            or row["copy_moving_share"] > h_moving + _margin(h_moving, g.n_samples)
            or (np.isfinite(row["dcr_p5_ratio"]) and row["dcr_p5_ratio"] < 0.5)
            or row["mia_auc"] > 0.6)
        out[name] = row
    return out
