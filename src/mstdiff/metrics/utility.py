"""Usefulness of a generated set: train on synthetic, test on real (TSTR) against train on real (TRTR).

Each predictor is fitted once on a generated set and once on the real training split, and both are
scored on the real test set; the report gives the scores and their ratio TSTR / TRTR (1: the
synthetic data is as useful as the real data for this task). All predictors are closed-form
(counts or least squares), deterministic and take well under a second at Shanghai size.

Next location (every slot t → t+1 of every test sample; accuracy@1 and @5):

- ``markov``: first-order counts ``n[l_t, l_{t+1}]`` of the fitting set; a station the fitting set
  never left from falls back to staying put, then to the most visited stations;
- ``markov_hour``: the same counts per (station, hour block of 3 h), backing off to ``markov``
  where the fitting set has no transition from that station in that block.

Next-slot traffic (MAE in the traffic unit; lower is better):

- ``ridge``: least squares (ridge 1e-3) of ``m_{t+1}`` on ``[1, m_t, m_{t-1}, m_{t-2}, [m_t = 0],
  one-hot hour of t+1]``, prediction clipped at 0;
- ``mlp``: a one-hidden-layer MLP (32 tanh units) on the same features (traffic scaled by the
  fitting set's sd), trained full-batch on at most 10,000 seeded random (input, next slot) pairs
  with Adam on the L1 loss for 200 steps from a fixed seed
  on one thread (deterministic; about a second at Shanghai size).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = ["fit_markov", "next_location_accuracy", "fit_ridge", "fit_mlp", "next_traffic_mae", "tstr"]

HOUR_BLOCK = 3
MLP_ROWS = 10_000  # the MLP fits on at most this many (input, next slot) pairs
TOP_K = 5


def _hours(T: int, bin_minutes: int) -> np.ndarray:
    return (np.arange(T) * int(bin_minutes) // 60) % 24


def fit_markov(locations: np.ndarray, n_stations: int, *, bin_minutes: int = 30,
               by_hour: bool = False) -> dict[str, Any]:
    """Transition counts of a set: ``counts[(block,) from, to]`` as a sparse dict of arrays."""
    loc = np.asarray(locations, dtype=np.int64)
    a, b = loc[:, :-1].ravel(), loc[:, 1:].ravel()
    blocks = np.broadcast_to(_hours(loc.shape[1], bin_minutes)[:-1] // HOUR_BLOCK, loc[:, :-1].shape).ravel()
    src = a + n_stations * blocks if by_hour else a
    key = src * n_stations + b
    uniq, cnt = np.unique(key, return_counts=True)
    return {"from": uniq // n_stations, "to": uniq % n_stations, "count": cnt, "by_hour": by_hour,
            "n": n_stations, "popular": np.argsort(-np.bincount(loc.ravel(), minlength=n_stations),
                                                   kind="stable")[:TOP_K]}


def _topk_table(model: dict[str, Any]) -> dict[int, np.ndarray]:
    order = np.lexsort((model["to"], -model["count"], model["from"]))
    frm, to = model["from"][order], model["to"][order]
    starts = np.flatnonzero(np.r_[True, frm[1:] != frm[:-1]])
    ends = np.r_[starts[1:], frm.size]
    return {int(frm[s]): to[s:min(e, s + TOP_K)] for s, e in zip(starts, ends)}


def _predict(prev: int, table: dict[int, np.ndarray], popular: np.ndarray,
             backoff: dict[int, np.ndarray] | None, src: int) -> np.ndarray:
    pred = table.get(src)
    if pred is None and backoff is not None:
        pred = backoff.get(prev)
    if pred is None:
        pred = np.r_[prev, popular[popular != prev]]
    if pred.size < TOP_K:
        pred = np.r_[pred, np.array([prev]), popular]
        _, first = np.unique(pred, return_index=True)
        pred = pred[np.sort(first)]
    return pred[:TOP_K]


def next_location_accuracy(model: dict[str, Any], locations: np.ndarray, *, bin_minutes: int = 30,
                           backoff: dict[str, Any] | None = None) -> dict[str, float]:
    """Accuracy@1 and @5 of ``model`` on every transition of ``locations``."""
    loc = np.asarray(locations, dtype=np.int64)
    n = model["n"]
    table = _topk_table(model)
    back = _topk_table(backoff) if backoff is not None else None
    blocks = _hours(loc.shape[1], bin_minutes)[:-1] // HOUR_BLOCK
    hit1 = hit5 = total = 0
    cache: dict[int, np.ndarray] = {}
    for u in range(loc.shape[0]):
        for t in range(loc.shape[1] - 1):
            prev = int(loc[u, t])
            src = prev + n * int(blocks[t]) if model["by_hour"] else prev
            pred = cache.get(src)
            if pred is None:
                pred = cache[src] = _predict(prev, table, model["popular"], back, src)
            nxt = loc[u, t + 1]
            hit1 += int(pred[0] == nxt)
            hit5 += int((pred == nxt).any())
            total += 1
    return {"acc1": hit1 / total if total else float("nan"), "acc5": hit5 / total if total else float("nan")}


def _features(traffic: np.ndarray, bin_minutes: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(traffic, dtype=np.float64)
    U, T = m.shape
    hours = _hours(T, bin_minutes)
    rows, ys = [], []
    for t in range(2, T - 1):
        x = np.column_stack([np.ones(U), m[:, t], m[:, t - 1], m[:, t - 2], (m[:, t] == 0).astype(float),
                             np.eye(24)[np.full(U, hours[t + 1])]])
        rows.append(x)
        ys.append(m[:, t + 1])
    return np.concatenate(rows), np.concatenate(ys)


def fit_ridge(traffic: np.ndarray, *, bin_minutes: int = 30, ridge: float = 1e-3) -> np.ndarray:
    """Coefficients of the next-slot traffic model (module docstring)."""
    x, y = _features(traffic, bin_minutes)
    a = x.T @ x + ridge * len(y) * np.eye(x.shape[1])
    return np.linalg.solve(a, x.T @ y)


def next_traffic_mae(coef: np.ndarray, traffic: np.ndarray, *, bin_minutes: int = 30) -> float:
    x, y = _features(traffic, bin_minutes)
    return float(np.abs(np.clip(x @ coef, 0, None) - y).mean())


def fit_mlp(traffic: np.ndarray, *, bin_minutes: int = 30, seed: int = 0, steps: int = 200,
            hidden: int = 32) -> Any:
    """The next-slot traffic MLP (module docstring); returns a callable ``traffic -> MAE``."""
    import torch

    x, y = _features(traffic, bin_minutes)
    if len(y) > MLP_ROWS:  # a fixed random subset of the (input, next slot) pairs
        keep = np.sort(np.random.default_rng(seed).choice(len(y), size=MLP_ROWS, replace=False))
        x, y = x[keep], y[keep]
    scale = float(np.std(y)) or 1.0
    x = x.copy()
    x[:, 1:4] /= scale
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(seed)
        w1 = (torch.randn(x.shape[1], hidden, generator=g) / np.sqrt(x.shape[1])).requires_grad_()
        b1 = torch.zeros(hidden, requires_grad=True)
        w2 = (torch.randn(hidden, 1, generator=g) / np.sqrt(hidden)).requires_grad_()
        b2 = torch.zeros(1, requires_grad=True)
        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y / scale).float()
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=0.02)
        for _ in range(steps):
            opt.zero_grad()
            pred = (torch.tanh(xt @ w1 + b1) @ w2 + b2).squeeze(1)
            loss = (pred - yt).abs().mean()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    params = [p.detach().numpy().copy() for p in (w1, b1, w2, b2)]

    def mae(test_traffic: np.ndarray) -> float:
        xq, yq = _features(test_traffic, bin_minutes)
        xq = xq.copy()
        xq[:, 1:4] /= scale
        pred = (np.tanh(xq @ params[0] + params[1]) @ params[2] + params[3]).ravel() * scale
        return float(np.abs(np.clip(pred, 0, None) - yq).mean())

    return mae


def _scores(fit_set: Any, test: Any, traffic: bool = True) -> dict[str, float]:
    n, bm = test.n_stations, test.bin_minutes
    mk = fit_markov(fit_set.locations, n, bin_minutes=bm)
    mh = fit_markov(fit_set.locations, n, bin_minutes=bm, by_hour=True)
    a = next_location_accuracy(mk, test.locations, bin_minutes=bm)
    b = next_location_accuracy(mh, test.locations, bin_minutes=bm, backoff=mk)
    out = {"markov_acc1": a["acc1"], "markov_acc5": a["acc5"],
           "markov_hour_acc1": b["acc1"], "markov_hour_acc5": b["acc5"]}
    if traffic and test.T > 4:
        out["ridge_mae"] = next_traffic_mae(fit_ridge(fit_set.traffic, bin_minutes=bm), test.traffic,
                                            bin_minutes=bm)
        out["mlp_mae"] = fit_mlp(fit_set.traffic, bin_minutes=bm)(test.traffic)
    return out


def tstr(train: Any, test: Any, generated: dict[str, Any], *, traffic: bool = True,
         no_traffic: Collection[str] = ()) -> dict[str, dict[str, float]]:
    """Scores on ``test`` of predictors fitted on ``train`` (row ``TRTR``) and on each generated set,
    with ``<score>_ratio`` = TSTR / TRTR. All sets on one station table.

    The traffic scores (``ridge_mae``, ``mlp_mae``) are left out of every row where the real sets
    have no traffic (``traffic=False``) and of the rows of ``no_traffic`` (generated sets without
    traffic of their own)."""
    base = _scores(train, test, traffic)
    out: dict[str, dict[str, float]] = {"TRTR (real train)": base}
    for name, g in generated.items():
        s = _scores(g, test, traffic and name not in no_traffic)
        s.update({f"{k}_ratio": (s[k] / base[k] if base[k] else float("nan")) for k in list(s)})
        out[name] = s
    return out
