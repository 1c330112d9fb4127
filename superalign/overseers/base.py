"""The overseer protocol, the gold overseer, and how any overseer is scored against gold.

An overseer is anything with ``score(prompts, completions) -> list[float]`` (higher is better),
so it can be passed as the reward of any training stage; the gold grader is one too, which
lets gold be logged beside any proxy without being optimized. The AUROC that scores them is
:func:`superalign.metrics.auroc`, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from superalign.metrics import auroc
from superalign.tasks.base import Example, Task


@runtime_checkable
class Overseer(Protocol):
    """Judges completions; higher scores are better."""

    def score(self, prompts: list[str], completions: list[str]) -> list[float]: ...


@dataclass
class GoldOverseer:
    """The task's gold grader as an overseer, for the examples it was given.

    The gold grader needs each prompt's ground truth (``Example.meta``), so the overseer holds
    the examples whose prompts it will be asked about.
    """

    task: Task
    examples: list[Example]
    _by_prompt: dict[str, Example] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_prompt = {ex.prompt: ex for ex in self.examples}

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        missing = [p for p in prompts if p not in self._by_prompt]
        if missing:
            raise KeyError(
                f"GoldOverseer has no example for prompt {missing[0]!r}; pass its Example when building it"
            )
        return [self.task.grade(self._by_prompt[p], c) for p, c in zip(prompts, completions)]


class OverseerAgreement(NamedTuple):
    """How an overseer's scores agree with binary gold labels (1 = good)."""

    accuracy: float
    """Share of decisions (score >= threshold) that match gold."""
    auroc: float
    """Probability a random gold-good item outscores a random gold-bad one (ties count half);
    nan when gold has only one class."""
    false_positive_rate: float
    """Share of gold-bad items the overseer accepts (nan without gold-bad items)."""
    false_negative_rate: float
    """Share of gold-good items the overseer rejects (nan without gold-good items)."""
    n: int


def check_pairs(prompts: list[str], completions: list[str]) -> None:
    """Raise unless there is one completion per prompt (every overseer's ``score`` input)."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"need one completion per prompt (got {len(prompts)} and {len(completions)})"
        )


def agreement_with_gold(
    scores: list[float], gold: list[float], threshold: float = 0.5
) -> OverseerAgreement:
    """Score an overseer against gold: gold >= 0.5 is good; the overseer accepts when
    ``score >= threshold``."""
    if len(scores) != len(gold) or not scores:
        raise ValueError(
            f"need equally many scores and gold labels (got {len(scores)} and {len(gold)})"
        )
    labels = [g >= 0.5 for g in gold]
    accept = [s >= threshold for s in scores]
    good = [a for a, y in zip(accept, labels) if y]
    bad = [a for a, y in zip(accept, labels) if not y]
    return OverseerAgreement(
        accuracy=sum(a == y for a, y in zip(accept, labels)) / len(labels),
        auroc=auroc(scores, labels),
        false_positive_rate=sum(bad) / len(bad) if bad else float("nan"),
        false_negative_rate=sum(not a for a in good) / len(good) if good else float("nan"),
        n=len(labels),
    )
