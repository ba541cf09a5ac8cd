"""TuckER knowledge-graph embeddings (Balažević, Allen & Hospedales, EMNLP 2019).

Score of a triple ``(h, r, t)``: ``φ(h, r, t) = W ×₁ w_r ×₂ e_h ×₃ e_t`` with a core tensor
``W ∈ R^{d_r × d_e × d_e}`` shared by all relations (paper eq. 3). Training follows the paper:

* 1-N scoring: one forward pass scores ``(h, r)`` against every entity as tail;
* reciprocal relations: each ``(h, r, t)`` also trains ``(t, r⁻¹, h)``; relations ``R..2R-1`` are
  the inverses;
* loss: binary cross-entropy on ``sigmoid(φ)`` with label smoothing ``y ← (1-ls)·y + 1/N_e``;
* input dropout on ``e_h``, hidden dropouts before and after the batch-normalised ``e_h ×₁ W_r``;
  batch norm on the input and hidden entity vectors; Adam with exponential learning-rate decay.

How the 1-N loss is computed (``TuckerConfig.scoring``). Per query ``b`` with projected head
``x_b = bn(e_h ×₁ W_r)`` and logits ``z_bj = x_b · e_j``, the mean BCE with smoothed targets is

    L = (1 / (B·N_e)) [ Σ_b Σ_j softplus(z_bj) − (1/N_e) Σ_b x_b · Σ_j e_j − (1−ls) Σ_{(b,t) true} z_bt ]

(``BCE(z, y) = softplus(z) − y·z``). Only the softplus sum needs all ``B × N_e`` logits; the other two
terms cost ``O(B·d)`` and ``O(#true·d)``.

* ``"dense"``: the textbook computation (a dense ``(B, N_e)`` target and
  ``binary_cross_entropy_with_logits``), kept as the oracle of the tests and the "before" of
  ``benchmarks/tucker_scale.py``;
* ``"full"``: the same loss, exactly, from the decomposition above. The softplus sum and its
  gradient (``sigmoid(z)``) are computed in row chunks of ~1 MB of logits, so they stay in cache, and
  no target is built: about 2–3x less time per epoch than ``"dense"``;
* ``"sampled"``: an unbiased estimate of the same loss when ``N_e`` is large. Every batch draws one
  shared uniform sample ``S`` of ``negatives`` entities (from the training generator); per query the
  true tails' softplus terms are exact and the rest of the sum is the sample's,
  ``(N_e − n_b)/(|S| − m_b) · Σ_{j ∈ S, j not a true tail} softplus(z_bj)`` (``n_b`` true tails,
  ``m_b`` of them in ``S``). Its cost per query is ``negatives`` scores instead of ``N_e``; with
  ``negatives ≥ N_e`` it equals ``"full"``;
* ``"auto"`` (default): ``"full"`` up to ``full_max_entities`` entities, ``"sampled"`` above.

Evaluation: filtered ranking (Bordes et al. 2013) of held-out triples in both directions; ties are
ranked at the mean of their optimistic and pessimistic positions, so that a constant scorer gets the
random-chance MRR instead of a perfect one.

All randomness is local: initialisation, dropout and batch order come from ``config.seed`` through
``torch.random.fork_rng`` and an explicit ``torch.Generator``; a checkpoint stores both states, so a
resumed run reproduces the uninterrupted one bit for bit (on the same device and thread count).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mstdiff.config import Check, between, ge, gt, one_of
from mstdiff.io import atomic_write_bytes
from mstdiff.torchio import load_torch_file

logger = logging.getLogger(__name__)

SCORINGS = ("auto", "full", "sampled", "dense")
CHUNK_BYTES = 1 << 20  # logits per chunk of the fused softplus sum: ~1 MB, a core's L2


@dataclass
class TuckerConfig:
    """Hyper-parameters of :func:`train_tucker`, tuned on the Shanghai station graph (3,042 stations).

    The dropouts are lower and the learning rate higher than the paper's FB15k-237 setting: with
    0.2/0.2/0.3 dropouts and lr 0.003, the station-specific relations (``BaseBorderBy``,
    ``BaseLocateAt``) stayed at random-level MRR after 60 epochs; with these defaults they reach about
    0.11 and 0.5 (held-out filtered MRR).
    """

    CHECKS: ClassVar[dict[str, Check]] = {
        "entity_dim": ge(1), "relation_dim": ge(1), "epochs": ge(0), "batch_size": ge(2), "lr": gt(0),
        "lr_decay": between(0, 1, open_lo=True), "label_smoothing": between(0, 1, open_hi=True),
        "input_dropout": between(0, 1, open_hi=True), "hidden_dropout1": between(0, 1, open_hi=True),
        "hidden_dropout2": between(0, 1, open_hi=True), "seed": ge(0), "checkpoint_every": ge(1),
        "num_threads": ge(1), "scoring": one_of(*SCORINGS), "negatives": ge(1),
        "full_max_entities": ge(0),
    }

    entity_dim: int = 64  # d_e: size of entity (and station) embeddings
    relation_dim: int = 32  # d_r: size of relation embeddings
    epochs: int = 50  # passes over the (h, r) queries (MRR plateaus after ~40 on Shanghai)
    batch_size: int = 128  # (h, r) queries per step (1-N scoring)
    lr: float = 0.01  # Adam learning rate
    lr_decay: float = 0.99  # learning rate multiplied by this after every epoch
    label_smoothing: float = 0.1  # y <- (1 - ls) y + 1 / N_e
    input_dropout: float = 0.0  # on the batch-normalised head embedding
    hidden_dropout1: float = 0.1  # on the relation-specific core W_r
    hidden_dropout2: float = 0.0  # on the projected head before scoring
    seed: int = 0  # initialisation, dropout and batch order
    checkpoint_every: int = 5  # epochs between checkpoint writes (when a checkpoint path is given)
    num_threads: int | None = 1  # torch threads while training (None: as set); the ops are small, so
    # more threads mostly add synchronisation: 1.1 s vs 17 s per epoch on Shanghai on a busy 2-core host
    scoring: str = "auto"  # 1-N loss: "full" (exact), "sampled" (unbiased, shared negatives), "dense"
    # (the textbook oracle), "auto" (full up to full_max_entities entities); module docstring
    negatives: int = 4096  # entities scored per batch by "sampled" (besides each query's true tails)
    full_max_entities: int = 16384  # "auto" scores all entities up to this many, else samples

    def resolved_scoring(self, n_entities: int) -> str:
        """The scoring ``"auto"`` stands for at ``n_entities`` (other values unchanged)."""
        if self.scoring != "auto":
            return self.scoring
        return "full" if n_entities <= self.full_max_entities else "sampled"


class TuckER(nn.Module):
    """Entity and relation embeddings with a shared Tucker core (relations include inverses)."""

    def __init__(self, n_entities: int, n_relations: int, cfg: TuckerConfig) -> None:
        super().__init__()
        de, dr = cfg.entity_dim, cfg.relation_dim
        self.entity = nn.Embedding(n_entities, de)
        self.relation = nn.Embedding(n_relations, dr)
        self.core = nn.Parameter(torch.empty(dr, de, de).uniform_(-1.0, 1.0))
        nn.init.xavier_normal_(self.entity.weight)
        nn.init.xavier_normal_(self.relation.weight)
        self.bn0 = nn.BatchNorm1d(de)
        self.bn1 = nn.BatchNorm1d(de)
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.drop_h1 = nn.Dropout(cfg.hidden_dropout1)
        self.drop_h2 = nn.Dropout(cfg.hidden_dropout2)

    def project(self, head: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """``x = W ×₁ w_r ×₂ e_h`` (with batch norms and dropouts), ``(B, d_e)``: logits are ``x · e_t``."""
        de = self.entity.embedding_dim
        e = self.drop_in(self.bn0(self.entity(head)))  # (B, de)
        w = self.relation(rel) @ self.core.view(self.core.shape[0], -1)  # (B, de*de): W ×₁ w_r
        w = self.drop_h1(w.view(-1, de, de))  # (B, de, de)
        x = torch.bmm(e.unsqueeze(1), w).squeeze(1)  # (B, de): ×₂ e_h
        return self.drop_h2(self.bn1(x))

    def forward(self, head: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N_e)`` of every entity as the tail of ``(head, rel)``."""
        return self.project(head, rel) @ self.entity.weight.t()  # (B, N_e): ×₃ e_t for all t


