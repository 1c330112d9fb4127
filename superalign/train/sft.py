"""Stage ``sft``: supervised fine-tuning on trusted demonstrations with TRL's ``SFTTrainer``.

``superalign sft model=runs/pretrain-1a2b difficulties=[1,2]`` loads a model (any
:func:`~superalign.models.load.load_model` spec), draws ``n_train`` demonstrations from the task's
train split at the given difficulties, and fine-tunes on them in TRL's prompt-completion format
(``{"prompt": ex.prompt, "completion": ex.solution}``): the loss covers completion tokens only.
TRL 1.16 appends the tokenizer's EOS token to every completion that does not already end with it
(``SFTTrainer._prepare_dataset``, "Adding EOS"), so the model learns to stop after ``A: n``.

Held-out gold accuracy on the test split is measured before and after training with greedy
decoding, and ``model/`` (model + tokenizer, ``save_pretrained``) makes the run folder itself a
``load_model`` spec for the next stage. With ``lora=true`` only LoRA adapters train
(:mod:`superalign.train.lora`): ``adapter/`` holds them and ``model/`` the merged model.

TRL writes its resumable checkpoints (weights, optimizer, scheduler, RNG) under
``checkpoint/`` in the run folder, with a ``step.json`` marker, so a killed run resumes from the
last one and the folder is removed when the run finishes (see :mod:`superalign.runs`).

Metrics (``metrics.jsonl``):

- ``loss/train``: mean cross-entropy (nats/token) on completion tokens over the last
  ``log_every`` optimizer steps, as TRL logs it;
- ``optim/lr``: learning rate at that step;
- ``eval/accuracy_before/d{k}``: gold accuracy at difficulty k before training (step 0);
- ``eval/accuracy/d{k}``: gold accuracy at difficulty k after training;
- ``eval/loss_before/d{k}``, ``eval/loss/d{k}``: mean cross-entropy (nats/token) of the gold
  completions (with EOS) of the same held-out examples, before and after training. On tiny
  models it moves long before accuracy does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from superalign.config import set_threads
from superalign.evaluate import gold_eval_by_difficulty
from superalign.models.load import load_model
from superalign.runs import Run
from superalign.tasks import get_task
from superalign.train import lora
from superalign.train.trl_common import LOSS_AND_LR, run_callback, trainer_args


@dataclass
class SFTStageConfig(lora.LoRAFields):
    """Fine-tune a model on a task's demonstrations (prompt -> gold solution)."""

    model: str = ""
    """Model to fine-tune: a ``load_model`` spec (run folder, model folder, preset, .gguf, hub id).
    Required. A path is fingerprinted into the cache key."""
    task: str = "arithmetic"
    """Task family whose train split supplies the demonstrations."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family (e.g. ``{n_entities: 40}`` for facts)."""
    difficulties: list[int] = field(default_factory=lambda: [1, 2])
    """Difficulty levels the demonstrations are drawn from (split evenly across them)."""
    n_train: int = 2000
    """Number of demonstrations."""
    epochs: float = 1.0
    """Passes over the demonstrations (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0: use ``epochs``."""
    batch_size: int = 16
    """Demonstrations per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, linear decay to 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_length: int = 256
    """Prompt + completion are cut to this many tokens."""
    seed: int = 0
    """Seeds the demonstrations, the batch order and the held-out evaluation sample."""
    log_every: int = 10
    """Optimizer steps between ``loss/train`` log lines."""
    checkpoint_every: int = 200
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_n: int = 200
    """Held-out test examples per difficulty, before and after training."""
    eval_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulties to evaluate (must exist in the task)."""
    max_new_tokens: int = 64
    """Generation limit during evaluation."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError(
                "model is required: give a load_model spec, e.g. model=runs/pretrain-1a2b"
            )
        check_at_least(self, 1, "n_train", "batch_size", "eval_n", "log_every", "max_length")
        check_at_least(self, 0, "max_steps", "checkpoint_every", "warmup_steps", "threads")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive when max_steps is 0, not {self.epochs}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), not {self.lr}")
        if not self.difficulties:
            raise ConfigError("difficulties must name at least one level, e.g. [1, 2]")
        lora.check(self)


def demonstrations(cfg: SFTStageConfig, task: Any) -> list[dict[str, str]]:
    """``n_train`` prompt-completion rows from the train split, split evenly over difficulties."""
    rows = []
    k = len(cfg.difficulties)
    for i, d in enumerate(cfg.difficulties):
        n = cfg.n_train // k + (i < cfg.n_train % k)
        rows += [
            {"prompt": ex.prompt, "completion": ex.solution}
            for ex in task.examples("train", n, d, seed=cfg.seed)
        ]
    return rows


@torch.no_grad()
def completion_loss(model: Any, tokenizer: Any, examples: list[Any], batch_size: int = 64) -> float:
    """Mean cross-entropy (nats/token) of ``ex.solution + EOS`` given ``ex.prompt``, as SFT
    trains it: the prompt's tokens are context only."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        seqs, starts = [], []
        for ex in chunk:
            prompt = tokenizer(ex.prompt)["input_ids"]
            full = tokenizer(ex.prompt + ex.solution + tokenizer.eos_token)["input_ids"]
            seqs.append(full)
            starts.append(len(prompt))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)  # [batch, width]
        for j, (s, start) in enumerate(zip(seqs, starts)):
            ids[j, : len(s)] = torch.tensor(s)
            labels[j, start : len(s)] = ids[j, start : len(s)]
        mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels[:, 1:].flatten().to(model.device),
            ignore_index=-100,
            reduction="sum",
        )
        total += nll.item()
        count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def run(cfg: SFTStageConfig, run: Run) -> dict[str, Any]:
    """Evaluate, fine-tune with TRL, evaluate again, save ``model/``; returns the summary."""
    set_threads(cfg.threads)
    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in [*cfg.difficulties, *cfg.eval_difficulties] if d not in task.difficulties]
    if bad:
        raise ValueError(
            f"difficulties {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    model, tokenizer, info = load_model(cfg.model)

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
        out = {}
        for d, ev in evals.items():
            out[f"eval/accuracy{suffix}/d{d}"] = ev.accuracy
            out[f"eval/loss{suffix}/d{d}"] = completion_loss(model, tokenizer, ev.examples)
        run.log(step, out)
        return out

    resume_step = run.resume_step()
    before = {
        k: v for r in run.metrics() if r["step"] == 0 for k, v in r.items() if "_before/" in k
    }
    if len(before) < 2 * len(cfg.eval_difficulties):  # a resumed run keeps its own
        before = evaluate(0, "_before")

    trainer = _trainer(cfg, run, model, tokenizer, demonstrations(cfg, task))
    model = trainer.model  # with lora, the PeftModel around the base
    trainer.train(resume_from_checkpoint=resume_step is not None)
    steps = trainer.state.global_step

    after = evaluate(steps, "")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    adapters = lora.summary(model, cfg)
    lora.save(model, tokenizer, run)
    losses = [r["loss/train"] for r in run.metrics() if "loss/train" in r]
    return {
        "task": cfg.task,
        "model": info,
        "n_train": cfg.n_train,
        "steps": steps,
        "loss/train_first": losses[0] if losses else None,
        "loss/train_final": losses[-1] if losses else None,
        **before,
        **after,
        **adapters,
        "model_dir": "model",
    }


def _trainer(
    cfg: SFTStageConfig, run: Run, model: Any, tokenizer: Any, rows: list[dict[str, str]]
) -> Any:
    """A TRL ``SFTTrainer`` with CPU-safe settings that logs into ``run`` and checkpoints in it."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
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
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[run_callback(run, LOSS_AND_LR)],
        peft_config=lora.lora_config(cfg),
    )
