"""The one AUROC against sklearn's and a pairwise count, and its bootstrap interval."""

import itertools
import math
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from superalign.metrics import auroc, auroc_interval


def pairwise_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_sklearn_and_the_pairwise_count_with_ties():
    rng = random.Random(0)
    for trial in range(30):
        n = rng.randint(2, 60)
        levels = [0.0, 0.25, 0.5, 0.75, 1.0] if trial % 2 else None  # heavy ties, or none
        scores = [rng.choice(levels) if levels else rng.gauss(0, 1) for _ in range(n)]
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))


def test_auroc_by_hand():
    assert auroc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auroc([1, 3, 2, 2], [1, 1, 0, 0]) == 0.5  # 1 > 2 no, 3 > 2 yes: 2 of 4
    assert auroc([2, 2], [1, 0]) == 0.5  # a tie counts one half
    assert auroc([0.1, 0.9], [False, True]) == 1.0
    assert math.isnan(auroc([0.3, 0.4], [1, 1]))
    with pytest.raises(ValueError, match="nan"):
        auroc([0.3, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="one label per score"):
        auroc([0.3], [1, 0])


def test_interval_covers_the_value_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        y = np.arange(n) % 2
        s = rng.normal(size=n) + y  # true AUROC = Phi(1 / sqrt 2) = 0.76
        ci = auroc_interval(s, y, seed=1)
        assert ci.low <= ci.value <= ci.high and ci.n == n and ci.n_groups == n
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 2


def test_group_interval_is_wider_when_items_are_copies():
    """Ten copies of each of 20 items: resampling items pretends there are 200 independent ones;
    resampling groups sees 20."""
    rng = np.random.default_rng(2)
    s0, y0 = rng.normal(size=20), np.arange(20) % 2
    s, y, g = np.repeat(s0, 10), np.repeat(y0, 10), np.repeat(np.arange(20), 10)
    by_item = auroc_interval(s, y, seed=0)
    by_group = auroc_interval(s, y, g, seed=0)
    assert by_item.value == by_group.value == pytest.approx(auroc(s0, y0))
    assert by_group.n_groups == 20 and by_group.n == 200
    assert by_group.high - by_group.low > 2 * (by_item.high - by_item.low)
