"""Multi-step arithmetic with a solution format in which every step can be checked alone.

A problem is a chain of additions and subtractions evaluated left to right::

    prompt:    "Q: 37+45-12\\n"
    solution:  "37+45=82\\n82-12=70\\nA: 70\\n"

Each solution line ``left<op>right=result`` is one step. Gold exists per step (for process
supervision: :func:`step_labels`) and for the final answer (outcome supervision: ``grade``).
Difficulty is the number of steps and of digits per operand (:data:`LEVELS`). Intermediate
results never go below zero: a subtraction that would is drawn as an addition instead.
Train and test are disjoint by a stable hash of the problem (:func:`split_of`).

This module is the one home of the format's parsers (:func:`parse_problem`, :func:`parse_steps`,
:func:`parse_answer`) and of :func:`corrupt`, the one-error wrong solution that the critic, the
oversight stage and weak-to-strong all train or test on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import NamedTuple

from superalign.tasks.base import Example, check_split, split_of

LEVELS: dict[int, tuple[int, int]] = {1: (1, 2), 2: (2, 2), 3: (3, 2), 4: (4, 3), 5: (5, 3)}
"""Difficulty level -> (steps, digits per operand). Ordered by measured difficulty: a level of
two 1-digit steps was tried as level 1 and proved harder for tiny models than level 2 (its
steps mix widths, as in ``14+7``): 34-76% vs 97.5% held-out accuracy after the same training."""

ERRORS = (-10, -1, 1, 10)
"""How a corrupted number is off: a slip in the units digit or a wrong carry."""
ERROR_KINDS = ("result", "operand", "answer")
"""What a corrupted solution gets wrong (:func:`corrupt`)."""

_PROBLEM = re.compile(r"Q:\s*(\d+(?:\s*[+-]\s*\d+)+)")
_TERM = re.compile(r"([+-]?)\s*(\d+)")
_STEP = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*$")
_ANSWER = re.compile(r"A:\s*(-?\d+)")


class Problem(NamedTuple):
    """A parsed problem: ``operands[0] ops[0] operands[1] ...`` (``len(ops) == len(operands) - 1``),
    the arguments of :meth:`ArithmeticTask.make`."""

    operands: list[int]
    ops: list[str]


class Step(NamedTuple):
    """One parsed solution line ``left op right = result`` (``result`` as claimed)."""

    left: int
    op: str
    right: int
    result: int


def apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right


def parse_problem(prompt: str) -> Problem | None:
    """The first ``Q: a+b-c`` chain (at least one operator) in ``prompt``, or None. Whatever
    follows the chain (an adversarial suffix, the solution) is ignored."""
    m = _PROBLEM.search(prompt)
    if not m:
        return None
    terms = _TERM.findall(m[1])
    return Problem([int(x) for _, x in terms], [op for op, _ in terms[1:]])


def parse_steps(completion: str) -> list[Step | None]:
    """Parse each line before the answer line; a line that is not a step parses to None."""
    steps: list[Step | None] = []
    for line in completion.splitlines():
        if line.strip().startswith("A:"):
            break
        if not line.strip():
            continue
        m = _STEP.match(line)
        steps.append(Step(int(m[1]), m[2], int(m[3]), int(m[4])) if m else None)
    return steps


def parse_answer(completion: str) -> int | None:
    """The integer after the first ``A:``, or None."""
    m = _ANSWER.search(completion)
    return int(m[1]) if m else None


def step_labels(example: Example, completion: str) -> list[bool]:
    """Gold label of every written step, for process supervision.

    Step i is correct iff it performs the problem's i-th operation (operator and right
    operand), starts from the previous step's *claimed* result (the first operand for the
    first step), and its arithmetic is right. So the first wrong step is where the error is;
    a later step that correctly continues from a wrong result is itself correct. Steps beyond
    the problem's count are wrong.
    """
    operands, ops = example.meta["operands"], example.meta["ops"]
    labels = []
    prev = operands[0]
    for i, st in enumerate(parse_steps(completion)):
        ok = (
            st is not None
            and i < len(ops)
            and st.left == prev
            and st.op == ops[i]
            and st.right == operands[i + 1]
            and st.result == apply(st.left, st.op, st.right)
        )
        labels.append(bool(ok))
        if st is not None:
            prev = st.result
    return labels


def first_error(example: Example, completion: str) -> int | None:
    """Index of the first wrong or missing step, or None if every step is right."""
    labels = step_labels(example, completion)
    for i, ok in enumerate(labels):
        if not ok:
            return i
    return None if len(labels) == len(example.meta["ops"]) else len(labels)


def nudge(value: int, rng: random.Random) -> int:
    """``value`` off by one of :data:`ERRORS`, kept non-negative."""
    delta = rng.choice(ERRORS)
    return value + delta if value + delta >= 0 else value - delta


def corrupt(example: Example, rng: random.Random) -> str:
    """A wrong solution of an arithmetic ``example`` with exactly one error, of a kind drawn
    from :data:`ERROR_KINDS`: a step's ``result`` or its right ``operand`` (miscopied from the
    problem) or the final ``answer`` is off by one of :data:`ERRORS`. Later steps continue
    correctly from what was written, so the final answer is wrong in every case."""
    operands, ops = example.meta["operands"], example.meta["ops"]
    kind, bad = rng.choice(ERROR_KINDS), rng.randrange(len(ops))
    value, lines = operands[0], []
    for i, (op, right) in enumerate(zip(ops, operands[1:])):
        if i == bad and kind == "operand":
            wrong = nudge(right, rng)
            right = 2 * right - wrong if op == "-" and wrong > value else wrong  # stay >= 0
        result = apply(value, op, right)
        if i == bad and kind == "result":
            result = nudge(result, rng)
        lines.append(f"{value}{op}{right}={result}")
        value = result
    answer = nudge(value, rng) if kind == "answer" else value
    return "\n".join(lines) + f"\nA: {answer}\n"


@dataclass
class ArithmeticTask:
    """Chains of + and - with step-by-step solutions; see the module docstring."""

    subtask: str | None = None
    """Unused (arithmetic has one variant); accepted so ``get_task`` specs stay uniform."""
    test_percent: int = 20
    """Share of problems (by stable hash) that belong to the test split."""
    default_levels: tuple[int, ...] = (1, 2)
    """Levels drawn (uniformly) when no difficulty is given, e.g. for the pretraining corpus.
    Harder levels stay unseen in pretraining, for easy-to-hard generalization."""

    name = "arithmetic"
    difficulties = tuple(LEVELS)

    def __post_init__(self) -> None:
        if self.subtask:
            raise ValueError(f"arithmetic has no sub-tasks (got '{self.subtask}')")
        bad = [lv for lv in self.default_levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"default_levels {bad} are not levels; choose from {list(LEVELS)}")

    def make(self, operands: list[int], ops: list[str], difficulty: int = 0) -> Example:
        """The example for a given chain (``len(ops) == len(operands) - 1``)."""
        lines, value = [], operands[0]
        gold_steps = []
        for op, right in zip(ops, operands[1:]):
            result = apply(value, op, right)
            lines.append(f"{value}{op}{right}={result}")
            gold_steps.append(Step(value, op, right, result))
            value = result
        problem = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(ops, operands[1:]))
        return Example(
            prompt=f"Q: {problem}\n",
            answer=str(value),
            solution="\n".join(lines) + f"\nA: {value}\n",
            difficulty=difficulty,
            meta={
                "operands": list(operands),
                "ops": list(ops),
                "gold_steps": [list(s) for s in gold_steps],
            },
        )

    def examples(
        self, split: str, n: int, difficulty: int | None = None, seed: int = 0
    ) -> list[Example]:
        check_split(split)
        if difficulty is not None and difficulty not in LEVELS:
            raise ValueError(f"difficulty must be one of {list(LEVELS)}, not {difficulty}")
        rng = random.Random(f"arithmetic:{split}:{difficulty}:{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            level = difficulty if difficulty is not None else rng.choice(self.default_levels)
            ex = self._draw(rng, level)
            if split_of(ex.prompt, self.test_percent) != split:
                continue
            if ex.prompt in seen and tries < 50 * n:  # unique while the level has room
                continue
            seen.add(ex.prompt)
            out.append(ex)
        return out

    def grade(self, example: Example, completion: str) -> float:
        """1.0 iff the final answer (``A: n``) equals the true value."""
        return float(parse_answer(completion) == int(example.answer))

    def render(self, example: Example, completion: str | None = None) -> str:
        return example.prompt + (example.solution if completion is None else completion)

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        return [self.render(ex) for ex in self.examples("train", n, None, seed)]

    def _draw(self, rng: random.Random, level: int) -> Example:
        steps, digits = LEVELS[level]
        lo, hi = 10 ** (digits - 1), 10**digits - 1
        operands = [rng.randint(lo, hi)]
        ops: list[str] = []
        value = operands[0]
        for _ in range(steps):
            right = rng.randint(lo, hi)
            op = rng.choice("+-")
            if op == "-" and right > value:
                op = "+"
            operands.append(right)
            ops.append(op)
            value = apply(value, op, right)
        return self.make(operands, ops, level)
