"""End-to-end: a Bradley-Terry reward model trained with TRL on gold-labelled pairs from a tiny
arithmetic policy learns to rank held-out completions by gold.

The figures over seeds and thread counts that the bounds were set from are beside the
assertions. (This docstring's earlier figures, 503 / 568 train pairs and a claim failing on seeds
1 and 2, were measured on an older fixture policy of fixed length; see tests/conftest.py.) Much
of what the RM learns is format: on that older fixture the seed-0 RM ranked a correct completion
above a malformed one in 42 of 43 test pairs, but above a well-formed wrong sum in only 60% of 96.
"""

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import superalign.train.reward_model as rm
from superalign.config import ConfigError, load_config
from superalign.overseers import build_overseer
from superalign.overseers.reward_model import RewardModelOverseer, reward_inputs
from superalign.runs import Run, read_metrics
from superalign.stages import execute
from superalign.tasks import get_task
from superalign.train.preferences import PreferencesConfig, read_preferences

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
PAIRS = [
    "overseer=gold",
    "difficulties=[1]",
    "n_train_prompts=1500",
    "n_test_prompts=400",
    "max_new_tokens=24",
    "temperature=1.5",
    f"threads={THREADS}",
]
RM = ["lr=1e-3", "epochs=3", "batch_size=16", "log_every=10", "checkpoint_every=50"]
RM += [f"threads={THREADS}"]


