"""Gold evaluation of a policy on a task: sample, grade with the task's gold grader."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superalign.models.sampling import sample
from superalign.tasks.base import Example, Task


@dataclass
class GoldEval:
    """Gold accuracy of greedy (or sampled) completions on held-out examples."""

    accuracy: float
    n: int
    examples: list[Example]
    completions: list[str]
    scores: list[float]


def gold_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    split: str = "test",
    difficulty: int | None = None,
    n: int = 200,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 64,
) -> GoldEval:
    """Mean gold score of the model's completions on ``n`` examples of ``split``."""
    examples = task.examples(split, n, difficulty, seed)
    out = sample(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    scores = [task.grade(ex, c) for ex, c in zip(examples, out.texts)]
    return GoldEval(sum(scores) / max(len(scores), 1), len(scores), examples, out.texts, scores)


def gold_eval_by_difficulty(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    difficulties: list[int],
    *,
    split: str = "test",
    n: int = 200,
    seed: int = 0,
    max_new_tokens: int = 64,
) -> dict[int, GoldEval]:
    """:func:`gold_eval` on examples of ``split`` (held-out test by default) at each difficulty
    (greedy)."""
    return {
        d: gold_eval(
            model, tokenizer, task, split=split, difficulty=d, n=n, seed=seed,
            max_new_tokens=max_new_tokens,
        )
        for d in difficulties
    }  # fmt: skip
