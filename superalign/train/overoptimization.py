"""Reward-model overoptimization (Gao, Schulman & Hilton 2022): functional fits, plots, a stage.

Gao et al. measure how the gold reward of a policy optimized against a proxy moves with the
distance the optimization travelled, ``d = sqrt(KL(policy || base))``, and fit

- best-of-n: ``R_bon(d) = d (a - b d)``;
- RL:        ``R_rl(d)  = d (a - b log d)``,

where ``R`` is the gold reward minus its value at d = 0 (both forms vanish there). Both are linear
in ``(a, b)``, so :func:`fit_bon` and :func:`fit_rl` solve ordinary least squares with numpy,
with no intercept (the curve is pinned to the origin); ``d log d`` is taken as 0 at d = 0.

The analytic peak of a fitted curve, where one exists (:class:`GaoFit` ``d_peak``, ``r_peak``):

- bon: ``dR/dd = a - 2 b d = 0`` gives ``d* = a / (2 b)`` and ``R* = a^2 / (4 b)``, a maximum
  when ``b > 0``; if also ``a <= 0`` the curve falls from the start and the maximum over d >= 0
  is ``d* = 0``, ``R* = 0`` (any optimization loses gold);
- rl:  ``dR/dd = a - b log d - b = 0`` gives ``d* = exp(a / b - 1)`` and ``R* = b d*``, a maximum
  when ``b > 0`` (``d^2R/dd^2 = -b / d``).

With ``b <= 0`` the fitted gold never turns down and both are NaN.

Stage ``overoptimization`` (:class:`OveroptimizationConfig`) reads finished ``best_of_n`` and
``rl`` run folders, fits the matching form to each, and writes the fits to ``summary.json`` and a
plot to ``overoptimization.png``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from superalign.runs import Run, read_json, read_metrics

Form = Literal["bon", "rl"]


class GaoFit(NamedTuple):
    """A least-squares fit of ``R(d) = d (a - b d)`` (bon) or ``d (a - b log d)`` (rl)."""

    a: float
    b: float
    r2: float
    """Coefficient of determination ``1 - SS_res / SS_tot`` (``SS_tot`` about the mean of r).
    The fit has no intercept, so it can be negative. NaN when r is constant."""
    d_peak: float
    """sqrt(KL) at the fitted curve's maximum over d >= 0 (NaN when b <= 0: no maximum)."""
    r_peak: float
    """Fitted gold gain at ``d_peak`` (NaN when there is no peak)."""


def bon_curve(d: Any, a: float, b: float) -> np.ndarray:
    """``R_bon(d) = d (a - b d)``."""
    d = np.asarray(d, dtype=float)
    return d * (a - b * d)


def rl_curve(d: Any, a: float, b: float) -> np.ndarray:
    """``R_rl(d) = d (a - b log d)``, 0 at d = 0."""
    d = np.asarray(d, dtype=float)
    return a * d - b * _d_log_d(d)


CURVES = {"bon": bon_curve, "rl": rl_curve}


def fit_bon(d: Any, r: Any) -> GaoFit:
    """Least-squares ``(a, b)`` of ``r = d (a - b d)``; ``d = sqrt(KL)``, r = gold - gold at d=0."""
    d, r = _check(d, r)
    a, b = _lstsq(np.stack([d, -(d**2)], 1), r)
    d_peak = max(a / (2 * b), 0.0) if b > 0 else math.nan
    r_peak = (a * a / (4 * b) if a > 0 else 0.0) if b > 0 else math.nan
    return GaoFit(a, b, _r2(r, bon_curve(d, a, b)), d_peak, r_peak)


def fit_rl(d: Any, r: Any) -> GaoFit:
    """Least-squares ``(a, b)`` of ``r = d (a - b log d)``; ``d log d`` is 0 at d = 0."""
    d, r = _check(d, r)
    a, b = _lstsq(np.stack([d, -_d_log_d(d)], 1), r)
    d_peak = math.exp(min(a / b - 1, 700.0)) if b > 0 else math.nan
    r_peak = b * d_peak if b > 0 else math.nan
    return GaoFit(a, b, _r2(r, rl_curve(d, a, b)), d_peak, r_peak)


FITS = {"bon": fit_bon, "rl": fit_rl}


def _check(d: Any, r: Any) -> tuple[np.ndarray, np.ndarray]:
    d, r = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    if d.shape != r.shape or d.ndim != 1:
        raise ValueError(f"d and r must be equal-length 1-D arrays, got {d.shape} and {r.shape}")
    if (d < 0).any() or not np.isfinite(d).all() or not np.isfinite(r).all():
        raise ValueError("d = sqrt(KL) must be finite and >= 0, and r finite")
    if (d > 0).sum() < 2:
        raise ValueError(f"a fit of two parameters needs at least 2 points with d > 0, got {d}")
    return d, r


