"""The easy_to_hard stage on a tiny setting: easy = one-step problems, hard = two-step ones.

The ``arith_policy`` fixture was pretrained on one-step problems only, so two-step problems are
hard for it (about 0.01 greedy gold, and 200 SFT steps on two-step demonstrations leave that
unchanged while the loss on two-step solutions falls from 7.2 to 0.9 nats/token: measured). So
the policy assertions here are on loss; accuracy moves in the pipeline (docs/stages/
easy_to_hard.md). Preference pairs are gold solutions against copies with one error (the
policy writes almost no correct two-step solutions to pair with). Every run below is real and
small: two SFT runs, two reward models, then the stage.
"""

import json
import os
import random

import numpy as np
import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.generalize.easy_to_hard import EasyToHardConfig, check_levels
from superalign.generalize.pgr import pgr
from superalign.runs import read_metrics
from superalign.stages import STAGES, execute
from superalign.tasks import get_task
from superalign.tasks.arithmetic import corrupt

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
SFT = ["n_train=600", "max_steps=60", "batch_size=16", "lr=1e-3", "eval_n=20"]
SFT += ["eval_difficulties=[2]", "max_new_tokens=24", "checkpoint_every=0", f"threads={THREADS}"]
RM = ["lr=1e-3", "epochs=2", "batch_size=16", "log_every=10", "checkpoint_every=0"]
RM += [f"threads={THREADS}"]


