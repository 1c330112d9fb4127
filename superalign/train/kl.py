"""KL estimators and the best-of-n KL bound: the "distance travelled" axis of every
overoptimization curve.

For completions y ~ pi sampled from the policy, with per-token log-probs under the policy and a
frozen reference, the per-token log ratio is ``r_t = log ref(y_t | y_<t) - log pi(y_t | y_<t)``.
Summed over a sequence, three estimators of the sequence-level KL(pi || ref) (Schulman, "Approximating
KL divergence", 2020):

- ``k1 = sum_t -r_t``: unbiased, high variance, can be negative for one sample;
- ``k2 = sum_t r_t^2 / 2``: biased, low variance;
- ``k3 = sum_t (exp(r_t) - 1) - r_t``: unbiased and never negative.

k1 and k3 are unbiased for the sequence KL because E[k_t | y_<t] is the per-token KL given the
prefix and, by the chain rule, their sum over t is KL(pi || ref) of whole sequences.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class KLEstimate(NamedTuple):
    """Per-sequence estimates of KL(policy || reference), each shaped [batch]."""

    k1: torch.Tensor
    k2: torch.Tensor
    k3: torch.Tensor


def sequence_kl(
    logp_policy: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor
) -> KLEstimate:
    """k1, k2, k3 summed over the tokens of each sequence.

    All inputs are [batch, tokens]: log-probs of the *sampled* tokens under the policy (which
    generated them) and under the reference, and a 0/1 mask of real (non-pad) tokens.
    """
    r = (logp_ref - logp_policy) * mask  # [batch, tokens]
    k1 = (-r).sum(-1)
    k2 = (0.5 * r**2).sum(-1)
    k3 = ((torch.exp(r) - 1 - r) * mask).sum(-1)
    return KLEstimate(k1, k2, k3)


class MeanCI(NamedTuple):
    """A sample mean with a normal-approximation confidence interval."""

    mean: float
    low: float
    high: float
    n: int


def mean_ci(values: torch.Tensor | list[float], z: float = 1.96) -> MeanCI:
    """Mean and ``z``-standard-error interval (1.96: 95%) of i.i.d. per-sequence estimates."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(x.mean())
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("inf")
    return MeanCI(m, m - z * se, m + z * se, n)


def categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) of categorical distributions over the last axis (the slow reference)."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1)


def best_of_n_kl_bound(n: int) -> float:
    """Analytic KL(best-of-n || base) = log n - (n - 1) / n, exact for continuous rewards without
    ties and an upper bound otherwise (Stiennon et al. 2020; Beirami et al. 2024)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_distribution(p: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Exact distribution of the best of ``n`` i.i.d. draws from categorical ``p`` ranked by
    ``rewards`` (distinct). P(best = i) = F(i)^n - F(i^-)^n with F the CDF in reward order."""
    order = torch.argsort(rewards)
    cdf = torch.cumsum(p.double()[order], 0)
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    out = torch.empty_like(cdf)
    out[order] = cdf**n - below**n
    return out
