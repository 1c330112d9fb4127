"""Verifiable task families, each with a gold grader and difficulty levels.

``get_task("arithmetic")``, ``get_task("facts", n_entities=40)``,
``get_task("bigbench:strategyqa")``, ``get_task("world:cities")`` (the part after ``:`` names the
sub-task), ``get_task("jsonl", path="data.jsonl")`` (your own rows).
"""

from __future__ import annotations

from typing import Any

from superalign.tasks.base import Example, Task, split_examples, split_of

__all__ = ["Example", "Task", "TASKS", "get_task", "split_examples", "split_of"]


def task_class(family: str) -> type:
    """The (dataclass) class of a built-in task family, imported on first use."""
    if family == "arithmetic":
        from superalign.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask
    if family == "facts":
        from superalign.tasks.facts import FactsTask

        return FactsTask
    if family == "bigbench":
        from superalign.tasks.bigbench import BigBenchTask

        return BigBenchTask
    if family == "world":
        from superalign.tasks.world import WorldTask

        return WorldTask
    if family == "jsonl":
        from superalign.tasks.jsonl import JsonlTask

        return JsonlTask
    raise KeyError(family)


def _built_in(family: str) -> Any:
    def make(**options: Any) -> Task:
        """Build the task with ``options`` checked and coerced like config fields, so that an
        unknown option or a wrong type fails with a sentence naming it (``task_options.*``)."""
        from superalign.config import from_dict

        return from_dict(task_class(family), options, prefix="task_options.")

    return make


TASKS = {
    family: _built_in(family) for family in ("arithmetic", "facts", "bigbench", "world", "jsonl")
}
"""Task family name -> constructor (keyword options are the family's own)."""


def get_task(spec: str, **options: Any) -> Task:
    """Build a task from ``"family"`` or ``"family:subtask"`` plus family options.

    An unknown family, sub-task or option, or an option of the wrong type, raises ``ValueError``
    (for the built-in families a :class:`~superalign.config.ConfigError`) that names it."""
    if not isinstance(spec, str):
        raise ValueError(f"a task is a name such as 'arithmetic', not {spec!r}")
    family, _, sub = spec.partition(":")
    if family not in TASKS:
        import difflib

        close = difflib.get_close_matches(family, TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{family}'; choose one of {', '.join(TASKS)}.{hint}")
    if sub:
        options = {"subtask": sub, **options}
    return TASKS[family](**options)
