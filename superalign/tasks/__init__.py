"""Verifiable task families, each with a gold grader and difficulty levels.

``get_task("arithmetic")``, ``get_task("facts", n_entities=40)``,
``get_task("bigbench:strategyqa")`` (the part after ``:`` names the sub-task).
"""

from __future__ import annotations

from typing import Any

from superalign.tasks.base import Example, Task, split_examples, split_of

__all__ = ["Example", "Task", "TASKS", "get_task", "split_examples", "split_of"]


def _arithmetic(**kw: Any) -> Task:
    from superalign.tasks.arithmetic import ArithmeticTask

    return ArithmeticTask(**kw)


def _facts(**kw: Any) -> Task:
    from superalign.tasks.facts import FactsTask

    return FactsTask(**kw)


def _bigbench(**kw: Any) -> Task:
    from superalign.tasks.bigbench import BigBenchTask

    return BigBenchTask(**kw)


TASKS = {"arithmetic": _arithmetic, "facts": _facts, "bigbench": _bigbench}
"""Task family name -> constructor (keyword options are the family's own)."""


def get_task(spec: str, **options: Any) -> Task:
    """Build a task from ``"family"`` or ``"family:subtask"`` plus family options."""
    family, _, sub = spec.partition(":")
    if family not in TASKS:
        import difflib

        close = difflib.get_close_matches(family, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{family}'; choose one of {', '.join(TASKS)}.{hint}")
    if sub:
        options = {"subtask": sub, **options}
    return TASKS[family](**options)
