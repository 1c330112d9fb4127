"""Performance gap recovered (PGR), every gap-recovered ratio, and their bootstrap intervals.

``PGR = (weak_to_strong - weak) / (ceiling - weak)`` (Burns et al., 2023): the share of the gap
between the weak supervisor and the strong model trained on gold that the strong student,
trained on the weak supervisor's labels, recovers. 1 is full recovery, 0 is no better than the
supervisor, negative is worse than it; above 1 the student beats its own gold-trained ceiling.
easy_to_hard's "gap recovered" is the same ratio with (baseline, easy-supervised,
hard-supervised) in the three places.

**When a ratio is reported.** A ratio over a gap that is noise misleads: a ceiling 0.008 above
the weak model (a third of one test item) once gave "PGR 10.0 [1.25, 10.0]". So
:func:`gap_recovered`, the one place every stage gets a ratio from, reports it only when

1. the gap's (ceiling - weak) bootstrap interval excludes 0 (its low end is above 0), and
2. the gap exceeds the test set's resolution, one item's worth: ``1 / n`` for ``n`` test items
   (per seed) scored 0 or 1;

otherwise its value and interval are None and ``reason`` says which condition failed and by
how much. :func:`unresolved` is the rule alone.

**Intervals.** Scores are per test item, ``[seeds, items]`` (one evaluation per seed, each on
its own test draw) or ``[items]``. A resample draws seeds with replacement and then, within each
drawn seed, its items with replacement (a two-stage bootstrap), keeping each item's scores
under the three models together (paired). It so counts both the seed-to-seed spread (training
noise) and the finite test set, and with one seed it is the plain bootstrap over items. The
intervals are percentiles of the resampled statistics; resamples without a positive gap have
no ratio and are left out of its percentiles (at most ``(1 - level) / 2`` of them when the ratio
is reported).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

MIN_GAP = 1e-9
"""Smallest ceiling - weak difference for which the ratio is arithmetic (means of equal
accuracies can differ by float rounding)."""


class Estimate(NamedTuple):
    """A statistic and its bootstrap confidence interval."""

    value: float
    """The statistic on the full sample."""
    low: float
    """Lower end of the interval (a percentile of the bootstrap distribution)."""
    high: float
    """Upper end of the interval."""


class GapRecovered(NamedTuple):
    """A gap-recovered ratio and the gap it divides by (:func:`gap_recovered`)."""

    value: float | None
    """The ratio of the mean scores; None when the gap is not resolved (see ``reason``)."""
    low: float | None
    """Lower end of its interval (None with ``value``)."""
    high: float | None
    """Upper end of its interval (None with ``value``)."""
    gap: Estimate
    """ceiling - weak of the mean scores, with its interval."""
    n: int
    """Test items per evaluation (per seed): the resolution is ``1 / n``."""
    reason: str | None
    """Why the ratio is not reported; None when it is."""

    def as_dict(self) -> dict[str, Any]:
        """Summary form: ``value``, ``low``, ``high``, ``gap``, ``gap_low``, ``gap_high``, ``n``,
        ``reason``, numbers rounded to 4 places."""
        r = _round
        return {
            "value": r(self.value),
            "low": r(self.low),
            "high": r(self.high),
            "gap": r(self.gap.value),
            "gap_low": r(self.gap.low),
            "gap_high": r(self.gap.high),
            "n": self.n,
            "reason": self.reason,
        }


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def pgr(weak: float, w2s: float, ceiling: float) -> float:
    """``(w2s - weak) / (ceiling - weak)``; nan unless the ceiling beats the weak score by more
    than :data:`MIN_GAP`. The arithmetic only: stages report :func:`gap_recovered`."""
    gap = ceiling - weak
    return (w2s - weak) / gap if gap > MIN_GAP else math.nan


def _as_seeds_items(scores: Any) -> np.ndarray:
    """``[items]`` or ``[seeds, items]`` -> ``[seeds, items]`` float64."""
    a = np.asarray(scores, dtype=float)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"scores must be [items] or [seeds, items], not shape {a.shape}")
    return a


def resample_means(
    scores: np.ndarray, n_boot: int = 2000, seed: int = 0, chunk: int = 256
) -> np.ndarray:
    """Two-stage bootstrap means of ``scores`` [seeds, items, k] -> [n_boot, k]: each resample
    draws ``seeds`` seeds with replacement, then for each drawn seed ``items`` of its items with
    replacement (the same items for all ``k`` columns: paired), and averages over both."""
    scores = np.asarray(scores, dtype=float)
    n_seeds, n_items, _ = scores.shape
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        s = rng.integers(0, n_seeds, size=(b, n_seeds))  # [b, seeds]
        i = rng.integers(0, n_items, size=(b, n_seeds, n_items))  # [b, seeds, items]
        out.append(scores[s[..., None], i].mean(axis=(1, 2)))  # [b, seeds, items, k] -> [b, k]
    return np.concatenate(out)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def mean_ci(scores: Any, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of per-item ``scores`` ([items] or [seeds, items]) with a two-stage bootstrap
    interval (:func:`resample_means`)."""
    a = _as_seeds_items(scores)
    means = resample_means(a[..., None], n_boot, seed)[:, 0]  # [n_boot]
    return Estimate(float(a.mean()), *_percentiles(means, level))


