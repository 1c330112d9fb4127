"""Assisted overseers on constructed cases: a critique, a debate or a consultant changes which
steps a budgeted rater verifies, and so what it catches. The critic here is scripted (a fixed
critique per solution) so each test isolates the overseer's rule; tests/overseers/test_critic.py
trains a real one."""

from dataclasses import dataclass

import pytest

from superalign.overseers import SimulatedRater, agreement_with_gold, build_overseer
from superalign.overseers.assisted import (
    Consultant,
    CritiqueAssistedRater,
    Debate,
    ProcessOverseer,
    SneakyReward,
)
from superalign.overseers.critic import Critique, gold_critique
from superalign.tasks import get_task
from superalign.tasks.arithmetic import apply, parse_steps

TASK = get_task("arithmetic")


def wrong_at(solution: str, step: int) -> str:
    """Step ``step`` (0-based) off by one; later steps continue correctly from it."""
    lines, prev = [], None
    for i, st in enumerate(parse_steps(solution)):
        left = st.left if prev is None else prev
        prev = apply(left, st.op, st.right) + (i == step)
        lines.append(f"{left}{st.op}{st.right}={prev}")
    return "\n".join([*lines, f"A: {prev}"]) + "\n"


@dataclass
class GoldCritic:
    """A scripted critic: the gold critique, optionally hallucinating a flag on step 0 of
    correct solutions; ``step_scores`` puts the gold-flagged step first."""

    examples: list
    hallucinate: bool = False

    def critique(self, prompts, completions):
        by = {ex.prompt: ex for ex in self.examples}
        out = []
        for p, c in zip(prompts, completions):
            g = gold_critique(by[p], c)
            out.append(Critique(0, "hallucinated") if self.hallucinate and g.step is None else g)
        return out

    def step_scores(self, prompts, completions):
        scores = []
        for k, c in zip(self.critique(prompts, completions), completions):
            scores.append([1.0 if i == k.step else 0.0 for i in range(len(parse_steps(c)))])
        return scores


@pytest.fixture
def two_step():
    return TASK.examples("test", 40, 2, seed=3)


def test_critique_naming_the_wrong_step_raises_rater_accuracy(two_step):
    ex = two_step[0]
    late = wrong_at(ex.solution, 1)
    assert TASK.grade(ex, late) == 0 and gold_critique(ex, late).step == 1
    rater = SimulatedRater(TASK, two_step, check_steps=1, check="first")
    assisted = CritiqueAssistedRater(rater, GoldCritic(two_step))
    assert rater.score([ex.prompt], [late]) == [1.0]  # fooled: it checks step 1 only
    assert assisted.score([ex.prompt], [late]) == [0.0]  # verifies the critiqued step 2
    assert assisted.check_first([ex.prompt], [late]) == [[1]]

    prompts = [e.prompt for e in two_step] * 2
    completions = [e.solution for e in two_step] + [wrong_at(e.solution, 1) for e in two_step]
    gold = [1.0] * len(two_step) + [0.0] * len(two_step)
    alone = agreement_with_gold(rater.score(prompts, completions), gold)
    helped = agreement_with_gold(assisted.score(prompts, completions), gold)
    assert alone.accuracy == 0.5 and alone.false_positive_rate == 1.0
    assert helped.accuracy == 1.0 and helped.false_positive_rate == 0.0


def test_hallucinated_critique_costs_budget_but_cannot_reject_a_correct_solution(two_step):
    rater = SimulatedRater(TASK, two_step, check_steps=1, check="first")
    liar = CritiqueAssistedRater(rater, GoldCritic(two_step, hallucinate=True))
    prompts = [e.prompt for e in two_step]
    assert liar.score(prompts, [e.solution for e in two_step]) == [1.0] * len(two_step)


def test_rater_check_first_treats_a_flagged_missing_step_as_a_failed_check(two_step):
    ex = two_step[0]
    first_line = ex.solution.splitlines()[0]
    short = f"{first_line}\nA: {parse_steps(first_line)[0].result}\n"
    rater = SimulatedRater(TASK, two_step, check_steps=1)
    assert rater.score([ex.prompt], [short]) == [1.0]  # written steps all check out
    assert rater.score_assisted([ex.prompt], [short], [[1]]) == [0.0]
    assert rater.score_assisted([ex.prompt], [short], [[7]]) == [1.0]  # no such step: ignored


def test_debate_beats_consultant_beats_unassisted_on_late_errors(two_step):
    prompts = [e.prompt for e in two_step]
    wrong = [wrong_at(e.solution, 1) for e in two_step]
    critic = GoldCritic(two_step)
    judge = SimulatedRater(TASK, two_step, check_steps=1, check="first")
    debate = Debate(judge, critic, rounds=1)
    consultant = Consultant(judge, critic, rounds=1, seed=0)

    assert debate.transcripts(prompts, wrong) == [[1]] * len(wrong)
    assert debate.score(prompts, wrong) == [0.0] * len(wrong)  # every error caught
    assert judge.score(prompts, wrong) == [1.0] * len(wrong)  # unassisted: none caught
    sides = [consultant.argues_wrong(p, c) for p, c in zip(prompts, wrong)]
    caught = [s == 0.0 for s in consultant.score(prompts, wrong)]
    assert caught == sides  # honest when assigned "wrong", misleading when assigned "correct"
    assert 0.25 < sum(sides) / len(sides) < 0.75
    # correct solutions: neither debate nor consultant can make the judge reject them
    good = [e.solution for e in two_step]
    assert debate.score(prompts, good) == consultant.score(prompts, good) == [1.0] * len(good)


def test_process_and_sneaky_rewards(two_step):
    ex = two_step[0]
    early, late = wrong_at(ex.solution, 0), wrong_at(ex.solution, 1)
    process = build_overseer("process", TASK, two_step)
    assert isinstance(process, ProcessOverseer)
    assert process.score([ex.prompt] * 3, [ex.solution, early, late]) == [1.0, 2 / 3, 2 / 3]
    assert process.score([ex.prompt], ["A: 3\n"]) == [0.0]
    sneaky = build_overseer("sneaky", TASK, two_step, {"rater": {"check_steps": 1}})
    assert isinstance(sneaky, SneakyReward)
    # rewarded only for a wrong solution the rater accepts
    assert sneaky.score([ex.prompt] * 3, [ex.solution, early, late]) == [0.0, 0.0, 1.0]


def test_build_rejects_unknown_options(two_step):
    with pytest.raises(ValueError, match="valid options"):
        build_overseer("debate", TASK, two_step, {"debater": "x", "budget": 2})
