"""Gao et al. overoptimization fits against curves with known coefficients, the plot, and the
analysis stage on hand-made best_of_n and rl run folders."""

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from superalign.config import ConfigError, load_config, to_dict
from superalign.runs import atomic_write_json, run_stage
from superalign.train import overoptimization as oo
from superalign.train.kl import best_of_n_kl_bound
from superalign.train.overoptimization import (
    Curve,
    GaoFit,
    OveroptimizationConfig,
    bon_curve,
    fit_bon,
    fit_rl,
    plot_overoptimization,
    rl_curve,
)

NS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
D_BON = np.sqrt([best_of_n_kl_bound(n) for n in NS])  # starts at d = 0
D_RL = np.linspace(0.0, 6.0, 25)


def _numeric_peak(curve, a, b, top):
    xs = np.linspace(1e-9, top, 200001)
    ys = curve(xs, a, b)
    return xs[ys.argmax()], ys.max()


# --- fits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [(0.3, 0.1), (1.0, 0.4), (-0.05, 0.1), (0.2, -0.05)])
def test_fit_bon_recovers_known_coefficients_exactly(a, b):
    fit = fit_bon(D_BON, bon_curve(D_BON, a, b))
    assert isinstance(fit, GaoFit)
    assert fit.a == pytest.approx(a, abs=1e-10) and fit.b == pytest.approx(b, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    if a < 0 < b:  # gold falls from the start: the best is not to optimize
        assert fit.d_peak == 0.0 and fit.r_peak == 0.0
    elif b > 0:
        assert fit.d_peak == pytest.approx(a / (2 * b)) and fit.r_peak == pytest.approx(
            a * a / 4 / b
        )
        d, r = _numeric_peak(bon_curve, a, b, 10 * fit.d_peak)
        assert d == pytest.approx(fit.d_peak, rel=1e-3) and r == pytest.approx(fit.r_peak)
    else:  # gold never turns down
        assert math.isnan(fit.d_peak) and math.isnan(fit.r_peak)


@pytest.mark.parametrize("a,b", [(0.5, 0.3), (0.2, 0.25), (0.4, -0.1)])
def test_fit_rl_recovers_known_coefficients_exactly(a, b):
    r = rl_curve(D_RL, a, b)
    assert r[0] == 0.0  # d log d -> 0 at d = 0
    fit = fit_rl(D_RL, r)
    assert fit.a == pytest.approx(a, abs=1e-10) and fit.b == pytest.approx(b, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    if b > 0:
        assert fit.d_peak == pytest.approx(math.exp(a / b - 1))
        assert fit.r_peak == pytest.approx(b * fit.d_peak)
        d, top = _numeric_peak(rl_curve, a, b, 10 * fit.d_peak)
        assert d == pytest.approx(fit.d_peak, rel=1e-3) and top == pytest.approx(fit.r_peak)
    else:
        assert math.isnan(fit.d_peak) and math.isnan(fit.r_peak)


def test_noisy_fits_are_close_and_r2_falls_with_noise():
    rng = np.random.default_rng(0)
    d = np.repeat(D_RL, 8)
    clean = rl_curve(d, 0.5, 0.3)
    r2 = []
    for sigma in (0.01, 0.05, 0.2):
        fit = fit_rl(d, clean + rng.normal(0, sigma, d.shape))
        r2.append(fit.r2)
        if sigma == 0.01:
            assert fit.a == pytest.approx(0.5, abs=0.01) and fit.b == pytest.approx(0.3, abs=0.01)
    assert 1 > r2[0] > r2[1] > r2[2], r2
    db = np.repeat(D_BON, 8)
    fit = fit_bon(db, bon_curve(db, 0.3, 0.1) + rng.normal(0, 0.01, db.shape))
    assert fit.a == pytest.approx(0.3, abs=0.02) and fit.b == pytest.approx(0.1, abs=0.01)


def test_r2_semantics():
    rng = np.random.default_rng(1)
    r = bon_curve(D_BON, 0.3, 0.1) + rng.normal(0, 0.02, D_BON.shape)
    fit = fit_bon(D_BON, r)
    res = r - bon_curve(D_BON, fit.a, fit.b)
    assert fit.r2 == pytest.approx(1 - (res**2).sum() / ((r - r.mean()) ** 2).sum())
    # least squares: any other (a, b) leaves a larger residual
    for da, db in [(0.01, 0), (0, 0.01), (-0.01, 0.005)]:
        other = r - bon_curve(D_BON, fit.a + da, fit.b + db)
        assert (other**2).sum() > (res**2).sum()
    # the right form fits its own data better than the wrong one
    rl_data = rl_curve(D_RL, 0.2, 0.25)
    assert fit_rl(D_RL, rl_data).r2 > fit_bon(D_RL, rl_data).r2
    # no intercept: data that jump away from 0 at d > 0 fit worse than their mean (R^2 < 0)
    jump = np.where(D_RL > 0, 1.0 + 0.01 * rng.normal(size=D_RL.shape), 0.0)
    assert fit_bon(D_RL[1:], jump[1:]).r2 < 0
    assert math.isnan(fit_bon(D_BON, np.full(D_BON.shape, 0.2)).r2)  # constant r: undefined


def test_fit_input_checks():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_bon([0.0, 1.0], [0.0, 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        fit_rl([-1.0, 1.0, 2.0], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="equal-length"):
        fit_rl([0.5, 1.0, 2.0], [0.0, 0.1])


# --- plot ----------------------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path):
    bon = Curve(
        "rm 1M",
        D_BON,
        0.5 + bon_curve(D_BON, 0.3, 0.1),
        np.linspace(0, 2, len(NS)),
        fit_bon(D_BON, bon_curve(D_BON, 0.3, 0.1)),
        "bon",
        0.5,
    )
    rl = Curve(
        "rm 3M",
        D_RL,
        0.5 + rl_curve(D_RL, 0.5, 0.3),
        None,
        fit_rl(D_RL, rl_curve(D_RL, 0.5, 0.3)),
        "rl",
        0.5,
    )
    path = plot_overoptimization([bon, rl], tmp_path / "sub" / "plot.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # no temporary file left


# --- the stage on hand-made run folders ----------------------------------------------------------

BASE = 0.6


def _run_folder(path, stage, config, rows, summary):
    path.mkdir(parents=True)
    atomic_write_json(path / "config.json", {"stage": stage, "config": config})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(path / "summary.json", summary)
    return path


def _bon_folder(root, name, overseer, a, b):
    rows = []
    for n, d in zip(NS, D_BON):
        kl = best_of_n_kl_bound(n)
        rows.append(
            {
                "step": n,
                "n": n,
                "kl/bound": kl,
                "kl/ref": 0.5 * kl,
                "reward/gold": BASE + float(bon_curve(d, a, b)),
                "reward/proxy": 0.1 * n,
            }
        )
    return _run_folder(
        root / name,
        "best_of_n",
        {"overseer": overseer, "overseer_options": {}},
        rows,
        {"gold_peak": max(r["reward/gold"] for r in rows)},
    )


def _rl_folder(root, a, b):
    rows = []
    for i, d in enumerate(D_RL):
        step = 10 * i
        rows.append({"step": step, "train/loss": 1.0 / (1 + i), "train/kl": 0.1})  # TRL line
        rows.append({"step": step, "kl/ref": float(d * d), "reward/proxy": float(d)})
        rows.append({"step": step, "reward/gold": BASE + float(rl_curve(d, a, b))})  # same step
    config = {"overseer": "reward_model", "overseer_options": {"path": "/x/runs/reward_model-big"}}
    return _run_folder(root / "rl-abc", "rl", config, rows, {"steps": 240})


def _analyse(tmp_path, overrides):
    cfg = load_config(OveroptimizationConfig, None, overrides)
    return run_stage(
        "overoptimization", to_dict(cfg), lambda run: oo.run(cfg, run), root=tmp_path / "runs"
    )


def test_stage_fits_each_run_with_its_form_and_plots(tmp_path):
    bon_a = _bon_folder(tmp_path, "best_of_n-a", "rater", 0.3, 0.2)
    bon_b = _bon_folder(tmp_path, "best_of_n-b", "rater", 0.2, 0.01)
    rl = _rl_folder(tmp_path, 0.5, 0.3)
    res = _analyse(tmp_path, [f"runs=[{bon_a},{bon_b},{rl}]"])
    runs = res.summary["runs"]
    assert [r["label"] for r in runs] == [
        "rater (best_of_n-a)",
        "rater (best_of_n-b)",
        "reward_model-big",
    ]
    assert [r["form"] for r in runs] == ["bon", "bon", "rl"]
    for r, (a, b) in zip(runs, [(0.3, 0.2), (0.2, 0.01), (0.5, 0.3)]):
        assert r["a"] == pytest.approx(a, abs=1e-5) and r["b"] == pytest.approx(b, abs=1e-5)
        assert r["r2"] == pytest.approx(1.0, abs=1e-6)
        assert r["gold_baseline"] == pytest.approx(BASE) and r["baseline_kl"] == 0.0
    first, second, third = runs
    # bon a=0.3, b=0.2: fitted peak at d* = 0.75 (KL 0.5625), gold 0.6 + 0.1125
    assert first["kl_at_fitted_peak"] == pytest.approx(0.75**2, rel=1e-4)
    assert first["gold_peak_fitted"] == pytest.approx(BASE + 0.1125, rel=1e-4)
    gold = [p["gold"] for p in first["points"]]
    assert first["gold_peak_observed"] == max(gold)
    assert first["step_at_observed_peak"] == NS[int(np.argmax(gold))]
    assert first["kl_metric"] == "kl/bound"
    assert [p["kl_ref"] for p in first["points"]] == [0.5 * p["kl"] for p in first["points"]]
    assert first["gold_final"] == gold[-1] and first["proxy_final"] == pytest.approx(25.6)
    # the second bon run peaks far beyond its data (d* = 10): the fit still says where
    assert second["kl_at_fitted_peak"] == pytest.approx(100.0, rel=1e-3)
    assert second["gold_peak_observed"] == second["gold_final"]
    # rl: steps merged from separate lines; training-only lines ignored
    assert third["kl_metric"] == "kl/ref" and len(third["points"]) == len(D_RL)
    assert [p["step"] for p in third["points"]] == [10 * i for i in range(len(D_RL))]
    assert third["kl_at_fitted_peak"] == pytest.approx(math.exp(2 * (0.5 / 0.3 - 1)), rel=1e-4)
    assert third["proxy_final"] == pytest.approx(6.0)
    png = res.dir / res.summary["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_stage_labels_baseline_and_bad_inputs(tmp_path):
    bon = _bon_folder(tmp_path, "best_of_n-a", "gold", 0.3, 0.2)
    res = _analyse(tmp_path, [f"runs=[{bon}]", "labels=[small RM]", "gold_baseline=0.5"])
    (only,) = res.summary["runs"]
    assert only["label"] == "small RM" and only["gold_baseline"] == 0.5
    assert only["r2"] < 1  # the 0.1 offset is not a Gao curve through the origin
    # a run with no peak in its fit writes null, not NaN (valid JSON)
    rising = _bon_folder(tmp_path, "best_of_n-up", "gold", 0.3, -0.1)
    up = _analyse(tmp_path, [f"runs=[{rising}]"])
    assert up.summary["runs"][0]["kl_at_fitted_peak"] is None
    json.loads((up.dir / "summary.json").read_text())  # strict JSON parses
    sft = _run_folder(tmp_path / "sft-x", "sft", {}, [], {})
    with pytest.raises(ValueError, match="'sft' run"):
        _analyse(tmp_path, [f"runs=[{sft}]"])
    empty = _run_folder(tmp_path / "rl-empty", "rl", {"overseer": "gold"}, [{"step": 0}], {})
    with pytest.raises(ValueError, match="at least 2"):
        _analyse(tmp_path, [f"runs=[{empty}]"])
    with pytest.raises(ConfigError, match="runs is required"):
        OveroptimizationConfig()
    with pytest.raises(ConfigError, match="labels"):
        OveroptimizationConfig(runs=["a", "b"], labels=["x"])
    with pytest.raises(ConfigError, match="gold_baseline"):
        load_config(OveroptimizationConfig, None, ["runs=[a]", "gold_baseline=latest"])
