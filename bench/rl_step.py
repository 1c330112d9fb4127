"""Benchmark: one RL optimizer step of the ``rl`` stage's trainer (TRL GRPO) against a bare
PyTorch GRPO step, same model, same batch, same process.

Both steps: sample ``prompts x generations`` completions (temperature 1, at most
``max_new_tokens``), score them with the gold overseer, form group-normalised advantages, compute
reference log-probs, and take one AdamW step on the clipped-ratio loss plus ``beta`` times the
per-token k3 KL to the frozen reference. The bare step samples with
:func:`superalign.models.sampling.sample` and differentiates
:func:`superalign.models.sampling.completion_logprobs`; the TRL step is
``trainer.training_step`` + ``optimizer.step`` of the trainer the stage builds
(``superalign.train.rl._trainer``), generation with ``model.generate`` included.

Target: TRL's step at most 1.3x the bare step. Prints the median over ``repeats`` steps of each
(interleaved, after one warm-up step each) and the ratio; a figure, not a timed assertion.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rl_step.py [MODEL] [--threads 1] [--repeats 5]

MODEL is a ``load_model`` spec (default: ``$SUPERALIGN_BENCH_MODEL``, else a tiny arithmetic
model pretrained here in ~1 min).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from superalign.config import load_config
from superalign.models.load import load_model
from superalign.models.sampling import completion_logprobs, sample
from superalign.overseers import build_overseer
from superalign.runs import Run
from superalign.tasks import get_task
from superalign.train.rl import RLConfig, _attach_reference, _trainer, split_examples

TARGET = 1.3


def grpo_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4), rewards [prompts * group] in prompt-major order."""
    r = rewards.view(-1, group)  # [prompts, group]
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()


def bare_step(policy, reference, tokenizer, optimizer, overseer, prompts, cfg) -> None:  # noqa: ANN001
    """One GRPO step in plain PyTorch: sample, score, advantages, loss, AdamW."""
    rows = [p for p in prompts for _ in range(cfg.num_generations)]
    s = sample(policy, tokenizer, rows, max_new_tokens=cfg.max_new_tokens, temperature=1.0)
    rewards = torch.tensor(overseer.score(rows, s.texts), dtype=torch.float32)
    adv = grpo_advantages(rewards, cfg.num_generations)  # [B]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        ref = completion_logprobs(reference, s.prompt_ids, s.completion_ids, pad)
    policy.train()
    new = completion_logprobs(policy, s.prompt_ids, s.completion_ids, pad)
    old = [torch.tensor(lp) for lp in s.logprobs]
    loss, tokens = 0.0, 0
    for i in range(len(rows)):  # per sequence: [T_i]
        ratio = torch.exp(new[i] - old[i])
        clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon)
        pg = -torch.min(ratio * adv[i], clipped * adv[i])
        r = ref[i] - new[i]
        k3 = torch.exp(r) - r - 1
        loss = loss + (pg + cfg.beta * k3).sum()
        tokens += len(new[i])
    (loss / max(tokens, 1)).backward()  # DAPO-style: mean over all tokens of the batch
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trl_step(trainer, batch) -> None:  # noqa: ANN001
    """One optimizer step of the TRL trainer on ``batch`` (generation included)."""
    trainer.model.train()
    trainer.training_step(trainer.model, batch, None)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def _tiny_model(root: str) -> str:
    from superalign.models.pretrain import PretrainConfig
    from superalign.stages import execute

    overrides = ["corpus_size=2000", "steps=300", "batch_size=32", "eval_n=8", "threads=1"]
    overrides += ["eval_difficulties=[1]", "task_options.default_levels=[1]"]
    return str(execute("pretrain", load_config(PretrainConfig, None, overrides), root=root).dir)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=os.environ.get("SUPERALIGN_BENCH_MODEL"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        spec = a.model or _tiny_model(tmp)
        cfg = load_config(
            RLConfig,
            None,
            [
                f"model={spec}",
                f"prompts_per_step={a.prompts}",
                f"num_generations={a.generations}",
                f"max_new_tokens={a.max_new_tokens}",
                "lr=1e-5",
                "checkpoint_every=0",
                f"threads={a.threads}",
            ],
        )
        task = get_task(cfg.task)
        train = split_examples(task, "train", 512, cfg.difficulties, cfg.seed)
        overseer = build_overseer("gold", task, train)
        prompts = [ex.prompt for ex in train]

        trl_model, tokenizer, _ = load_model(spec)
        trl_ref, _, _ = load_model(spec)
        run = Run(Path(tmp) / "bench-run", "rl", {})
        run.dir.mkdir()
        trainer = _trainer(cfg, run, trl_model, tokenizer, prompts, overseer)
        _attach_reference(trainer, trl_ref.requires_grad_(False).eval(), cfg.beta)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
        batches = iter(trainer.get_train_dataloader())

        policy, _, _ = load_model(spec)
        reference, _, _ = load_model(spec)
        reference.requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)

        times: dict[str, list[float]] = {"trl": [], "bare": []}
        for i in range(a.repeats + 1):  # the first of each is a warm-up
            start = time.perf_counter()
            trl_step(trainer, next(batches))
            t_trl = time.perf_counter() - start
            chunk = prompts[(i * cfg.prompts_per_step) % 256 :][: cfg.prompts_per_step]
            start = time.perf_counter()
            bare_step(policy, reference, tokenizer, optimizer, overseer, chunk, cfg)
            t_bare = time.perf_counter() - start
            if i:
                times["trl"].append(t_trl)
                times["bare"].append(t_bare)
    trl, bare = statistics.median(times["trl"]), statistics.median(times["bare"])
    print(
        f"one GRPO step: {cfg.prompts_per_step} prompts x {cfg.num_generations} generations, "
        f"<= {cfg.max_new_tokens} new tokens, {a.threads} thread(s), median of {a.repeats}"
    )
    print(f"{'implementation':<36}{'seconds':>10}")
    print(f"{'TRL GRPOTrainer (stage rl)':<36}{trl:>10.3f}")
    print(f"{'bare PyTorch (bench/rl_step.py)':<36}{bare:>10.3f}")
    print(f"ratio TRL / bare: {trl / bare:.2f} (target <= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
