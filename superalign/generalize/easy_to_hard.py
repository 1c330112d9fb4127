"""Easy-to-hard generalization: supervise on easy problems only, measure on hard ones.

Gold supervision is affordable on easy problems and not on hard ones. The question is how much
of the benefit of supervising on hard gold one gets from supervising on easy gold alone, for
the two things oversight trains (Sun et al., 2024, "Easy-to-hard generalization"):

**Policies.** ``sft_easy`` was fine-tuned on gold demonstrations of easy levels only, ``sft_hard``
on hard levels; both start from the same base ``model``. Each is evaluated (greedy, gold
grader) on the same held-out hard problems::

    gap recovered = (acc(sft_easy) - acc(base)) / (acc(sft_hard) - acc(base))

and the same ratio on the (negated) loss of those problems' gold solutions, which moves where
greedy accuracy is still flat.

**Reward models.** ``rm_easy`` learned from gold-labelled preference pairs on easy levels,
``rm_hard`` on hard levels. Each is scored on held-out *hard* pairs (the test split of
``hard_preferences``, pairs whose gold grades differ): pairwise gold accuracy, with chance (0.5)
as the unsupervised baseline. Then both are used as the reward for best-of-n on hard problems,
with one policy's samples shared by every reward (and by the gold oracle, whose best-of-n
is pass@n; ``bon_model`` if set, else the base policy)::

    gap recovered at n = (gold@n(rm_easy) - gold@1) / (gold@n(rm_hard) - gold@1)

Every gap recovered comes from :func:`~superalign.generalize.pgr.gap_recovered`, with a paired
bootstrap interval that resamples the evaluation problems (or pairs), and is reported only
where its gap (hard-supervised minus baseline) is resolved: the gap's interval excludes 0 and
the gap exceeds one problem (1/n; for the loss, a continuous score, only the interval rule
applies). Elsewhere its ``value`` is null and ``reason`` says why. The summary holds both
tables; ``easy_to_hard.png`` plots hard accuracy per policy and gold against n per reward.

The stage reads finished run folders, so the pipeline (``pipelines/e2h.yaml``) caches and
reuses every training run; it checks from their configs that the "easy" runs never saw a hard
level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superalign.config import ConfigError, set_threads
from superalign.generalize.pgr import Estimate, gap_recovered, mean_ci
from superalign.models.load import load_model
from superalign.models.sampling import sample
from superalign.overseers.build import build_overseer
from superalign.overseers.reward_model import RewardModelOverseer
from superalign.runs import Run, read_json
from superalign.tasks import get_task, split_examples
from superalign.train.best_of_n import best_of_n_mean
from superalign.train.preferences import read_preferences
from superalign.train.sft import completion_loss


@dataclass
class EasyToHardConfig:
    """Measure easy-to-hard generalization of policies and reward models from finished runs."""

    model: str = ""
    """The base policy (a run folder or model) that both SFT runs started from; best-of-n
    samples come from it."""
    sft_easy: str = ""
    """An ``sft`` run (or model) fine-tuned on easy levels only."""
    sft_hard: str = ""
    """An ``sft`` run (or model) fine-tuned on hard levels (the gold-supervised reference)."""
    rm_easy: str = ""
    """A ``reward_model`` run trained on preference pairs of easy levels only."""
    rm_hard: str = ""
    """A ``reward_model`` run trained on pairs of hard levels."""
    hard_preferences: str = ""
    """A ``preferences`` run on hard levels: its test pairs score the reward models on hard."""
    bon_model: str = ""
    """The policy whose samples best-of-n chooses among (default: ``model``); usually the one
    whose samples the reward models' preference pairs came from."""
    task: str = "arithmetic"
    """Task family (must have difficulty levels)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family."""
    easy: list[int] = field(default_factory=lambda: [1, 2])
    """The easy levels: the ``*_easy`` runs must have been supervised on these alone."""
    hard: list[int] = field(default_factory=lambda: [3])
    """The hard levels everything is evaluated on."""
    eval_n: int = 200
    """Held-out hard problems per policy evaluation (greedy)."""
    n_prompts: int = 64
    """Held-out hard problems for best-of-n."""
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Values of n for best-of-n; the largest is the number of samples per problem."""
    temperature: float = 1.0
    """Sampling temperature of the best-of-n samples."""
    max_new_tokens: int = 64
    """Completion length limit for evaluation and sampling."""
    seed: int = 0
    """Seeds problem choice, sampling and the bootstrap."""
    batch_size: int = 64
    """Sequences per forward pass."""
    threads: int = 0
    """Torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        for name in ("model", "sft_easy", "sft_hard", "rm_easy", "rm_hard", "hard_preferences"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required: a finished run folder (see the docs)")
        if not self.easy or not self.hard:
            raise ConfigError("easy and hard must each list at least one level")
        if set(self.easy) & set(self.hard):
            raise ConfigError(
                f"easy {self.easy} and hard {self.hard} overlap; make the levels disjoint"
            )
        if self.eval_n < 1 or self.n_prompts < 1:
            raise ConfigError("eval_n and n_prompts must be at least 1")
        if not self.ns or min(self.ns) < 1:
            raise ConfigError(f"ns must list positive integers, not {self.ns}")


def supervised_levels(run_dir: str, key: str = "difficulties") -> list[int] | None:
    """The levels a run was trained on, from its ``config.json`` (a reward model's from its
    preferences run); None for a plain model folder."""
    path = Path(run_dir).expanduser()
    if not (path / "config.json").is_file():
        return None
    cfg = read_json(path / "config.json").get("config", {})
    if "preferences" in cfg and key not in cfg:
        return supervised_levels(cfg["preferences"], key)
    levels = cfg.get(key)
    return list(levels) if levels is not None else None


def check_levels(cfg: EasyToHardConfig) -> dict[str, list[int] | None]:
    """Each run's supervised levels; raises if an easy run saw a hard level or a hard run none."""
    found = {
        name: supervised_levels(getattr(cfg, name))
        for name in ("sft_easy", "sft_hard", "rm_easy", "rm_hard", "hard_preferences")
    }
    for name, levels in found.items():
        if levels is None:
            continue
        if name.endswith("_easy") and not set(levels) <= set(cfg.easy):
            raise ConfigError(
                f"{name} was trained on levels {levels}, not only on easy {cfg.easy}: "
                "pass a run supervised on easy levels alone"
            )
        if not name.endswith("_easy") and not set(levels) & set(cfg.hard):
            raise ConfigError(
                f"{name} covers levels {levels}, none of hard {cfg.hard}: pass a run on hard levels"
            )
    return found


def _estimate(e: Estimate) -> dict[str, float]:
    return {"value": round(e.value, 4), "low": round(e.low, 4), "high": round(e.high, 4)}


def hard_examples(cfg: EasyToHardConfig, task: Any, n: int) -> list[Any]:
    """``n`` held-out test problems spread evenly over the hard levels."""
    return split_examples(task, "test", n, cfg.hard, cfg.seed)


def policy_scores(
    cfg: EasyToHardConfig, task: Any, path: str, examples: list[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Per problem: the greedy gold grade of the policy in ``path``, and its cross-entropy
    (nats/token) on the gold solution given the prompt, as SFT trains it."""
    model, tokenizer, _ = load_model(path)
    tokenizer.padding_side = "left"
    texts = sample(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        max_new_tokens=cfg.max_new_tokens,
        temperature=0.0,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    ).texts
    grades = np.array([task.grade(ex, c) for ex, c in zip(examples, texts)], dtype=float)
    with torch.no_grad():
        losses = np.array([completion_loss(model, tokenizer, [ex]) for ex in examples])
    return grades, losses


def policy_table(cfg: EasyToHardConfig, task: Any, run: Run) -> dict[str, Any]:
    """Hard accuracy and hard solution loss of base, sft_easy and sft_hard, and the gaps
    recovered on each."""
    examples = hard_examples(cfg, task, cfg.eval_n)
    names = {"base": cfg.model, "sft_easy": cfg.sft_easy, "sft_hard": cfg.sft_hard}
    grades, losses = {}, {}
    for name, path in names.items():
        grades[name], losses[name] = policy_scores(cfg, task, path, examples)
    out: dict[str, Any] = {"n": len(examples)}
    for name in names:
        out[f"accuracy/{name}"] = _estimate(mean_ci(grades[name], seed=cfg.seed))
        out[f"loss/{name}"] = _estimate(mean_ci(losses[name], seed=cfg.seed))
    g = [grades[n] for n in names]
    out["gap_recovered"] = gap_recovered(*g, seed=cfg.seed).as_dict()
    # the loss is continuous: no item resolution, only the interval rule
    neg_loss = [-losses[n] for n in names]
    out["loss_gap_recovered"] = gap_recovered(*neg_loss, seed=cfg.seed, resolution=0.0).as_dict()
    run.log(
        0,
        {
            **{f"policy/hard_accuracy_{n}": out[f"accuracy/{n}"]["value"] for n in names},
            **{f"policy/hard_loss_{n}": out[f"loss/{n}"]["value"] for n in names},
            "policy/gap_recovered": out["gap_recovered"]["value"],
            "policy/loss_gap_recovered": out["loss_gap_recovered"]["value"],
        },
    )
    return out


def pair_wins(path: str, pairs: list[dict[str, Any]], batch_size: int) -> np.ndarray:
    """Per pair: 1 if the reward model in ``path`` ranks the gold-better completion first, 0.5 on
    a tie, else 0 (pairs whose gold grades differ)."""
    overseer = RewardModelOverseer.load(path, batch_size=batch_size)
    out = []
    for p in pairs:
        better, worse = (
            (p["chosen"], p["rejected"])
            if p["gold_chosen"] > p["gold_rejected"]
            else (p["rejected"], p["chosen"])
        )
        out.append((p["prompt"], better, worse))
    prompts = [o[0] for o in out]
    r = overseer.score(prompts + prompts, [o[1] for o in out] + [o[2] for o in out])
    rb, rw = np.array(r[: len(out)]), np.array(r[len(out) :])
    return np.where(rb > rw, 1.0, np.where(rb == rw, 0.5, 0.0))


def reward_model_table(
    cfg: EasyToHardConfig, task: Any, run: Run
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hard pairwise gold accuracy of both reward models, and best-of-n on hard with each."""
    pairs = [
        p
        for p in read_preferences(cfg.hard_preferences, "test")
        if p["gold_chosen"] is not None
        and p["gold_rejected"] is not None
        and p["gold_chosen"] != p["gold_rejected"]
    ]
    if not pairs:
        raise ValueError(
            f"{cfg.hard_preferences} has no test pairs whose gold grades differ: collect more "
            "prompts or sample at a higher temperature"
        )
    wins = {
        name: pair_wins(getattr(cfg, name), pairs, cfg.batch_size)
        for name in ("rm_easy", "rm_hard")
    }
    chance = np.full(len(pairs), 0.5)
    pairs_out = {
        "accuracy/rm_easy": _estimate(mean_ci(wins["rm_easy"], seed=cfg.seed)),
        "accuracy/rm_hard": _estimate(mean_ci(wins["rm_hard"], seed=cfg.seed)),
        "gap_recovered": gap_recovered(
            chance, wins["rm_easy"], wins["rm_hard"], seed=cfg.seed
        ).as_dict(),
        "n_pairs": len(pairs),
    }
    run.log(
        0,
        {
            "rm/hard_pair_accuracy_easy": pairs_out["accuracy/rm_easy"]["value"],
            "rm/hard_pair_accuracy_hard": pairs_out["accuracy/rm_hard"]["value"],
            "rm/gap_recovered": pairs_out["gap_recovered"]["value"],
        },
    )
    return pairs_out, best_of_n_table(cfg, task, run)


def best_of_n_table(cfg: EasyToHardConfig, task: Any, run: Run) -> dict[str, Any]:
    """Gold of best-of-n on hard problems by each reward (and by gold itself: pass@n)."""
    examples = hard_examples(cfg, task, cfg.n_prompts)
    N = max(cfg.ns)
    model, tokenizer, _ = load_model(cfg.bon_model or cfg.model)
    tokenizer.padding_side = "left"
    rows = [ex for ex in examples for _ in range(N)]
    prompts = [ex.prompt for ex in rows]
    texts = sample(
        model,
        tokenizer,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    ).texts
    del model
    gold = np.array([task.grade(ex, c) for ex, c in zip(rows, texts)]).reshape(len(examples), N)
    rewards = {"gold": gold}
    for name in ("rm_easy", "rm_hard"):
        overseer = build_overseer(getattr(cfg, name), task, examples)
        rewards[name] = np.array(overseer.score(prompts, texts)).reshape(len(examples), N)
    # per problem, per reward: expected gold of the best of n (exact average over n-subsets)
    per_problem = {
        name: np.array(
            [[best_of_n_mean(r[j], gold[j], n) for n in cfg.ns] for j in range(len(gold))]
        )
        for name, r in rewards.items()
    }  # name -> [problems, len(ns)]
    curves = {name: pp.mean(axis=0).round(4).tolist() for name, pp in per_problem.items()}
    for i, n in enumerate(cfg.ns):
        run.log(n, {f"bon/gold_{name}": curves[name][i] for name in curves})
    one_sample = gold.mean(axis=1)  # per problem: expected gold of a single random sample
    top = cfg.ns.index(max(cfg.ns))
    gap = gap_recovered(
        one_sample, per_problem["rm_easy"][:, top], per_problem["rm_hard"][:, top], seed=cfg.seed
    )
    run.log(max(cfg.ns), {"bon/gap_recovered": gap.value})
    return {
        "ns": list(cfg.ns),
        "gold": curves,
        "gold_one_sample": round(float(one_sample.mean()), 4),
        "gap_recovered_at_max_n": gap.as_dict(),
        "n_prompts": len(examples),
    }


def markdown(policy: dict[str, Any], pairs: dict[str, Any], bon: dict[str, Any]) -> str:
    """The summary tables as markdown."""

    def ci(e: dict[str, Any]) -> str:
        if e["value"] is None:
            return f"not reported: {e['reason']}"
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    n_max = max(bon["ns"])
    i_max = bon["ns"].index(n_max)
    lines = [
        "| supervision | policy: hard accuracy | RM: hard pair accuracy "
        f"| best-of-{n_max} gold on hard |",
        "|---|---|---|---|",
        f"| none (base / chance) | {ci(policy['accuracy/base'])} | 0.500 "
        f"| {bon['gold_one_sample']:.3f} (one sample) |",
        f"| easy gold only | {ci(policy['accuracy/sft_easy'])} | {ci(pairs['accuracy/rm_easy'])} "
        f"| {bon['gold']['rm_easy'][i_max]:.3f} |",
        f"| hard gold | {ci(policy['accuracy/sft_hard'])} | {ci(pairs['accuracy/rm_hard'])} "
        f"| {bon['gold']['rm_hard'][i_max]:.3f} |",
        f"| **gap recovered** | {ci(policy['gap_recovered'])} | {ci(pairs['gap_recovered'])} "
        f"| {ci(bon['gap_recovered_at_max_n'])} |",
        "",
        "Policy loss on hard gold solutions (nats/token): "
        f"base {ci(policy['loss/base'])}, easy-supervised {ci(policy['loss/sft_easy'])}, "
        f"hard-supervised {ci(policy['loss/sft_hard'])}; "
        f"gap recovered {ci(policy['loss_gap_recovered'])}.",
        "",
        f"Gold oracle best-of-{n_max} (pass@{n_max}): {bon['gold']['gold'][i_max]:.3f}.",
    ]
    return "\n".join(lines)


def plot(policy: dict[str, Any], bon: dict[str, Any], path: Path) -> None:
    """Hard accuracy per policy (bars, 95% intervals) and gold vs n per best-of-n reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [
        ("accuracy/base", "base"),
        ("accuracy/sft_easy", "SFT easy"),
        ("accuracy/sft_hard", "SFT hard"),
    ]
    vals = [policy[k]["value"] for k, _ in names]
    err = [
        [v - policy[k]["low"] for (k, _), v in zip(names, vals)],
        [policy[k]["high"] - v for (k, _), v in zip(names, vals)],
    ]
    ax1.bar(
        [lbl for _, lbl in names],
        vals,
        yerr=err,
        color=["#999999", "#4c78a8", "#f58518"],
        capsize=4,
    )
    ax1.set_ylabel("gold accuracy on hard (greedy)")
    ax1.set_title("Policies")
    labels = {
        "rm_easy": "RM trained on easy",
        "rm_hard": "RM trained on hard",
        "gold": "gold (pass@n)",
    }
    for name, curve in bon["gold"].items():
        ax2.plot(
            bon["ns"],
            curve,
            marker="o",
            label=labels[name],
            linestyle="--" if name == "gold" else "-",
        )
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("n (best-of-n on hard problems)")
    ax2.set_ylabel("gold of the chosen sample")
    ax2.set_title("Reward models")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: EasyToHardConfig, run: Run) -> dict[str, Any]:
    """Evaluate the policies and reward models on hard levels; returns the summary."""
    set_threads(cfg.threads)
    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in cfg.easy + cfg.hard if d not in task.difficulties]
    if bad:
        raise ConfigError(
            f"levels {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    levels = check_levels(cfg)
    policy = policy_table(cfg, task, run)
    pairs, bon = reward_model_table(cfg, task, run)
    plot(policy, bon, run.path("easy_to_hard.png"))
    return {
        "task": cfg.task,
        "easy": cfg.easy,
        "hard": cfg.hard,
        "supervised_levels": levels,
        "policy": policy,
        "reward_model_pairs": pairs,
        "best_of_n": bon,
        "table": markdown(policy, pairs, bon),
        "plot": "easy_to_hard.png",
    }
