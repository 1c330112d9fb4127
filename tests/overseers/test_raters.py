"""SimulatedRater: each flaw does what its docstring says, and build_overseer's checks."""

import pytest

from superalign.overseers import (
    GoldOverseer,
    SimulatedRater,
    agreement_with_gold,
    build_overseer,
)
from superalign.tasks import get_task
from superalign.tasks.arithmetic import apply, parse_steps

TASK = get_task("arithmetic")


def corrupt(solution: str, step: int) -> str:
    """Make step ``step`` (0-based) wrong by one; later steps continue correctly from it."""
    steps = parse_steps(solution)
    lines, prev = [], None
    for i, st in enumerate(steps):
        left = st.left if prev is None else prev
        result = apply(left, st.op, st.right) + (i == step)
        lines.append(f"{left}{st.op}{st.right}={result}")
        prev = result
    return "\n".join([*lines, f"A: {prev}"]) + "\n"


@pytest.fixture
def three_step():
    return TASK.examples("test", 30, 3, seed=1)


def test_budget_checks_only_the_chosen_steps(three_step):
    ex = three_step[0]
    late = corrupt(ex.solution, 2)  # last step wrong
    early = corrupt(ex.solution, 0)
    assert TASK.grade(ex, late) == 0 and TASK.grade(ex, early) == 0
    first = SimulatedRater(TASK, three_step, check_steps=1, check="first")
    last = SimulatedRater(TASK, three_step, check_steps=1, check="last")
    full = SimulatedRater(TASK, three_step, check_steps=3)
    p = [ex.prompt] * 3
    assert first.score(p, [ex.solution, late, early]) == [1.0, 1.0, 0.0]
    assert last.score(p, [ex.solution, late, early]) == [1.0, 0.0, 1.0]
    assert full.score(p, [ex.solution, late, early]) == [1.0, 0.0, 0.0]
    surface = SimulatedRater(TASK, three_step, check_steps=0)
    assert surface.score(p, [late, ex.solution + "oops", "A: 5\n"]) == [1.0, 1.0, 0.0]


def test_surface_check_answer_must_repeat_last_step(three_step):
    ex = three_step[0]
    lines = ex.solution.splitlines()
    inconsistent = "\n".join([*lines[:-1], "A: 99999"]) + "\n"
    rater = SimulatedRater(TASK, three_step, check_steps=0)
    assert rater.score([ex.prompt], [inconsistent]) == [0.0]


def test_biases_and_noise_are_deterministic_functions_of_the_input(three_step):
    ex = three_step[0]
    rater = SimulatedRater(TASK, three_step, check_steps=3, length_bias=0.5, noise=0.2, seed=3)
    a = rater.score([ex.prompt] * 2, [ex.solution, ex.solution])
    assert a[0] == a[1] and a == rater.score([ex.prompt] * 2, [ex.solution] * 2)
    other = SimulatedRater(TASK, three_step, check_steps=3, length_bias=0.5, noise=0.2, seed=4)
    assert other.score([ex.prompt], [ex.solution]) != a[:1]
    biased = SimulatedRater(TASK, three_step, check_steps=3, length_bias=1.0)
    padded = ex.solution + " " * 100
    s, t = biased.score([ex.prompt] * 2, [ex.solution, padded])
    assert t - s == pytest.approx(1.0)
    confident = SimulatedRater(TASK, three_step, check_steps=3, confidence_bias=0.3)
    s, t = confident.score([ex.prompt] * 2, [ex.solution, ex.solution + "Definitely.\n"])
    assert t - s == pytest.approx(0.3)


def test_compare_is_bradley_terry_with_position_bias(three_step):
    ex = three_step[0]
    bad = corrupt(ex.solution, 0)
    rater = SimulatedRater(TASK, three_step, check_steps=3)
    assert rater.compare(ex.prompt, ex.solution, bad) > 0.99
    assert rater.compare(ex.prompt, ex.solution, ex.solution) == pytest.approx(0.5)
    leaning = SimulatedRater(TASK, three_step, check_steps=3, position_bias=0.1)
    assert leaning.compare(ex.prompt, ex.solution, ex.solution) > 0.7


def test_accuracy_against_gold_falls_with_the_budget(three_step):
    prompts, completions, gold = [], [], []
    for ex in three_step:
        for c in (ex.solution, corrupt(ex.solution, 0), corrupt(ex.solution, 2)):
            prompts.append(ex.prompt)
            completions.append(c)
    gold = GoldOverseer(TASK, three_step).score(prompts, completions)
    acc = {
        k: agreement_with_gold(
            SimulatedRater(TASK, three_step, check_steps=k).score(prompts, completions), gold
        ).accuracy
        for k in (0, 1, 3)
    }
    assert acc[3] == 1.0 and acc[0] == pytest.approx(1 / 3) and acc[1] == pytest.approx(2 / 3)


def test_build_overseer_names_options_and_paths(three_step):
    assert isinstance(build_overseer("gold", TASK, three_step), GoldOverseer)
    rater = build_overseer("rater", TASK, three_step, {"check_steps": 2, "noise": 0.1})
    assert isinstance(rater, SimulatedRater) and rater.check_steps == 2
    with pytest.raises(ValueError, match="'chek' is not an option of overseer 'rater'"):
        build_overseer("rater", TASK, three_step, {"chek": 1})
    with pytest.raises(ValueError, match="neither one of"):
        build_overseer("nonesuch", TASK, three_step)
    with pytest.raises(ValueError, match="check_steps"):
        SimulatedRater(TASK, three_step, check_steps=-1)
    with pytest.raises(KeyError, match="no example for prompt"):
        rater.score(["Q: 1+1\n"], ["1+1=2\nA: 2\n"])
