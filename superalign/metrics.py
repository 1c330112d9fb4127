"""Measurements that several stages share and none owns: the AUROC and its bootstrap interval.

The AUROC is P(a random positive scores above a random negative), ties counting one half
(the Mann-Whitney U statistic divided by ``n_pos * n_neg``); it equals
``sklearn.metrics.roc_auc_score`` (the tests check this). It lives here, below every stage, so
that overseers, probes, the audit and best-of-n score separation the same way and none of them
imports another stage to do it.

:func:`auroc_interval` resamples the items (or, given ``groups``, whole groups: the statements
about one entity, the variants of one prompt) with replacement and reports the percentile
interval: resampling groups keeps correlated items together, so the interval is not narrowed by
near-copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (truthy = positive), by the
    rank formula with tied scores given their average rank (a tie counts one half); nan when
    one class is absent. Raises on a nan score: it has no rank."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"need one label per score (got {s.shape} scores, {y.shape} labels)")
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} of {len(s)} scores are nan; AUROC needs ranks")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last item of each run of equal scores
    ranks = (last - (counts - 1) / 2)[inverse]  # average rank over ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class Interval(NamedTuple):
    """A statistic with a percentile bootstrap interval."""

    value: float
    """The statistic on all items."""
    low: float
    high: float
    n: int
    """Items scored."""
    n_groups: int
    """Units resampled (groups, or items when there are no groups)."""


def auroc_interval(
    scores: Sequence[float],
    labels: Sequence[int | bool],
    groups: Sequence[object] | None = None,
    *,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Interval:
    """:func:`auroc` with a percentile bootstrap interval at ``level``.

    Without ``groups`` positives and negatives are resampled separately (each draw keeps both
    classes). With ``groups``, whole groups are resampled and draws that lose a class are
    redrawn, so items of one group never count as independent evidence.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    value = auroc(s, y)
    rng = np.random.default_rng(seed)
    if groups is None:
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        units = [np.array([i]) for i in range(len(y))]
        if len(pos) == 0 or len(neg) == 0:
            return Interval(value, float("nan"), float("nan"), len(y), len(y))

        def draw() -> np.ndarray:
            return np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
    else:
        if len(groups) != len(y):
            raise ValueError(f"need one group per item (got {len(groups)} for {len(y)} items)")
        members: dict[object, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        units = [np.array(m) for m in members.values()]

        def draw() -> np.ndarray:
            return np.concatenate([units[j] for j in rng.integers(0, len(units), len(units))])

    if np.isnan(value):
        return Interval(value, float("nan"), float("nan"), len(y), len(units))
    stats = []
    for _ in range(n_boot * 10):
        idx = draw()
        if y[idx].all() or not y[idx].any():
            continue  # a group draw that lost a class has no AUROC
        stats.append(auroc(s[idx], y[idx]))
        if len(stats) == n_boot:
            break
    if not stats:
        return Interval(value, float("nan"), float("nan"), len(y), len(units))
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(value, float(low), float(high), len(y), len(units))
