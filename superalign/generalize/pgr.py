"""Performance gap recovered (PGR) and bootstrap confidence intervals over seeds.

``PGR = (weak_to_strong - weak) / (ceiling - weak)`` (Burns et al., 2023): the share of the gap
between the weak supervisor and the strong model trained on gold that the strong student,
trained on the weak supervisor's labels, recovers. 1 is full recovery, 0 is no better than the
supervisor, negative is worse than it; above 1 the student beats its own gold-trained ceiling.
PGR is defined only when the ceiling beats the weak supervisor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

MIN_GAP = 1e-9
"""Smallest ceiling - weak difference for which PGR is defined."""


class Estimate(NamedTuple):
    """A statistic and its bootstrap confidence interval."""

    value: float
    """The statistic on the full sample."""
    low: float
    """Lower end of the interval (a percentile of the bootstrap distribution)."""
    high: float
    """Upper end of the interval."""


def pgr(weak: float, w2s: float, ceiling: float) -> float:
    """``(w2s - weak) / (ceiling - weak)``; nan unless the ceiling beats the weak accuracy
    (with no gap, or a negative one, there is nothing to recover and the ratio misleads). A gap
    under :data:`MIN_GAP` counts as none: means of equal accuracies can differ by float rounding."""
    gap = ceiling - weak
    return (w2s - weak) / gap if gap > MIN_GAP else math.nan


def bootstrap_ci(
    rows: np.ndarray,
    stat: Callable[[np.ndarray], float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``stat(rows)`` with a percentile bootstrap interval: ``rows`` [n, ...] (one row per seed)
    are resampled with replacement ``n_boot`` times and ``stat`` is taken on each resample.
    Resamples where ``stat`` is nan (e.g. a PGR without a positive gap) are left out of the
    percentiles."""
    rows = np.asarray(rows, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(rows), size=(n_boot, len(rows)))
    stats = np.array([stat(rows[i]) for i in idx])  # [n_boot]
    if np.isnan(stats).all():
        return Estimate(stat(rows), math.nan, math.nan)
    low, high = np.nanpercentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return Estimate(float(stat(rows)), float(low), float(high))


def pgr_ci(
    weak: np.ndarray,
    w2s: np.ndarray,
    ceiling: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """PGR of the mean accuracies over seeds, with a bootstrap interval that resamples seeds
    (each seed's weak, weak-to-strong and ceiling accuracies stay together)."""
    rows = np.stack([weak, w2s, ceiling], axis=1)  # [seeds, 3]
    return bootstrap_ci(rows, lambda r: pgr(*r.mean(axis=0)), n_boot, level, seed)


def mean_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over seeds with a bootstrap interval."""
    return bootstrap_ci(np.asarray(values, dtype=float), np.mean, n_boot, level, seed)
