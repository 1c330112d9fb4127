import random

import pytest

from superalign.tasks import get_task
from superalign.tasks.arithmetic import (
    LEVELS,
    apply,
    corrupt,
    first_error,
    parse_answer,
    parse_problem,
    parse_steps,
    step_labels,
)


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


def test_deterministic_for_a_seed_and_different_across_seeds(task):
    a = task.examples("train", 50, 2, seed=1)
    assert a == task.examples("train", 50, 2, seed=1)
    assert a != task.examples("train", 50, 2, seed=2)


@pytest.mark.parametrize("level", list(LEVELS))
def test_difficulty_sets_steps_and_digits(task, level):
    steps, digits = LEVELS[level]
    for ex in task.examples("test", 30, level):
        assert len(ex.meta["ops"]) == steps and ex.difficulty == level
        assert all(len(str(x)) == digits for x in ex.meta["operands"])
        value = ex.meta["operands"][0]
        for op, x in zip(ex.meta["ops"], ex.meta["operands"][1:]):
            value = apply(value, op, x)
            assert value >= 0
        assert ex.answer == str(value)


def test_splits_are_disjoint(task):
    for level in LEVELS:
        train = {ex.prompt for ex in task.examples("train", 400, level)}
        test = {ex.prompt for ex in task.examples("test", 100, level)}
        assert not train & test
    corpus = "".join(task.corpus(2000))
    assert not any(ex.prompt in corpus for ex in task.examples("test", 100, 3))


def test_gold_grader_and_solution_format(task):
    ex = task.make([37, 45, 12], ["+", "-"])
    assert ex.prompt == "Q: 37+45-12\n"
    assert ex.solution == "37+45=82\n82-12=70\nA: 70\n"
    assert task.grade(ex, ex.solution) == 1.0
    assert task.grade(ex, "37+45=82\n82-12=71\nA: 71\n") == 0.0
    assert task.grade(ex, "no answer") == 0.0
    assert task.render(ex) == ex.prompt + ex.solution
    assert parse_answer("A: -3") == -3


def test_every_step_checks_on_its_own(task):
    ex = task.make([37, 45, 12], ["+", "-"])
    assert step_labels(ex, ex.solution) == [True, True]
    assert first_error(ex, ex.solution) is None
    # a wrong first step, then a step that correctly continues from the wrong value
    wrong = "37+45=83\n83-12=71\nA: 71\n"
    assert step_labels(ex, wrong) == [False, True]
    assert first_error(ex, wrong) == 0
    # a right first step, then the wrong operand
    assert step_labels(ex, "37+45=82\n82-13=69\nA: 69\n") == [True, False]
    # a garbled line parses to None and is wrong; a missing step is reported
    assert parse_steps("37+45=82\nbanana\nA: 1") == [parse_steps("37+45=82")[0], None]
    assert first_error(ex, "37+45=82\nA: 82\n") == 1
    # right answer, wrong process: outcome gold 1, process gold flags the steps
    lucky = "37+45=80\n80-12=70\nA: 70\n"
    assert task.grade(ex, lucky) == 1.0 and step_labels(ex, lucky) == [False, False]


def test_bad_arguments(task):
    with pytest.raises(ValueError, match="split must be one of"):
        task.examples("validation", 1)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        task.examples("train", 1, difficulty=9)
    with pytest.raises(ValueError, match="unknown task 'arithmetc'.*Did you mean 'arithmetic'"):
        get_task("arithmetc")


def test_parse_problem_reads_the_first_chain_and_ignores_what_follows(task):
    for ex in task.examples("test", 50, 3):
        assert parse_problem(ex.prompt) == (ex.meta["operands"], ex.meta["ops"])
        assert task.make(*parse_problem(ex.prompt + ex.solution), 3) == ex
    assert parse_problem("Q: 37 + 45-12zq\n") == ([37, 45, 12], ["+", "-"])
    assert parse_problem("x Q: 9-3\nQ: 1+1\n").operands == [9, 3]
    assert parse_problem("hello\n") is None
    assert parse_problem("Q: 37\n") is None  # a chain has at least one operator


def test_corrupted_solutions_have_exactly_one_error(task):
    rng = random.Random(0)
    kinds = set()
    for ex in task.examples("train", 200, 2, seed=1):
        wrong = corrupt(ex, rng)
        assert task.grade(ex, wrong) == 0.0 and task.grade(ex, ex.solution) == 1.0
        labels = step_labels(ex, wrong)
        if labels.count(False) == 1:
            kinds.add("step")
        else:  # all steps right: the answer line was miscopied
            assert all(labels) and parse_answer(wrong) != int(ex.solution.split("=")[-1].split()[0])
            kinds.add("answer")
    assert kinds == {"step", "answer"}
