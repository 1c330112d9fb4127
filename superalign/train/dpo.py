"""Stage ``dpo``: direct preference optimization on preference pairs with TRL's ``DPOTrainer``.

``superalign dpo model=runs/sft-1a2b preferences=runs/preferences-3c4d beta=0.1`` loads a policy
(any :func:`~superalign.models.load.load_model` spec) and a frozen reference (``reference``, by
default a second copy of ``model``), reads the ``train`` pairs of a preferences run folder
(:func:`superalign.train.preferences.read_preferences`) and trains the policy so that its
implicit reward ``beta * log(pi(y|x) / ref(y|x))`` ranks ``chosen`` above ``rejected``
(Rafailov et al. 2023; ``loss_type`` picks TRL's variant). Pairs are used as labelled: DPO takes
hard labels, so ``p_chosen`` is not used (``loss_type=robust`` with ``label_smoothing`` models a
known label-flip rate instead). Completions are TRL prompt/chosen/rejected rows; TRL appends
the EOS token to each completion, as SFT does.

Before and after training it measures held-out gold accuracy (greedy, as :mod:`sft` does) and
the implicit reward's ranking of the ``test`` pairs; after training, the KL of the policy from
the reference on fresh samples from the test pairs' prompts. ``model/`` makes the run folder a
``load_model`` spec for the next stage. TRL's resumable checkpoints go to ``checkpoint/`` with a
``step.json`` marker, as in :mod:`superalign.train.sft`.

With ``lora=true`` only LoRA adapters train (:mod:`superalign.train.lora`; ``adapter/`` holds
them, ``model/`` the merged model), and TRL's reference is the policy with its adapter disabled,
i.e. ``model`` as loaded (a ``reference`` you name is used as named); the evaluation still scores
the policy against a loaded copy of the reference.

Metrics (``metrics.jsonl``):

- ``loss/train``: TRL's DPO loss averaged over the last ``log_every`` optimizer steps;
- ``optim/lr``: learning rate at that step;
- ``train/rewards/chosen``, ``train/rewards/rejected``: mean implicit reward
  ``beta * (log pi - log ref)`` (summed over completion tokens) of the chosen and rejected
  completions of the training batches;
- ``train/rewards/margins``: mean chosen minus rejected implicit reward;
- ``train/rewards/accuracies``: share of training pairs whose chosen reward is strictly higher;
- ``train/logps/chosen``, ``train/logps/rejected``: mean policy log-prob (nats, summed over
  completion tokens) of the chosen and rejected completions;
- ``eval/accuracy_before/d{k}``, ``eval/accuracy/d{k}``: gold accuracy of greedy completions on
  ``eval_n`` held-out test problems at difficulty k, before (step 0) and after training;
- ``eval/pref_accuracy_before``, ``eval/pref_accuracy``: share of ``test`` pairs whose implicit
  reward ranks ``chosen`` above ``rejected`` (ties count half: 0.5 when policy = reference);
- ``eval/pref_margin_before``, ``eval/pref_margin``: mean implicit-reward margin on test pairs;
- ``eval/pref_gold_accuracy_before``, ``eval/pref_gold_accuracy``: as ``eval/pref_accuracy``,
  against gold instead of the file's labels (test pairs whose two gold scores differ);
- ``kl/ref``, ``kl/ref_k1``, ``kl/ref_low``, ``kl/ref_high``, ``kl/ref_n``: KL(policy ||
  reference) on ``kl_n`` completions sampled (temperature 1) from the test pairs' prompts: mean
  k3, mean k1, the 95% interval of the k3 mean (nats per sequence) and the completions counted,
  by :func:`~superalign.train.kl.policy_kl`, the one KL measurement;
- ``policy/entropy``, ``policy/length``, ``policy/truncated``: mean ``-sum log pi``, mean token
  count of those samples and the share cut at ``max_new_tokens``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from superalign.config import set_threads
from superalign.evaluate import gold_eval_by_difficulty
from superalign.models.load import load_model
from superalign.models.sampling import token_logprobs
from superalign.runs import Run
from superalign.tasks import get_task, split_examples
from superalign.train import lora
from superalign.train.kl import policy_kl
from superalign.train.preferences import read_preferences
from superalign.train.trl_common import LOSS_AND_LR, run_callback, trainer_args

LossType = Literal["sigmoid", "hinge", "ipo", "robust"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "robust")

TRL_METRICS = {
    "rewards/chosen": "train/rewards/chosen",
    "rewards/rejected": "train/rewards/rejected",
    "rewards/margins": "train/rewards/margins",
    "rewards/accuracies": "train/rewards/accuracies",
    "logps/chosen": "train/logps/chosen",
    "logps/rejected": "train/logps/rejected",
}
"""TRL's DPO log keys -> our metric names."""


