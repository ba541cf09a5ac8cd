"""Graph-transition discrete diffusion: fast paths against dense brute-force oracles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from scipy import sparse

from mstdiff.diffusion.discrete import (
    GraphTransition,
    categorical_sample,
    chebyshev_coefficients,
    graph_schedule,
    max_tv_to_uniform,
    transition_dir,
)
from mstdiff.errors import InputError
from mstdiff.kg.graph import knn_graph, rate_matrix, synthetic_knn_rate

METHODS = ["eig", "cheb"]


def shared_data() -> Path:
    env = os.environ.get("MSTDIFF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def random_rate(n: int, seed: int, k: int = 3, components: int = 1) -> sparse.csr_matrix:
    """Rate matrix of a random kNN graph, optionally split into disconnected blocks."""
    rng = np.random.default_rng(seed)
    sizes = np.array_split(np.arange(n), components)
    blocks = []
    for part in sizes:
        x = rng.normal(size=(part.size, 4))
        blocks.append(knn_graph(x, min(k, part.size - 1), dist_quantile=None))
    a = sparse.block_diag(blocks, format="csr")
    return rate_matrix(a, k)


def dense_q(rate: sparse.spmatrix, t: float, eps: float) -> np.ndarray:
    """Brute-force oracle: ``e^{−εt} expm(tR) + (1 − e^{−εt}) 11ᵀ/N`` in float64."""
    n = rate.shape[0]
    g = np.exp(-eps * t)
    return g * scipy.linalg.expm(t * rate.toarray()) + (1.0 - g) / n


def all_rows(trans: GraphTransition, s: int) -> np.ndarray:
    n = trans.num_states
    return trans.marginal(torch.arange(n)[None, :], torch.tensor([s]))[0].double().numpy()


# ---------------------------------------------------------------------------------------- schedule
def test_schedule_is_increasing_float64_and_reaches_the_target():
    ab = graph_schedule(50, eps=0.5, tv_target=0.005)
    assert ab.dtype == np.float64 and ab.shape == (51,)
    assert ab[0] == 0.0 and np.all(np.diff(ab) > 0)
    assert np.exp(-0.5 * ab[-1]) == pytest.approx(0.005)
    lin = graph_schedule(10, eps=1.0, kind="linear")
    np.testing.assert_allclose(np.diff(lin), lin[-1] / 10)
    for bad in ({"eps": 0.0}, {"tv_target": 1.5}, {"num_steps": 0}, {"kind": "foo"}):
        with pytest.raises(InputError):
            graph_schedule(**bad)


def test_chebyshev_coefficients_sum_to_one_and_stop_at_tolerance():
    c = chebyshev_coefficients(10.0, 3.0, 1e-9)
    assert c.sum() == pytest.approx(1.0, abs=1e-8)  # exp(tR) 1 = 1 and T_k(1) = 1
    assert c.size < 60
    assert chebyshev_coefficients(0.0, 3.0, 1e-9).tolist() == [1.0]


# ---------------------------------------------------------------------------------------- marginals
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_marginal_matches_dense_expm(method, seed, fused):
    """Rows of Q̄_s at single states (fused one-hot tiles or PyTorch) = the expm oracle; s = 0 one-hot."""
    rate = random_rate(40, seed, components=1 + seed % 2)
    trans = GraphTransition(rate, num_steps=12, method=method)
    trans.fused = fused
    ab = trans._alpha_bar64
    assert np.array_equal(all_rows(trans, 0), np.eye(40))
    for s in (1, 3, 7, 12):
        got = all_rows(trans, s)
        ref = dense_q(rate, ab[s], trans.eps)
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert rel < 1e-5, (s, rel)


@pytest.mark.parametrize("method", METHODS)
def test_rows_are_distributions_and_step_zero_is_identity(method):
    rate = random_rate(30, 3)
    trans = GraphTransition(rate, num_steps=8, method=method)
    for s in range(9):
        rows = all_rows(trans, s)
        assert rows.min() >= 0
        np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(all_rows(trans, 0), np.eye(30))
    gen = torch.Generator().manual_seed(0)
    l0 = torch.randint(30, (4, 6), generator=gen)
    assert torch.equal(trans.q_sample(l0, torch.zeros(4, dtype=torch.long), gen), l0)
    probs = torch.softmax(torch.randn(4, 6, 30, generator=gen), -1)
    assert torch.equal(trans.propagate(probs, torch.zeros(4, dtype=torch.long)), probs)


@pytest.mark.parametrize("method", METHODS)
def test_step_composes_with_cumulative(method):
    """``Q_s Q̄_{s−1} = Q̄_s`` (rows of Q_s propagated by Q̄_{s−1})."""
    rate = random_rate(35, 4)
    trans = GraphTransition(rate, num_steps=10, method=method)
    eye = torch.eye(35).expand(2, 35, 35)
    for s in (1, 2, 6, 10):
        sv = torch.full((2,), s)
        q_step = trans.propagate(eye, sv, cumulative=False)
        composed = trans.propagate(q_step, sv - 1)[0].double().numpy()
        np.testing.assert_allclose(composed, all_rows(trans, s), atol=2e-6)
        np.testing.assert_allclose(q_step[0].double().numpy(),
                                   dense_q(rate, trans._alpha_bar64[s] - trans._alpha_bar64[s - 1],
                                           trans.eps), atol=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_final_step_is_uniform_on_a_disconnected_graph(method):
    rate = random_rate(60, 5, components=3)
    rate = sparse.block_diag([rate, sparse.csr_matrix((2, 2))], format="csr")  # + 2 isolated states
    trans = GraphTransition(rate, method=method)
    assert max_tv_to_uniform(trans) < 0.01
    assert trans.tv_bound() < 0.01
    # the uniform jump is what makes it uniform: without it a component cannot be left
    no_mix = GraphTransition(rate, eps=1e-6, alpha_bar=trans._alpha_bar64, method=method)
    assert max_tv_to_uniform(no_mix) > 0.5


def test_final_step_is_uniform_on_the_default_synthetic_graph():
    trans = GraphTransition(synthetic_knn_rate(400, 8, seed=3))
    assert trans.num_steps == 50
    assert max_tv_to_uniform(trans) < 0.01


# ---------------------------------------------------------------------------------------- posterior
@pytest.mark.parametrize("method", METHODS)
def test_posterior_matches_bayes_rule(method):
    rate = random_rate(25, 6)
    trans = GraphTransition(rate, num_steps=10, method=method)
    ab = trans._alpha_bar64
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(25, (4, 5), generator=gen)
    s = torch.tensor([1, 2, 7, 10])
    ls = trans.q_sample(x0, s, gen)
    post = trans.posterior(x0, ls, s).double().numpy()
    soft = torch.softmax(torch.randn(4, 5, 25, generator=gen), -1)
    post_soft = trans.posterior(soft, ls, s).double().numpy()
    for b in range(4):
        sb = int(s[b])
        q_step = dense_q(rate, ab[sb] - ab[sb - 1], trans.eps)
        q_prev = dense_q(rate, ab[sb - 1], trans.eps)
        for t in range(5):
            ref = q_step[:, ls[b, t]] * q_prev[x0[b, t], :]
            np.testing.assert_allclose(post[b, t], ref / ref.sum(), atol=2e-6)
            ref_soft = q_step[:, ls[b, t]] * (soft[b, t].double().numpy() @ q_prev)
            np.testing.assert_allclose(post_soft[b, t], ref_soft / ref_soft.sum(), atol=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_reverse_probs_with_peaked_logits_equals_posterior(method):
    trans = GraphTransition(random_rate(30, 7), num_steps=10, method=method)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(30, (3, 8), generator=gen)
    s = torch.tensor([1, 5, 10])
    ls = trans.q_sample(x0, s, gen)
    logits = 1e4 * torch.nn.functional.one_hot(x0, 30).float()
    torch.testing.assert_close(trans.reverse_probs(logits, ls, s), trans.posterior(x0, ls, s),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        trans.posterior(x0, ls, torch.zeros(3, dtype=torch.long))  # s = 0 has no posterior


@pytest.mark.parametrize("method", METHODS)
def test_gradients_flow_and_match_finite_differences(method):
    trans = GraphTransition(random_rate(12, 8), num_steps=6, method=method, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randint(12, (2, 3), generator=gen)
    s = torch.tensor([2, 6])
    ls = trans.q_sample(x0, s, gen)
    logits = torch.randn(2, 3, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: trans.reverse_probs(z, ls, s), (logits,))
    q = trans.posterior(x0, ls, s)
    p = trans.reverse_probs(logits, ls, s)
    kl = (q * (q.log() - p.log())).sum()
    kl.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_posterior_kl_equals_the_explicit_kl_and_its_gradient(method):
    trans = GraphTransition(random_rate(30, 13), num_steps=10, method=method, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    l0 = torch.randint(30, (4, 6), generator=gen)
    s = torch.tensor([1, 2, 6, 10])
    ls = trans.q_sample(l0, s, gen)
    z1 = torch.randn(4, 6, 30, dtype=torch.float64, generator=gen, requires_grad=True)
    z2 = z1.detach().clone().requires_grad_(True)
    q = trans.posterior(l0, ls, s)
    p = trans.reverse_probs(z1, ls, s)
    explicit = (torch.xlogy(q, q) - q * p.log()).sum(-1)
    fast = trans.posterior_kl(l0, z2, ls, s)
    torch.testing.assert_close(fast, explicit, atol=1e-10, rtol=1e-8)
    assert (fast >= -1e-12).all()
    explicit.sum().backward()
    fast.sum().backward()
    torch.testing.assert_close(z2.grad, z1.grad, atol=1e-10, rtol=1e-7)
    # a perfect prediction has zero loss
    exact = trans.posterior_kl(l0, 1e4 * torch.nn.functional.one_hot(l0, 30).double(), ls, s)
    assert float(exact.abs().max()) < 1e-9


# ---------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("method", METHODS)
def test_q_sample_frequencies_match_marginal(method):
    n = 20
    trans = GraphTransition(random_rate(n, 9, components=2), num_steps=10, method=method)
    gen = torch.Generator().manual_seed(4)
    draws = 20000
    for start, s in ((3, 2), (3, 5), (15, 9)):
        l0 = torch.full((draws // 10, 10), start)
        got = trans.q_sample(l0, torch.full((draws // 10,), s), gen).reshape(-1)
        freq = np.bincount(got.numpy(), minlength=n)
        expect = all_rows(trans, s)[start] * draws
        big = expect >= 5
        obs = np.append(freq[big], freq[~big].sum())
        exp = np.append(expect[big], expect[~big].sum())
        keep = exp > 0
        stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
        p = scipy.stats.chi2.sf(stat, keep.sum() - 1)
        assert p > 1e-4, (start, s, stat)


def test_q_sample_is_reproducible_and_step_samples_valid_states():
    trans = GraphTransition(random_rate(20, 10), num_steps=10)
    l0 = torch.arange(20).reshape(2, 10)
    s = torch.tensor([4, 9])
    a = trans.q_sample(l0, s, torch.Generator().manual_seed(7))
    b = trans.q_sample(l0, s, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    nxt = trans.step(torch.randn(2, 10, 20), a, s, torch.Generator().manual_seed(8))
    assert nxt.shape == (2, 10) and int(nxt.min()) >= 0 and int(nxt.max()) < 20
    prior = trans.sample_prior((3, 4), torch.Generator().manual_seed(0))
    assert prior.shape == (3, 4)


def test_categorical_sample_follows_probabilities():
    probs = torch.tensor([[0.0, 0.25, 0.75]]).expand(40000, 3)
    x = categorical_sample(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(x, minlength=3).double() / 40000
    assert freq[0] == 0 and abs(float(freq[2]) - 0.75) < 0.01


# ---------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("method", METHODS)
def test_save_load_roundtrip(tmp_path, method):
    trans = GraphTransition(random_rate(30, 11), num_steps=7, method=method, meta={"k": 3})
    trans.save(tmp_path / "t.pt")
    back = GraphTransition.load(tmp_path / "t.pt")
    assert back.method == method and back.num_states == 30 and back.num_steps == 7
    assert back.meta == {"k": 3}
    l0 = torch.arange(30).reshape(3, 10)
    s = torch.tensor([1, 4, 7])
    torch.testing.assert_close(back.marginal(l0, s), trans.marginal(l0, s))
    other = GraphTransition.load(tmp_path / "t.pt", method="cheb" if method == "eig" else "eig")
    torch.testing.assert_close(other.marginal(l0, s), trans.marginal(l0, s), atol=2e-6, rtol=0)


def test_rejects_bad_rate_matrices():
    good = random_rate(10, 12)
    with pytest.raises(InputError):
        GraphTransition(good[:, :9])
    asym = good.tolil()
    asym[0, 1] += 0.1
    asym[0, 0] -= 0.1
    with pytest.raises(InputError):
        GraphTransition(asym.tocsr())
    with pytest.raises(InputError):
        GraphTransition(good + sparse.identity(10))


def test_transition_dir_writes_and_skips(tmp_path):
    emb_dir = tmp_path / "emb"
    emb_dir.mkdir()
    rng = np.random.default_rng(0)
    np.save(emb_dir / "station_embeddings.npy", rng.normal(size=(80, 8)).astype(np.float32))
    out = transition_dir(emb_dir, tmp_path / "tr", k=5)
    from mstdiff.io import read_json

    meta = read_json(out / "meta.json")
    assert meta["tv_max_exact"] < 0.01 and meta["n_states"] == 80
    stamp = (out / "meta.json").stat().st_mtime_ns
    transition_dir(emb_dir, tmp_path / "tr", k=5)  # same parameters: nothing to do
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(InputError):
        transition_dir(emb_dir, tmp_path / "tr", k=6)
    transition_dir(emb_dir, tmp_path / "tr", k=6, overwrite=True)
    trans = GraphTransition.load(out / "transition.pt")
    assert trans.meta["k"] == 6
    assert sparse.load_npz(out / "knn.npz").shape == (80, 80)


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_final_step_is_uniform_on_the_shanghai_station_graph():
    path = shared_data() / "shanghai_telecom" / "base_stations_all.csv"
    if not path.exists():
        pytest.skip(f"real data absent: {path} (set MSTDIFF_SHARED_DATA to the shared data folder)")
    import pandas as pd

    from mstdiff.kg.triples import project_km

    st = pd.read_csv(path)
    xy = project_km(st["latitude"].to_numpy(), st["longitude"].to_numpy())
    # the kNN graph of the stations (geographic position stands in for the TuckER embedding here;
    # the construction, degree and rate normalisation are those of `mstdiff kg transition`)
    rate = rate_matrix(knn_graph(xy, 8, metric="euclidean"), 8)
    trans = GraphTransition(rate)
    assert trans.num_states == 3042
    assert max_tv_to_uniform(trans, block=1024) < 0.01


def test_rows_dedup_matches_per_token_rows():
    """Repeated (state, step) pairs are computed once; the result equals the row-by-row oracle."""
    from mstdiff.kg.graph import synthetic_knn_rate

    gt = GraphTransition(synthetic_knn_rate(25, k=4, seed=2), num_steps=5, dtype=torch.float64)
    states = torch.tensor([3, 3, 7, 3, 7, 0, 24])
    steps = torch.tensor([2, 2, 2, 4, 2, 0, 5])
    rows = gt._rows_flat(states, steps, "bar")
    for i in range(states.numel()):
        one = gt._rows_flat_unique(states[i:i + 1], steps[i:i + 1], "bar")
        assert torch.allclose(rows[i], one[0], atol=1e-12)


def test_eig_mode_dense_rows_cheb_path_equals_eigenbasis_path():
    """In "eig" mode dense rows may take the Chebyshev path: both give the same product."""
    from mstdiff.kg.graph import synthetic_knn_rate

    gt = GraphTransition(synthetic_knn_rate(60, k=5, seed=4), num_steps=8, method="eig",
                         dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.softmax(torch.randn(40, 60, generator=g, dtype=torch.float64), -1)
    s = torch.randint(1, 9, (40,), generator=g)
    for which in ("bar", "step"):
        # the graph part enters Q weighted by keep = e^{−εt}; the series is cut for that product
        keep = (gt.keep_bar if which == "bar" else gt.keep_step)[s][:, None]
        a = gt._eig_apply(x, s, which) * keep
        b = gt._cheb_apply(x, s, which) * keep
        assert torch.allclose(a, b, atol=1e-7), (a - b).abs().max()


@pytest.mark.parametrize("tile", [0, 7, 1000])
@pytest.mark.parametrize("fused", [True, False])
def test_tiled_reordered_chebyshev_matches_the_expm_oracle(tile, fused):
    """RCM-ordered Y and cost-sorted row tiles (any tile size, mixed steps, with the fused Numba
    tile moves or PyTorch's) = dense expm rows."""
    rate = random_rate(50, seed=5, k=4, components=2)
    gt = GraphTransition(rate, num_steps=12, method="cheb", dtype=torch.float64)
    assert not torch.equal(gt.cheb_perm, torch.arange(50))  # the order really changed
    gt.cheb_tile = tile
    gt.fused = fused
    g = torch.Generator().manual_seed(2)
    x = torch.softmax(torch.randn(3, 23, 50, generator=g, dtype=torch.float64), -1)  # 69 rows
    s = torch.tensor([0, 5, 12])
    out = gt.propagate(x, s)
    for b in range(3):
        q = dense_q(rate, float(gt.alpha_bar[s[b]]), gt.eps)
        np.testing.assert_allclose(out[b].numpy(), x[b].numpy() @ q, atol=1e-6)
    plain = GraphTransition(rate, num_steps=12, method="cheb", dtype=torch.float64, reorder=False)
    plain.cheb_tile = 0
    xg = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    (gt.propagate(xg, s) * w).sum().backward()
    xp = x.clone().requires_grad_(True)
    (plain.propagate(xp, s) * w).sum().backward()
    torch.testing.assert_close(xg.grad, xp.grad, atol=1e-9, rtol=1e-9)
