"""Stage ``preferences``: preference pairs with gold labels, the input of reward models and DPO.

``superalign preferences model=runs/pretrain-1a2b overseer=rater`` draws ``n_train_prompts``
prompts from the task's train split and ``n_test_prompts`` from its test split, samples two
completions ``a`` and ``b`` per prompt from the policy (:func:`superalign.models.sampling.sample`,
seeded), and asks the overseer (any :func:`~superalign.overseers.build_overseer` spec) which is
better; the task's gold grader grades both, so every label can be checked against gold.

How a pair is labelled:

1. ``p``, the overseer's probability that ``a`` is better: ``overseer.compare(prompt, a, b)``
   when the overseer has ``compare`` (a simulated rater: its own Bradley-Terry temperature and
   position bias, ``a`` shown first), else ``sigmoid((score(a) - score(b)) / label_temperature)``
   (gold, a reward model: with ``label_temperature=1`` this is the Bradley-Terry probability);
2. ``label="argmax"``: ``chosen = a`` iff ``p > 0.5``; ``label="sample"``: ``chosen = a`` with
   probability ``p`` (a seeded Bernoulli draw), a noisy labeller whose noise the overseer sets;
3. pairs the overseer cannot order (``p == 0.5`` exactly, e.g. gold or a noiseless rater
   grading both completions alike) carry no label and are dropped unless ``keep_ties``, which
   then picks ``chosen`` by a fair coin; pairs whose two completions are identical are dropped.

``source="hhh_alignment"`` takes the pairs from data instead: BIG-bench's HHH alignment
(:meth:`superalign.tasks.bigbench.BigBenchTask.preference_pairs`), ``p_chosen`` 1.0 and gold the
data's ``target_scores``; no model or overseer is used. It needs the user's copy of BIG-bench
(``task_options: {path: ...}`` or the cached archive): nothing is downloaded.

File format (the contract between stages): ``preferences.jsonl`` in the run folder, one JSON
object per line with

- ``prompt``, ``chosen``, ``rejected``: strings (completions exclude the prompt);
- ``split``: ``"train"`` or ``"test"`` (test pairs come from held-out prompts only);
- ``p_chosen``: the labelling overseer's probability that ``chosen`` is better (1.0 for data);
- ``gold_chosen``, ``gold_rejected``: gold scores of the two completions (``null`` when the
  task has no gold grader for them).

Read it with :func:`read_preferences`.

Metrics (logged at step 0, and in ``summary.json``), per split ``{s}`` (``train``, ``test``):

- ``pairs/n/{s}``: pairs written;
- ``pairs/identical/{s}``: prompts dropped because both completions were identical;
- ``pairs/overseer_tied/{s}``: pairs the overseer could not order (dropped unless ``keep_ties``);
- ``pairs/gold_tied/{s}``: share of written pairs whose two gold scores are equal;
- ``pairs/gold_agreement/{s}``: among written pairs whose gold scores differ, the share whose
  ``chosen`` has the higher gold score (the labels' agreement with gold; null without such pairs);
- ``pairs/p_chosen/{s}``: mean ``p_chosen``;
- ``reward/proxy``, ``reward/gold``: mean overseer score and mean gold grade of all sampled
  completions (both splits); ``policy/length``: their mean length in tokens.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from superalign.config import set_threads
from superalign.overseers.build import build_overseer
from superalign.runs import Run, atomic_write_text
from superalign.tasks import get_task
from superalign.tasks.base import Example, Task, split_examples

FILE = "preferences.jsonl"
FIELDS = ("prompt", "chosen", "rejected", "split", "p_chosen", "gold_chosen", "gold_rejected")


def read_preferences(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The pairs in ``run_dir/preferences.jsonl`` (``run_dir`` may also be the file itself),
    optionally only one ``split``."""
    path = Path(run_dir)
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"no {FILE} at {path}: pass a finished preferences run folder (superalign preferences)"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path} line {i + 1} lacks fields {missing}; expected {FIELDS}")
    return [r for r in rows if split is None or r["split"] == split]


