"""Stage ``reward_model``: a Bradley-Terry reward model trained on preference pairs (TRL).

``superalign reward_model preferences=runs/preferences-1a2b model=runs/pretrain-3c4d`` reads the
train pairs of a ``preferences`` run folder and trains a scalar reward r(prompt, completion) with
TRL's ``RewardTrainer``, whose loss is ``mean(-log sigmoid(r(chosen) - r(rejected)))``
(:func:`superalign.train.losses.bradley_terry_loss`). Labels are taken as hard: ``p_chosen`` is
not used.

The model is a ``*ForSequenceClassification`` with one output: with ``size="policy"`` its
transformer is copied from ``model`` (any :func:`~superalign.models.load.load_model` spec) and
its ``score`` head is new; with ``size`` ``tiny``/``small``/``base`` it is a freshly initialised
:mod:`superalign.models.tiny` model of that size with ``model``'s tokenizer, so reward models of
several sizes can label or be optimised against the same data. ``config.pad_token_id`` is the
tokenizer's pad token: the model reads the reward at the last token that is not padding.

Data goes to TRL in its standard explicit-prompt preference format ``{"prompt", "chosen",
"rejected"}``: TRL 1.16 appends the EOS token to ``chosen`` and ``rejected`` (unless they end
with it), concatenates ``prompt + chosen`` and ``prompt + rejected``, tokenizes the texts, drops
pairs longer than ``max_length`` tokens and pads on the right
(``RewardTrainer._prepare_dataset``, ``DataCollatorForPreference``).
:class:`~superalign.overseers.reward_model.RewardModelOverseer` scores text exactly that way.

Evaluation (before and after training) on the held-out test pairs and on the training pairs:
how often the reward ranks ``chosen`` above ``rejected`` (agreement with the labelling overseer)
and, on pairs whose gold scores differ, how often it ranks the gold-better completion higher
(agreement with gold). ``model/`` (model + tokenizer) makes the run folder a reward-model spec
for ``overseer: <run folder>``. Resumable like ``sft``: TRL checkpoints in ``checkpoint/`` with
a ``step.json`` marker.

Metrics (``metrics.jsonl``):

- ``loss/train``: Bradley-Terry loss over the last ``log_every`` optimizer steps, as TRL logs it;
- ``optim/lr``: learning rate at that step;
- ``eval/accuracy``: share of test pairs with r(chosen) > r(rejected) (ties count half);
- ``eval/gold_accuracy``: on test pairs whose gold differs, share where the gold-better
  completion gets the higher reward (ties count half);
- ``eval/loss``: Bradley-Terry loss on the test pairs;
- ``train/accuracy``, ``train/gold_accuracy``, ``train/loss``: the same on the training pairs;
- each of the six with suffix ``_before`` (step 0): the same before training;
- ``eval/reward_mean``, ``eval/reward_std``: mean and standard deviation of the reward over all
  test completions (its scale, which sets the KL coefficient an RL stage needs);
- ``eval/pairs``, ``eval/gold_pairs``: the ``n`` behind ``eval/accuracy`` (test pairs) and
  ``eval/gold_accuracy`` (test pairs whose gold differs).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from superalign.config import set_threads
from superalign.models.load import load_model
from superalign.models.tiny import SIZES, n_params, tiny_config
from superalign.overseers.reward_model import reward_scores
from superalign.runs import Run, atomic_dir, read_json
from superalign.train.losses import bradley_terry_loss
from superalign.train.preferences import read_preferences
from superalign.train.trl_common import LOSS_AND_LR, run_callback, trainer_args


@dataclass
class RewardModelConfig:
    """Train a Bradley-Terry reward model on the pairs of a ``preferences`` run."""

    preferences: str = ""
    """A finished ``preferences`` run folder (or its ``preferences.jsonl``). Required; a path is
    fingerprinted into the cache key."""
    model: str = ""
    """``load_model`` spec the reward model starts from (with ``size=policy``) and whose
    tokenizer it uses (always), typically the policy's pretrain or sft run folder. Required."""
    size: Literal["policy", "tiny", "small", "base"] = "policy"
    """``policy``: initialise the transformer from ``model``, with a new score head;
    ``tiny``/``small``/``base``: a freshly initialised tiny Llama of that size."""
    n_train: int = 0
    """Use at most this many training pairs (a seeded draw, nested across n_train for one
    seed); 0: all."""
    epochs: float = 1.0
    """Passes over the training pairs (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0: use ``epochs``."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, linear decay to 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_length: int = 256
    """Pairs whose prompt + completion (+ EOS) exceeds this many tokens are dropped by TRL."""
    center_rewards_coefficient: float = 0.0
    """Adds this times mean((r_chosen + r_rejected)^2) to the loss, pulling rewards towards
    mean zero (TRL's option; 0: off)."""
    seed: int = 0
    """Seeds the training subset, a fresh model's weights, the score head and batch order."""
    log_every: int = 10
    """Optimizer steps between ``loss/train`` log lines."""
    checkpoint_every: int = 200
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_batch_size: int = 64
    """Sequences per forward pass when evaluating."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.preferences:
            raise ConfigError(
                "preferences is required: give a preferences run folder, "
                "e.g. preferences=runs/preferences-1a2b"
            )
        if not self.model:
            raise ConfigError(
                "model is required: the load_model spec of the policy whose tokenizer (and, with "
                "size=policy, weights) the reward model uses, e.g. model=runs/pretrain-1a2b"
            )
        if self.size not in ("policy", *SIZES):
            raise ConfigError(f"size must be one of policy, {', '.join(SIZES)}, not {self.size!r}")
        check_at_least(self, 1, "batch_size", "log_every", "max_length", "eval_batch_size")
        check_at_least(
            self, 0, "n_train", "max_steps", "checkpoint_every", "warmup_steps", "threads"
        )
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive when max_steps is 0, not {self.epochs}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), not {self.lr}")
        if self.center_rewards_coefficient < 0:
            raise ConfigError(
                f"center_rewards_coefficient must be >= 0, not {self.center_rewards_coefficient}"
            )


def training_pairs(cfg: RewardModelConfig) -> list[dict[str, Any]]:
    """The train pairs, at most ``n_train`` of them: the first ``n_train`` of a seeded shuffle,
    so a smaller ``n_train`` uses a subset of a larger one's pairs."""
    pairs = read_preferences(cfg.preferences, "train")
    if not pairs:
        raise ValueError(f"{cfg.preferences} holds no train pairs")
    random.Random(f"reward_model:{cfg.seed}").shuffle(pairs)
    return pairs[: cfg.n_train] if cfg.n_train else pairs


def build_reward_model(cfg: RewardModelConfig) -> tuple[Any, Any, dict[str, Any]]:
    """A one-output sequence-classification model and the policy's tokenizer (see the module
    docstring), with a record of how it was made."""
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    policy, tokenizer, info = load_model(cfg.model)
    torch.manual_seed(cfg.seed)  # the new score head (and a fresh model's weights)
    if cfg.size == "policy":
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        config._attn_implementation = policy.config._attn_implementation
        model = AutoModelForSequenceClassification.from_config(config)
        model.base_model.load_state_dict(policy.base_model.state_dict())
        how = {"init": "policy", "from": info}
    else:
        positions = getattr(policy.config, "max_position_embeddings", 256)
        config = tiny_config(cfg.size, tokenizer, max_positions=positions)
        config.num_labels = 1
        config._attn_implementation = "eager"  # faster than SDPA at these widths (see tiny.py)
        model = LlamaForSequenceClassification(config)
        how = {"init": "fresh", "size": cfg.size, "tokenizer_from": info}
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"  # as TRL's collator and the overseer pad
    model = model.to(policy.device)
    return model, tokenizer, {**how, "params": n_params(model)}


def pair_eval(
    model: Any, tokenizer: Any, pairs: list[dict[str, Any]], batch_size: int = 64
) -> dict[str, float | None]:
    """``accuracy``, ``gold_accuracy`` and ``loss`` of the reward on ``pairs`` (see the module
    docstring), plus ``reward_mean`` and ``reward_std`` over their completions."""
    if not pairs:
        empty = ("accuracy", "gold_accuracy", "loss", "reward_mean", "reward_std")
        return {**dict.fromkeys(empty), "pairs": 0, "gold_pairs": 0}
    prompts = [p["prompt"] for p in pairs]
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    r = torch.tensor(reward_scores(model, tokenizer, prompts + prompts, completions, batch_size))
    rc, rr = r[: len(pairs)], r[len(pairs) :]
    wins = [_win(c, j) for c, j in zip(rc.tolist(), rr.tolist())]  # ranks chosen first
    gold_wins = [  # ranks the gold-better one first
        w if p["gold_chosen"] > p["gold_rejected"] else 1 - w
        for w, p in zip(wins, pairs)
        if _gold_differs(p)
    ]
    return {
        "accuracy": sum(wins) / len(wins),
        "gold_accuracy": sum(gold_wins) / len(gold_wins) if gold_wins else None,
        "loss": float(bradley_terry_loss(rc, rr)),
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()) if len(r) > 1 else 0.0,
        "pairs": len(pairs),
        "gold_pairs": len(gold_wins),
    }


