"""The step critic: gold critiques and labels, what the critic reads, the scoring of critiques
against gold, and the prompted critic. The trained critic is tested with its stage, in
tests/train/test_critic.py."""

import math

import pytest

from superalign.overseers.assisted import CritiqueAssistedRater
from superalign.overseers.critic import (
    ANSWER,
    STEP_TEMPLATE,
    Critique,
    PromptedCritic,
    critique_quality,
    encode_lines,
    gold_critique,
    line_labels,
    problem_of,
    redo_line,
    solution_lines,
)
from superalign.overseers.raters import SimulatedRater
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
    assert problem_of(ex.prompt) == ([37, 45, 12], ["+", "-"])
    assert problem_of("hello\n") == ([], [])
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