# ---------------------------------------------------------------------------------------- 1-N loss
class _SoftplusSum(torch.autograd.Function):
    """``Σ_b w_b Σ_j softplus(x_b · e_j)`` over all pairs, in blocks of entities that stay in cache.

    The gradient (``w_b sigmoid(z_bj)`` contracted with ``E`` and ``x``) is computed with the value,
    one block of ``(B, n_c)`` logits at a time (~``CHUNK_BYTES``), so no ``(B, N)`` array is kept for
    the backward pass and ``E`` and its gradient are each streamed through memory once.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        b, n = x.shape[0], emb.shape[0]
        block = max(1, CHUNK_BYTES // (4 * max(b, 1)))  # entities per block
        need = ctx.needs_input_grad
        gx = torch.zeros_like(x) if need[0] else None
        ge = torch.empty_like(emb) if need[1] else None
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        w = weight[:, None] if weight is not None else None
        for j in range(0, n, block):
            ec = emb[j:j + block]  # (n_c, d)
            z = x @ ec.t()  # (B, n_c) logits
            sp = torch.nn.functional.softplus(z)
            total += (sp * w).sum(dtype=torch.float64) if w is not None else sp.sum(dtype=torch.float64)
            del sp
            if gx is None and ge is None:
                continue
            z.sigmoid_()  # d softplus(z) / dz
            if w is not None:
                z.mul_(w)
            if gx is not None:
                gx.addmm_(z, ec)
            if ge is not None:
                torch.mm(z.t(), x, out=ge[j:j + block])
        ctx.save_for_backward(gx, ge)
        return total.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gx, ge = ctx.saved_tensors
        return (gx * grad if gx is not None else None, ge * grad if ge is not None else None, None)


def softplus_sum(x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_b w_b Σ_j softplus(x_b · e_j)`` (scalar, differentiable in ``x`` and ``emb``; ``w = 1``
    when ``weight`` is None). Same value as ``softplus(x @ emb.T).sum()`` without the ``(B, N)``
    array."""
    return _SoftplusSum.apply(x, emb, weight)