@dataclass
class DPOStageConfig(lora.LoRAFields):
    """Train a policy on preference pairs with DPO against a frozen reference."""

    model: str = ""
    """Policy to train: a ``load_model`` spec (run folder, model folder, preset, .gguf, hub id).
    Required."""
    preferences: str = ""
    """A finished ``preferences`` run folder (or its ``preferences.jsonl``). Required."""
    reference: str = ""
    """Frozen reference model (a ``load_model`` spec); empty: a second copy of ``model``."""
    task: str = "arithmetic"
    """Task family of the held-out gold evaluation."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family (e.g. ``{n_entities: 40}`` for facts)."""
    beta: float = 0.1
    """Strength of the pull to the reference: the implicit reward is beta * log(pi / ref)
    (for ``ipo``: the regularisation parameter tau)."""
    loss_type: LossType = "sigmoid"
    """TRL loss: ``sigmoid`` (DPO), ``hinge`` (SLiC), ``ipo`` (IPO, length-normalised) or
    ``robust`` (robust DPO for labels flipped with probability ``label_smoothing``)."""
    label_smoothing: float = 0.0
    """``robust`` only: assumed probability that a pair's label is flipped, in [0, 0.5)."""
    sft_weight: float = 0.0
    """Weight of an added negative log-likelihood of the chosen completions (mean per token;
    TRL's ``sft`` loss; RPO, Pang et al. 2024). 0: pure ``loss_type``."""
    n_train: int = 0
    """Training pairs drawn (seeded) from the file's train split; 0: all of them."""
    epochs: float = 1.0
    """Passes over the pairs (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0: use ``epochs``."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    lr: float = 1e-5
    """Peak learning rate (AdamW, linear decay to 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_length: int = 256
    """Prompt + completion are cut to this many tokens."""
    seed: int = 0
    """Seeds the pair sample, the batch order, the evaluation sample and the KL samples."""
    log_every: int = 10
    """Optimizer steps between ``loss/train`` log lines."""
    checkpoint_every: int = 200
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_n: int = 200
    """Held-out test problems per difficulty for gold accuracy, before and after training."""
    eval_difficulties: list[int] = field(default_factory=lambda: [1, 2])
    """Difficulties of the gold evaluation (must exist in the task)."""
    kl_n: int = 128
    """Completions sampled from the test pairs' prompts for ``kl/ref`` (0: skip)."""
    max_new_tokens: int = 64
    """Generation limit for the evaluation and the KL samples."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError("model is required: give a load_model spec, e.g. model=runs/sft-1a2b")
        if not self.preferences:
            raise ConfigError(
                "preferences is required: give a preferences run folder, "
                "e.g. preferences=runs/preferences-1a2b"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, not {self.loss_type!r}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be positive, not {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), not {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "robust":
            raise ConfigError("label_smoothing applies to loss_type=robust only")
        if self.sft_weight < 0:
            raise ConfigError(f"sft_weight must be at least 0, not {self.sft_weight}")
        check_at_least(self, 1, "batch_size", "eval_n", "log_every", "max_length", "max_new_tokens")
        check_at_least(
            self, 0, "n_train", "max_steps", "checkpoint_every", "warmup_steps", "kl_n", "threads"
        )
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive when max_steps is 0, not {self.epochs}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), not {self.lr}")
        lora.check(self)


# --- pairs and the implicit reward ---------------------------------------------------------------


def training_pairs(cfg: DPOStageConfig) -> list[dict[str, Any]]:
    """The file's train pairs, or a seeded sample of ``n_train`` of them."""
    rows = read_preferences(cfg.preferences, "train")
    if not rows:
        raise ValueError(f"{cfg.preferences} holds no train pairs")
    if cfg.n_train and cfg.n_train < len(rows):
        rows = random.Random(cfg.seed).sample(rows, cfg.n_train)
    return rows


def completion_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as TRL tokenizes a non-conversational pair: EOS appended,
    ``prompt + completion`` tokenized whole and split where it diverges from the prompt alone."""
    eos = tokenizer.eos_token
    text = completion if completion.endswith(eos) else completion + eos
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + text)["input_ids"]
    cut = 0
    while cut < min(len(prompt_ids), len(full)) and prompt_ids[cut] == full[cut]:
        cut += 1
    return full[:cut], full[cut:]


def sequence_logps(
    model: Any, tokenizer: Any, prompts: list[str], completions: list[str]
) -> list[float]:
    """log p(completion + EOS | prompt) under ``model``, summed over tokens, per pair."""
    split = [completion_ids(tokenizer, p, c) for p, c in zip(prompts, completions)]
    rows = token_logprobs(
        model, [p for p, _ in split], [c for _, c in split], pad_id=tokenizer.pad_token_id
    )
    return [sum(r) for r in rows]


def implicit_rewards(
    policy: Any, reference: Any, tokenizer: Any, pairs: list[dict[str, Any]], beta: float
) -> tuple[list[float], list[float]]:
    """``beta * log(pi / ref)`` of each pair's chosen and rejected completion."""
    prompts = [r["prompt"] for r in pairs]

    def reward(key: str) -> list[float]:
        completions = [r[key] for r in pairs]
        pi = sequence_logps(policy, tokenizer, prompts, completions)
        ref = sequence_logps(reference, tokenizer, prompts, completions)
        return [beta * (a - b) for a, b in zip(pi, ref)]

    return reward("chosen"), reward("rejected")


def ranking_accuracy(better: list[float], worse: list[float]) -> float:
    """Share of pairs with ``better > worse``, ties counted half."""
    wins = [1.0 if b > w else 0.5 if b == w else 0.0 for b, w in zip(better, worse)]
    return sum(wins) / len(wins)


def preference_eval(
    policy: Any, reference: Any, tokenizer: Any, pairs: list[dict[str, Any]], beta: float
) -> dict[str, float]:
    """Implicit-reward ranking of held-out pairs: against their labels and against gold."""
    if not pairs:
        return {}
    chosen, rejected = implicit_rewards(policy, reference, tokenizer, pairs, beta)
    out = {
        "pref_accuracy": ranking_accuracy(chosen, rejected),
        "pref_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(pairs),
    }
    graded = [
        i
        for i, r in enumerate(pairs)
        if r["gold_chosen"] is not None
        and r["gold_rejected"] is not None
        and r["gold_chosen"] != r["gold_rejected"]
    ]
    if graded:
        gold_first = [pairs[i]["gold_chosen"] > pairs[i]["gold_rejected"] for i in graded]
        better = [chosen[i] if g else rejected[i] for i, g in zip(graded, gold_first)]
        worse = [rejected[i] if g else chosen[i] for i, g in zip(graded, gold_first)]
        out["pref_gold_accuracy"] = ranking_accuracy(better, worse)
    return out


def label_gold_agreement(pairs: list[dict[str, Any]]) -> float | None:
    """Share of pairs (with two different gold scores) whose label agrees with gold."""
    graded = [
        r["gold_chosen"] > r["gold_rejected"]
        for r in pairs
        if r["gold_chosen"] is not None
        and r["gold_rejected"] is not None
        and r["gold_chosen"] != r["gold_rejected"]
    ]
    return sum(graded) / len(graded) if graded else None


# --- KL to the reference -------------------------------------------------------------------------


def kl_to_reference(
    policy: Any, reference: Any, tokenizer: Any, prompts: list[str], cfg: DPOStageConfig
) -> dict[str, float]:
    """``kl/ref*`` and ``policy/*`` of :func:`~superalign.train.kl.policy_kl` on fresh samples
    of ``prompts``."""
    kl = policy_kl(
        policy, reference, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
    )
    return kl.metrics()


def kl_prompts(cfg: DPOStageConfig, test_pairs: list[dict[str, Any]], task: Any) -> list[str]:
    """``kl_n`` held-out prompts: the test pairs' distinct prompts (cycled), else the task's
    test split."""
    pool = list(dict.fromkeys(r["prompt"] for r in test_pairs))
    if not pool:
        pool = [ex.prompt for ex in split_examples(task, "test", cfg.kl_n, [None], cfg.seed)]
    return [pool[i % len(pool)] for i in range(cfg.kl_n)]


# --- the stage -----------------------------------------------------------------------------------


def run(cfg: DPOStageConfig, run: Run) -> dict[str, Any]:
    """Evaluate, train with TRL's DPO, evaluate again, save ``model/``; returns the summary."""
    set_threads(cfg.threads)
    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in cfg.eval_difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(
            f"eval_difficulties {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    train_pairs = training_pairs(cfg)
    test_pairs = read_preferences(cfg.preferences, "test")
    model, tokenizer, info = load_model(cfg.model)
    reference, _, ref_info = load_model(cfg.reference or cfg.model)
    reference.requires_grad_(False)

    def evaluate(step: int, suffix: str) -> dict[str, float]:
        model.eval()
        tokenizer.padding_side = "left"  # generation pads on the left
        evals = gold_eval_by_difficulty(
            model,
            tokenizer,
            task,
            cfg.eval_difficulties,
            n=cfg.eval_n,
            seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens,
        )
        out = {f"eval/accuracy{suffix}/d{d}": ev.accuracy for d, ev in evals.items()}
        prefs = preference_eval(model, reference, tokenizer, test_pairs, cfg.beta)
        out.update({f"eval/{k}{suffix}": v for k, v in prefs.items()})
        run.log(step, out)
        return out

    resume_step = run.resume_step()
    before = {k: v for r in run.metrics() if r["step"] == 0 for k, v in r.items() if "_before" in k}
    if not before:  # a resumed run keeps its own
        before = evaluate(0, "_before")

    trainer = _trainer(cfg, run, model, reference, tokenizer, train_pairs)
    model = trainer.model  # with lora, the PeftModel around the base
    trainer.train(resume_from_checkpoint=resume_step is not None)
    steps = trainer.state.global_step

    after = evaluate(steps, "")
    if cfg.kl_n:
        model.eval()
        kl = kl_to_reference(model, reference, tokenizer, kl_prompts(cfg, test_pairs, task), cfg)
        run.log(steps, kl)
        after.update(kl)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    adapters = lora.summary(model, cfg)
    lora.save(model, tokenizer, run)
    losses = [r["loss/train"] for r in run.metrics() if "loss/train" in r]
    return {
        "task": cfg.task,
        "model": info,
        "reference": ref_info,
        "n_train": len(train_pairs),
        "n_test": len(test_pairs),
        "labels/gold_agreement": label_gold_agreement(train_pairs),
        "steps": steps,
        "loss/train_first": losses[0] if losses else None,
        "loss/train_final": losses[-1] if losses else None,
        **before,
        **after,
        **adapters,
        "model_dir": "model",
    }


def _trainer(
    cfg: DPOStageConfig,
    run: Run,
    model: Any,
    reference: Any,
    tokenizer: Any,
    pairs: list[dict[str, Any]],
) -> Any:
    """A TRL ``DPOTrainer`` with CPU-safe settings that logs into ``run`` and checkpoints in it.
    With LoRA and no ``reference`` named, TRL's reference is the policy with its adapter disabled
    (the weights of ``reference``, a copy of ``model``; the trainer holds no second model)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **trainer_args(
            run, seed=cfg.seed, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every
        ),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        beta=cfg.beta,
        loss_type=[cfg.loss_type, "sft"] if cfg.sft_weight else [cfg.loss_type],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None,
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.max_length,
    )
    rows = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs
    ]
    return DPOTrainer(
        model=model,
        ref_model=lora.trl_reference(cfg, reference),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[run_callback(run, {**LOSS_AND_LR, **TRL_METRICS})],
        peft_config=lora.lora_config(cfg),
    )
