"""One property-test template for every location noise process (DESIGN §1, STYLE §2).

Each process is checked against brute-force dense matrices built independently of its code
(``scipy.linalg.expm`` for the graph process, the explicit absorbing matrices for the masked one):
rows sum to 1, ``s = 0`` is the identity, ``s = S`` is the stationary law, the posterior is Bayes'
rule on those matrices, the model's reverse step is ``∝ Q_s[:, l_s] ⊙ (softmax(z) Q̄_{s−1})``,
the loss's KL is the KL of those two, and ``q_sample`` / ``sample_reverse`` draw from the laws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from mstdiff.diffusion.absorbing import AbsorbingProcess, absorbing_schedule
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.kg.graph import knn_graph, rate_matrix

N, S = 7, 6


@dataclass
class Case:
    proc: Any
    Qbar: np.ndarray  # (S+1, K, K) cumulative matrices, K = number of tokens
    Q: np.ndarray  # (S+1, K, K) one-step matrices
    stationary: np.ndarray  # (K,)


def graph_case(method: str) -> Case:
    rng = np.random.default_rng(3)
    rate = rate_matrix(knn_graph(rng.normal(size=(N, 3)), 3, dist_quantile=None), 3)
    proc = GraphTransition(rate, num_steps=S, method=method, dtype=torch.float64)
    ab = proc._alpha_bar64
    R = rate.toarray()

    def q(t: float) -> np.ndarray:
        g = np.exp(-proc.eps * t)
        return g * scipy.linalg.expm(t * R) + (1 - g) / N

    Qbar = np.stack([q(t) for t in ab])
    Q = np.stack([np.eye(N)] + [q(ab[s] - ab[s - 1]) for s in range(1, S + 1)])
    return Case(proc, Qbar, Q, np.full(N, 1.0 / N))


def absorbing_case(schedule: str) -> Case:
    proc = AbsorbingProcess(N, S, schedule=schedule)
    keep = absorbing_schedule(S, schedule)
    K = N + 1

    def mat(a: float) -> np.ndarray:  # keep with probability a, else jump to the mask
        m = np.zeros((K, K))
        m[:N, :N] = a * np.eye(N)
        m[:N, N] = 1 - a
        m[N, N] = 1.0
        return m

    Qbar = np.stack([mat(k) for k in keep])
    Q = np.stack([np.eye(K)] + [mat(keep[s] / keep[s - 1]) for s in range(1, S + 1)])
    stat = np.zeros(K)
    stat[N] = 1.0
    return Case(proc, Qbar, Q, stat)


CASES = {
    "graph-eig": lambda: graph_case("eig"),
    "graph-cheb": lambda: graph_case("cheb"),
    "absorbing-linear": lambda: absorbing_case("linear"),
    "absorbing-cosine": lambda: absorbing_case("cosine"),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


def tokens(case: Case) -> int:
    return case.Qbar.shape[1]


def l0_all() -> torch.Tensor:
    return torch.arange(N)[None, :]  # (1, N): every station once


def test_marginal_rows_sum_to_one_and_match_the_dense_matrices(case: Case):
    for s in range(S + 1):
        rows = case.proc.marginal(l0_all(), torch.tensor([s]))[0].double().numpy()  # (N, K)
        np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(rows, case.Qbar[s][:N], atol=1e-5)


def test_step_zero_is_the_identity_and_step_S_the_stationary_law(case: Case):
    rows0 = case.proc.marginal(l0_all(), torch.tensor([0]))[0].double().numpy()
    np.testing.assert_allclose(rows0[:, :N], np.eye(N), atol=1e-6)
    rowsS = case.proc.marginal(l0_all(), torch.tensor([S]))[0].double().numpy()
    tv = 0.5 * np.abs(rowsS - case.stationary).sum(-1).max()
    assert tv < 0.01
    np.testing.assert_allclose(case.proc.stationary().double().numpy(), case.stationary, atol=1e-7)
    prior = case.proc.sample_prior((50, 3), torch.Generator().manual_seed(0))
    assert prior.shape == (50, 3) and (prior >= 0).all() and (prior < tokens(case)).all()


def test_posterior_is_bayes_rule_on_the_dense_matrices(case: Case):
    K = tokens(case)
    for s in range(1, S + 1):
        for l0 in range(N):
            for ls in range(K):
                brute = case.Q[s][:, ls] * case.Qbar[s - 1][l0, :]  # q(l_s | l_{s−1}) q(l_{s−1} | l0)
                if brute.sum() < 1e-12:  # l_s unreachable from l0
                    continue
                got = case.proc.posterior(torch.tensor([[l0]]), torch.tensor([[ls]]), torch.tensor([s]))
                np.testing.assert_allclose(got[0, 0].double().numpy(), brute / brute.sum(), atol=1e-5)


def test_reverse_step_is_the_product_formula_and_its_rows_sum_to_one(case: Case):
    K = tokens(case)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, K, N, generator=g, dtype=torch.float64)
    ls = torch.arange(K)[None, :]
    for s in range(1, S + 1):
        got = case.proc.reverse_probs(logits, ls, torch.tensor([s]))[0].double().numpy()  # (K, K)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        pi = torch.softmax(logits[0], -1).numpy()  # (K, N)
        for i in range(K):
            brute = case.Q[s][:, i] * (pi[i] @ case.Qbar[s - 1][:N, :])
            if brute.sum() < 1e-12:  # l_s = i cannot occur at step s (absorbing: a station at s = S)
                continue
            np.testing.assert_allclose(got[i], brute / brute.sum(), atol=1e-5)


def test_loss_kl_is_the_kl_of_posterior_and_reverse_step(case: Case):
    g = torch.Generator().manual_seed(1)
    B, T = 4, 5
    l0 = torch.randint(0, N, (B, T), generator=g)
    s = torch.tensor([1, 2, 4, S])
    ls = case.proc.q_sample(l0, s, g)
    logits = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    kl, ce = case.proc.location_losses(l0, logits, ls, s)
    q = case.proc.posterior(l0, ls, s).double()
    p = case.proc.reverse_probs(logits, ls, s).double()
    brute = torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), 0.0).sum(-1)
    torch.testing.assert_close(kl.double(), brute, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(ce).all() and (ce >= 0).all()


def test_q_sample_draws_from_the_marginal(case: Case):
    g = torch.Generator().manual_seed(2)
    K = tokens(case)
    n, s, l0 = 20000, 3, 2
    draws = case.proc.q_sample(torch.full((n, 1), l0), torch.full((n,), s), g).reshape(-1).numpy()
    counts = np.bincount(draws, minlength=K)
    expect = case.Qbar[s][l0] * n
    keep = expect > 5
    assert counts[~keep].sum() <= max(20, 3 * expect[~keep].sum())
    stat = ((counts[keep] - expect[keep]) ** 2 / expect[keep]).sum()
    assert scipy.stats.chi2.sf(stat, keep.sum() - 1) > 1e-4


def test_sample_reverse_draws_from_the_reverse_step(case: Case):
    g = torch.Generator().manual_seed(4)
    K = tokens(case)
    n, s = 20000, 3
    ls_state = K - 1  # the mask for absorbing processes, a station for the graph one
    logits = torch.randn(1, 1, N, generator=g).expand(n, 1, N).contiguous()
    ls = torch.full((n, 1), ls_state)
    steps = torch.full((n,), s)
    cache = case.proc.row_cache()
    draws = case.proc.sample_reverse(logits, ls, steps, g, cache).reshape(-1).numpy()
    expect = case.proc.reverse_probs(logits[:1], ls[:1], steps[:1])[0, 0].double().numpy() * n
    counts = np.bincount(draws, minlength=K)
    keep = expect > 5
    stat = ((counts[keep] - expect[keep]) ** 2 / expect[keep]).sum()
    assert scipy.stats.chi2.sf(stat, keep.sum() - 1) > 1e-4
