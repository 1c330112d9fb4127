"""Stage ``rl``: optimise a policy against any overseer under an explicit KL penalty to a frozen
reference, with TRL's ``GRPOTrainer`` (or ``RLOOTrainer``), and measure gold beside the proxy.

``superalign rl model=runs/sft-1a2b overseer=rater beta=0.05 max_steps=200`` loads the policy and
a separate frozen **reference** (``reference``, default: a second copy of ``model``), and trains
on prompts from the task's train split. The reward is a plain callable
``reward(prompts, completions, **kwargs) -> list[float]`` around the overseer built by
:func:`~superalign.overseers.build.build_overseer`; the gold grader is never given to the
optimiser unless it *is* the overseer (``overseer=gold``).

KL (the leash): ``beta`` is set explicitly (TRL's GRPO default is 0, no reference at all).

- ``grpo``: the per-token k3 estimate ``exp(r) - r - 1`` (``r = log ref - log pi``) is added to
  the per-token loss with weight ``beta`` (TRL, ``_compute_loss``);
- ``rloo``: the sequence sum of k1 ``log pi - log ref`` is subtracted from the reward with
  weight ``beta`` (TRL, ``_generate_and_score_completions``).

TRL builds its reference from ``model.config._name_or_path``, which can be neither our reference
nor loadable (a GGUF preset), so the trainer is made with ``beta=0`` (no reference loaded) and
then given ours: :func:`attach_reference` sets ``trainer.beta`` / ``args.beta`` and
``trainer.ref_model`` exactly as TRL's ``__init__`` would have (fused LM head, accelerator
preparation).

Gold accounting (a ``TrainerCallback``, main process only): at step 0, every ``eval_every``
steps and at the end it samples **fresh** completions (temperature 1, the same seed each time)
of ``eval_n`` held-out **test** prompts from the current policy, and logs the proxy and gold
rewards, the sequence-level KL(policy || reference) with its 95% interval and the share of
completions truncated at ``max_new_tokens`` (all from :func:`~superalign.train.kl.kl_of_samples`,
the one KL measurement), the policy's entropy and length, and greedy gold accuracy. The
per-prompt proxy and gold rewards behind each row go to ``accounting.jsonl``. See
``docs/stages/rl.md`` for every metric.

TRL's checkpoints (weights, optimizer, scheduler, RNG) go under ``checkpoint/`` with a
``step.json`` marker, so a killed run resumes; ``model/`` at the end makes the run folder a
``load_model`` spec.

With ``lora=true`` only LoRA adapters train (:mod:`superalign.train.lora`; ``adapter/`` holds
them, ``model/`` the merged model). TRL's KL reference is then the policy with its adapter
disabled (the base, as loaded), unless ``reference`` names another model, which
:func:`attach_reference` attaches as without LoRA; gold accounting scores the loaded reference
copy either way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainerCallback

from superalign.config import set_threads
from superalign.evaluate import gold_eval
from superalign.models.load import load_model
from superalign.overseers import build_overseer
from superalign.runs import Run
from superalign.tasks import get_task
from superalign.tasks.base import Example, Task, split_examples
from superalign.train import lora
from superalign.train.kl import policy_kl
from superalign.train.trl_common import run_callback, trainer_args

TRL_METRICS: dict[str, str] = {
    "loss": "train/loss",
    "reward": "train/reward",
    "reward_std": "train/reward_std",
    "frac_reward_zero_std": "train/frac_reward_zero_std",
    "kl": "train/kl",
    "entropy": "train/entropy",
    "completions/mean_length": "train/length",
    "completions/clipped_ratio": "train/clipped_ratio",
    "clip_ratio/region_mean": "train/clip_ratio",
    "grad_norm": "optim/grad_norm",
    "learning_rate": "optim/lr",
}
"""TRL's per-step log keys -> our metric names (documented in ``docs/stages/rl.md``)."""