def _pairs(path, level: int, n_train: int = 400, n_test: int = 100) -> str:
    """A preferences file: gold solutions (chosen) against one-error copies (rejected)."""
    task, rng = get_task("arithmetic"), random.Random(level)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for ex in task.examples(split, n, level, seed=0):
            bad = corrupt(ex, rng)
            rows.append(dict(prompt=ex.prompt, chosen=ex.solution, rejected=bad, split=split))
            rows[-1] |= dict(p_chosen=1.0, gold_chosen=1.0, gold_rejected=0.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(stage: str, args: list[str], root):
    cfg_cls, _ = STAGES[stage].load()
    return execute(stage, load_config(cfg_cls, None, args), root=root).dir


@pytest.fixture(scope="module")
def e2h(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("e2h-runs")
    runs = {"model": arith_policy}
    seed = f"seed={test_seed}"
    for name, level in (("easy", 1), ("hard", 2)):
        runs[f"sft_{name}"] = _run(
            "sft", [f"model={arith_policy}", f"difficulties=[{level}]", *SFT, seed], root
        )
        prefs = _pairs(root / f"pairs-{name}.jsonl", level)
        runs[f"rm_{name}"] = _run(
            "reward_model", [f"preferences={prefs}", f"model={arith_policy}", *RM, seed], root
        )
        runs[f"{name}_preferences"] = prefs
    args = [f"{k}={v}" for k, v in runs.items() if k != "easy_preferences"]
    args += ["easy=[1]", "hard=[2]", "eval_n=100", "n_prompts=24", "ns=[1,2,4,8]"]
    args += ["max_new_tokens=24", f"threads={THREADS}", seed]
    return execute("easy_to_hard", load_config(EasyToHardConfig, None, args), root=root)


# Outcome test: the spreads in the comments are over SUPERALIGN_TEST_SEED 0, 1, 2 with 1 torch
# thread (OMP_NUM_THREADS), measured on a shared 2-core machine with the old fixture policy (900
# fixed steps). It passes with the new one (stopped at 70%) at seeds 0-2, but prints no MEASURE
# line, so the spreads are not remeasured.


@pytest.mark.outcome
def test_hard_gold_supervision_beats_the_base_policy_on_hard(e2h):
    p = e2h.summary["policy"]
    r = e2h.summary["reward_model_pairs"]
    assert p["n"] == 100
    # hard loss, nats/token: base - sft_hard spread 5.5..6.2; sft_hard 1.21..1.26 against
    # sft_easy 6.81..7.33
    assert p["loss/sft_hard"]["value"] < p["loss/base"]["value"] - 1.0
    assert p["loss/sft_hard"]["value"] < p["loss/sft_easy"]["value"]
    assert p["loss/sft_hard"]["low"] <= p["loss/sft_hard"]["value"] <= p["loss/sft_hard"]["high"]
    assert r["n_pairs"] == 100
    # Not claimed: that rm_hard beats chance on held-out hard pairs. This test once asserted it,
    # but the tiny reward model stays at chance there (spread 0.45..0.60 on 100 pairs; it
    # failed at seed 2), as the pipeline measured at scale (docs/stages/easy_to_hard.md); its
    # gap recovered is then not reported, which the next test checks.


def _check_gap_recovered(g: dict, weak: float, mid: float, ceiling: float, n: int) -> None:
    """``g`` is the pgr of the three means where its gap is resolved, else None with a reason."""
    assert g["n"] == n and g["gap"] == pytest.approx(ceiling - weak, abs=2e-3)
    assert g["gap_low"] <= g["gap"] <= g["gap_high"]
    if g["gap_low"] > 0 and g["gap"] > (1 / n if n else 0):
        assert g["reason"] is None
        assert g["value"] == pytest.approx(pgr(weak, mid, ceiling), abs=2e-3)
        assert g["low"] <= g["value"] <= g["high"]
    else:
        assert g["value"] is None and g["low"] is None and g["reason"]


def test_gap_recovered_is_pgr_of_the_measured_accuracies_where_resolved(e2h):
    p = e2h.summary["policy"]
    acc = [p[f"accuracy/{n}"]["value"] for n in ("base", "sft_easy", "sft_hard")]
    _check_gap_recovered(p["gap_recovered"], *acc, n=100)
    neg_loss = [-p[f"loss/{n}"]["value"] for n in ("base", "sft_easy", "sft_hard")]
    g = p["loss_gap_recovered"]
    assert g["n"] == 100 and g["gap"] == pytest.approx(neg_loss[2] - neg_loss[0], abs=2e-3)
    if g["gap_low"] > 0:  # a loss is continuous: only the interval rule applies
        assert g["value"] == pytest.approx(pgr(*neg_loss), abs=2e-3) and g["reason"] is None
    else:
        assert g["value"] is None and "exclude 0" in g["reason"]
    r = e2h.summary["reward_model_pairs"]
    wins = [r["accuracy/rm_easy"]["value"], r["accuracy/rm_hard"]["value"]]
    _check_gap_recovered(r["gap_recovered"], 0.5, *wins, n=r["n_pairs"])
    table = e2h.summary["table"]
    for g in (
        p["gap_recovered"],
        r["gap_recovered"],
        e2h.summary["best_of_n"]["gap_recovered_at_max_n"],
    ):
        assert g["value"] is not None or f"not reported: {g['reason']}" in table


def test_best_of_n_with_gold_is_pass_at_n(e2h):
    bon = e2h.summary["best_of_n"]
    oracle = np.array(bon["gold"]["gold"])
    assert bon["ns"] == [1, 2, 4, 8]
    assert oracle[0] == pytest.approx(bon["gold_one_sample"], abs=1e-3)  # best of 1 = one sample
    assert (np.diff(oracle) >= -1e-9).all()  # pass@n never falls
    for name in ("rm_easy", "rm_hard"):  # a reward can never beat the oracle
        assert (np.array(bon["gold"][name]) <= oracle + 1e-9).all()
        assert bon["gold"][name][0] == pytest.approx(oracle[0], abs=1e-3)


def test_summary_holds_the_table_plot_and_metrics(e2h):
    s = e2h.summary
    assert "gap recovered" in s["table"] and "easy gold only" in s["table"]
    assert (e2h.dir / "easy_to_hard.png").stat().st_size > 10_000
    assert s["supervised_levels"]["sft_easy"] == [1] and s["supervised_levels"]["sft_hard"] == [2]
    assert s["supervised_levels"]["rm_easy"] is None  # a preferences file, not a run folder
    logged = {k for r in read_metrics(e2h.dir) for k in r}
    assert {"policy/gap_recovered", "rm/gap_recovered", "bon/gold_rm_easy"} <= logged


def _fake_run(path, config):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": config}))
    return str(path)


def test_an_easy_run_that_saw_hard_levels_is_rejected(tmp_path):
    prefs = _fake_run(tmp_path / "prefs", {"difficulties": [2]})
    runs = {
        "model": str(tmp_path),
        "sft_easy": _fake_run(tmp_path / "sft_easy", {"difficulties": [1, 2]}),
        "sft_hard": _fake_run(tmp_path / "sft_hard", {"difficulties": [2]}),
        "rm_easy": _fake_run(tmp_path / "rm_easy", {"preferences": prefs}),
        "rm_hard": _fake_run(tmp_path / "rm_hard", {"preferences": prefs}),
        "hard_preferences": prefs,
    }
    cfg = EasyToHardConfig(**runs, easy=[1], hard=[2])
    with pytest.raises(ConfigError, match="sft_easy was trained on levels"):
        check_levels(cfg)
    cfg.sft_easy = _fake_run(tmp_path / "sft_easy_ok", {"difficulties": [1]})
    with pytest.raises(ConfigError, match="rm_easy was trained on levels \\[2\\]"):
        check_levels(cfg)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sft_easy is required"):
        EasyToHardConfig(model="m")
    runs = {k: "x" for k in ("model", "sft_easy", "sft_hard", "rm_easy", "rm_hard")}
    with pytest.raises(ConfigError, match="overlap"):
        EasyToHardConfig(**runs, hard_preferences="x", easy=[1, 2], hard=[2])
