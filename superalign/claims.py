"""Claims: a finding stated as a direction, an effect size and a 95% interval.

A headline figure of one run can be luck or float rounding; a claim says in advance which way
the effect must point and how large it must be, and passes only when the whole interval lies on
that side of the null::

    Claim("SFT on gold demonstrations raises held-out gold accuracy",
          value=+0.21, low=+0.16, high=+0.26, n=200, null=0.0, direction="above")  -> PASS

``low`` and ``high`` bound a 95% interval: a percentile bootstrap over the held-out items
(:func:`mean_interval`; paired items resample together, so a before/after difference is
resampled as one number per item), or an interval the stage already reports (a KL's normal
interval, an AUROC's group bootstrap). A claim whose measurement is missing is not passed; its
``reason`` says why. ``claims.json`` (:func:`write_claims`) is a list of :meth:`Claim.as_dict`
objects; ``superalign demo`` writes one for its own run and the HTML report shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from superalign.runs import atomic_write_json

CLAIMS_FILE = "claims.json"
LEVEL = 0.95


@dataclass
class Claim:
    """One finding: ``value`` with the interval ``[low, high]`` over ``n`` units, compared with
    ``null`` in ``direction``. :attr:`passed` only when the interval excludes the null."""

    id: str
    """Short stable name (``sft_gold``)."""
    claim: str
    """The finding in words, direction included."""
    value: float | None
    """Effect size (what :attr:`measure` says); None when it could not be measured."""
    low: float | None
    high: float | None
    n: int
    """Units behind the interval (held-out items, pairs, prompts)."""
    null: float
    """The value under no effect (0 for a difference, 0.5 for an AUROC, a budget...)."""
    direction: Literal["above", "below"] = "above"
    """``above``: passes when ``low > null``; ``below``: when ``high < null``."""
    measure: str = ""
    """What ``value`` is and how the interval was made."""
    step: str = ""
    """The run (pipeline step) it was measured on."""
    reason: str = ""
    """Why it is not passed, or a note."""

    @property
    def passed(self) -> bool:
        if self.low is None or self.high is None or not _finite(self.low, self.high):
            return False
        return self.low > self.null if self.direction == "above" else self.high < self.null

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _finite(*xs: float) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def missing(id: str, claim: str, null: float, reason: str, **kw: Any) -> Claim:
    """A claim that could not be measured: shown failing, with ``reason``."""
    return Claim(id, claim, None, None, None, 0, null, reason=reason, **kw)


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = LEVEL,
    n_boot: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of per-item ``values`` with a percentile bootstrap interval over the items: the one
    interval for a held-out mean or a paired difference (pass ``after - before`` per item)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)  # [n_boot]
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(x.mean()), float(low), float(high)


def difference_interval(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = LEVEL,
    n_boot: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` of two independent samples, with a percentile bootstrap interval
    that resamples each sample on its own (for unpaired items: two attackers' queries)."""
    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    dy = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    low, high = np.percentile(dx - dy, [50 * (1 - level), 50 * (1 + level)])
    return float(x.mean() - y.mean()), float(low), float(high)


def from_items(
    id: str,
    claim: str,
    values: Sequence[float],
    *,
    null: float = 0.0,
    direction: Literal["above", "below"] = "above",
    measure: str = "",
    step: str = "",
    seed: int = 0,
) -> Claim:
    """A claim on the mean of per-item ``values`` (:func:`mean_interval`)."""
    m, lo, hi = mean_interval(values, seed=seed)
    return Claim(id, claim, m, lo, hi, len(values), null, direction, measure, step)


def write_claims(path: str | Path, claims: Sequence[Claim]) -> Path:
    """``claims.json``: the list of :meth:`Claim.as_dict` (written atomically)."""
    path = Path(path)
    if path.is_dir():
        path = path / CLAIMS_FILE
    atomic_write_json(path, [c.as_dict() for c in claims])
    return path


def fmt_number(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if isinstance(x, float) else str(x)


def claims_table(claims: Sequence[dict[str, Any] | Claim]) -> list[tuple[str, ...]]:
    """Rows ``(verdict, claim, value [low, high], null, n)`` for a terminal or Markdown table."""
    rows = []
    for c in claims:
        d = c.as_dict() if isinstance(c, Claim) else c
        interval = f"{fmt_number(d['value'])} [{fmt_number(d['low'])}, {fmt_number(d['high'])}]"
        side = ">" if d.get("direction", "above") == "above" else "<"
        verdict = "PASS" if d["passed"] else "FAIL"
        rows.append((verdict, d["claim"], interval, f"{side} {d['null']:g}", str(d["n"])))
    return rows


def print_claims(claims: Sequence[Claim], out: Any = print) -> None:
    """The claims as an aligned terminal table, failing ones with their reason."""
    rows = [("", "claim", "value [95% interval]", "null", "n"), *claims_table(claims)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, row in enumerate(rows):
        out("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i and claims[i - 1].reason and not claims[i - 1].passed:
            out(f"        ({claims[i - 1].reason})")
    passed = sum(c.passed for c in claims)
    out(f"  {passed} of {len(claims)} claims passed")