@dataclass
class RLConfig(lora.LoRAFields):
    """Optimise a policy against an overseer with a KL penalty to a frozen reference."""

    model: str = ""
    """Policy to train: a ``load_model`` spec (run folder, model folder, preset, .gguf, hub id).
    Required. A path is fingerprinted into the cache key."""
    reference: str = ""
    """Frozen reference of the KL penalty and of ``kl/ref``: a ``load_model`` spec with the
    policy's tokenizer. Empty: a separate copy of ``model`` as it was at step 0."""
    overseer: str = "gold"
    """The reward: ``gold``, ``rater``, ``judge``, ``reward_model`` or a reward_model run folder
    (see ``superalign.overseers.build``)."""
    overseer_options: dict[str, Any] = field(default_factory=dict)
    """Options of the overseer (e.g. ``{check_steps: 0, length_bias: 0.5}`` for ``rater``)."""
    task: str = "arithmetic"
    """Task family whose train split supplies the prompts and whose grader is gold."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family."""
    difficulties: list[int] = field(default_factory=lambda: [1])
    """Difficulty levels of the training and held-out prompts (split evenly across them)."""
    algorithm: Literal["grpo", "rloo"] = "grpo"
    """TRL trainer: ``grpo`` (group-normalised advantages, k3 KL in the loss) or ``rloo``
    (leave-one-out baseline, k1 KL in the reward)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """``grpo`` only: divide each group's centred rewards by the group's standard deviation
    (``group``, TRL's default), by the whole batch's (``batch``), or not at all (``none``, Dr.
    GRPO, Liu et al. 2025). Per-group scaling blows a reward model's tiny differences between
    near-identical completions up to full-size advantages."""
    beta: float = 0.05
    """KL coefficient (0: no penalty; ``kl/ref`` is still measured)."""
    n_train: int = 2000
    """Training prompts drawn from the train split (the pool the trainer samples from)."""
    max_steps: int = 200
    """Optimizer steps."""
    prompts_per_step: int = 8
    """Distinct prompts per optimizer step (over all processes)."""
    num_generations: int = 8
    """Completions sampled per prompt (the group of GRPO / RLOO); at least 2."""
    micro_batch_size: int = 0
    """Completions per forward and backward pass (per process): each step's ``prompts_per_step
    x num_generations`` completions are scored and trained on in passes of this size, their
    gradients accumulated into the one optimizer step (TRL's ``gradient_accumulation_steps``),
    so the update is the same up to float rounding. 0: all in one pass. Lower it to cut peak
    memory: the activations kept for the backward pass grow with it (SmolLM2, 64 completions:
    measured in docs/stages/rl.md)."""
    lr: float = 1e-5
    """Learning rate (AdamW, constant after ``warmup_steps``). Tiny ``pretrain`` models: ~1e-4
    (3e-4 and more lowered held-out gold in our runs)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    epsilon: float = 0.2
    """Clipping range of the probability ratio (PPO-style; inactive while updates stay on-policy,
    one optimizer step per generation batch, as here)."""
    max_new_tokens: int = 64
    """Generation limit, in training and in the gold accounting."""
    seed: int = 0
    """Seeds prompts, sampling, batch order and the held-out set."""
    log_every: int = 1
    """Optimizer steps between ``train/*`` log lines."""
    checkpoint_every: int = 50
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_every: int = 10
    """Optimizer steps between gold-accounting evaluations (also at step 0 and at the end)."""
    eval_n: int = 128
    """Held-out test prompts per gold-accounting evaluation."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError(
                "model is required: give a load_model spec, e.g. model=runs/sft-1a2b3c4d5e"
            )
        if self.algorithm not in ("grpo", "rloo"):
            raise ConfigError(f"algorithm must be 'grpo' or 'rloo', not {self.algorithm!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(
                f"scale_rewards must be 'group', 'batch' or 'none', not {self.scale_rewards!r}"
            )
        if self.algorithm == "rloo" and self.scale_rewards != "group":
            raise ConfigError(
                "scale_rewards applies to algorithm=grpo only (rloo does not scale its "
                "leave-one-out advantages); leave it at 'group' or set algorithm=grpo"
            )
        check_at_least(self, 1, "n_train", "max_steps", "prompts_per_step", "eval_every", "eval_n")
        check_at_least(self, 1, "log_every", "max_new_tokens")
        check_at_least(self, 0, "checkpoint_every", "warmup_steps", "threads", "micro_batch_size")
        completions = self.prompts_per_step * self.num_generations
        if self.micro_batch_size and completions % self.micro_batch_size:
            raise ConfigError(
                f"micro_batch_size must divide prompts_per_step x num_generations = {completions} "
                f"completions per step, not {self.micro_batch_size}: choose a divisor of "
                f"{completions}, or 0 for one pass"
            )
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations must be at least 2 (advantages compare completions of the same "
                f"prompt), not {self.num_generations}"
            )
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta must be a finite number >= 0, not {self.beta}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), not {self.lr}")
        if not 0 < self.epsilon < 1:
            raise ConfigError(f"epsilon must be in (0, 1), not {self.epsilon}")
        if not self.difficulties or len(set(self.difficulties)) < len(self.difficulties):
            raise ConfigError(
                f"difficulties must name distinct levels, at least one (e.g. [1]), not "
                f"{self.difficulties}"
            )
        lora.check(self)


def overseer_reward(overseer: Any) -> Callable[..., list[float]]:
    """The TRL reward callable ``reward(prompts, completions, **kwargs) -> list[float]`` of an
    overseer; TRL's extra keyword arguments (completion ids, trainer state...) are ignored."""

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(s) for s in overseer.score(list(prompts), list(completions))]

    reward.__name__ = "overseer"  # TRL names its per-function metrics after it
    return reward


# --- gold accounting --------------------------------------------------------------------------


ACCOUNTING_FILE = "accounting.jsonl"
"""Per-prompt proxy and gold rewards of every gold-accounting step (``{"step", "proxy",
"gold"}``, the held-out prompts in one fixed order), so that steps can be compared prompt by
prompt."""


def gold_accounting(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    task: Task,
    overseer: Any,
    examples: list[Example],
    *,
    seed: int,
    max_new_tokens: int,
    difficulties: list[int],
    items: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Proxy and gold reward, KL(policy || reference) (:func:`~superalign.train.kl.policy_kl`:
    ``kl/ref*``, ``policy/entropy``, ``policy/length``, ``policy/truncated``) of fresh samples
    (temperature 1, ``seed``) of the held-out ``examples``, and greedy gold accuracy. Given
    ``items``, its ``proxy`` and ``gold`` are set to the per-prompt rewards behind the means."""
    prompts = [ex.prompt for ex in examples]
    kl = policy_kl(policy, reference, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    texts = kl.samples.texts
    proxy = overseer.score(prompts, texts)
    gold = [task.grade(ex, c) for ex, c in zip(examples, texts)]
    if items is not None:
        items.update(proxy=[float(p) for p in proxy], gold=gold)
    out = {
        "reward/proxy": sum(proxy) / len(proxy),
        "reward/gold": sum(gold) / len(gold),
        **kl.metrics(),
    }
    correct, total = 0.0, 0
    for d in difficulties:
        n_d = sum(ex.difficulty == d for ex in examples)
        ev = gold_eval(
            policy, tokenizer, task, difficulty=d, n=n_d, seed=seed, max_new_tokens=max_new_tokens
        )
        if len(difficulties) > 1:
            out[f"eval/accuracy/d{d}"] = ev.accuracy
        correct, total = correct + ev.accuracy * ev.n, total + ev.n
    out["eval/accuracy"] = correct / max(total, 1)
    return out


# --- the stage ----------------------------------------------------------------------------------


def run(cfg: RLConfig, run: Run) -> dict[str, Any]:
    """Train with TRL against the overseer, with gold accounting; save ``model/``; summary."""
    set_threads(cfg.threads)
    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in cfg.difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(
            f"difficulties {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    train = split_examples(task, "train", cfg.n_train, cfg.difficulties, cfg.seed)
    held_out = split_examples(task, "test", cfg.eval_n, cfg.difficulties, cfg.seed)
    overseer = build_overseer(cfg.overseer, task, train + held_out, cfg.overseer_options)

    model, tokenizer, info = load_model(cfg.model)
    reference, ref_tokenizer, ref_info = load_model(cfg.reference or cfg.model)
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"reference {cfg.reference!r} has another tokenizer than model {cfg.model!r}; "
            "KL needs both to score the same tokens"
        )
    reference.requires_grad_(False).eval()

    def account(step: int) -> None:
        items: dict[str, list[float]] = {}
        row = gold_accounting(
            model,
            reference,
            tokenizer,
            task,
            overseer,
            held_out,
            seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens,
            difficulties=cfg.difficulties,
            items=items,
        )
        run.log(step, row)
        with open(run.path(ACCOUNTING_FILE), "a") as f:  # per-prompt rewards, one line a step
            f.write(json.dumps({"step": step, **items}) + "\n")

    resume_step = run.resume_step()
    done = {r["step"] for r in run.metrics() if "reward/gold" in r}  # a resumed run keeps its own
    trainer = _trainer(cfg, run, model, tokenizer, [ex.prompt for ex in train], overseer)
    model = trainer.model  # with lora, the PeftModel around the base
    attach_reference(trainer, lora.trl_reference(cfg, reference), cfg.beta)
    check_sampling(trainer, tokenizer)
    trainer.add_callback(GoldAccounting(account, cfg.eval_every, done))
    trainer.train(resume_from_checkpoint=resume_step is not None)

    adapters = lora.summary(model, cfg)
    if trainer.is_world_process_zero():
        lora.save(model, tokenizer, run)
    return {
        "task": cfg.task,
        "algorithm": cfg.algorithm,
        "model": info,
        "reference": ref_info,
        "overseer": cfg.overseer,
        "steps": trainer.state.global_step,
        "processes": trainer.accelerator.num_processes,
        **summarize(run.metrics()),
        **adapters,
        "model_dir": "model",
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Initial, final and peak gold and proxy, KL at the gold peak and at the end, from the
    gold-accounting rows of ``metrics.jsonl`` (empty on processes that did not evaluate)."""
    rows = sorted((r for r in rows if "reward/gold" in r), key=lambda r: r["step"])
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    peak = max(rows, key=lambda r: (r["reward/gold"], -r["step"]))  # earliest of equal peaks
    out: dict[str, Any] = {}
    for name in ("reward/gold", "reward/proxy", "eval/accuracy"):
        out[f"{name}_initial"] = first[name]
        out[f"{name}_final"] = last[name]
    out["reward/gold_peak"] = peak["reward/gold"]
    out["reward/gold_peak_step"] = peak["step"]
    out["reward/proxy_peak"] = max(r["reward/proxy"] for r in rows)
    out["kl/ref_at_gold_peak"] = peak["kl/ref"]
    out["kl/ref_final"] = last["kl/ref"]
    for name in ("kl/ref_low", "kl/ref_high", "policy/truncated"):  # rows from older runs lack them
        if name in last:
            out[f"{name}_final"] = last[name]
    if "kl/ref_n" in last:
        out["kl/ref_n"] = last["kl/ref_n"]
    return out


class GoldAccounting(TrainerCallback):
    """Calls ``account(step)`` at step 0, every ``every`` optimizer steps
    and at the end, on the main process only, once per step (``done``: steps already logged)."""

    def __init__(self, account: Callable[[int], None], every: int, done: set[int]) -> None:
        self.account, self.every, self.done = account, every, set(done)

    def _maybe(self, state: Any) -> None:
        if state.is_world_process_zero and state.global_step not in self.done:
            self.account(state.global_step)
            self.done.add(state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == 0:
            self._maybe(state)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step % self.every == 0:
            self._maybe(state)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._maybe(state)


# --- TRL --------------------------------------------------------------------------------------


def _trainer(
    cfg: RLConfig, run: Run, model: Any, tokenizer: Any, prompts: list[str], overseer: Any
) -> Any:
    """A TRL ``GRPOTrainer`` / ``RLOOTrainer`` with CPU-safe settings, logging into ``run`` and
    checkpointing in it. Built with ``beta=0``; :func:`attach_reference` sets the KL."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    completions = cfg.prompts_per_step * cfg.num_generations
    if completions % world:
        raise ValueError(
            f"prompts_per_step x num_generations = {completions} completions per step do not "
            f"split evenly over {world} processes"
        )
    micro = cfg.micro_batch_size or completions // world
    if (completions // world) % micro:
        raise ValueError(
            f"micro_batch_size={micro} does not divide the {completions // world} completions "
            "of each process"
        )
    config_cls, trainer_cls = {
        "grpo": (GRPOConfig, GRPOTrainer),
        "rloo": (RLOOConfig, RLOOTrainer),
    }[cfg.algorithm]
    own = {"scale_rewards": cfg.scale_rewards} if cfg.algorithm == "grpo" else {}
    args = config_cls(
        **own,
        **trainer_args(
            run, seed=cfg.seed, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every
        ),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // world // micro,  # one step per generation
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=1.0,  # the sampling distribution is the policy itself: what KL assumes
        top_p=1.0,
        top_k=0,
        beta=0.0,  # set by attach_reference, with our reference model
        epsilon=cfg.epsilon,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        disable_dropout=True,
    )
    return trainer_cls(
        model=model,
        reward_funcs=overseer_reward(overseer),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        callbacks=[run_callback(run, TRL_METRICS)],
        peft_config=lora.lora_config(cfg),
    )


def attach_reference(trainer: Any, reference: Any | None, beta: float) -> None:
    """Give ``trainer`` our frozen ``reference`` and KL coefficient, as TRL's ``__init__`` does
    for the reference it would load itself (its ``_name_or_path``) when ``beta != 0``. None
    (LoRA only): the KL coefficient alone; TRL then disables the adapter for the reference."""
    from trl.models import prepare_deepspeed, prepare_fsdp
    from trl.trainer.utils import add_fused_lm_head

    trainer.beta = trainer.args.beta = beta
    if beta == 0 or reference is None:
        return
    add_fused_lm_head(reference, temperature=trainer.temperature)
    if trainer.is_deepspeed_enabled:
        reference = prepare_deepspeed(reference, trainer.accelerator)
    elif trainer.is_fsdp_enabled:
        reference = prepare_fsdp(reference, trainer.accelerator)
    else:
        reference = trainer.accelerator.prepare_model(reference, evaluation_mode=True)
    trainer.ref_model = reference


def check_sampling(trainer: Any, tokenizer: Any) -> None:
    """Fail unless TRL samples from the unmodified policy (temperature 1, no top-k / top-p /
    min-p / repetition penalty) and stops at the tokenizer's EOS and pads with its pad token:
    the KL penalty and ``kl/ref`` assume completions are drawn from the policy itself."""
    g = trainer.generation_config
    plain = {"temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    changed = {k: getattr(g, k) for k, v in plain.items() if getattr(g, k) not in (None, v)}
    if g.top_k not in (None, 0):
        changed["top_k"] = g.top_k
    if g.min_p is not None:
        changed["min_p"] = g.min_p
    if changed or not g.do_sample:
        raise ValueError(f"TRL would not sample from the policy itself: {changed or 'greedy'}")
    if tokenizer.eos_token_id not in trainer.eos_token_ids:
        raise ValueError(f"TRL would not stop at EOS {tokenizer.eos_token_id}")
    if g.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"TRL pads with {g.pad_token_id}, the tokenizer with {tokenizer.pad_token_id}"
        )