def _d_log_d(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def _lstsq(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(coef[0]), float(coef[1])


def _r2(r: np.ndarray, fitted: np.ndarray) -> float:
    ss_tot = float(((r - r.mean()) ** 2).sum())
    ss_res = float(((r - fitted) ** 2).sum())
    return 1 - ss_res / ss_tot if ss_tot > 0 else math.nan


# --- plot ----------------------------------------------------------------------------------------


class Curve(NamedTuple):
    """One run's points for :func:`plot_overoptimization`."""

    label: str
    d: Sequence[float]
    """sqrt(KL) of each point."""
    gold: Sequence[float]
    """Gold reward at each point (absolute, not minus the baseline)."""
    proxy: Sequence[float] | None = None
    """Proxy reward at each point (None: not plotted)."""
    fit: GaoFit | None = None
    """Fit of ``gold - baseline``; drawn dashed as ``baseline + R(d)``."""
    form: Form = "bon"
    baseline: float = 0.0


def plot_overoptimization(curves: Sequence[Curve], path: str | Path, title: str = "") -> Path:
    """Gold (left) and proxy (right) reward against sqrt(KL), one colour per run, the fitted gold
    curve dashed; written atomically to ``path`` as a PNG (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    gold_ax, proxy_ax = fig.subplots(1, 2)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        gold_ax.plot(c.d, c.gold, "o-", color=color, label=c.label, ms=4)
        if c.fit is not None:
            xs = np.linspace(0, max(c.d), 200)
            ys = c.baseline + CURVES[c.form](xs, c.fit.a, c.fit.b)
            gold_ax.plot(xs, ys, "--", color=color, lw=1.2)
        if c.proxy is not None:
            proxy_ax.plot(c.d, c.proxy, "o-", color=color, label=c.label, ms=4)
    if any(c.fit is not None for c in curves):
        forms = sorted({c.form for c in curves if c.fit is not None})
        text = {"bon": "d(a - b d)", "rl": "d(a - b log d)"}
        fit_label = "fitted gold: " + ", ".join(f"{f} {text[f]}" for f in forms)
        gold_ax.plot([], [], "--", color="gray", label=fit_label)
    for ax, name in ((gold_ax, "gold reward"), (proxy_ax, "proxy reward")):
        ax.set_xlabel("sqrt(KL(policy || base))  [sqrt(nats)]")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    gold_ax.legend(fontsize=7)
    if any(c.proxy is not None for c in curves):
        proxy_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


# --- the stage -----------------------------------------------------------------------------------


@dataclass
class OveroptimizationConfig:
    """Fit Gao et al.'s overoptimization curves to finished best_of_n and rl runs, and plot them."""

    runs: list[str] = field(default_factory=list)
    """Run folders of finished ``best_of_n`` or ``rl`` stages (the stage is read from each
    folder's ``config.json``). Required."""
    labels: list[str] = field(default_factory=list)
    """One legend label per run (empty: each run's overseer, e.g. ``rater`` or the reward-model
    folder's name, with the run folder's name added where two runs share an overseer)."""
    gold_baseline: Literal["first"] | float = "first"
    """Gold reward at d = 0 that the fits subtract: ``first`` takes each run's point of smallest
    KL (n = 1 for best_of_n, the step-0 evaluation for rl), or a number for every run (e.g. the
    base policy's gold measured elsewhere)."""
    title: str = ""
    """Title of the plot."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError

        if not self.runs:
            raise ConfigError("runs is required: give best_of_n or rl run folders, runs=[a,b]")
        if self.labels and len(self.labels) != len(self.runs):
            raise ConfigError(
                f"labels must be empty or name each of the {len(self.runs)} runs, "
                f"got {len(self.labels)}"
            )
        if isinstance(self.gold_baseline, float) and not math.isfinite(self.gold_baseline):
            raise ConfigError(
                f"gold_baseline must be 'first' or a finite number, not {self.gold_baseline}"
            )


class RunPoints(NamedTuple):
    """The (sqrt(KL), gold, proxy) points of one run, in logging order."""

    stage: str
    form: Form
    proxy_name: str
    steps: list[int]
    kl: list[float]
    """The KL that the fit uses: ``kl/bound`` for best_of_n, ``kl/ref`` for rl."""
    kl_ref: list[float | None]
    gold: list[float]
    proxy: list[float | None]


def read_run_points(run_dir: str | Path) -> RunPoints:
    """Points of a finished best_of_n run (one per n, KL = ``kl/bound``, as Gao et al. do for
    best-of-n) or rl run (one per logged step with ``kl/ref`` and ``reward/gold``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    record = read_json(run_dir / "config.json")
    stage, config = record.get("stage"), record.get("config", {})
    if stage not in ("best_of_n", "rl"):
        raise ValueError(f"{run_dir} is a {stage!r} run; overoptimization reads best_of_n and rl")
    kl_key = "kl/bound" if stage == "best_of_n" else "kl/ref"
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_metrics(run_dir):  # rows of one step may be logged separately: merge them
        by_step.setdefault(row["step"], {}).update(row)
    rows = [r for s, r in sorted(by_step.items()) if kl_key in r and "reward/gold" in r]
    if len(rows) < 2:
        raise ValueError(
            f"{run_dir}/metrics.jsonl has {len(rows)} steps with both {kl_key!r} and "
            "'reward/gold'; a fit needs at least 2 (did the run finish?)"
        )
    overseer = str(config.get("overseer", "?"))
    if overseer == "reward_model" and (config.get("overseer_options") or {}).get("path"):
        overseer = str(config["overseer_options"]["path"])
    return RunPoints(
        stage=stage,
        form="bon" if stage == "best_of_n" else "rl",
        proxy_name=Path(overseer).name if "/" in overseer else overseer,
        steps=[int(r["step"]) for r in rows],
        kl=[max(float(r[kl_key]), 0.0) for r in rows],
        kl_ref=[r.get("kl/ref") for r in rows],
        gold=[float(r["reward/gold"]) for r in rows],
        proxy=[r.get("reward/proxy") for r in rows],
    )


def analyse(points: RunPoints, gold_baseline: str | float = "first") -> dict[str, Any]:
    """Fit the run's form to ``gold - baseline`` against ``sqrt(KL)``; the summary of one run."""
    d = np.sqrt(np.asarray(points.kl))
    gold = np.asarray(points.gold)
    first = int(np.argmin(points.kl))
    baseline = float(gold[first]) if gold_baseline == "first" else float(gold_baseline)
    fit = FITS[points.form](d, gold - baseline)
    best = int(np.argmax(gold))  # first point reaching the maximum
    proxies = [p for p in points.proxy if p is not None]
    return {
        "stage": points.stage,
        "form": points.form,
        "proxy": points.proxy_name,
        "kl_metric": "kl/bound" if points.stage == "best_of_n" else "kl/ref",
        "a": fit.a,
        "b": fit.b,
        "r2": fit.r2,
        "d_peak": fit.d_peak,
        "r_peak": fit.r_peak,
        "gold_baseline": baseline,
        "baseline_kl": points.kl[first],
        "gold_peak_observed": float(gold[best]),
        "kl_at_observed_peak": points.kl[best],
        "step_at_observed_peak": points.steps[best],
        "gold_peak_fitted": baseline + fit.r_peak,
        "kl_at_fitted_peak": fit.d_peak**2,
        "gold_final": float(gold[-1]),
        "proxy_final": proxies[-1] if proxies else None,
        "points": [
            {"step": s, "kl": k, "kl_ref": kr, "gold": g, "proxy": p}
            for s, k, kr, g, p in zip(
                points.steps, points.kl, points.kl_ref, points.gold, points.proxy
            )
        ],
    }


def default_labels(points: Sequence[RunPoints], dirs: Sequence[str]) -> list[str]:
    """Each run's proxy name, with its folder's name added where proxy names repeat."""
    names = [p.proxy_name for p in points]
    return [n if names.count(n) == 1 else f"{n} ({Path(d).name})" for n, d in zip(names, dirs)]


def run(cfg: OveroptimizationConfig, run: Run) -> dict[str, Any]:
    """Read each run, fit it, write ``overoptimization.png``; returns the summary."""
    points = [read_run_points(d) for d in cfg.runs]
    labels = cfg.labels or default_labels(points, cfg.runs)
    results, curves = [], []
    for label, d, p in zip(labels, cfg.runs, points):
        res = analyse(p, cfg.gold_baseline)
        results.append({"label": label, "dir": str(d), **res})
        fit = GaoFit(*(res[k] for k in GaoFit._fields))
        proxy = p.proxy if all(x is not None for x in p.proxy) else None
        curves.append(
            Curve(label, np.sqrt(p.kl).tolist(), p.gold, proxy, fit, p.form, res["gold_baseline"])
        )
    plot_overoptimization(curves, run.path("overoptimization.png"), cfg.title)
    return {"runs": [_finite(r) for r in results], "plot": "overoptimization.png"}


def _finite(obj: Any) -> Any:
    """NaN and infinities become None, so ``summary.json`` stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
