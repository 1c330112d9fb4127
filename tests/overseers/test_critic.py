"""The step critic: gold critiques and labels, their scoring against gold, and the `critic`
stage end to end (a trained critic that flags real errors and few correct steps)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from superalign.config import ConfigError, load_config
from superalign.overseers import build_overseer
from superalign.overseers.assisted import CritiqueAssistedRater
from superalign.overseers.critic import (
    ANSWER,
    STEP_TEMPLATE,
    Critic,
    CriticConfig,
    Critique,
    PromptedCritic,
    critique_quality,
    encode_lines,
    gold_critique,
    line_labels,
    parse_problem,
    redo_line,
    solution_lines,
)
from superalign.overseers.raters import SimulatedRater
from superalign.runs import read_metrics
from superalign.stages import execute
from superalign.tasks import get_task

TASK = get_task("arithmetic")


@pytest.fixture
def ex():
    return TASK.make([37, 45, 12], ["+", "-"], 2)  # 37+45=82, 82-12=70


def test_gold_critique_names_the_first_wrong_step_and_what_it_should_be(ex):
    assert gold_critique(ex, ex.solution) == Critique(
        None, " 1: 37+45=82 ok; 2: 82-12=70 ok; A: 70 ok\n"
    )
    early = gold_critique(ex, "37+45=83\n83-12=71\nA: 71\n")  # step 2 continues correctly
    assert early == Critique(0, " 1: 37+45=82 wrong; 2: 83-12=71 ok; A: 71 ok\n", "37+45=82")
    late = gold_critique(ex, "37+45=82\n82-13=69\nA: 69\n")  # miscopied operand
    assert late.step == 1 and "2: 82-12=70 wrong" in late.text
    assert gold_critique(ex, "37+45=82\nA: 82\n").step == 1  # missing step
    assert "2: 82-12=70 missing" in gold_critique(ex, "37+45=82\nA: 82\n").text
    assert gold_critique(ex, "37+45=82\n82-12=70\nA: 71\n").step == ANSWER
    assert gold_critique(ex, "37+45=82\n82-12=70\n70+1=71\nA: 71\n").step == 2  # extra step


def test_lines_labels_and_problem_are_read_as_the_critic_sees_them(ex):
    assert solution_lines("37+45=83\n\n83-12=71\nA: 71\ntrailing\n") == (
        ["37+45=83", "83-12=71", "A: 71"],
        True,
    )
    assert solution_lines("37+45=82\n82-1") == (["37+45=82", "82-1"], False)
    assert line_labels(ex, "37+45=83\n83-12=71\nA: 71\n") == [True, False, False]
    assert line_labels(ex, "37+45=82\n82-12=70\nA: 71\n") == [False, False, True]
    assert line_labels(ex, "37+45=82\nA: 82\n") == [False, True]  # answer before step 2
    assert line_labels(ex, "37+45=82\n82-12=70\n70+1=71\nA: 71\n") == [False, False, True, False]
    assert parse_problem(ex.prompt) == ([37, 45, 12], ["+", "-"])
    assert redo_line(ex, "37+45=83\n83-12=71\nA: 71\n", 1) == "83-12=71"


def test_encoded_lines_end_at_their_newlines(ex):
    tok = CharTokenizer()
    enc = encode_lines(tok, ex.prompt, "37+45=82\n82-12=70\nA: 70\n")
    text = "".join(chr(i) for i in enc.ids)
    assert text == ex.prompt + "37+45=82\n82-12=70\nA: 70\n"
    assert [text[e] for e in enc.ends] == ["\n"] * 3
    assert [text[a : b + 1] for a, b in zip(enc.starts, enc.ends)][1] == "82-12=70\n"
    cut = encode_lines(tok, ex.prompt, "37+45=82\n82-12=70\nA: 70\n", max_length=25)
    assert len(cut.ends) == 1 and len(cut.ids) <= 25


class CharTokenizer:
    """One token per character (as the tiny models' tokenizer is, near enough)."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) for ch in text]}


def test_critique_quality_counts_precision_recall_and_hallucination(ex):
    wrong2 = "37+45=82\n82-12=71\nA: 71\n"
    comps = [ex.solution, ex.solution, wrong2, wrong2]
    crits = [Critique(None, ""), Critique(0, ""), Critique(1, ""), Critique(0, "")]
    q = critique_quality(crits, [ex] * 4, comps)
    assert q.n_flags == 3 and q.n_flawed == 2 and q.n_correct == 2
    assert q.precision == pytest.approx(1 / 3)  # only the flag on step 2 of wrong2 is right
    assert q.recall == 0.5 and q.hallucination == 0.5
    assert q.location_accuracy == 0.5
    assert math.isnan(critique_quality([Critique(None, "")], [ex], [ex.solution]).precision)


def test_critique_quality_scores_the_why(ex):
    wrong1 = "37+45=83\n83-12=71\nA: 71\n"
    right_fix = Critique(0, "step 1 is wrong", "37+45=82")
    wrong_fix = Critique(0, "step 1 is wrong", "37+45=81")
    assert critique_quality([right_fix, wrong_fix], [ex] * 2, [wrong1] * 2).why == 0.5


CRITIC = [
    "difficulties=[1]",
    "n_train=1000",
    "max_steps=200",
    "batch_size=16",
    "sample_max_new_tokens=24",
    "eval_n=120",
    "log_every=20",
    "checkpoint_every=0",
    "threads=1",
]
"""About 25 s on one thread. Measured on the fixture policy (seed 0): held-out precision 0.86,
recall 0.74, hallucination 0.17, location accuracy 0.74, line AUROC 0.93 (the fixture policy
itself is right on only ~68% of these one-step problems, so its surprise is a weaker signal than
the demo policy's: see docs/stages/critic.md for the demo-sized run)."""


@pytest.fixture(scope="module")
def critic_run(arith_policy, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = load_config(CriticConfig, None, [f"model={arith_policy}", *CRITIC])
    return execute("critic", cfg, root=tmp_path_factory.mktemp("critic-runs"))


def test_critic_stage_learns_to_point_at_the_wrong_step(critic_run, arith_policy):
    s = critic_run.summary
    assert s["steps"] == 200 and s["n_train"] == 1000
    assert 0.1 < s["train_flawed_share"] < 0.9  # both kinds of solution to learn from
    assert s["loss/step_final"] < 0.6 * s["loss/step_first"]
    # before training the head is zero (P(wrong) = 1/2, never above the threshold): the only
    # flags are on solutions with no answer line, which are flagged without the model
    assert s["critic/recall_before"] < 0.1 and s["critic/line_auroc_before"] == 0.5
    assert s["critic/line_auroc"] > 0.85, s
    assert s["critic/recall"] > 0.55 and s["critic/precision"] > 0.7, s
    assert s["critic/hallucination"] < 0.4, s
    assert s["critic/location_accuracy"] > 0.6, s
    rows = read_metrics(critic_run.dir)
    assert "critic/recall_before" in rows[0] and "critic/recall" in rows[-1]
    assert sum("loss/step" in r for r in rows) == 10
    a = AutoModelForCausalLM.from_pretrained(arith_policy / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(critic_run.dir / "model").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert (critic_run.dir / "critiques.jsonl").is_file()


def test_critic_loads_flags_explains_ranks_and_assists_a_rater(critic_run):
    critic = Critic.load(str(critic_run.dir))
    exs = TASK.examples("test", 40, 1, seed=5)
    prompts = [e.prompt for e in exs]
    gold = [e.solution for e in exs]
    bad = [wrong_answer_line(e) for e in exs]  # a wrong answer line after a right step
    flags = [k.step for k in critic.critique(prompts, bad)]
    assert sum(f == ANSWER for f in flags) >= 0.7 * len(exs), flags
    ok = critic.critique(prompts, gold)
    assert sum(k.step is None for k in ok) >= 0.6 * len(exs)
    assert all(k.text == "ok" for k in ok if k.step is None)
    scores = critic.step_scores(prompts, gold)
    assert [len(s) for s in scores] == [1] * 40 and all(0 <= s[0] <= 1 for s in scores)
    # a flagged wrong step comes with the critic's own redo of it
    wrong = [e.prompt for e in exs], [off_by_ten(e) for e in exs]
    crits = critic.critique(*wrong)
    flagged = [k for k in crits if k.step == 0]
    assert len(flagged) >= 0.5 * len(exs)
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


def test_prompted_critic_asks_about_every_line_and_plugs_into_the_assisted_rater():
    """The real-model path's mechanics on a random tiny LM whose tokenizer spells yes and no as
    single tokens (its judgement is noise; SmolLM2's is measured in docs/stages/critic.md)."""
    from superalign.models.tiny import build_model
    from superalign.models.tokenizer import train_tokenizer
    from superalign.overseers.judge import LLMJudge, LocalBackend

    texts = ["Is this line correct? Answer yes or no.\nAnswer: yes", "Answer: no", "37+45=82"]
    tokenizer = train_tokenizer(texts * 30, vocab_size=300)
    model = build_model("tiny", tokenizer, seed=1).eval()
    critic = PromptedCritic(LLMJudge(LocalBackend(model, tokenizer), template=STEP_TEMPLATE))
    ex = TASK.make([37, 45, 12], ["+", "-"], 2)
    wrong = "37+45=83\n83-12=71\nA: 71\n"
    probs = critic.line_probs([ex.prompt, ex.prompt], [ex.solution, wrong])
    assert [len(p) for p in probs] == [3, 3]  # two steps and the answer line
    assert all(0.0 <= x <= 1.0 for p in probs for x in p)
    assert len({round(x, 6) for p in probs for x in p}) > 1  # the line under review matters
    query = critic.judge.prompt_text("Q: 37+45-12\n1. 37+45=83", "1. 37+45=83")
    assert "Check only this line of the solution:\n1. 37+45=83" in query
    critic.threshold = -1.0  # flag everything: the first line
    crit = critic.critique([ex.prompt], [wrong])[0]
    assert crit.step == 0 and crit.fix is None  # a prompted critic does not redo the step
    assert crit.text.startswith("step 1 is wrong: 37+45=83")
    rater = CritiqueAssistedRater(SimulatedRater(TASK, [ex], check_steps=1, check="last"), critic)
    assert rater.score([ex.prompt, ex.prompt], [ex.solution, wrong]) == [1.0, 0.0]