def unresolved(gap: Estimate, n: int, resolution: float | None = None) -> str | None:
    """Why a ratio over ``gap`` (ceiling - weak, with its interval) must not be reported, or
    None when it may: the interval must exclude 0 and the gap exceed ``resolution`` (None:
    ``1 / n``, one of ``n`` test items)."""
    res = 1 / n if resolution is None else resolution
    if not gap.low > 0:
        return (
            f"gap (ceiling - weak) {gap.value:+.4f} has a 95% interval "
            f"[{gap.low:+.4f}, {gap.high:+.4f}] that does not exclude 0"
        )
    if not gap.value > res:
        what = f"1/{n} = {res:.4f} (one test item)" if resolution is None else f"{res:.4f}"
        return f"gap (ceiling - weak) {gap.value:+.4f} does not exceed the resolution {what}"
    return None


def gap_recovered(
    weak: Any,
    mid: Any,
    ceiling: Any,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    resolution: float | None = None,
) -> GapRecovered:
    """``(mid - weak) / (ceiling - weak)`` of the mean per-item scores, reported only where the
    gap is resolved (see the module docstring), with two-stage bootstrap intervals.

    ``weak``, ``mid``, ``ceiling``: per-item scores on the same test items, each [items] or
    [seeds, items] (a seed's row scores that seed's test draw). ``resolution``: the smallest gap
    worth a ratio; None is ``1 / items``, right for scores of 0 or 1 (accuracy, gold, a pair
    won); pass 0.0 for continuous scores (a loss), where only the interval rule applies.
    ``level`` is the interval's coverage, used for the gap's interval in the rule too.
    """
    cols = [_as_seeds_items(x) for x in (weak, mid, ceiling)]
    if len({c.shape for c in cols}) != 1:
        raise ValueError(f"weak, mid and ceiling scores differ in shape: {[c.shape for c in cols]}")
    scores = np.stack(cols, axis=-1)  # [seeds, items, 3]
    n = scores.shape[1]
    boot = resample_means(scores, n_boot, seed)  # [n_boot, 3]
    w, m, c = scores.mean(axis=(0, 1))
    gaps = boot[:, 2] - boot[:, 0]  # [n_boot]
    gap = Estimate(float(c - w), *_percentiles(gaps, level))
    reason = unresolved(gap, n, resolution)
    if reason is not None:
        return GapRecovered(None, None, None, gap, n, reason)
    ratios = np.where(gaps > MIN_GAP, (boot[:, 1] - boot[:, 0]) / np.maximum(gaps, MIN_GAP), np.nan)
    return GapRecovered(pgr(w, m, c), *_percentiles(ratios, level), gap, n, None)
