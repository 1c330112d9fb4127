"""End-to-end: the dpo stage trains the tiny arithmetic policy on gold-labelled preference pairs.

The pairs are written here in the ``preferences.jsonl`` format: for one-step problems, the gold
solution (chosen) against the same solution with its result and answer moved by 1..10
(rejected, :func:`superalign.overseers.judge.wrong_answer`). DPO should lower its loss, change the weights, rank held-out pairs by its implicit
reward (0.5 before, ties counting half, since policy = reference), and move away from the
reference (kl/ref > 0).
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

import superalign.train.dpo as dpo
from superalign.config import ConfigError, load_config
from superalign.models.load import load_model
from superalign.overseers.judge import wrong_answer
from superalign.runs import Run, read_metrics
from superalign.stages import execute
from superalign.tasks import get_task
from superalign.train.preferences import FILE

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
torch.set_num_threads(THREADS)

DPO = [
    "lr=1e-4",
    "beta=0.1",
    "max_steps=80",
    "batch_size=16",
    "log_every=5",
    "checkpoint_every=20",
    "eval_n=32",
    "eval_difficulties=[1]",
    "kl_n=48",
    "max_new_tokens=24",
    f"threads={THREADS}",
]


def write_preferences(folder, n_train: int = 400, n_test: int = 200, seed: int = 0):
    task = get_task("arithmetic")
    rng = random.Random(seed)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for ex in task.examples(split, n, 1, seed=1 + seed):
            bad = wrong_answer(ex, rng, [])
            rows.append(
                {
                    "prompt": ex.prompt,
                    "chosen": ex.solution,
                    "rejected": bad,
                    "split": split,
                    "p_chosen": 1.0,
                    "gold_chosen": task.grade(ex, ex.solution),
                    "gold_rejected": task.grade(ex, bad),
                }
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, test_seed):
    return write_preferences(tmp_path_factory.mktemp("prefs") / "preferences-gold", seed=test_seed)


@pytest.fixture(scope="module")
def trained(arith_policy, prefs, tmp_path_factory, test_seed):
    root = tmp_path_factory.mktemp("dpo-runs")
    args = [f"model={arith_policy}", f"preferences={prefs}", *DPO, f"seed={test_seed}"]
    cfg = load_config(dpo.DPOStageConfig, None, args)
    return execute("dpo", cfg, root=root), cfg, root


@pytest.mark.outcome
def test_loss_falls_and_trl_metrics_are_logged(trained):
    res, _, _ = trained
    s = res.summary
    print(f"MEASURE dpo loss {s['loss/train_first']:.4f}->{s['loss/train_final']:.4f}")
    assert s["steps"] == 80 and s["n_train"] == 400 and s["n_test"] == 200
    assert s["labels/gold_agreement"] == 1.0
    assert s["loss/train_first"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference
    # 80 steps, seeds 0 / 1 / 2, 1 thread | 2 threads: -0.097, -0.105, -0.138 | -0.144, -0.118,
    # -0.142 (an earlier seed-2, 2-thread run: -0.088)
    assert s["loss/train_final"] < s["loss/train_first"] - 0.02
    rows = [r for r in read_metrics(res.dir) if "loss/train" in r]
    assert len(rows) >= 8
    for key in ("train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen"):
        assert all(key in r for r in rows)
    assert rows[-1]["train/rewards/margins"] > 0 and rows[-1]["train/rewards/accuracies"] > 0.5


@pytest.mark.outcome
def test_held_out_preference_accuracy_rises_and_kl_is_positive(trained):
    s = trained[0].summary
    print(
        f"MEASURE dpo pref acc {s['eval/pref_accuracy']:.3f} margin {s['eval/pref_margin']:.4f}"
        f" kl {s['kl/ref']:.4f} [{s['kl/ref_low']:.4f}, {s['kl/ref_high']:.4f}]"
    )
    assert s["eval/pref_accuracy_before"] == 0.5 and s["eval/pref_margin_before"] == 0.0
    # 80 steps, 200 held-out pairs; seeds 0 / 1 / 2, 1 thread | 2 threads: 0.705, 0.72, 0.755 |
    # 0.71, 0.685, 0.80 (an earlier seed-2, 2-thread run: 0.70; margin 0.11-0.17). 0.62 of 200
    # has its 95% interval above 0.5 (0.62 - 0.067).
    # The earlier 40 steps and 50 pairs sat on noise: 0.66, 0.70, 0.84 with 1 thread, 0.62 and
    # 0.58 with 2 (bound 0.65; a 95% interval of +-0.13 at n = 50)
    assert s["eval/pref_accuracy"] >= 0.62 and s["eval/pref_margin"] > 0
    assert s["eval/pref_gold_accuracy"] == s["eval/pref_accuracy"]  # the labels are gold here
    assert 0 < s["kl/ref_low"] <= s["kl/ref"] <= s["kl/ref_high"]
    assert s["policy/length"] > 5 and s["policy/entropy"] > 0
    for k in ("eval/accuracy_before/d1", "eval/accuracy/d1"):
        assert 0.0 <= s[k] <= 1.0


def test_parameters_changed_and_the_result_loads(trained, arith_policy):
    res, _, _ = trained
    a = AutoModelForCausalLM.from_pretrained(arith_policy / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(res.dir / "model").state_dict()
    matrices = [k for k in a if a[k].dim() >= 2]
    assert all(not torch.equal(a[k], b[k]) for k in matrices)
    _, _, info = load_model(res.dir)
    assert info["source"] == "run" and res.summary["reference"]["path"] == str(
        arith_policy.resolve()
    )
    assert not (res.dir / "checkpoint").exists()


def test_our_tokenization_matches_trl_and_labels_are_kept_apart_from_gold(
    trained, arith_policy, prefs, tmp_path
):
    res, cfg, _ = trained
    policy, tokenizer, _ = load_model(res.dir)
    reference, _, _ = load_model(arith_policy)
    pairs = dpo.read_preferences(prefs, "train")[:20]
    trainer = dpo._trainer(cfg, Run(tmp_path, "dpo", {}), policy, reference, tokenizer, pairs)
    for row, tok in zip(pairs, trainer.train_dataset):
        prompt, chosen = dpo.completion_ids(tokenizer, row["prompt"], row["chosen"])
        assert (prompt, chosen) == (tok["prompt_ids"], tok["chosen_ids"])
        assert (
            dpo.completion_ids(tokenizer, row["prompt"], row["rejected"])[1] == tok["rejected_ids"]
        )
    # flipping the labels flips label accuracy, but not accuracy against gold
    test = dpo.read_preferences(prefs, "test")
    swapped = [
        {
            **r,
            "chosen": r["rejected"],
            "rejected": r["chosen"],
            "gold_chosen": r["gold_rejected"],
            "gold_rejected": r["gold_chosen"],
        }
        for r in test
    ]
    straight = dpo.preference_eval(policy, reference, tokenizer, test, cfg.beta)
    flipped = dpo.preference_eval(policy, reference, tokenizer, swapped, cfg.beta)
    assert flipped["pref_accuracy"] == pytest.approx(1 - straight["pref_accuracy"])
    assert flipped["pref_gold_accuracy"] == pytest.approx(straight["pref_gold_accuracy"])
    assert dpo.label_gold_agreement(swapped) == 0.0


def test_interrupted_run_resumes_from_trl_checkpoint(
    arith_policy, prefs, tmp_path, crash_then_resume
):
    args = [f"model={arith_policy}", f"preferences={prefs}", *DPO, "max_steps=6"]
    args += ["checkpoint_every=3", "eval_n=4", "kl_n=4", "log_every=1", "batch_size=4"]
    cfg = load_config(dpo.DPOStageConfig, None, args)
    res = crash_then_resume(dpo, "dpo", cfg, tmp_path, at_step=4)
    assert res.summary["resumed_from_step"] == 3 and res.summary["steps"] == 6
    steps = [r["step"] for r in read_metrics(res.dir) if "loss/train" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert len([r for r in read_metrics(res.dir) if "eval/pref_accuracy_before" in r]) == 1


def test_ranking_accuracy_counts_ties_half():
    assert dpo.ranking_accuracy([1.0, 0.0, 2.0, 3.0], [0.0, 0.0, 5.0, 1.0]) == pytest.approx(0.625)


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="model is required"):
        dpo.DPOStageConfig(preferences="p")
    with pytest.raises(ConfigError, match="preferences is required"):
        dpo.DPOStageConfig(model="m")
    with pytest.raises(ConfigError, match="loss_type"):
        load_config(dpo.DPOStageConfig, None, ["model=m", "preferences=p", "loss_type=kto"])
    with pytest.raises(ConfigError, match="beta must be positive"):
        dpo.DPOStageConfig(model="m", preferences="p", beta=0)
    with pytest.raises(ConfigError, match="loss_type=robust only"):
        dpo.DPOStageConfig(model="m", preferences="p", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="lr"):
        dpo.DPOStageConfig(model="m", preferences="p", lr=2)
    with pytest.raises(FileNotFoundError, match="no preferences.jsonl"):
        dpo.training_pairs(dpo.DPOStageConfig(model="m", preferences=str(tmp_path)))