def _win(a: float, b: float) -> float:
    """1 if a > b, 0.5 on a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _gold_differs(pair: dict[str, Any]) -> bool:
    g, h = pair["gold_chosen"], pair["gold_rejected"]
    return g is not None and h is not None and g != h


def run(cfg: RewardModelConfig, run: Run) -> dict[str, Any]:
    """Evaluate, train with TRL, evaluate again, save ``model/``; returns the summary."""
    set_threads(cfg.threads)
    train = training_pairs(cfg)
    test = read_preferences(cfg.preferences, "test")
    model, tokenizer, record = build_reward_model(cfg)

    def evaluate(step: int, suffix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, pairs in (("eval", test), ("train", train)):
            ev = pair_eval(model, tokenizer, pairs, cfg.eval_batch_size)
            for k in ("accuracy", "gold_accuracy", "loss"):
                out[f"{name}/{k}{suffix}"] = ev[k]
            if name == "eval" and not suffix:
                out |= {"eval/reward_mean": ev["reward_mean"], "eval/reward_std": ev["reward_std"]}
                out |= {"eval/pairs": ev["pairs"], "eval/gold_pairs": ev["gold_pairs"]}
        run.log(step, out)
        return out

    resume_step = run.resume_step()
    before = {k: v for r in run.metrics() if r["step"] == 0 for k, v in r.items() if "_before" in k}
    if not before:  # a resumed run keeps its own
        before = evaluate(0, "_before")

    trainer = _trainer(cfg, run, model, tokenizer, train)
    trainer.train(resume_from_checkpoint=resume_step is not None)
    steps = trainer.state.global_step

    after = evaluate(steps, "")
    with atomic_dir(run.path("model")) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    losses = [r["loss/train"] for r in run.metrics() if "loss/train" in r]
    return {
        "reward_model": record,
        "preferences": _labeller(cfg.preferences),
        "n_train": len(train),
        "n_train_kept": len(trainer.train_dataset),  # after TRL's max_length filter
        "n_test": len(test),
        "steps": steps,
        "loss/train_first": losses[0] if losses else None,
        "loss/train_final": losses[-1] if losses else None,
        **before,
        **after,
        "model_dir": "model",
    }


def _labeller(preferences: str) -> dict[str, Any]:
    """What the preferences run says about its source and overseer (from its summary.json)."""
    path = Path(preferences)
    folder = path if path.is_dir() else path.parent
    try:
        summary = read_json(folder / "summary.json")
    except (OSError, ValueError):
        return {"path": str(path)}
    keys = ("source", "task", "overseer")
    return {"path": str(path), **{k: summary[k] for k in keys if k in summary}}


def _trainer(
    cfg: RewardModelConfig, run: Run, model: Any, tokenizer: Any, pairs: list[dict[str, Any]]
) -> Any:
    """A TRL ``RewardTrainer`` with CPU-safe settings that logs into ``run`` and checkpoints in
    it."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **trainer_args(
            run, seed=cfg.seed, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every
        ),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient or None,
    )
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[run_callback(run, LOSS_AND_LR)],
    )
