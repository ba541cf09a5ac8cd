"""TuckER: learns a small synthetic city graph far better than random, resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mstdiff.kg.tucker import (
    TuckerConfig,
    add_reciprocals,
    evaluate_link_prediction,
    random_embedding_baseline,
    rank_metrics,
    rank_triples,
    split_triples,
    train_tucker,
)

FAST = {"entity_dim": 32, "relation_dim": 8, "epochs": 40, "batch_size": 64}


def city_graph(side: int = 10) -> tuple[np.ndarray, int, int]:
    """Stations on a side x side grid: borders (0), 2x2-block regions (1), quadrant POI types (2)."""
    n = side * side
    idx = np.arange(n).reshape(side, side)
    edges = [(idx[i, j], idx[i, j + 1]) for i in range(side) for j in range(side - 1)]
    edges += [(idx[i, j], idx[i + 1, j]) for i in range(side - 1) for j in range(side)]
    e = np.array(edges)
    triples = [np.c_[e[:, 0], np.zeros(len(e), int), e[:, 1]], np.c_[e[:, 1], np.zeros(len(e), int), e[:, 0]]]
    half = (side + 1) // 2
    n_regions = half * half
    ii, jj = np.divmod(np.arange(n), side)
    region = n + (ii // 2) * half + jj // 2
    triples.append(np.c_[np.arange(n), np.ones(n, int), region])
    category = n + n_regions + 2 * (ii >= side // 2) + (jj >= side // 2)
    triples.append(np.c_[np.arange(n), np.full(n, 2), category])
    return np.concatenate(triples).astype(np.int64), n + n_regions + 4, 3


def test_reciprocals_and_split_keep_symmetric_pairs_together():
    tri, n_ent, n_rel = city_graph(6)
    rec = add_reciprocals(tri, n_rel)
    assert rec.shape == (2 * len(tri), 3) and rec[len(tri):, 1].min() == n_rel
    train, test = split_triples(tri, 0.3, np.random.default_rng(0), symmetric_relations=(0,))
    assert len(train) + len(test) == len(tri) and len(test) > 0
    held = {(h, t) for h, r, t in test if r == 0}
    assert all((t, h) in held for h, t in held)  # both directions of a border on the same side
    seen = set(train[:, 0]) | set(train[:, 2])
    assert set(test[:, 0]) <= seen and set(test[:, 2]) <= seen


def test_filtered_ranks_on_a_hand_made_scorer():
    known = np.array([[0, 0, 1], [0, 0, 2], [1, 0, 2]])
    scores = torch.tensor([[0.0, 5.0, 9.0, 1.0], [0.0, 0.0, 3.0, 3.0]])

    def score(h, r):  # rows by head; same scores for the inverse relation
        return scores[h.clamp(max=1)]

    ranks = rank_triples(score, known[:1], known, 1)
    # tail of (0, 0, 1): entity 2 scores higher but is a known answer -> filtered -> rank 1;
    # head of (1, 0⁻¹, 0): scores of row 1: entity 0 scores 0 behind 2 and 3 (2 is not a known
    # answer of (1, 0⁻¹, ?)), tie with 1 counts half -> 1 + 2 + 0.5
    np.testing.assert_allclose(ranks, [1.0, 3.5])
    m = rank_metrics(np.array([1.0, 2.0, 20.0]))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.05) / 3) and m["hits@10"] == pytest.approx(2 / 3)


def test_tucker_beats_random_embeddings():
    tri, n_ent, n_rel = city_graph(10)
    train, test = split_triples(tri, 0.15, np.random.default_rng(1), symmetric_relations=(0,))
    cfg = TuckerConfig(**FAST)
    res = train_tucker(train, n_ent, n_rel, cfg, progress=False)
    assert res.entity_embeddings.shape == (n_ent, 32)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    trained = evaluate_link_prediction(res.model, test, tri, n_rel)
    rand = random_embedding_baseline(test, tri, n_ent, n_rel, cfg)
    assert rand["mrr"] < 0.1
    assert trained["mrr"] > 0.25 and trained["mrr"] > 4 * rand["mrr"], (trained, rand)
    assert trained["hits@10"] > 0.5


def test_training_is_seeded_and_resumes_exactly(tmp_path):
    tri, n_ent, n_rel = city_graph(6)
    cfg = TuckerConfig(**{**FAST, "epochs": 6, "checkpoint_every": 1})
    full = train_tucker(tri, n_ent, n_rel, cfg, progress=False)
    again = train_tucker(tri, n_ent, n_rel, cfg, progress=False)
    np.testing.assert_array_equal(full.entity_embeddings, again.entity_embeddings)
    state = torch.get_rng_state()
    ckpt = tmp_path / "ck.pt"
    half = TuckerConfig(**{**FAST, "epochs": 3, "checkpoint_every": 1})
    first = train_tucker(tri, n_ent, n_rel, half, checkpoint=ckpt, progress=False)
    assert ckpt.exists() and len(first.history) == 3
    resumed = train_tucker(tri, n_ent, n_rel, cfg, checkpoint=ckpt, progress=False)
    assert resumed.resumed_from_epoch == 3
    np.testing.assert_array_equal(resumed.entity_embeddings, full.entity_embeddings)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    other = train_tucker(tri, n_ent, n_rel, TuckerConfig(**{**FAST, "epochs": 1, "seed": 5}),
                         checkpoint=ckpt, progress=False)  # other settings: starts afresh
    assert other.resumed_from_epoch == 0


def test_a_last_batch_of_one_query_is_merged():
    from mstdiff.kg.tucker import _group_queries

    tri, n_ent, n_rel = city_graph(4)
    n_q = _group_queries(add_reciprocals(tri, n_rel), 2 * n_rel)[0].shape[0]
    cfg = TuckerConfig(**{**FAST, "epochs": 1, "batch_size": n_q - 1})  # batch norm fails on 1 row
    assert len(train_tucker(tri, n_ent, n_rel, cfg, progress=False).history) == 1


def test_embed_kg_dir_writes_station_embeddings(tmp_path):
    from mstdiff.io import read_json
    from mstdiff.kg.stages import embed_kg_dir
    from mstdiff.kg.triples import KnowledgeGraph

    tri, n_ent, n_rel = city_graph(8)
    n = 64
    names = [f"station:{i}" for i in range(n)] + [f"region:{i}" for i in range(n_ent - n - 4)]
    names += [f"poi:{c}" for c in "abcd"]
    types = [name.split(":")[0] for name in names]
    kg = KnowledgeGraph(names, types, ["BaseBorderBy", "BaseLocateAt", "ServedBy"], tri, n)
    kg.save(tmp_path / "kg")
    out = embed_kg_dir(tmp_path / "kg", tmp_path / "emb", progress=False, **{**FAST, "epochs": 15})
    emb = np.load(out / "station_embeddings.npy")
    assert emb.shape == (n, 32) and emb.dtype == np.float32
    metrics = read_json(out / "metrics.json")
    assert metrics["trained"]["mrr"] > metrics["random_embeddings"]["mrr"]
    assert not (tmp_path / ".emb.checkpoint.pt").exists()
    stamp = (out / "meta.json").stat().st_mtime_ns
    embed_kg_dir(tmp_path / "kg", tmp_path / "emb", progress=False, **{**FAST, "epochs": 15})
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def _loss_setup(n: int = 37, b: int = 9, d: int = 5, seed: int = 0):
    from mstdiff.kg.tucker import _true_pairs

    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 4, b)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    tails = np.concatenate([np.sort(rng.choice(n, k, replace=False)) for k in lens])
    rows, cols = _true_pairs(np.arange(b), indptr, tails)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    return x, emb, rows, cols


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("smooth", [0.0, 0.1])
def test_fused_one_to_n_loss_equals_the_dense_bce_oracle(smooth, monkeypatch):
    import mstdiff.kg.tucker as tk

    x, emb, rows, cols = _loss_setup()
    target = torch.zeros(x.shape[0], emb.shape[0], dtype=torch.float64)
    target[rows, cols] = 1.0
    target = (1 - smooth) * target + 1.0 / emb.shape[0]
    dense = torch.nn.functional.binary_cross_entropy_with_logits(x @ emb.t(), target)
    monkeypatch.setattr(tk, "CHUNK_BYTES", 4 * x.shape[0] * 8)  # blocks of 8 entities: the loop is used
    fast = tk.one_to_n_loss(x, emb, torch.as_tensor(rows), torch.as_tensor(cols), label_smoothing=smooth)
    assert float(fast.detach()) == pytest.approx(float(dense.detach()), rel=1e-12)
    for a, b in zip(_grads(fast, x, emb), _grads(dense, x, emb)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    w = torch.rand(x.shape[0], dtype=torch.float64)
    weighted = tk.softplus_sum(x, emb, w)
    ref = (torch.nn.functional.softplus(x @ emb.t()).sum(1) * w).sum()
    assert float(weighted.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    for a, b in zip(_grads(weighted, x, emb), _grads(ref, x, emb)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_sampled_loss_is_exact_with_every_entity_and_unbiased_with_fewer():
    from itertools import combinations

    from mstdiff.kg.tucker import one_to_n_loss

    x, emb, rows, cols = _loss_setup(n=10, b=6)
    r, c = torch.as_tensor(rows), torch.as_tensor(cols)
    n = emb.shape[0]
    full = one_to_n_loss(x, emb, r, c, label_smoothing=0.1)
    every = one_to_n_loss(x, emb, r, c, label_smoothing=0.1, sample=torch.arange(n))
    assert float(every.detach()) == pytest.approx(float(full.detach()), rel=1e-12)
    # the mean over every sample of 4 entities (more than any query's true tails) is the exact loss
    subsets = list(combinations(range(n), 4))
    est, grad_x, grad_e = 0.0, torch.zeros_like(x), torch.zeros_like(emb)
    for s in subsets:
        loss = one_to_n_loss(x, emb, r, c, label_smoothing=0.1, sample=torch.tensor(s))
        gx, ge = _grads(loss, x, emb)
        est, grad_x, grad_e = est + float(loss.detach()), grad_x + gx, grad_e + ge
    k = len(subsets)
    assert est / k == pytest.approx(float(full.detach()), rel=1e-10)
    fx, fe = _grads(full, x, emb)
    torch.testing.assert_close(grad_x / k, fx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_e / k, fe, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scoring", ["full", "sampled"])
def test_fast_scorings_train_like_the_dense_oracle(scoring):
    tri, n_ent, n_rel = city_graph(6)
    base = {**FAST, "epochs": 3}
    dense = train_tucker(tri, n_ent, n_rel, TuckerConfig(**base, scoring="dense"), progress=False)
    fast = train_tucker(tri, n_ent, n_rel, TuckerConfig(**base, scoring=scoring, negatives=n_ent),
                        progress=False)  # negatives >= N_e: the sampled path is exact
    np.testing.assert_allclose([h["loss"] for h in fast.history], [h["loss"] for h in dense.history],
                               rtol=1e-5)
    np.testing.assert_allclose(fast.entity_embeddings, dense.entity_embeddings, atol=1e-4)


def test_sampled_scoring_learns_is_seeded_and_resumes_exactly(tmp_path):
    tri, n_ent, n_rel = city_graph(10)
    train, test = split_triples(tri, 0.15, np.random.default_rng(1), symmetric_relations=(0,))
    cfg = TuckerConfig(**{**FAST, "scoring": "sampled", "negatives": 48})
    res = train_tucker(train, n_ent, n_rel, cfg, progress=False)
    trained = evaluate_link_prediction(res.model, test, tri, n_rel)
    assert trained["mrr"] > 0.25 and trained["hits@10"] > 0.5, trained
    short = TuckerConfig(**{**FAST, "scoring": "sampled", "negatives": 48, "epochs": 4,
                            "checkpoint_every": 1})
    full = train_tucker(train, n_ent, n_rel, short, progress=False)
    np.testing.assert_array_equal(full.entity_embeddings,
                                  train_tucker(train, n_ent, n_rel, short, progress=False).entity_embeddings)
    ckpt = tmp_path / "ck.pt"
    train_tucker(train, n_ent, n_rel, TuckerConfig(**{**asdict_(short), "epochs": 2}), checkpoint=ckpt,
                 progress=False)
    resumed = train_tucker(train, n_ent, n_rel, short, checkpoint=ckpt, progress=False)
    assert resumed.resumed_from_epoch == 2
    np.testing.assert_array_equal(resumed.entity_embeddings, full.entity_embeddings)


def asdict_(cfg):
    from dataclasses import asdict

    return asdict(cfg)


def test_auto_scoring_switches_at_the_entity_threshold():
    cfg = TuckerConfig(full_max_entities=100)
    assert cfg.resolved_scoring(100) == "full" and cfg.resolved_scoring(101) == "sampled"
    assert TuckerConfig(scoring="dense").resolved_scoring(10**6) == "dense"


def test_one_ranking_gives_the_per_relation_metrics():
    from mstdiff.kg.tucker import link_prediction_report

    tri, n_ent, n_rel = city_graph(6)
    train, test = split_triples(tri, 0.3, np.random.default_rng(0), symmetric_relations=(0,))
    res = train_tucker(train, n_ent, n_rel, TuckerConfig(**{**FAST, "epochs": 3}), progress=False)
    overall, per = link_prediction_report(res.model, test, tri, ["border", "region", "poi"])
    assert overall == evaluate_link_prediction(res.model, test, tri, n_rel)
    for r, name in enumerate(["border", "region", "poi"]):
        assert per[name] == evaluate_link_prediction(res.model, test[test[:, 1] == r], tri, n_rel)
