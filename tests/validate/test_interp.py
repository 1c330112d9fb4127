"""End-to-end: the interp stage on the tiny arithmetic policy finds the operator linearly, trains
an SAE with low held-out FVU, scores explanations, and steering along the found operator
direction flips the operator the model writes far more often than a random direction."""

import json
import os

import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.runs import read_metrics
from superalign.stages import execute, stage_inputs
from superalign.validate.interp import InterpConfig

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the run below, as tests/conftest.py's TEST_THREADS."""
SMALL = [
    "n_probe=400",
    "sae_texts=600",
    "sae_steps=600",
    "n_explain=24",
    "steer_n=100",
    f"threads={THREADS}",
]


@pytest.fixture(scope="module")
def result(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    cfg = load_config(InterpConfig, None, [f"model={arith_policy}", *SMALL, f"seed={test_seed}"])
    res = execute("interp", cfg, root=tmp_path_factory.mktemp("runs"))
    return res, json.loads((res.dir / "summary.json").read_text()), cfg


@pytest.mark.outcome
def test_probes_find_the_operator_and_log_every_layer(result):
    res, summary, _ = result
    op = summary["probes"]["arith_op"]
    tf = summary["probes"]["arith_true_false"]
    print(f"MEASURE interp probe op {op['auroc']:.3f} true_false {tf['auroc']:.3f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.93, 1.0, 0.96 | 0.97, 1.0, 0.95
    assert op["auroc"] > 0.9 and 0 <= op["layer"] < summary["n_layers"]
    assert set(op["auroc_by_layer"]) == {str(i) for i in range(summary["n_layers"])}
    # 0.42, 0.59, 0.42 | 0.53, 0.60, 0.48
    assert 0.3 < summary["probes"]["arith_true_false"]["auroc"] <= 1.0
    rows = read_metrics(res.dir)
    by_layer = [r for r in rows if "probe/arith_op/auroc_by_layer" in r]
    assert [r["step"] for r in by_layer] == list(range(summary["n_layers"]))
    assert [r["step"] for r in rows if "probe/arith_op/auroc_std_by_layer" in r] == list(
        range(summary["n_layers"])
    )
    for name in ("arith_op", "arith_true_false"):  # scored on held-out groups, texts counted
        p = summary["probes"][name]
        assert p["auroc_low"] <= p["auroc"] <= p["auroc_high"]
        assert 0 < p["n"] < p["n_texts"] <= p["n_rows"] == 400 and p["n_groups"] <= p["n_texts"]
        assert any(f"probe/{name}/n_texts" in r for r in rows)
    assert (res.dir / "probe_auroc_by_layer.png").stat().st_size > 1000


@pytest.mark.outcome
def test_sae_reconstructs_held_out_activations(result):
    res, summary, cfg = result
    sae = summary["sae"]
    losses = [r["sae/loss"] for r in read_metrics(res.dir) if "sae/loss" in r]
    print(
        f"MEASURE interp sae fvu {sae['fvu']:.4f} dead {sae['dead_fraction']:.3f}"
        f" loss ratio {losses[-1] / losses[0]:.3f}"
    )
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.023, 0.020, 0.023 | 0.027, 0.024, 0.0255
    assert sae["fvu"] < 0.1
    assert 0 < sae["l0"] <= cfg.sae_k
    assert 0 <= sae["dead_fraction"] < 0.6  # 0.21, 0.23, 0.23 | 0.20, 0.19, 0.17
    assert sae["n_heldout_tokens"] > 1000
    losses = [r["sae/loss"] for r in read_metrics(res.dir) if "sae/loss" in r]
    assert losses[-1] < 0.5 * losses[0]  # 0.034, 0.025, 0.030x | 0.040, 0.032, 0.036x
    assert (res.dir / "sae" / "sae.safetensors").is_file()
    assert not (res.dir / "activations").exists()  # removed unless keep_activations


@pytest.mark.outcome
def test_autointerp_scores_explanations(result):
    res, summary, _ = result
    auto = summary["autointerp"]
    print(
        f"MEASURE interp autointerp {auto['score_mean']:.3f} control {auto['control_score_mean']:.3f}"
    )
    assert auto["n"] == 24
    explanations = json.loads((res.dir / "explanations.json").read_text())
    assert all(-1 <= e["score"] <= 1 and e["explanation"] for e in explanations)
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.15, 0.22, 0.25 vs 0.015, -0.003, 0.009 | 0.275,
    # 0.275, 0.32 vs 0.024, -0.012, -0.032
    assert auto["score_mean"] > auto["control_score_mean"]
    assert (res.dir / "autointerp_scores.png").is_file()


@pytest.mark.outcome
def test_steering_along_the_operator_direction_flips_the_operator(result):
    _, summary, _ = result
    s = summary["steer"]
    keys = ["steer/base_rate", "ablate/base_accuracy", "steer/effect", "steer/control_effect"]
    keys += ["steer/answer_flip", "steer/control_answer_flip", "ablate/effect"]
    keys += ["ablate/control_effect"]
    print("MEASURE interp steer", {k: round(s[k], 3) for k in keys}, s["effect_by_layer"]["0"])
    assert s["steer/base_rate"] < 0.05 and s["ablate/base_accuracy"] > 0.95
    # seeds 0 / 1 / 2, 1 thread | 2 threads: effect 1.0 on each of the six, random direction
    # 0.23, 0.0, 0.36 | 0.30, 0.0, 0.55
    assert s["steer/effect"] > 0.8
    assert s["steer/effect"] > s["steer/control_effect"] + 0.4
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.58, 0.49, 0.66 vs 0.05, 0.0, 0.01 | 0.65, 0.44,
    # 0.56 vs 0.03, 0.0, 0.01 (old fixture: 0.63, 0.30, 0.05, failing on seed 2, whose policy got
    # 0.14 of its one-step problems right, so a flipped operator rarely gave the flipped answer)
    assert s["steer/answer_flip"] > s["steer/control_answer_flip"] + 0.2
    # ablation: 0.53, 0.50, 0.49 | 0.52, 0.50, 0.50 vs 0.0 each
    assert s["ablate/effect"] > 0.3 and abs(s["ablate/control_effect"]) < 0.1
    # block 0 reads the operator: 1.0 on each of the six
    assert s["effect_by_layer"]["0"] > 0.8


def test_config_checks_and_inputs(arith_policy):
    with pytest.raises(ConfigError, match="model is required"):
        InterpConfig()
    with pytest.raises(ConfigError, match="steer_hook"):
        InterpConfig(model="x", steer_hook="layer0")
    with pytest.raises(ConfigError, match="sae_k"):
        InterpConfig(model="x", sae_k=10, sae_latents=4)
    cfg = InterpConfig(model=str(arith_policy))
    assert stage_inputs("interp", cfg) == {"model": str(arith_policy)}