@dataclass
class PreferencesConfig:
    """Collect preference pairs: two policy completions per prompt, labelled by an overseer."""

    model: str = ""
    """Policy that writes the completions: a ``load_model`` spec (run folder, model folder,
    preset, .gguf, hub id). Required unless ``source`` is ``hhh_alignment``."""
    task: str = "arithmetic"
    """Task family whose prompts are completed and whose gold grader grades the completions."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family; with ``source=hhh_alignment``, options of ``BigBenchTask``
    (e.g. ``{subtask: hhh_alignment/honest}``, ``{path: ~/BIG-bench}``: your copy, required
    unless the archive is in the cache)."""
    difficulties: list[int] = field(default_factory=lambda: [1, 2])
    """Difficulty levels the prompts are drawn from (split evenly across them)."""
    n_train_prompts: int = 1000
    """Prompts from the task's train split; each gives at most one train pair."""
    n_test_prompts: int = 200
    """Prompts from the task's test split (held out); each gives at most one test pair."""
    temperature: float = 1.0
    """Sampling temperature of the two completions (> 0: two greedy completions are equal)."""
    max_new_tokens: int = 64
    """Generation limit per completion."""
    overseer: str = "rater"
    """Who labels the pairs: a ``build_overseer`` spec (``gold``, ``rater``, ``judge``,
    ``reward_model`` or a reward_model run folder)."""
    overseer_options: dict[str, Any] = field(default_factory=dict)
    """Options of the overseer (e.g. ``{check_steps: 1, noise: 0.1}`` for the rater)."""
    label: Literal["argmax", "sample"] = "argmax"
    """``argmax``: the overseer's more probable choice; ``sample``: a Bernoulli(p) draw."""
    label_temperature: float = 1.0
    """For overseers without ``compare``: p = sigmoid(score difference / label_temperature)."""
    keep_ties: bool = False
    """Keep pairs the overseer cannot order (p = 0.5), choosing by a fair coin."""
    source: Literal["policy", "hhh_alignment"] = "policy"
    """``policy``: sample and label as above; ``hhh_alignment``: BIG-bench HHH pairs (data)."""
    seed: int = 0
    """Seeds the prompts, the sampling and the ``sample``/tie draws."""
    batch_size: int = 64
    """Prompts per sampling batch."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if self.source == "policy" and not self.model:
            raise ConfigError(
                "model is required with source=policy: give the load_model spec of the policy "
                "that writes the completions, e.g. model=runs/pretrain-1a2b"
            )
        if self.source not in ("policy", "hhh_alignment"):
            raise ConfigError(f"source must be 'policy' or 'hhh_alignment', not {self.source!r}")
        if self.label not in ("argmax", "sample"):
            raise ConfigError(f"label must be 'argmax' or 'sample', not {self.label!r}")
        check_at_least(self, 1, "n_train_prompts", "n_test_prompts", "max_new_tokens", "batch_size")
        if self.threads < 0:
            raise ConfigError(f"threads must be at least 0, not {self.threads}")
        if not self.temperature > 0:
            raise ConfigError(
                f"temperature must be positive, not {self.temperature}: "
                "two greedy completions of one prompt are the same"
            )
        if not self.label_temperature > 0:
            raise ConfigError(f"label_temperature must be positive, not {self.label_temperature}")
        if not self.difficulties:
            raise ConfigError("difficulties must name at least one level, e.g. [1, 2]")


def run(cfg: PreferencesConfig, run: Run) -> dict[str, Any]:
    """Build the pairs, write ``preferences.jsonl`` atomically; returns the summary."""
    set_threads(cfg.threads)
    if cfg.source == "hhh_alignment":
        rows, figures, record = data_pairs(cfg)
    else:
        rows, figures, record = policy_pairs(cfg)
    atomic_write_text(run.path(FILE), "".join(json.dumps(r) + "\n" for r in rows))
    for split in ("train", "test"):
        figures.update(pair_stats([r for r in rows if r["split"] == split], split))
    run.log(0, figures)
    return {"source": cfg.source, **record, **figures, "file": FILE}


def prompts_for(cfg: PreferencesConfig, task: Task, split: str, n: int) -> list[Example]:
    """``n`` examples of ``split``, split evenly over ``cfg.difficulties``."""
    return split_examples(task, split, n, cfg.difficulties, cfg.seed)


def policy_pairs(cfg: PreferencesConfig) -> tuple[list[dict[str, Any]], dict[str, Any], dict]:
    """Sample two completions per prompt, label them with the overseer, grade them with gold.
    Returns the rows, the figures and a record of the model, task and overseer."""
    from superalign.models.load import load_model
    from superalign.models.sampling import sample

    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in cfg.difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(
            f"difficulties {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    model, tokenizer, info_model = load_model(cfg.model)
    sizes = {"train": cfg.n_train_prompts, "test": cfg.n_test_prompts}
    examples = {s: prompts_for(cfg, task, s, n) for s, n in sizes.items()}
    overseer = build_overseer(
        cfg.overseer, task, examples["train"] + examples["test"], cfg.overseer_options
    )
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    proxy, gold, lengths = [], [], []
    for i, split in enumerate(("train", "test")):
        exs = examples[split]
        prompts = [ex.prompt for ex in exs]
        out = sample(
            model,
            tokenizer,
            prompts + prompts,  # row j and row j + n are the two completions of prompt j
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed + i,
            batch_size=cfg.batch_size,
        )
        scores = overseer.score(prompts + prompts, out.texts)
        grades = [task.grade(ex, c) for ex, c in zip(exs + exs, out.texts)]
        proxy += scores
        gold += grades
        lengths += [len(c) for c in out.completion_ids]
        labelled, dropped = label_pairs(cfg, overseer, split, prompts, out.texts, scores, grades)
        rows += labelled
        figures.update({f"pairs/{k}/{split}": v for k, v in dropped.items()})
    figures["reward/proxy"] = sum(proxy) / len(proxy)
    figures["reward/gold"] = sum(gold) / len(gold)
    figures["policy/length"] = sum(lengths) / len(lengths)
    info = getattr(overseer, "info", None)
    record = {
        "task": cfg.task,
        "model": info_model,
        "overseer": {
            "spec": cfg.overseer,
            "options": cfg.overseer_options,
            **(info if isinstance(info, dict) else {}),
        },
    }
    return rows, figures, record


def label_pairs(
    cfg: PreferencesConfig,
    overseer: Any,
    split: str,
    prompts: list[str],
    texts: list[str],
    scores: list[float],
    grades: list[float],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows of the pairs (``texts[j]``, ``texts[j + n]``) of each prompt ``j``, labelled as the
    module docstring says, and the counts of prompts left out (``identical``,
    ``overseer_tied``)."""
    n = len(prompts)
    rng = random.Random(f"preferences:{cfg.seed}:{split}")
    rows: list[dict[str, Any]] = []
    identical = tied = 0
    for j, prompt in enumerate(prompts):
        a, b = texts[j], texts[j + n]
        if a == b:
            identical += 1
            continue
        p = preference_prob(overseer, prompt, a, b, scores[j] - scores[j + n], cfg)
        tied += p == 0.5
        if p == 0.5 and not cfg.keep_ties:
            continue
        a_chosen = rng.random() < p if cfg.label == "sample" or p == 0.5 else p > 0.5
        ga, gb = grades[j], grades[j + n]
        rows.append(
            {
                "prompt": prompt,
                "chosen": a if a_chosen else b,
                "rejected": b if a_chosen else a,
                "split": split,
                "p_chosen": p if a_chosen else 1 - p,
                "gold_chosen": ga if a_chosen else gb,
                "gold_rejected": gb if a_chosen else ga,
            }
        )
    return rows, {"identical": identical, "overseer_tied": tied}


