"""Build any overseer from a stage config: ``overseer: <spec>`` plus ``overseer_options: {...}``.

Specs (the names in :data:`OVERSEERS`, or a path):

- ``gold``: the task's gold grader (:class:`~superalign.overseers.base.GoldOverseer`);
- ``rater``: a :class:`~superalign.overseers.raters.SimulatedRater` (options: its fields);
- ``reward_model``: a trained reward model; ``overseer_options.path`` names its run folder.
  A path given directly as the spec means the same;
- ``judge``: an :class:`~superalign.overseers.judge.LLMJudge` (options: its fields, e.g.
  ``model``).

Every overseer is built for the examples whose prompts it will see (gold and raters need their
ground truth), and is used only through ``score(prompts, completions)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from superalign.overseers.base import GoldOverseer, Overseer
from superalign.overseers.raters import SimulatedRater
from superalign.tasks.base import Example, Task


def _reward_model(task: Task, examples: list[Example], **options: Any) -> Overseer:
    from superalign.overseers.reward_model import RewardModelOverseer

    return RewardModelOverseer.load(**options)


def _judge(task: Task, examples: list[Example], **options: Any) -> Overseer:
    from superalign.overseers.judge import LLMJudge

    return LLMJudge.build(task=task, examples=examples, **options)


OVERSEERS: dict[str, Callable[..., Overseer]] = {
    "gold": GoldOverseer,
    "rater": SimulatedRater,
    "reward_model": _reward_model,
    "judge": _judge,
}
"""Overseer name -> builder ``(task, examples, **options) -> Overseer``."""


def build_overseer(
    spec: str, task: Task, examples: list[Example], options: dict[str, Any] | None = None
) -> Overseer:
    """The overseer named by ``spec`` (a name in :data:`OVERSEERS` or a reward-model run
    folder), built for ``examples``. Unknown names and options raise ``ValueError`` naming
    the valid ones."""
    options = dict(options or {})
    if spec not in OVERSEERS:
        if Path(spec).expanduser().exists():
            options.setdefault("path", spec)
            spec = "reward_model"
        else:
            raise ValueError(
                f"overseer {spec!r} is neither one of {sorted(OVERSEERS)} nor an existing path "
                "(a reward_model run folder)"
            )
    builder = OVERSEERS[spec]
    valid = _option_names(builder)
    if valid is not None:
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(
                f"overseer_options: {unknown[0]!r} is not an option of overseer {spec!r}; "
                f"valid options: {sorted(valid)}"
            )
    return builder(task=task, examples=examples, **options)


def _option_names(builder: Callable[..., Any]) -> set[str] | None:
    """Options a builder accepts besides task and examples (None: cannot tell, let it check)."""
    if dataclasses.is_dataclass(builder):
        names = {f.name for f in dataclasses.fields(builder) if f.init}
    else:
        params = inspect.signature(builder).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        names = {p.name for p in params}
    return names - {"task", "examples"}