@pytest.fixture(scope="module")
def pairs(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("rm-runs")
    args = [f"model={arith_policy}", *PAIRS, f"seed={test_seed}"]
    cfg = load_config(PreferencesConfig, None, args)
    return execute("preferences", cfg, root=root).dir, root


@pytest.fixture(scope="module")
def trained(arith_policy, pairs, test_seed):
    prefs, root = pairs
    args = [f"preferences={prefs}", f"model={arith_policy}", *RM, f"seed={test_seed}"]
    return execute("reward_model", load_config(rm.RewardModelConfig, None, args), root=root)


@pytest.mark.outcome
def test_held_out_gold_accuracy_rises_and_loss_falls(trained):
    s = trained.summary
    print(
        f"MEASURE rm n {s['n_train']}/{s['n_test']} gold acc {s['eval/gold_accuracy_before']:.3f}"
        f"->{s['eval/gold_accuracy']:.3f} eval loss {s['eval/loss_before']:.3f}->{s['eval/loss']:.3f}"
        f" train loss {s['train/loss_before']:.3f}->{s['train/loss']:.3f}"
        f" train acc {s['train/accuracy_before']:.3f}->{s['train/accuracy']:.3f}"
    )
    # pairs whose completions differ in gold: seeds 0 / 1 / 2, 1 thread | 2 threads: 566, 523,
    # 592 | 598, 565, 549 train, 173, 141, 149 | 148, 171, 178 test
    assert s["n_train"] > 150 and s["n_test"] > 30 and s["n_train_kept"] == s["n_train"]
    assert s["steps"] == 3 * math.ceil(s["n_train"] / 16)
    assert s["loss/train_final"] < s["loss/train_first"]
    # seeds 0 / 1 / 2, 1 thread | 2 threads: train loss -0.18, -0.22, -0.10 | -0.175, -0.11,
    # -0.18; eval loss -0.13, -0.10, -0.07 | -0.11, -0.14, -0.19; held-out gold accuracy 0.51 ->
    # 0.64, 0.48 -> 0.67, 0.45 -> 0.66 | 0.45 -> 0.70, 0.49 -> 0.63, 0.365 -> 0.725; train
    # accuracy +0.16, +0.24, +0.20 | +0.19, +0.15, +0.21
    assert s["train/loss"] < s["train/loss_before"] - 0.05
    assert s["eval/loss"] < s["eval/loss_before"] - 0.02
    assert s["eval/gold_accuracy"] >= 0.58, s["eval/gold_accuracy"]
    assert s["eval/gold_accuracy"] > s["eval/gold_accuracy_before"] + 0.08
    assert s["train/accuracy"] > s["train/accuracy_before"] + 0.1
    # gold labels: agreement with the labeller is agreement with gold
    assert s["eval/accuracy"] == s["eval/gold_accuracy"]
    assert s["eval/reward_std"] > 0
    rows = read_metrics(trained.dir)
    assert len([r for r in rows if "loss/train" in r]) >= 5
    assert {"eval/gold_accuracy_before", "train/gold_accuracy_before"} <= set(rows[0])
    assert s["preferences"]["overseer"]["spec"] == "gold"


def test_parameters_changed_from_the_policy(trained, arith_policy):
    policy = AutoModelForCausalLM.from_pretrained(arith_policy / "model").model.state_dict()
    model = AutoModelForSequenceClassification.from_pretrained(trained.dir / "model")
    tuned = model.model.state_dict()
    matrices = [k for k in policy if policy[k].dim() >= 2]
    assert [k for k in matrices if not torch.equal(policy[k], tuned[k])] == matrices
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_run_folder_is_an_overseer_that_reproduces_the_eval(trained, pairs):
    prefs, _ = pairs
    test = read_preferences(prefs, "test")
    task = get_task("arithmetic")
    overseer = build_overseer(str(trained.dir), task, [])
    assert isinstance(overseer, RewardModelOverseer)
    assert overseer.info["path"] == str(trained.dir.resolve())
    prompts = [p["prompt"] for p in test]
    rc = overseer.score(prompts, [p["chosen"] for p in test])
    rr = overseer.score(prompts, [p["rejected"] for p in test])
    acc = sum(a > b for a, b in zip(rc, rr)) / len(test)
    assert acc == pytest.approx(trained.summary["eval/accuracy"])
    assert not (trained.dir / "checkpoint").exists()


def test_overseer_scores_text_as_trl_trained_on_it(arith_policy, pairs, tmp_path):
    """TRL's own preprocessing and collator give the token ids and rewards the overseer uses."""
    prefs, _ = pairs
    rows = read_preferences(prefs, "train")[:6]
    cfg = rm.RewardModelConfig(preferences=str(prefs), model=str(arith_policy), threads=1)
    model, tok, _ = rm.build_reward_model(cfg)
    run = Run(tmp_path, "reward_model", {})
    trainer = rm._trainer(cfg, run, model, tok, rows)
    ds = trainer.train_dataset
    prompts = [r["prompt"] for r in rows]
    assert ds["chosen_ids"] == reward_inputs(tok, prompts, [r["chosen"] for r in rows])
    assert ds["rejected_ids"] == reward_inputs(tok, prompts, [r["rejected"] for r in rows])
    batch = trainer.data_collator([ds[i] for i in range(len(rows))])  # chosen then rejected
    with torch.no_grad():
        trl_rewards = model(**batch).logits[:, 0]
    ours = rm.reward_scores(
        model, tok, prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    assert torch.allclose(trl_rewards, torch.tensor(ours), atol=1e-5)


def test_fresh_tiny_reward_model_trains_and_loads(arith_policy, pairs):
    prefs, root = pairs
    args = [f"preferences={prefs}", f"model={arith_policy}", "size=tiny", "n_train=64"]
    args += ["max_steps=4", "batch_size=16", "lr=1e-3", "log_every=1", "threads=1"]
    res = execute("reward_model", load_config(rm.RewardModelConfig, None, args), root=root)
    s = res.summary
    assert s["reward_model"]["init"] == "fresh" and s["reward_model"]["size"] == "tiny"
    assert s["n_train"] == 64 and s["steps"] == 4
    policy_params = sum(
        p.numel()
        for p in AutoModelForCausalLM.from_pretrained(arith_policy / "model").model.parameters()
    )
    assert s["reward_model"]["params"] != policy_params  # a new architecture, not a copy
    config = json.loads((res.dir / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(RewardModelOverseer.load(str(res.dir)).score(["Q: 1+2\n"], ["1+2=3\nA: 3\n"])) == 1


def test_n_train_subsets_are_nested(pairs):
    prefs, _ = pairs
    small = rm.training_pairs(rm.RewardModelConfig(preferences=str(prefs), model="x", n_train=50))
    big = rm.training_pairs(rm.RewardModelConfig(preferences=str(prefs), model="x", n_train=200))
    assert len(small) == 50 and len(big) == 200 and small == big[:50]
    every = rm.training_pairs(rm.RewardModelConfig(preferences=str(prefs), model="x"))
    assert len(every) == len(read_preferences(prefs, "train"))


def test_interrupted_run_resumes_from_trl_checkpoint(arith_policy, pairs, crash_then_resume):
    prefs, root = pairs
    args = [f"preferences={prefs}", f"model={arith_policy}", "n_train=80", "max_steps=10"]
    args += ["batch_size=8", "checkpoint_every=5", "log_every=1", "threads=1"]
    cfg = load_config(rm.RewardModelConfig, None, args)
    res = crash_then_resume(rm, "reward_model", cfg, root, at_step=7)
    assert res.summary["resumed_from_step"] == 5 and res.summary["steps"] == 10
    steps = [r["step"] for r in read_metrics(res.dir) if "loss/train" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 10
    assert len([r for r in read_metrics(res.dir) if "eval/accuracy_before" in r]) == 1


def test_pair_eval_on_hand_made_rewards(monkeypatch):
    # rewards of the chosen completions, then of the rejected ones
    monkeypatch.setattr(rm, "reward_scores", lambda *a: [2.0, 0.0, 1.0, 3.0, 1.0, 1.0, 0.5, 3.0])
    gold = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (None, 0.0)]
    pairs = [
        {"prompt": "p", "chosen": "c", "rejected": "r", "gold_chosen": g, "gold_rejected": h}
        for g, h in gold
    ]
    ev = rm.pair_eval(None, None, pairs)
    assert ev["accuracy"] == (1 + 0 + 1 + 0.5) / 4  # a tie counts half
    # pair 0: chosen is gold-better and ranked first; pair 1: rejected is gold-better and ranked
    # first; pairs 2 and 3 have no gold difference
    assert ev["gold_accuracy"] == 1.0
    diffs = torch.tensor([1.0, -1.0, 0.5, 0.0])
    assert ev["loss"] == pytest.approx(float(-torch.nn.functional.logsigmoid(diffs).mean()))
    assert rm.pair_eval(None, None, [])["gold_accuracy"] is None


def test_config_checks():
    with pytest.raises(ConfigError, match="preferences is required"):
        rm.RewardModelConfig(model="x")
    with pytest.raises(ConfigError, match="model is required"):
        rm.RewardModelConfig(preferences="p")
    with pytest.raises(ConfigError, match="size"):
        load_config(rm.RewardModelConfig, None, ["preferences=p", "model=x", "size=huge"])
    with pytest.raises(ConfigError, match="lr"):
        rm.RewardModelConfig(preferences="p", model="x", lr=0)
    with pytest.raises(ConfigError, match="n_train"):
        rm.RewardModelConfig(preferences="p", model="x", n_train=-1)
    with pytest.raises(ConfigError, match="center_rewards_coefficient"):
        rm.RewardModelConfig(preferences="p", model="x", center_rewards_coefficient=-0.1)
