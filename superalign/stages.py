"""The registry of stages: name -> config class and run function.

A stage is ``run(cfg, run: Run) -> summary``; :func:`execute` gives it its run folder (reusing a
finished one with the same config and inputs). Modules are imported only when a stage is used,
so ``superalign --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superalign.config import to_dict
from superalign.preflight import check_stage
from superalign.runs import StageResult, run_stage


@dataclass(frozen=True)
class Stage:
    module: str
    """Module holding the stage: a ``run(cfg, run)`` function and the config class."""
    config: str
    """Name of the config dataclass in ``module``."""
    help: str
    """One line for ``superalign --help``."""
    inputs: tuple[str, ...] = ()
    """Config fields that may name upstream artifacts (e.g. ``model``): when the value is an
    existing path, :func:`execute` fingerprints it into the cache key (see :func:`stage_inputs`)."""

    def load(self) -> tuple[type, Callable[..., Mapping[str, Any]]]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), mod.run


STAGES: dict[str, Stage] = {
    "pretrain": Stage(
        "superalign.models.pretrain",
        "PretrainConfig",
        "train a tiny model from scratch on a task corpus",
        inputs=("task_options",),
    ),
    "sft": Stage(
        "superalign.train.sft",
        "SFTStageConfig",
        "supervised fine-tuning on task demonstrations (TRL SFTTrainer)",
        inputs=("model", "task_options"),
    ),
    "preferences": Stage(
        "superalign.train.preferences",
        "PreferencesConfig",
        "collect preference pairs from a policy and an overseer (or from data), with gold labels",
        inputs=("model", "overseer", "overseer_options", "task_options"),
    ),
    "reward_model": Stage(
        "superalign.train.reward_model",
        "RewardModelConfig",
        "train a Bradley-Terry reward model on preference pairs (TRL RewardTrainer)",
        inputs=("preferences", "model"),
    ),
    "rl": Stage(
        "superalign.train.rl",
        "RLConfig",
        "optimize a policy against any overseer with a KL penalty (TRL GRPO / RLOO)",
        inputs=("model", "overseer", "reference", "overseer_options", "task_options"),
    ),
    "dpo": Stage(
        "superalign.train.dpo",
        "DPOStageConfig",
        "direct preference optimization on preference pairs (TRL DPOTrainer)",
        inputs=("model", "preferences", "reference", "task_options"),
    ),
    "best_of_n": Stage(
        "superalign.train.best_of_n",
        "BestOfNConfig",
        "best-of-n sampling against any overseer, with gold and KL for each n",
        inputs=("model", "overseer", "overseer_options", "task_options"),
    ),
    "judge_eval": Stage(
        "superalign.overseers.judge",
        "JudgeEvalConfig",
        "measure an LLM judge's agreement with gold on a task",
        inputs=("model", "policy", "task_options"),
    ),
    "overoptimization": Stage(
        "superalign.train.overoptimization",
        "OveroptimizationConfig",
        "fit Gao et al. overoptimization curves to best_of_n and rl runs, and plot them",
        inputs=("runs",),
    ),
    "weak_to_strong": Stage(
        "superalign.generalize.weak_to_strong",
        "WeakToStrongConfig",
        "weak-to-strong generalization: weak labels, strong student, gold ceiling, PGR",
        inputs=("models", "task_options"),
    ),
    "easy_to_hard": Stage(
        "superalign.generalize.easy_to_hard",
        "EasyToHardConfig",
        "easy-to-hard generalization of policies and reward models, as gap recovered on hard",
        inputs=(
            "model",
            "sft_easy",
            "sft_hard",
            "rm_easy",
            "rm_hard",
            "hard_preferences",
            "bon_model",
            "task_options",
        ),
    ),
    "critic": Stage(
        "superalign.train.critic",
        "CriticConfig",
        "train a step critic (a per-line P(wrong) head on the policy LM, gold step labels)",
        inputs=("model", "policy"),
    ),
    "oversight": Stage(
        "superalign.overseers.sandwich",
        "OversightConfig",
        "sandwiching: each overseer configuration's accuracy against gold on held-out solutions",
        inputs=("policies", "critic", "debater", "overseers"),
    ),
    "digits_debate": Stage(
        "superalign.overseers.digits_debate",
        "DigitsDebateConfig",
        "sparse-pixel debate on 8x8 digits (Irving et al. 2018): judge accuracy vs no debate",
    ),
    "interp": Stage(
        "superalign.validate.interp",
        "InterpConfig",
        "activations, linear probes, sparse autoencoder, explain-simulate-score, steering check",
        inputs=("model", "task_options"),
    ),
    "redteam": Stage(
        "superalign.validate.redteam",
        "RedTeamConfig",
        "automated red teaming: attackers search for prompts that trigger a behaviour",
        inputs=("target", "attacker", "task_options"),
    ),
    "organism": Stage(
        "superalign.stress.organisms",
        "OrganismConfig",
        "train a deliberately misaligned model organism (or its clean control) with a sealed "
        "record of its flaw",
        inputs=("model", "task_options"),
    ),
    "audit": Stage(
        "superalign.stress.audit",
        "AuditConfig",
        "run every detector blind on model organisms and their controls; score them afterwards",
        inputs=("organisms", "reference", "judge", "key"),
    ),
    "gate": Stage(
        "superalign.deploy.gate",
        "GateConfig",
        "admit a candidate policy only within a KL budget of a safe one and when its audits pass",
        inputs=("candidate", "safe", "audits", "task_options"),
    ),
}


def execute(
    name: str,
    cfg: Any,
    *,
    inputs: Mapping[str, str | Path] | None = None,
    root: str | Path | None = None,
    force: bool = False,
    report_to: str | None = None,
) -> StageResult:
    """Run stage ``name`` with config ``cfg`` in its run folder, or reuse a finished result.

    ``inputs`` adds to (and overrides) the upstream paths found by :func:`stage_inputs`.
    ``report_to`` (``none`` | ``tensorboard`` | ``trackio`` | ``wandb``; None reads
    ``$SUPERALIGN_REPORT_TO``) also sends the run's logged scalars there; it is not part of the
    config, so it never changes the run folder (see :func:`superalign.runs.run_stage`).
    """
    _, fn = STAGES[name].load()
    check_stage(name, cfg)  # task, levels, steps, model specs: a user error leaves no run folder
    inputs = {**stage_inputs(name, cfg), **(inputs or {})}
    return run_stage(
        name,
        to_dict(cfg),
        lambda run: fn(cfg, run),
        inputs=inputs,
        root=root,
        force=force,
        report_to=report_to,
    )


def stage_inputs(name: str, cfg: Any) -> dict[str, str]:
    """The upstream artifacts named in ``cfg``: each field in ``STAGES[name].inputs`` whose value
    is an existing file or folder, searched inside lists and dicts too (an entry keyed by its
    dotted place, e.g. ``models.1`` or ``overseer_options.critic``).
    Their content fingerprints join the cache key, so a retrained upstream model gives a new run
    folder; other values (a preset or hub id) key by name only."""
    found: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{key}.{i}", v)
        elif isinstance(value, str | Path) and value and Path(str(value)).expanduser().exists():
            found[key] = str(Path(str(value)).expanduser())

    for f in STAGES[name].inputs:
        walk(f, getattr(cfg, f, None))
    return found
