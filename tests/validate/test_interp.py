"""End-to-end: the interp stage on the tiny arithmetic policy finds the operator linearly, trains
an SAE with low held-out FVU, scores explanations, and steering along the found operator
direction flips the operator the model writes far more often than a random direction."""

import json

import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.runs import read_metrics
from superalign.stages import execute, stage_inputs
from superalign.validate.interp import InterpConfig

SMALL = [
    "n_probe=200",
    "sae_texts=600",
    "sae_steps=600",
    "n_explain=24",
    "steer_n=100",
    "threads=1",
]


@pytest.fixture(scope="module")
def result(arith_policy, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = load_config(InterpConfig, None, [f"model={arith_policy}", *SMALL])
    res = execute("interp", cfg, root=tmp_path_factory.mktemp("runs"))
    return res, json.loads((res.dir / "summary.json").read_text()), cfg


def test_probes_find_the_operator_and_log_every_layer(result):
    res, summary, _ = result
    op = summary["probes"]["arith_op"]
    assert op["auroc"] > 0.9 and 0 <= op["layer"] < summary["n_layers"]
    assert set(op["auroc_by_layer"]) == {str(i) for i in range(summary["n_layers"])}
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
        assert 0 < p["n"] < p["n_texts"] <= p["n_rows"] == 200 and p["n_groups"] <= p["n_texts"]
        assert any(f"probe/{name}/n_texts" in r for r in rows)
    assert (res.dir / "probe_auroc_by_layer.png").stat().st_size > 1000


def test_sae_reconstructs_held_out_activations(result):
    res, summary, cfg = result
    sae = summary["sae"]
    assert sae["fvu"] < 0.1  # measured 0.02
    assert 0 < sae["l0"] <= cfg.sae_k
    assert 0 <= sae["dead_fraction"] < 0.6
    assert sae["n_heldout_tokens"] > 1000
    losses = [r["sae/loss"] for r in read_metrics(res.dir) if "sae/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert (res.dir / "sae" / "sae.safetensors").is_file()
    assert not (res.dir / "activations").exists()  # removed unless keep_activations


def test_autointerp_scores_explanations(result):
    res, summary, _ = result
    auto = summary["autointerp"]
    assert auto["n"] == 24
    explanations = json.loads((res.dir / "explanations.json").read_text())
    assert all(-1 <= e["score"] <= 1 and e["explanation"] for e in explanations)
    assert auto["score_mean"] > auto["control_score_mean"]
    assert (res.dir / "autointerp_scores.png").is_file()


def test_steering_along_the_operator_direction_flips_the_operator(result):
    _, summary, _ = result
    s = summary["steer"]
    assert s["steer/base_rate"] < 0.05 and s["ablate/base_accuracy"] > 0.95
    assert s["steer/effect"] > 0.8  # measured 1.0
    assert s["steer/effect"] > s["steer/control_effect"] + 0.4  # random direction: 0.24
    assert s["steer/answer_flip"] > s["steer/control_answer_flip"] + 0.2  # 0.46 vs 0.05
    assert s["ablate/effect"] > 0.3 and abs(s["ablate/control_effect"]) < 0.1  # 0.5 vs 0.0
    assert s["effect_by_layer"]["0"] > 0.8  # block 0 reads the operator


def test_config_checks_and_inputs(arith_policy):
    with pytest.raises(ConfigError, match="model is required"):
        InterpConfig()
    with pytest.raises(ConfigError, match="steer_hook"):
        InterpConfig(model="x", steer_hook="layer0")
    with pytest.raises(ConfigError, match="sae_k"):
        InterpConfig(model="x", sae_k=10, sae_latents=4)
    cfg = InterpConfig(model=str(arith_policy))
    assert stage_inputs("interp", cfg) == {"model": str(arith_policy)}
