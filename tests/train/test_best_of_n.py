"""Best-of-n: the subset estimator and the plug-in KL against brute force, and the stage end to end.

End to end, the arith_policy fixture (about 0.66 gold at temperature 1 on level-1 problems) is
sampled 32 times per prompt; selecting by gold must raise gold, while a rater that checks only the
surface (an answer line that repeats the last step) with hashed noise is overoptimized: its noise
is drawn once per distinct completion, and wrong completions are more varied than the right one,
so the larger n, the more often a wrong completion holds the top noise draw.
"""

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.runs import read_metrics
from superalign.stages import execute
from superalign.train.best_of_n import (
    BestOfNConfig,
    best_of_n_empirical_kl,
    best_of_n_mean,
    best_of_n_weights,
)
from superalign.train.kl import best_of_n_kl_bound, categorical_kl

# --- the estimators against brute force -----------------------------------------------------------


def _brute_best_of_n(proxy, values, n):
    """Average over all size-n subsets of the value of the best by proxy, a tie at the top
    broken uniformly at random (so its members' values are averaged)."""
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [values[i] for i in subset if proxy[i] == top]
        total += sum(tied) / len(tied)
        count += 1
    return total / count


def test_weights_are_a_distribution_over_ranks():
    for N, n in [(1, 1), (5, 1), (5, 5), (64, 16)]:
        w = best_of_n_weights(N, n)
        assert w.shape == (N,) and w.sum() == pytest.approx(1.0)
        assert (w[: n - 1] == 0).all() and (np.diff(w) >= 0).all()
    assert best_of_n_weights(5, 1) == pytest.approx(np.full(5, 0.2))
    assert best_of_n_weights(5, 5) == pytest.approx([0, 0, 0, 0, 1])
    with pytest.raises(ValueError):
        best_of_n_weights(4, 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subset_estimator_matches_brute_force_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    N = 9
    values = rng.normal(size=N)
    for proxy in (rng.normal(size=N), rng.integers(0, 3, size=N).astype(float)):  # distinct, tied
        for n in range(1, N + 1):
            exact = _brute_best_of_n(list(proxy), list(values), n)
            assert best_of_n_mean(proxy, values, n) == pytest.approx(exact, abs=1e-12)
    # n = 1 is the plain mean; n = N is the top proxy group's mean value
    assert best_of_n_mean(proxy, values, 1) == pytest.approx(values.mean())
    assert best_of_n_mean(proxy, values, N) == pytest.approx(values[proxy == proxy.max()].mean())


def test_subset_estimator_is_unbiased_for_true_best_of_n():
    """Sampled from a known finite population, the estimate from N = 8 draws averages to the
    exact best-of-3 value of that population."""
    rng = np.random.default_rng(0)
    pop_proxy = np.array([0.0, 1.0, 1.0, 2.0, 3.0])
    pop_value = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    p = np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    # exact best-of-3 with replacement, ties at random: by levels of the proxy
    levels = np.unique(pop_proxy)
    mass = np.array([p[pop_proxy == v].sum() for v in levels])
    mean_value = np.array(
        [(p * pop_value)[pop_proxy == v].sum() / p[pop_proxy == v].sum() for v in levels]
    )
    cdf = np.cumsum(mass)
    exact = float(((cdf**3 - np.concatenate([[0], cdf[:-1]]) ** 3) * mean_value).sum())
    draws = rng.choice(5, size=(20000, 8), p=p)
    est = [best_of_n_mean(pop_proxy[d], pop_value[d], 3) for d in draws]
    se = np.std(est) / math.sqrt(len(est))
    assert abs(np.mean(est) - exact) < 4 * se, (np.mean(est), exact, se)


def test_plug_in_kl_is_the_kl_over_samples_with_random_tie_breaking():
    """Enumerate all N^n index tuples (best-of-n with replacement from the N samples), pick the
    best by proxy with ties at random, and compare KL(selection || uniform) with the function."""
    rng = np.random.default_rng(3)
    N, n = 5, 3
    for proxy in (rng.normal(size=N), np.array([0.0, 1.0, 1.0, 0.0, 1.0])):
        sel = np.zeros(N)
        for tup in itertools.product(range(N), repeat=n):
            top = max(proxy[i] for i in tup)
            winners = [i for i in tup if proxy[i] == top]
            for i in winners:
                sel[i] += 1 / len(winners) / N**n
        exact = float(
            categorical_kl(torch.tensor(sel), torch.full((N,), 1 / N, dtype=torch.float64))
        )
        assert best_of_n_empirical_kl(proxy, n) == pytest.approx(exact, abs=1e-12)


def test_plug_in_kl_sits_below_the_bound_and_ties_lower_it():
    distinct = np.arange(64.0)
    binary = np.array([0.0] * 32 + [1.0] * 32)
    assert best_of_n_empirical_kl(distinct, 1) == 0.0
    for n in (2, 4, 16, 64):
        bound = best_of_n_kl_bound(n)
        kl = best_of_n_empirical_kl(distinct, n)
        assert kl <= bound + 1e-12 and kl <= math.log(64)
        # binary proxy at p = 1/2: KL of Bernoulli(1 - 2^-n) from Bernoulli(1/2), exactly
        low = 0.5**n
        exact = (1 - low) * math.log(2 * (1 - low)) + low * math.log(2 * low)
        assert best_of_n_empirical_kl(binary, n) == pytest.approx(exact)
        assert exact < bound and exact <= math.log(2)  # two levels: capped at log 2
    assert best_of_n_empirical_kl(distinct, 4) == pytest.approx(best_of_n_kl_bound(4), abs=0.01)
    assert best_of_n_empirical_kl(binary, 64) < 0.25 * best_of_n_kl_bound(64)


# --- the stage end to end -------------------------------------------------------------------------

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
BON = ["n_prompts=16", "ns=[1,2,4,8,16,32]", "max_new_tokens=24", "batch_size=128"]
BON += [f"threads={THREADS}"]
NOISY_RATER = ["overseer=rater", "overseer_options.check_steps=0", "overseer_options.noise=0.1"]


@pytest.fixture(scope="module")
def bon_runs(arith_policy, tmp_path_factory, test_seed):
    root = tmp_path_factory.mktemp("bon")
    args = [f"model={arith_policy}", *BON, f"seed={test_seed}"]
    gold = execute("best_of_n", load_config(BestOfNConfig, None, args), root=root)
    noisy = [*NOISY_RATER, f"overseer_options.seed={test_seed}"]
    rater = execute("best_of_n", load_config(BestOfNConfig, None, [*args, *noisy]), root=root)
    return gold, rater


def _table(res):
    rows = read_metrics(res.dir)
    return {r["step"]: r for r in rows}


@pytest.mark.outcome
def test_selecting_by_gold_raises_gold_monotonically(bon_runs):
    gold, _ = bon_runs
    t = _table(gold)
    assert sorted(t) == [1, 2, 4, 8, 16, 32] and all(t[n]["n"] == n for n in t)
    g = [t[n]["reward/gold"] for n in sorted(t)]
    print(f"MEASURE bon gold by n {[round(x, 3) for x in g]} gain@16 {g[4] - g[0]:+.3f}")
    assert all(b >= a for a, b in zip(g, g[1:])), g
    # seeds 0 / 1 / 2, 1 thread | 2 threads: +0.225, +0.321, +0.361 | +0.249, +0.317, +0.349
    # (from 0.76, 0.60, 0.63 | 0.75, 0.66, 0.645 at n = 1)
    assert t[16]["reward/gold"] > t[1]["reward/gold"] + 0.1, g
    assert all(t[n]["reward/proxy"] == pytest.approx(t[n]["reward/gold"], abs=1e-6) for n in t)
    s = gold.summary
    assert s["n_at_gold_peak"] == min(n for n in t if t[n]["reward/gold"] == max(g))
    assert s["gold_peak"] == max(g) and s["proxy_final"] == t[32]["reward/proxy"]
    assert [r["n"] for r in s["table"]] == sorted(t)


@pytest.mark.outcome
def test_kl_columns(bon_runs):
    for res in bon_runs:
        t = _table(res)
        assert t[1]["kl/ref"] == 0.0 and t[1]["kl/bound"] == 0.0
        for n, r in t.items():
            assert r["kl/bound"] == pytest.approx(best_of_n_kl_bound(n), abs=1e-6)
            assert r["kl/ref"] <= r["kl/ref_no_ties"] + 1e-6 <= r["kl/bound"] + 2e-6
            assert r["reward/gold_low"] <= r["reward/gold"] <= r["reward/gold_high"]
    # gold is 0/1, so ties at the top make the real KL of selecting by gold far smaller than the
    # bound (the noisy rater breaks most ties: its ratio 0.37..0.88 on the old fixture depends on
    # the policy)
    t = _table(bon_runs[0])
    print(f"MEASURE bon gold kl32/bound {t[32]['kl/ref'] / t[32]['kl/bound']:.3f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.19, 0.31, 0.24 | 0.15, 0.23, 0.25
    assert t[32]["kl/ref"] < 0.8 * t[32]["kl/bound"]


@pytest.mark.outcome
def test_a_surface_checking_noisy_rater_is_overoptimized(bon_runs):
    gold, rater = bon_runs
    tg, tr = _table(gold), _table(rater)
    print(
        f"MEASURE bon rater gold {tr[1]['reward/gold']:.3f}->{tr[32]['reward/gold']:.3f}"
        f" ({tr[32]['reward/gold'] - tr[1]['reward/gold']:+.3f}) proxy_auroc"
        f" {rater.summary['proxy_auroc']:.3f}"
    )
    # same seed, same samples: n = 1 is the same policy whichever overseer would select
    assert tr[1]["reward/gold"] == tg[1]["reward/gold"]
    assert tr[1]["policy/length"] == tg[1]["policy/length"]
    proxy = [tr[n]["reward/proxy"] for n in sorted(tr)]
    assert all(b > a for a, b in zip(proxy, proxy[1:])), proxy
    # seeds 0 / 1 / 2, 1 thread | 2 threads: -0.38, -0.28, -0.32 | -0.19, -0.29, -0.21 (0.76 ->
    # 0.38, 0.60 -> 0.31, 0.63 -> 0.31 | 0.75 -> 0.56, 0.66 -> 0.375, 0.645 -> 0.44; proxy AUROC
    # 0.51, 0.43, 0.48 | 0.53, 0.47, 0.65). Old fixture: -0.30, -0.19, +0.03, failing on seed 2,
    # whose policy was right on 0.10 of its samples at n = 1, leaving gold no room to fall
    assert tr[32]["reward/gold"] < tr[1]["reward/gold"] - 0.1, (tr[1], tr[32])
    assert rater.summary["gold_final"] < rater.summary["gold_peak"]
    assert rater.summary["proxy_auroc"] < gold.summary["proxy_auroc"] == 1.0


def test_samples_are_recorded(bon_runs):
    gold, _ = bon_runs
    lines = (gold.dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 16 * 32 == gold.summary["n_prompts"] * gold.summary["samples_per_prompt"]
    rows = [json.loads(x) for x in lines]
    assert {"prompt", "completion", "proxy", "gold", "tokens"} <= set(rows[0])
    assert len({r["prompt"] for r in rows}) == 16
    first = [r["gold"] for r in rows]
    assert np.mean(first) == pytest.approx(_table(gold)[1]["reward/gold"], abs=1e-6)


def test_config_checks():
    with pytest.raises(ConfigError, match="model is required"):
        BestOfNConfig()
    with pytest.raises(ConfigError, match="ns"):
        BestOfNConfig(model="x", ns=[0, 4])
    with pytest.raises(ConfigError, match="repeat"):
        BestOfNConfig(model="x", ns=[4, 4])
    with pytest.raises(ConfigError, match="temperature"):
        BestOfNConfig(model="x", temperature=0)
