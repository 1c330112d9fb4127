"""KL estimators, the one sampled-KL measurement and the best-of-n bound against exact
references on small distributions and a hand computation."""

import itertools
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from superalign.models.sampling import Samples, left_pad
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer
from superalign.train.kl import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    categorical_kl,
    kl_of_samples,
    mean_ci,
    policy_kl,
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


class UnigramLM(torch.nn.Module):
    """A "model" whose next-token distribution is softmax(bias) whatever the prefix."""

    def __init__(self, bias: list[float]) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(bias))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def test_kl_of_samples_matches_a_hand_computation_in_float64():
    ref = UnigramLM([0.0, 1.0, -1.0, 0.5])
    log_q = [float(v) for v in F.log_softmax(ref.bias.detach().double(), -1)]
    s = Samples(
        prompts=["a", "b", "c"],
        texts=["", "", ""],
        prompt_ids=[[1], [2, 3], [0]],
        completion_ids=[[0, 2, 1], [3], [1, 1]],
        logprobs=[[-1.0, -0.5, -2.0], [-0.1], [-0.7, -0.3]],
        finished=[False, True, True],
    )
    kl = kl_of_samples(s, ref, pad_id=0)
    k1, k3 = [], []
    for toks, lps in zip(s.completion_ids, s.logprobs):
        r = [log_q[t] - lp for t, lp in zip(toks, lps)]
        k1.append(sum(-x for x in r))
        k3.append(sum(math.exp(x) - 1 - x for x in r))
    assert kl.per_sequence.k1.dtype == kl.per_sequence.k3.dtype == torch.float64
    assert kl.per_sequence.k1.tolist() == pytest.approx(k1, abs=1e-6)
    assert kl.per_sequence.k3.tolist() == pytest.approx(k3, abs=1e-6)
    half = 1.96 * statistics.stdev(k3) / math.sqrt(3)
    assert kl.k3.mean == pytest.approx(statistics.mean(k3), abs=1e-6)
    assert (kl.k3.low, kl.k3.high) == pytest.approx((kl.k3.mean - half, kl.k3.mean + half))
    assert kl.k1.mean == pytest.approx(statistics.mean(k1), abs=1e-6)
    assert kl.truncated == 1 and kl.length == 2.0
    assert kl.entropy == pytest.approx((3.5 + 0.1 + 1.0) / 3)
    m = kl.metrics()
    assert m["kl/ref"] == kl.k3.mean and m["kl/ref_n"] == 3.0
    assert m["policy/truncated"] == pytest.approx(1 / 3)
    assert set(m) == {
        "kl/ref",
        "kl/ref_k1",
        "kl/ref_low",
        "kl/ref_high",
        "kl/ref_n",
        "policy/entropy",
        "policy/length",
        "policy/truncated",
    }


def test_policy_kl_of_one_token_completions_matches_the_exact_categorical_kl():
    """With ``max_new_tokens=1`` the sequence KL is the exact KL of the first-token
    distributions; the reference is the policy at temperature 2 (final norm halved)."""
    torch.set_num_threads(1)
    tok = train_tokenizer(["Q: 12+34-5\n12+34=46\n46-5=41\nA: 41\n"] * 50, 300)
    policy = build_model("tiny", tok, seed=0).eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(3.0)  # sharpen the random init: exact KL 0.60 (seed 0)
    reference = build_model("tiny", tok, seed=0).eval()
    reference.load_state_dict(policy.state_dict())
    with torch.no_grad():
        reference.model.norm.weight.mul_(0.5)
    distinct = ["Q: 1", "Q: 12+3", "Q: 46-5\n", "A:"]
    ids, mask, pos = left_pad([tok(p)["input_ids"] for p in distinct], tok.pad_token_id)
    with torch.no_grad():
        p = F.softmax(
            policy(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1
        )
        q = F.softmax(
            reference(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1
        )
    exact = float(categorical_kl(p, q).mean())
    assert exact > 0.3
    kl = policy_kl(policy, reference, tok, distinct * 500, max_new_tokens=1, seed=0)
    for name in ("k1", "k3"):
        est = getattr(kl, name)
        se = (est.high - est.mean) / 1.96
        assert abs(est.mean - exact) <= 4 * se, f"{name}: {est} vs exact {exact}"
        assert est.high - est.low < 0.15  # measured 0.05 (k3) and 0.11 (k1): a real test
    eos = tok.eos_token_id
    assert kl.truncated == sum(c != [eos] for c in kl.samples.completion_ids)
    assert kl.length == 1.0 and kl.k3.n == 2000
