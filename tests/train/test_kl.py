"""KL estimators and the best-of-n bound against exact references on small distributions."""

import itertools
import math

import pytest
import torch

from superalign.train.kl import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    categorical_kl,
    mean_ci,
    sequence_kl,
)


def _within(est, exact, sigmas=4.0):
    ci = mean_ci(est)
    se = (ci.high - ci.mean) / 1.96
    return abs(ci.mean - exact) <= sigmas * se + 1e-9, ci


def test_single_token_estimates_match_exact_categorical_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.distributions.Dirichlet(torch.ones(6)).sample() * 0.9 + 0.1 / 6
    q = torch.distributions.Dirichlet(torch.ones(6)).sample() * 0.9 + 0.1 / 6
    exact = float(categorical_kl(p, q))
    y = torch.multinomial(p, 20000, replacement=True, generator=g)
    est = sequence_kl(torch.log(p[y])[:, None], torch.log(q[y])[:, None], torch.ones(len(y), 1))
    for name in ("k1", "k3"):
        ok, ci = _within(getattr(est, name), exact)
        assert ok, f"{name}: {ci} vs exact {exact}"
    assert (est.k3 >= 0).all() and (est.k2 >= 0).all()
    assert (est.k1 < 0).any()  # k1 is unbiased but single samples go negative


def test_sequence_kl_matches_enumeration_of_two_token_sequences():
    torch.manual_seed(1)
    V = 3
    p1, q1 = torch.softmax(torch.randn(V), 0), torch.softmax(torch.randn(V), 0)
    p2, q2 = torch.softmax(torch.randn(V, V), -1), torch.softmax(torch.randn(V, V), -1)  # [y1, y2]
    exact = 0.0
    for a, b in itertools.product(range(V), repeat=2):
        P, Q = p1[a] * p2[a, b], q1[a] * q2[a, b]
        exact += float(P * (torch.log(P) - torch.log(Q)))
    n = 20000
    a = torch.multinomial(p1, n, replacement=True)
    b = torch.multinomial(p2[a], 1).squeeze(-1)
    lp = torch.stack([torch.log(p1[a]), torch.log(p2[a, b])], -1)
    lq = torch.stack([torch.log(q1[a]), torch.log(q2[a, b])], -1)
    est = sequence_kl(lp, lq, torch.ones(n, 2))
    for name in ("k1", "k3"):
        ok, ci = _within(getattr(est, name), exact)
        assert ok, f"{name}: {ci} vs exact {exact}"


def test_masked_tokens_do_not_count():
    lp = torch.tensor([[-1.0, -2.0, -0.5]])
    lq = torch.tensor([[-1.5, -9.0, -9.0]])
    short = sequence_kl(lp, lq, torch.tensor([[1.0, 0.0, 0.0]]))
    assert short.k1.item() == pytest.approx(0.5)
    assert short.k3.item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)


def test_best_of_n_bound_is_exact_in_the_continuous_limit_and_an_upper_bound():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    p = torch.full((5000,), 1 / 5000, dtype=torch.float64)
    rewards = torch.randperm(5000).double()
    for n in (2, 4, 16, 64):
        bon = best_of_n_distribution(p, rewards, n)
        assert float(bon.sum()) == pytest.approx(1.0)
        kl = float(categorical_kl(bon, p))
        assert kl <= best_of_n_kl_bound(n) + 1e-9
        assert kl == pytest.approx(best_of_n_kl_bound(n), abs=0.01)
    # few, unequal outcomes: strictly below the bound
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    bon = best_of_n_distribution(p, torch.tensor([0.0, 1.0, 2.0]), 8)
    assert float(categorical_kl(bon, p)) < best_of_n_kl_bound(8)


def test_best_of_n_distribution_matches_simulation():
    g = torch.Generator().manual_seed(2)
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    rewards = torch.tensor([3.0, 1.0, 0.0, 2.0])
    draws = torch.multinomial(p.expand(50000, 4), 4, replacement=True, generator=g)  # [trials, n]
    best = draws.gather(1, rewards[draws].argmax(1, keepdim=True)).squeeze(1)
    freq = torch.bincount(best, minlength=4).double() / len(best)
    torch.testing.assert_close(freq, best_of_n_distribution(p, rewards, 4), atol=0.01, rtol=0)


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci.mean == 2.5 and ci.low < 2.5 < ci.high and ci.n == 4
    with pytest.raises(ValueError):
        mean_ci([])
