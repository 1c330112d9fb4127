"""Build any overseer from a stage config: ``overseer: <spec>`` plus ``overseer_options: {...}``.

Specs (the names in :data:`OVERSEERS`, or a path):

- ``gold``: the task's gold grader (:class:`~superalign.overseers.base.GoldOverseer`);
- ``rater``: a :class:`~superalign.overseers.raters.SimulatedRater` (options: its fields);
- ``reward_model``: a trained reward model; ``overseer_options.path`` names its run folder.
  A path given directly as the spec means the same;
- ``judge``: an :class:`~superalign.overseers.judge.LLMJudge` (options: its fields, e.g.
  ``model``);
- ``assisted_rater``: a rater that verifies a critic's flagged step first
  (:class:`~superalign.overseers.assisted.CritiqueAssistedRater`; options ``critic``: a
  ``critic`` run folder, ``rater``: the rater's options);
- ``debate``, ``consultant``: a judging rater assisted by two debaters or by one consultant
  (:mod:`superalign.overseers.assisted`; options ``debater``, ``rounds``, ``judge``, and
  ``seed`` for the consultant's side);
- ``process``: process supervision, the share of correct steps
  (:class:`~superalign.overseers.assisted.ProcessOverseer`);
- ``sneaky``: red-team reward for wrong solutions a rater accepts
  (:class:`~superalign.overseers.assisted.SneakyReward`; option ``rater``);
- ``probe``: a latent-knowledge judge, P(true) under a truth probe on the model's own
  activations, fitted on a ``world`` dataset (:class:`~superalign.overseers.probe_judge.
  ProbeJudge`; options ``model``, ``dataset``, ``layer``, ...).

Every overseer is built for the examples whose prompts it will see (gold and raters need their
ground truth), and is used only through ``score(prompts, completions)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from superalign.overseers.base import Overseer
from superalign.tasks.base import Example, Task

OVERSEERS: dict[str, str] = {
    "gold": "superalign.overseers.base:GoldOverseer",
    "rater": "superalign.overseers.raters:SimulatedRater",
    "reward_model": "superalign.overseers.reward_model:RewardModelOverseer.load",
    "judge": "superalign.overseers.judge:LLMJudge.build",
    "assisted_rater": "superalign.overseers.assisted:CritiqueAssistedRater.build",
    "debate": "superalign.overseers.assisted:Debate.build",
    "consultant": "superalign.overseers.assisted:Consultant.build",
    "process": "superalign.overseers.assisted:ProcessOverseer",
    "sneaky": "superalign.overseers.assisted:SneakyReward.build",
    "probe": "superalign.overseers.probe_judge:ProbeJudge.build",
}
"""Overseer name -> its builder, ``module:attribute``, imported when used. A builder takes the
overseer's options as keyword arguments, plus ``task`` and ``examples`` when it names them."""


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
    builder = _resolve(OVERSEERS[spec])
    accepted = _parameters(builder)
    unknown = sorted(set(options) - accepted - {"task", "examples"})
    if unknown:
        raise ValueError(
            f"overseer_options: {unknown[0]!r} is not an option of overseer {spec!r}; "
            f"valid options: {sorted(accepted - {'task', 'examples'})}"
        )
    context = {k: v for k, v in (("task", task), ("examples", examples)) if k in accepted}
    return builder(**context, **options)


def _resolve(target: str) -> Callable[..., Overseer]:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _parameters(builder: Callable[..., Any]) -> set[str]:
    """Keyword arguments a builder accepts (a dataclass: its init fields)."""
    if dataclasses.is_dataclass(builder):
        return {f.name for f in dataclasses.fields(builder) if f.init}
    return {
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
