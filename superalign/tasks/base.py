"""The task protocol every task family implements (see DESIGN.md).

A task is deterministic for a seed, has difficulty levels, renders to text and has a gold
grader. Models see ``prompt`` and produce a completion; ``solution`` is a gold demonstration
of that completion; ``grade`` scores any completion against gold in [0, 1].
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class Example:
    """One task instance."""

    prompt: str
    """What the model is shown."""
    answer: str
    """The gold final answer (for multiple choice: the best choice's text)."""
    solution: str
    """A gold completion that follows ``prompt`` (a demonstration for SFT and pretraining)."""
    difficulty: int = 1
    """The difficulty level it was drawn at."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Task-specific ground truth (per-step gold, choices, labels, the user's stated belief...)."""


@runtime_checkable
class Task(Protocol):
    """What every task family provides."""

    name: str
    difficulties: tuple[int, ...]

    def examples(
        self, split: str, n: int, difficulty: int | None = None, seed: int = 0
    ) -> list[Example]:
        """``n`` examples of ``split`` ("train" or "test", disjoint), at ``difficulty``
        (None: the task's default mix), deterministic for ``seed``."""
        ...

    def grade(self, example: Example, completion: str) -> float:
        """Gold score of ``completion`` for ``example``, in [0, 1]."""
        ...

    def render(self, example: Example, completion: str | None = None) -> str:
        """Full text: prompt followed by ``completion`` (default: the gold solution)."""
        ...

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` pretraining documents drawn from the train split only."""
        ...


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return split


def stable_bucket(text: str, buckets: int = 100) -> int:
    """A process-independent hash bucket of ``text`` (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % buckets


def split_of(key: str, test_percent: int = 20) -> str:
    """Assign an item to "test" or "train" by a stable hash of its identity, so splits are
    disjoint and do not depend on the seed that drew the item."""
    return "test" if stable_bucket(key) < test_percent else "train"


def split_examples(
    task: Task, split: str, n: int, difficulties: Sequence[int | None], seed: int
) -> list[Example]:
    """``n`` examples of ``split``, spread evenly over ``difficulties`` (the first levels get
    the remainder; ``[None]``: the task's default mix), deterministic for ``seed``.

    Every stage draws its held-out evaluation items with this (``split="test"``), and its
    training prompts too, so that two stages given the same levels and seed see the same items.
    """
    k = len(difficulties)
    out: list[Example] = []
    for i, d in enumerate(difficulties):
        out += task.examples(split, n // k + (i < n % k), d, seed=seed)
    return out
