"""The `critic` stage end to end: a critic trained on the fixture policy flags real errors and
few correct steps, explains them, loads as an overseer and assists a rater."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from superalign.config import ConfigError, load_config
from superalign.overseers import build_overseer
from superalign.overseers.critic import ANSWER, Critic
from superalign.runs import read_metrics
from superalign.stages import execute
from superalign.tasks import get_task
from superalign.train.critic import CriticConfig

TASK = get_task("arithmetic")
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the run below, as tests/conftest.py's TEST_THREADS."""


CRITIC = [
    "difficulties=[1]",
    "n_train=2000",
    "max_steps=400",
    "batch_size=16",
    "lr=3e-4",
    "sample_max_new_tokens=24",
    "eval_n=120",
    "log_every=20",
    "checkpoint_every=0",
    f"threads={THREADS}",
]
"""About 20 s on one thread. The fixture policy is right on ~70% of these one-step problems, so
its surprise is a weaker signal than the demo policy's (docs/stages/critic.md); the measured
figures over seeds and thread counts are beside the assertions. The LM's learning rate is 3e-4,
not the stage's default 1e-3: at 1e-3 the critic of the 2-thread fixture policies of seeds 1 and
2 flagged 16 of 40 off-by-ten steps (1 thread: 34, 33, 26); the LM's own knowledge of the tens
digit did not survive fine-tuning. At 3e-4 every figure below improved on all six runs (seed 1,
2 threads, other changes tried: lr 3e-3 8 of 40, lm_coef 1.0 22, head_lr 3e-3 21, 800 steps on
4,000 solutions 17, corrupted_share 0.5 18)."""


