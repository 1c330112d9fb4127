"""PGR arithmetic and bootstrap intervals over seeds, against direct computations."""

import math

import numpy as np

from superalign.generalize.pgr import bootstrap_ci, mean_ci, pgr, pgr_ci


def test_pgr_arithmetic():
    assert math.isclose(pgr(0.6, 0.7, 0.8), 0.5)  # half the gap recovered
    assert pgr(0.6, 0.6, 0.8) == 0.0  # no better than the supervisor
    assert math.isclose(pgr(0.6, 0.8, 0.8), 1.0)  # the whole gap
    assert math.isclose(pgr(0.6, 0.5, 0.8), -0.5)  # worse than the supervisor
    assert math.isclose(pgr(0.6, 0.9, 0.8), 1.5)  # beats its own ceiling
    assert math.isnan(pgr(0.7, 0.8, 0.7))  # no gap: undefined
    assert math.isnan(pgr(0.7, 0.65, 0.6))  # ceiling below the supervisor: undefined too
    assert math.isnan(pgr(0.3, 0.5, 0.1 + 0.2))  # 0.30000000000000004 vs 0.3: rounding, no gap


def test_bootstrap_matches_a_slow_loop():
    rows = np.random.default_rng(1).normal(size=(7, 3))
    est = bootstrap_ci(rows, lambda r: float(r[:, 0].mean() - r[:, 1].mean()), n_boot=500, seed=3)
    rng = np.random.default_rng(3)
    draws = rng.integers(0, 7, size=(500, 7))
    slow = sorted(sum(rows[i, 0] for i in d) / 7 - sum(rows[i, 1] for i in d) / 7 for d in draws)
    # numpy's default percentile interpolates linearly between order statistics
    pos_low, pos_high = 0.025 * 499, 0.975 * 499
    lerp = lambda p: slow[int(p)] + (p - int(p)) * (slow[int(p) + 1] - slow[int(p)])  # noqa: E731
    assert math.isclose(est.low, lerp(pos_low), abs_tol=1e-12)
    assert math.isclose(est.high, lerp(pos_high), abs_tol=1e-12)
    assert math.isclose(est.value, rows[:, 0].mean() - rows[:, 1].mean())


def test_intervals_contain_the_estimate_and_narrow_with_more_seeds():
    rng = np.random.default_rng(0)

    def seeds(n):
        return (rng.normal(0.6, 0.02, n), rng.normal(0.7, 0.02, n), rng.normal(0.8, 0.02, n))

    few, many = pgr_ci(*seeds(4)), pgr_ci(*seeds(64))
    for est in (few, many):
        assert est.low <= est.value <= est.high
    assert many.high - many.low < 0.6 * (few.high - few.low)  # ~ 1/sqrt(n); 4 seeds: too narrow
    assert many.low < 0.5 < many.high  # the true PGR
    weak, w2s, ceil = seeds(10)
    assert math.isclose(pgr_ci(weak, w2s, ceil).value, pgr(weak.mean(), w2s.mean(), ceil.mean()))
    m = mean_ci(weak)
    assert m.low <= weak.mean() == m.value <= m.high


def test_seeded_and_robust_to_resamples_without_a_gap():
    weak, w2s, ceil = np.array([0.6, 0.7]), np.array([0.65, 0.7]), np.array([0.7, 0.7])
    a, b = pgr_ci(weak, w2s, ceil, seed=5), pgr_ci(weak, w2s, ceil, seed=5)
    assert a == b
    # resamples of seed 1 alone have no gap (nan): left out, the rest still give an interval
    assert math.isclose(a.value, pgr(0.65, 0.675, 0.7))
    assert math.isclose(a.low, 0.5) and math.isclose(a.high, 0.5)
