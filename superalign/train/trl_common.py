"""What every TRL-backed stage (sft, reward_model, dpo, rl) sets the same way.

- :func:`trainer_args`: the ``TrainingArguments`` that make a trainer write its resumable
  checkpoints into the run folder and run CPU-safe (bf16, fp16 and gradient checkpointing off:
  on CPU they make TRL ~10x slower; no reporting integrations; a progress bar only on a TTY);
- :func:`run_callback`: copies TRL's per-step log lines into ``metrics.jsonl`` under our metric
  names and writes the ``checkpoint/step.json`` marker that lets :func:`superalign.runs.run_stage`
  keep and resume a killed run.

Experiment tracking (``report_to``) goes through :func:`run_callback` -> ``Run.log``, not through
TRL's own integrations (``report_to`` stays ``[]`` here): so a TRL stage's TensorBoard / trackio /
W&B scalars have the names of its ``metrics.jsonl`` (``loss/train``, not TRL's ``train/loss``), as
every other stage's do, and nothing is written twice under two names.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from superalign.runs import Run, atomic_write_json

LOSS_AND_LR: dict[str, str] = {"loss": "loss/train", "learning_rate": "optim/lr"}
"""The log keys every supervised stage keeps, and their metric names."""


def trainer_args(
    where: Run | str | Path, *, seed: int, log_every: int, checkpoint_every: int
) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config (add the algorithm's own): CPU-safe
    precision, no TRL reporting (``Run.log`` does it: see the module docstring), checkpoints into
    ``where`` (a run's ``checkpoint/`` or a folder)."""
    out = where.path("checkpoint") if isinstance(where, Run) else where
    return {
        "output_dir": str(out),
        "seed": seed,
        "logging_steps": log_every,
        "logging_first_step": True,
        "save_strategy": "steps" if checkpoint_every else "no",
        "save_steps": checkpoint_every or 500,
        "save_total_limit": 1,
        "report_to": [],  # trackers get run_callback's scalars through Run.log instead
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": not sys.stderr.isatty(),
        "dataloader_num_workers": 0,
    }


def run_callback(run: Run, metrics: Mapping[str, str]) -> TrainerCallback:
    """A callback logging TRL's keys ``metrics`` (TRL key -> our name) at each logged step (not
    the end-of-training summary line) and marking each saved checkpoint."""

    class _ToRun(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            row = {ours: logs[k] for k, ours in metrics.items() if logs and k in logs}
            if row and "train_runtime" not in logs:
                run.log(state.global_step, row)

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            # run_stage keeps (and resumes) a folder only when checkpoint/step.json exists
            atomic_write_json(args.output_dir + "/step.json", {"step": state.global_step})

    return _ToRun()