@pytest.fixture(scope="module")
def critic_run(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    cfg = load_config(CriticConfig, None, [f"model={arith_policy}", *CRITIC, f"seed={test_seed}"])
    return execute("critic", cfg, root=tmp_path_factory.mktemp("critic-runs"))


@pytest.mark.outcome
def test_critic_stage_learns_to_point_at_the_wrong_step(critic_run, arith_policy):
    s = critic_run.summary
    print(
        "MEASURE critic",
        {k: round(s[k], 3) for k in ("loss/step_first", "loss/step_final", "critic/line_auroc")},
        {k: round(s[f"critic/{k}"], 3) for k in ("recall", "precision", "hallucination")},
        f"location {s['critic/location_accuracy']:.3f} flawed {s['train_flawed_share']:.3f}",
        f"recall_before {s['critic/recall_before']:.3f}",
    )
    assert s["steps"] == 400 and s["n_train"] == 2000
    assert 0.1 < s["train_flawed_share"] < 0.9  # both kinds of solution to learn from
    assert s["loss/step_final"] < 0.6 * s["loss/step_first"]
    # before training the head is zero (P(wrong) = 1/2, never above the threshold): the only
    # flags are on solutions with no answer line, which are flagged without the model
    assert s["critic/recall_before"] < 0.1 and s["critic/line_auroc_before"] == 0.5
    # 2,000 solutions, 400 steps at lr 3e-4; seeds 0 / 1 / 2, 1 thread | 2 threads: line AUROC
    # 0.959, 0.963, 0.969 | 0.980, 0.975, 0.978; recall 0.91, 0.96, 0.83 | 0.84, 0.83, 0.89;
    # precision 0.92, 0.95, 0.91 | 0.96, 0.98, 0.91; hallucination 0.089, 0.083, 0.089 | 0.050,
    # 0.022, 0.081; location 0.91, 0.94, 0.84 | 0.85, 0.88, 0.88; recall before 0.013, 0.014,
    # 0.013 | 0.013, 0.027, 0.000 (bound 0.1). Bounds sit 0.06-0.13 below the lowest of the six.
    assert s["critic/line_auroc"] > 0.9, s
    assert s["critic/recall"] > 0.7 and s["critic/precision"] > 0.8, s
    assert s["critic/hallucination"] < 0.2, s
    assert s["critic/location_accuracy"] > 0.75, s
    rows = read_metrics(critic_run.dir)
    assert "critic/recall_before" in rows[0] and "critic/recall" in rows[-1]
    assert sum("loss/step" in r for r in rows) == 20
    a = AutoModelForCausalLM.from_pretrained(arith_policy / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(critic_run.dir / "model").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert (critic_run.dir / "critiques.jsonl").is_file()


@pytest.mark.outcome
def test_critic_loads_flags_explains_ranks_and_assists_a_rater(critic_run, test_seed):
    critic = Critic.load(str(critic_run.dir))
    exs = TASK.examples("test", 40, 1, seed=5 + test_seed)
    prompts = [e.prompt for e in exs]
    gold = [e.solution for e in exs]
    bad = [wrong_answer_line(e) for e in exs]  # a wrong answer line after a right step
    flags = [k.step for k in critic.critique(prompts, bad)]
    ok = critic.critique(prompts, gold)
    crits = critic.critique(*([e.prompt for e in exs], [off_by_ten(e) for e in exs]))
    print(
        f"MEASURE critic answer flags {sum(f == ANSWER for f in flags)}/40"
        f" ok {sum(k.step is None for k in ok)}/40 step0 {sum(k.step == 0 for k in crits)}/40"
    )
    # seeds 0 / 1 / 2, 1 thread | 2 threads: wrong answer lines flagged 34, 33, 37 | 35, 33, 34
    # of 40 (bound 26); correct ones left unflagged 34, 33, 37 | 36, 33, 35 (bound 26); off-by-ten
    # steps flagged 34, 34, 31 | 38, 34, 33 (bound 24): each bound 7 below the lowest of the six
    assert sum(f == ANSWER for f in flags) >= 0.65 * len(exs), flags
    ok = critic.critique(prompts, gold)
    assert sum(k.step is None for k in ok) >= 0.65 * len(exs)
    assert all(k.text == "ok" for k in ok if k.step is None)
    scores = critic.step_scores(prompts, gold)
    assert [len(s) for s in scores] == [1] * 40 and all(0 <= s[0] <= 1 for s in scores)
    # a flagged wrong step comes with the critic's own redo of it
    wrong = [e.prompt for e in exs], [off_by_ten(e) for e in exs]
    crits = critic.critique(*wrong)
    flagged = [k for k in crits if k.step == 0]
    assert len(flagged) >= 0.6 * len(exs)
    assert all(k.text.startswith("step 1 is wrong: ") for k in flagged)
    assert sum(k.fix is not None for k in flagged) >= 0.9 * len(flagged)
    assisted = build_overseer(
        "assisted_rater", TASK, exs, {"critic": str(critic_run.dir), "rater": {"check_steps": 1}}
    )
    # the rater verifies the flagged step first (one-step problems: its one check anyway)
    firsts = assisted.check_first(*wrong)
    assert sum(f == [0] for f in firsts) == len(flagged)
    assert assisted.score(*wrong) == [0.0] * 40
    assert assisted.score(prompts, gold) == [1.0] * 40  # a hallucinated flag cannot reject


def wrong_answer_line(example):
    lines = example.solution.splitlines()
    return "\n".join(lines[:-1]) + f"\nA: {int(example.answer) + 1}\n"


def off_by_ten(example):
    (left, op, right, result) = example.meta["gold_steps"][0]
    return f"{left}{op}{right}={result + 10}\nA: {result + 10}\n"


def test_config_checks():
    with pytest.raises(ConfigError, match="model is required"):
        CriticConfig()
    with pytest.raises(ConfigError, match="sum to at most 1"):
        CriticConfig(model="x", sampled_share=0.7, corrupted_share=0.5)
    with pytest.raises(ConfigError, match="temperature"):
        CriticConfig(model="x", temperature=0)
    with pytest.raises(ConfigError, match="threshold"):
        CriticConfig(model="x", threshold=1.0)