def preference_prob(
    overseer: Any, prompt: str, a: str, b: str, score_diff: float, cfg: PreferencesConfig
) -> float:
    """The overseer's probability that ``a`` is better than ``b``: its ``compare`` when it has
    one, else ``sigmoid(score_diff / label_temperature)``."""
    compare = getattr(overseer, "compare", None)
    if compare is not None:
        return float(compare(prompt, a, b))
    z = max(min(score_diff / cfg.label_temperature, 50.0), -50.0)
    return 1 / (1 + math.exp(-z))


def data_pairs(cfg: PreferencesConfig) -> tuple[list[dict[str, Any]], dict[str, Any], dict]:
    """BIG-bench HHH pairs: the pairs of at most ``n_{split}_prompts`` prompts per split (a
    seeded draw), ``p_chosen`` 1.0, gold from the data's ``target_scores``."""
    from superalign.tasks.bigbench import BigBenchTask

    task = BigBenchTask(**{"subtask": "hhh_alignment", **cfg.task_options})
    rows: list[dict[str, Any]] = []
    sizes = {"train": cfg.n_train_prompts, "test": cfg.n_test_prompts}
    for split, n in sizes.items():
        pairs = task.preference_pairs(split)
        prompts = list(dict.fromkeys(p.prompt for p in pairs))
        keep = set(
            random.Random(f"preferences:{cfg.seed}:{split}").sample(prompts, len(prompts))[:n]
        )
        for pair in pairs:
            if pair.prompt not in keep:
                continue
            scores = pair.meta["target_scores"]
            rows.append(
                {
                    "prompt": pair.prompt,
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "split": split,
                    "p_chosen": 1.0,
                    "gold_chosen": float(scores[_choice(pair.chosen)]),
                    "gold_rejected": float(scores[_choice(pair.rejected)]),
                }
            )
    return rows, {}, {"task": f"bigbench:{task.subtask}"}


def _choice(completion: str) -> str:
    """The choice text of a completion in the solution format ``" text\\n"``."""
    return completion.removeprefix(" ").removesuffix("\n")


def pair_stats(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """``pairs/n``, ``pairs/gold_tied``, ``pairs/gold_agreement`` and ``pairs/p_chosen`` of
    ``rows`` (one split), suffixed ``/{split}``; undefined figures are None."""
    graded = [r for r in rows if r["gold_chosen"] is not None and r["gold_rejected"] is not None]
    differ = [r for r in graded if r["gold_chosen"] != r["gold_rejected"]]
    agree = sum(r["gold_chosen"] > r["gold_rejected"] for r in differ)
    return {
        f"pairs/n/{split}": len(rows),
        f"pairs/gold_tied/{split}": (len(graded) - len(differ)) / len(graded) if graded else None,
        f"pairs/gold_agreement/{split}": agree / len(differ) if differ else None,
        f"pairs/p_chosen/{split}": sum(r["p_chosen"] for r in rows) / len(rows) if rows else None,
    }
