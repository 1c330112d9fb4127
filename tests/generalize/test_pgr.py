"""PGR arithmetic, the two-stage bootstrap against a slow loop, and the rule that a gap-recovered
ratio is reported only over a resolved gap."""

import math

import numpy as np
import pytest

from superalign.generalize.pgr import (
    Estimate,
    gap_recovered,
    mean_ci,
    pgr,
    resample_means,
    unresolved,
)


def test_pgr_arithmetic():
    assert math.isclose(pgr(0.6, 0.7, 0.8), 0.5)  # half the gap recovered
    assert pgr(0.6, 0.6, 0.8) == 0.0  # no better than the supervisor
    assert math.isclose(pgr(0.6, 0.8, 0.8), 1.0)  # the whole gap
    assert math.isclose(pgr(0.6, 0.5, 0.8), -0.5)  # worse than the supervisor
    assert math.isclose(pgr(0.6, 0.9, 0.8), 1.5)  # beats its own ceiling
    assert math.isnan(pgr(0.7, 0.8, 0.7))  # no gap: undefined
    assert math.isnan(pgr(0.7, 0.65, 0.6))  # ceiling below the supervisor: undefined too
    assert math.isnan(pgr(0.3, 0.5, 0.1 + 0.2))  # 0.30000000000000004 vs 0.3: rounding, no gap


def test_two_stage_bootstrap_matches_a_slow_loop():
    scores = np.random.default_rng(1).normal(size=(3, 5, 2))  # [seeds, items, k]
    fast = resample_means(scores, n_boot=300, seed=4, chunk=7)
    rng = np.random.default_rng(4)
    slow = []
    for start in range(0, 300, 7):  # the same draws, chunk by chunk, as plain loops
        b = min(7, 300 - start)
        seeds = rng.integers(0, 3, size=(b, 3))
        items = rng.integers(0, 5, size=(b, 3, 5))
        for r in range(b):
            total = [0.0, 0.0]
            for j in range(3):
                for t in range(5):
                    for k in range(2):
                        total[k] += scores[seeds[r, j], items[r, j, t], k]
            slow.append([x / 15 for x in total])
    np.testing.assert_allclose(fast, np.array(slow), rtol=0, atol=1e-12)


def test_mean_ci_of_items_and_of_seeds_by_items():
    items = np.r_[np.ones(30), np.zeros(70)]
    est = mean_ci(items, n_boot=2000)
    assert est.value == 0.3 and est.low < 0.3 < est.high
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / 100)  # the normal approximation, about 0.09
    assert abs((est.high - est.low) / 2 - half_width) < 0.015
    # the same items under three seeds that disagree: the interval widens to hold the seeds
    seeds = np.stack([items, np.r_[np.ones(60), np.zeros(40)], items])
    wide = mean_ci(seeds, n_boot=2000)
    assert math.isclose(wide.value, 0.4) and wide.high - wide.low > est.high - est.low
    assert mean_ci(items, seed=3) == mean_ci(items, seed=3)


def test_unresolved_states_which_condition_failed():
    assert unresolved(Estimate(0.2, 0.1, 0.3), n=100) is None
    crosses = unresolved(Estimate(0.05, -0.01, 0.11), n=100)
    assert "does not exclude 0" in crosses and "+0.0500" in crosses
    tiny = unresolved(Estimate(0.008, 0.004, 0.012), n=40)
    assert "1/40 = 0.0250" in tiny and "resolution" in tiny
    assert unresolved(Estimate(0.008, 0.004, 0.012), n=40, resolution=0.0) is None
    assert unresolved(Estimate(0.01, 0.01, 0.01), n=100) is not None  # must exceed 1/n


def test_a_tiny_gap_gives_no_ratio_and_says_why():
    # the case that printed "PGR 10.0 [1.25, 10.0]": 3 seeds of 40 test items; the ceiling beat
    # the weak model by one item on one seed (gap 0.008, a third of an item)
    rng = np.random.default_rng(0)
    weak = (rng.random((3, 40)) < 0.6).astype(float)
    ceiling = weak.copy()
    flip = np.flatnonzero(weak[0] == 0)[0]
    ceiling[0, flip] = 1.0
    w2s = ceiling.copy()
    w2s[1, np.flatnonzero(weak[1] == 0)[:9]] = 1.0  # 9 items better than weak on one seed
    r = gap_recovered(weak, w2s, ceiling, n_boot=1000)
    assert math.isclose(r.gap.value, 1 / 120)
    assert r.value is None and r.low is None and r.high is None
    assert r.n == 40 and r.reason is not None and "0.0083" in r.reason
    d = r.as_dict()
    assert d["value"] is None and d["reason"] == r.reason and d["n"] == 40
    assert math.isclose(d["gap"], round(1 / 120, 4))
    # a gap whose interval spans 0 is refused even when it is large
    noisy = gap_recovered([[0.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]], n_boot=500)
    assert noisy.value is None and "exclude 0" in noisy.reason


def test_a_clear_gap_gives_the_ratio_with_its_interval():
    rng = np.random.default_rng(2)
    n = 400
    weak = (rng.random((3, n)) < 0.6).astype(float)
    w2s = np.maximum(weak, (rng.random((3, n)) < 0.5).astype(float) * (rng.random((3, n)) < 0.5))
    ceiling = np.maximum(w2s, (rng.random((3, n)) < 0.5).astype(float))
    r = gap_recovered(weak, w2s, ceiling, n_boot=1000)
    assert r.reason is None and r.gap.low > 0 and r.gap.value > 1 / n
    assert r.value == pytest.approx(pgr(weak.mean(), w2s.mean(), ceiling.mean()))
    assert r.low <= r.value <= r.high and 0 < r.low and r.high < 1
    assert r.gap.low <= r.gap.value <= r.gap.high
    # one seed: the items alone give the interval (it is not a point, as a seed bootstrap was)
    one = gap_recovered(weak[0], w2s[0], ceiling[0], n_boot=1000)
    assert one.reason is None and one.low < one.value < one.high
    assert gap_recovered(weak, w2s, ceiling, n_boot=300, seed=5) == gap_recovered(
        weak, w2s, ceiling, n_boot=300, seed=5
    )
    with pytest.raises(ValueError, match="shape"):
        gap_recovered(weak, w2s[:, :10], ceiling)