def one_to_n_loss(
    x: torch.Tensor, emb: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *,
    label_smoothing: float, sample: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BCE of the 1-N scores ``x @ emb.T`` against smoothed targets (module docstring).

    ``x (B, d)``: projected heads; ``emb (N, d)``: entity embeddings; ``(rows, cols)``: the true
    (query, tail) pairs. ``sample``: entity indices ``S`` (distinct) for the sampled estimate; None
    for the exact loss, equal to ``binary_cross_entropy_with_logits(x @ emb.T, y)`` with
    ``y = (1 − ls)·onehot + 1/N``.
    """
    b, n = x.shape[0], emb.shape[0]
    z_true = (x[rows] * emb[cols]).sum(1)  # (P,) logits of the true pairs
    linear = (x @ emb.sum(0)).sum() / n + (1.0 - label_smoothing) * z_true.sum()
    if sample is None:
        sp = softplus_sum(x, emb)
    else:
        k = sample.numel()
        slot = torch.full((n,), -1, dtype=torch.long, device=x.device)
        slot[sample] = torch.arange(k, device=x.device)
        hit = slot[cols] >= 0  # true pairs whose tail is in the sample
        n_true = torch.bincount(rows, minlength=b).to(x.dtype)
        m_true = torch.bincount(rows[hit], minlength=b).to(x.dtype)
        w = (n - n_true) / (k - m_true).clamp_min(1.0)  # (B,) weight of a sampled non-true term
        sp_true = torch.nn.functional.softplus(z_true)
        sp = (softplus_sum(x, emb[sample], w) - (w[rows[hit]] * sp_true[hit]).sum() + sp_true.sum())
    return (sp - linear) / (b * n)


def _dense_loss(logits: torch.Tensor, rows: np.ndarray, cols: np.ndarray, smooth: float) -> torch.Tensor:
    """The textbook 1-N loss (scoring ``"dense"``): a dense smoothed target and PyTorch's BCE."""
    b, n = logits.shape
    target = torch.zeros(b, n)
    target[rows, cols] = 1.0
    target = ((1.0 - smooth) * target + 1.0 / n).to(logits.device)
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def _true_pairs(idx: np.ndarray, indptr: np.ndarray, tails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the true tails of queries ``idx`` (rows index ``idx``)."""
    lens = indptr[idx + 1] - indptr[idx]
    rows = np.repeat(np.arange(idx.size), lens)
    first = np.cumsum(lens) - lens
    cols = tails[np.repeat(indptr[idx], lens) + np.arange(rows.size) - np.repeat(first, lens)]
    return rows, cols


# ---------------------------------------------------------------------------------------- data
def add_reciprocals(triples: np.ndarray, n_relations: int) -> np.ndarray:
    """``(h, r, t)`` plus ``(t, r + R, h)``: the training set of the reciprocal model."""
    t = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    inv = np.stack([t[:, 2], t[:, 1] + n_relations, t[:, 0]], 1)
    return np.concatenate([t, inv])


def _group_queries(triples: np.ndarray, n_rel_total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (h, r) queries and a CSR list of their true tails: ``(queries (Q,2), indptr, tails)``."""
    key = triples[:, 0] * n_rel_total + triples[:, 1]
    order = np.lexsort((triples[:, 2], key))
    key_s, tails = key[order], triples[order, 2]
    uniq, start = np.unique(key_s, return_index=True)
    indptr = np.append(start, key_s.size)
    queries = np.stack([uniq // n_rel_total, uniq % n_rel_total], 1)
    return queries, indptr, tails


def split_triples(
    triples: np.ndarray, fraction: float, rng: np.random.Generator, *,
    symmetric_relations: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train, test)`` split of triples; ``test`` holds about ``fraction`` of them.

    For relations in ``symmetric_relations`` both directions of a pair go to the same side, so the
    test set cannot be answered by reading the reverse triple. Test triples whose head or tail does
    not occur in ``train`` are moved back to ``train`` (their embedding would be untrained).
    """
    t = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    if fraction <= 0 or t.shape[0] == 0:
        return t, t[:0]
    sym = np.isin(t[:, 1], np.asarray(symmetric_relations, dtype=np.int64))
    key = t.copy()
    key[sym, 0] = np.minimum(t[sym, 0], t[sym, 2])
    key[sym, 2] = np.maximum(t[sym, 0], t[sym, 2])
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    is_test_group = rng.random(group.max() + 1) < fraction
    test = is_test_group[group]
    seen = np.zeros(int(t[:, [0, 2]].max()) + 1, dtype=bool)
    seen[t[~test][:, [0, 2]].ravel()] = True
    unseen = test & ~(seen[t[:, 0]] & seen[t[:, 2]])
    test &= ~unseen
    return t[~test], t[test]


# ---------------------------------------------------------------------------------------- training
@dataclass
class TuckerResult:
    model: TuckER
    entity_embeddings: np.ndarray  # (N_e, d_e) float32
    relation_embeddings: np.ndarray  # (2R, d_r) float32, inverses last
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch loss
    resumed_from_epoch: int = 0


def _fingerprint(train: np.ndarray, n_entities: int, n_relations: int, cfg: TuckerConfig) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(train, dtype=np.int64).tobytes()).hexdigest()[:16]
    return {"triples_sha256": digest, "n_entities": n_entities, "n_relations": n_relations,
            "config": {k: v for k, v in asdict(cfg).items()
                       if k not in ("epochs", "checkpoint_every", "num_threads")}}


def train_tucker(
    train: np.ndarray,
    n_entities: int,
    n_relations: int,
    config: TuckerConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_epoch: Callable[[int, TuckER], None] | None = None,
) -> TuckerResult:
    """Train TuckER on ``train`` triples ``(M, 3)`` (relations ``0..n_relations-1``; inverses added).

    ``checkpoint``: a file written every ``config.checkpoint_every`` epochs and at the end; if it
    exists and matches the data and configuration, training resumes from it (a finished checkpoint
    returns at once). ``config.epochs`` may be raised to continue a finished run.
    """
    cfg = config or TuckerConfig()
    dev = torch.device(device)
    n_rel_total = 2 * n_relations
    data = add_reciprocals(train, n_relations)
    queries, indptr, tails = _group_queries(data, n_rel_total)
    fp = _fingerprint(train, n_entities, n_relations, cfg)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None

    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(n_entities, n_relations, cfg, data_fp=fp, queries=queries, indptr=indptr,
                      tails=tails, ckpt_path=ckpt_path, dev=dev, progress=progress, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(
    n_entities: int, n_relations: int, cfg: TuckerConfig, *, data_fp: dict[str, Any],
    queries: np.ndarray, indptr: np.ndarray, tails: np.ndarray, ckpt_path: Path | None,
    dev: torch.device, progress: bool, on_epoch: Callable[[int, TuckER], None] | None,
) -> TuckerResult:
    n_rel_total = 2 * n_relations
    fp = data_fp
    q_t = torch.as_tensor(queries, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = TuckER(n_entities, n_rel_total, cfg).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        start, history = 0, []  # type: int, list[dict[str, float]]
        if ckpt_path is not None and ckpt_path.exists():
            state = load_torch_file(ckpt_path, what="TuckER resume checkpoint", map_location=dev,
                                    fix="delete it to start TuckER afresh")
            if state.get("fingerprint") != fp:
                logger.warning("checkpoint %s is for other data or settings: starting afresh", ckpt_path)
            else:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                gen.set_state(state["generator"])
                torch.set_rng_state(state["torch_rng"])
                if dev.type == "cuda" and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], dev)
                start, history = int(state["epoch"]), list(state["history"])
                logger.info("resuming TuckER from %s at epoch %d", ckpt_path, start)

        def save_ckpt(epoch: int) -> None:
            if ckpt_path is None:
                return
            buf = io.BytesIO()
            torch.save({
                "fingerprint": fp, "epoch": epoch, "history": history,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            }, buf)
            atomic_write_bytes(ckpt_path, buf.getvalue())

        smooth = cfg.label_smoothing
        scoring = cfg.resolved_scoring(n_entities)
        n_neg = min(cfg.negatives, n_entities)
        if scoring == "sampled" and n_neg >= n_entities:
            scoring = "full"  # a sample of every entity is the exact loss
        if start < cfg.epochs:
            logger.info("TuckER: %d entities, %d queries, scoring %s%s", n_entities, queries.shape[0],
                        scoring, f" ({n_neg} negatives per batch)" if scoring == "sampled" else "")
        n_q = queries.shape[0]
        starts = list(range(0, n_q, cfg.batch_size))
        if len(starts) > 1 and n_q - starts[-1] == 1:
            starts.pop()  # batch norm needs two rows: a last batch of one joins the previous batch
        bar = tqdm(range(start, cfg.epochs), desc="TuckER", unit="epoch", disable=not progress,
                   initial=start, total=cfg.epochs)
        for epoch in bar:
            model.train()
            perm = torch.randperm(n_q, generator=gen).numpy()
            total, count = 0.0, 0
            for b0, b1 in zip(starts, [*starts[1:], n_q]):
                idx = perm[b0:b1]
                rows, cols = _true_pairs(idx, indptr, tails)
                qb = q_t[torch.as_tensor(idx, device=dev)]
                if scoring == "dense":
                    loss = _dense_loss(model(qb[:, 0], qb[:, 1]), rows, cols, smooth)
                else:
                    sample = None
                    if scoring == "sampled":
                        sample = torch.randperm(n_entities, generator=gen)[:n_neg].sort().values.to(dev)
                    loss = one_to_n_loss(model.project(qb[:, 0], qb[:, 1]), model.entity.weight,
                                         torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev),
                                         label_smoothing=smooth, sample=sample)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.size
                count += idx.size
            sched.step()
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
            if (epoch + 1) % max(cfg.checkpoint_every, 1) == 0 or epoch + 1 == cfg.epochs:
                save_ckpt(epoch + 1)
        bar.close()
        if start >= cfg.epochs:
            logger.info("checkpoint %s already has %d epochs", ckpt_path, start)

    model.eval()
    return TuckerResult(
        model=model,
        entity_embeddings=model.entity.weight.detach().cpu().numpy().astype(np.float32),
        relation_embeddings=model.relation.weight.detach().cpu().numpy().astype(np.float32),
        history=history,
        resumed_from_epoch=start,
    )


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def rank_triples(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    test: np.ndarray,
    known: np.ndarray,
    n_relations: int,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Filtered ranks of ``test`` triples, tail and head prediction (``(2M,)`` float array).

    ``score_fn(h, r) -> (B, N_e)`` scores tails of ``(h, r)`` with relations ``0..2R-1`` (inverse
    ``r + R`` predicts heads). Other true answers from ``known`` (all triples) are filtered out; ties
    count half.
    """
    n_rel_total = 2 * n_relations
    queries_all = add_reciprocals(known, n_relations)
    q_all, indptr, tails = _group_queries(queries_all, n_rel_total)
    lookup = {int(h) * n_rel_total + int(r): i for i, (h, r) in enumerate(q_all)}
    tq = add_reciprocals(test, n_relations)
    ranks = np.empty(tq.shape[0])
    for b0 in range(0, tq.shape[0], batch_size):
        b = tq[b0:b0 + batch_size]
        scores = score_fn(torch.as_tensor(b[:, 0]), torch.as_tensor(b[:, 1])).float().cpu()
        target = scores[torch.arange(len(b)), torch.as_tensor(b[:, 2])].clone()
        for i, (h, r, t) in enumerate(b):
            j = lookup[int(h) * n_rel_total + int(r)]
            others = tails[indptr[j]:indptr[j + 1]]
            scores[i, torch.as_tensor(others[others != t])] = -torch.inf
        higher = (scores > target[:, None]).sum(1)
        ties = (scores == target[:, None]).sum(1) - 1
        ranks[b0:b0 + len(b)] = (1 + higher + 0.5 * ties).numpy()
    return ranks


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """MRR and Hits@{1,3,10} of filtered ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {"mrr": float("nan"), "hits@1": float("nan"), "hits@3": float("nan"),
                "hits@10": float("nan"), "n": 0}
    return {"mrr": float(np.mean(1.0 / r)), "hits@1": float(np.mean(r <= 1)),
            "hits@3": float(np.mean(r <= 3)), "hits@10": float(np.mean(r <= 10)), "n": int(r.size)}


def _model_ranks(model: TuckER, test: np.ndarray, known: np.ndarray, n_relations: int,
                 batch_size: int) -> np.ndarray:
    model.eval()
    dev = next(model.parameters()).device

    def score(h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return model(h.to(dev), r.to(dev))

    return rank_triples(score, test, known, n_relations, batch_size=batch_size)


def evaluate_link_prediction(
    model: TuckER, test: np.ndarray, known: np.ndarray, n_relations: int, *, batch_size: int = 256
) -> dict[str, float]:
    """Filtered MRR / Hits@k of a (trained or untrained) model on held-out triples."""
    return rank_metrics(_model_ranks(model, test, known, n_relations, batch_size))


def link_prediction_report(
    model: TuckER, test: np.ndarray, known: np.ndarray, relations: list[str], *, batch_size: int = 256
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(overall, per relation)`` filtered metrics from one ranking of ``test`` (both directions).

    The same values as :func:`evaluate_link_prediction` on ``test`` and on each relation's triples,
    at the cost of one evaluation.
    """
    t = np.asarray(test, dtype=np.int64).reshape(-1, 3)
    ranks = _model_ranks(model, t, known, len(relations), batch_size)
    rel = np.concatenate([t[:, 1], t[:, 1]])  # tail predictions, then head predictions
    per = {name: rank_metrics(ranks[rel == r]) for r, name in enumerate(relations) if (rel == r).any()}
    return rank_metrics(ranks), per


def random_embedding_baseline(
    test: np.ndarray, known: np.ndarray, n_entities: int, n_relations: int, config: TuckerConfig,
    *, seed: int = 12345,
) -> dict[str, float]:
    """Link-prediction metrics of an untrained TuckER (random embeddings and core)."""
    cfg = TuckerConfig(**{**asdict(config), "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TuckER(n_entities, 2 * n_relations, cfg)
    return evaluate_link_prediction(model, test, known, n_relations)
