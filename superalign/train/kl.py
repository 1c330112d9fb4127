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

**The one measurement.** :func:`kl_of_samples` is the only place a stage measures
KL(policy || reference) of sampled completions (rl's ``kl/ref``, dpo's ``kl/ref``, the gate's
criterion): the sampling log-probs that :func:`~superalign.models.sampling.sample` recorded,
the same tokens scored teacher-forced under the reference, both right-padded in float64, k1 and
k3 per sequence, and the mean of k3 with its interval. Completions that hit ``max_new_tokens``
before EOS or a stop string are counted (``policy/truncated``): their KL is that of the first
``max_new_tokens`` tokens, a lower bound on the KL of the completions the policy would finish.
:func:`policy_kl` samples at temperature 1 (what the estimators assume) and calls it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from superalign.models.sampling import Samples, sample, token_logprobs


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


def right_pad(rows: list[list[float]]) -> torch.Tensor:
    """Ragged rows right-padded with zeros into a float64 [batch, max_len] (max_len >= 1)."""
    out = torch.zeros(len(rows), max((len(r) for r in rows), default=1) or 1, dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
    return out


class SampleKL(NamedTuple):
    """KL(policy || reference) of completions sampled from the policy, all in float64."""

    samples: Samples
    per_sequence: KLEstimate
    """k1, k2, k3 of each completion, each [n]."""
    k3: MeanCI
    """Mean k3 over completions with its interval: the KL reported as ``kl/ref``."""
    k1: MeanCI
    """Mean k1 with its interval (unbiased too, noisier, can be negative)."""
    truncated: int
    """Completions that hit ``max_new_tokens`` without finishing (their KL is of a prefix)."""
    entropy: float
    """Mean ``-sum_t log pi(y_t | y_<t)`` over completions: a one-sample estimate of the
    policy's sequence entropy (nats)."""
    length: float
    """Mean completion length in tokens."""

    def metrics(self) -> dict[str, float]:
        """``kl/ref``, ``kl/ref_low``, ``kl/ref_high`` (k3 and its interval), ``kl/ref_k1``,
        ``kl/ref_n`` (completions), ``policy/entropy``, ``policy/length`` and
        ``policy/truncated`` (share of completions cut at ``max_new_tokens``)."""
        n = self.k3.n
        return {
            "kl/ref": self.k3.mean,
            "kl/ref_k1": self.k1.mean,
            "kl/ref_low": self.k3.low,
            "kl/ref_high": self.k3.high,
            "kl/ref_n": float(n),
            "policy/entropy": self.entropy,
            "policy/length": self.length,
            "policy/truncated": self.truncated / n,
        }


def kl_of_samples(
    samples: Samples, reference: Any, pad_id: int, *, z: float = 1.96, batch_size: int = 64
) -> SampleKL:
    """KL(policy || ``reference``) of ``samples`` drawn from the policy at temperature 1 without
    filtering: their recorded log-probs against the same tokens scored under ``reference``
    (whose tokenizer must be the policy's); ``z`` sets the interval (1.96: 95%)."""
    if not len(samples):
        raise ValueError("kl_of_samples needs at least one sampled completion")
    ref = token_logprobs(
        reference, samples.prompt_ids, samples.completion_ids, pad_id=pad_id, batch_size=batch_size
    )
    lp_policy, lp_ref = right_pad(samples.logprobs), right_pad(ref)  # [n, tokens]
    mask = right_pad([[1.0] * len(c) for c in samples.completion_ids])  # [n, tokens]
    est = sequence_kl(lp_policy, lp_ref, mask)
    return SampleKL(
        samples=samples,
        per_sequence=est,
        k3=mean_ci(est.k3, z=z),
        k1=mean_ci(est.k1, z=z),
        truncated=sum(not f for f in samples.finished),
        entropy=float(-(lp_policy * mask).sum(-1).mean()),
        length=float(mask.sum(-1).mean()),
    )


def policy_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    seed: int,
    z: float = 1.96,
    batch_size: int = 64,
) -> SampleKL:
    """Sample one completion per prompt from ``policy`` (temperature 1, unfiltered, ``seed``)
    and measure its KL to ``reference`` with :func:`kl_of_samples`."""
    s = sample(
        policy,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        seed=seed,
        batch_size=batch_size,
    )
    return kl_of_samples(s, reference, tokenizer.pad_token_id, z=z, batch_size=batch_size)


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
