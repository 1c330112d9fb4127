"""Stage ``critic``: train the step critic (:mod:`superalign.overseers.critic`) on gold step labels.

``superalign critic model=runs/pretrain-1a2b`` fine-tunes ``model`` (usually the policy) and the
head of a :class:`~superalign.overseers.critic.StepHead` with binary cross-entropy on the
per-line labels (:func:`~superalign.overseers.critic.line_labels`) of ``n_train`` solutions of
the train split: samples of ``policy`` at ``temperature`` (natural mistakes), gold solutions with
one planted error (:func:`~superalign.tasks.arithmetic.corrupt`), and gold solutions. A
next-token loss on the gold solutions keeps the LM able to recompute a step (the critique's
"why"). The critiques of held-out test solutions of the same mix are scored against gold before
and after training (:func:`~superalign.overseers.critic.critique_quality`); ``model/`` (written
by :func:`~superalign.overseers.critic.save`) makes the run folder a
:class:`~superalign.overseers.critic.Critic`, and ``critiques.jsonl`` keeps every held-out
critique beside the gold one.

Metrics (``metrics.jsonl``; ``_before`` at step 0, plain at the last step):

- ``loss/train``: the training loss (``loss/step`` + ``lm_coef`` * ``loss/lm``); ``loss/step``:
  binary cross-entropy of the per-line P(wrong); ``loss/lm``: next-token loss on the gold
  solutions of the batch; ``optim/lr``: the LM's learning rate;
- ``critic/precision``: flags that point at a truly wrong location / flags;
- ``critic/recall``: flawed solutions whose flag points at a truly wrong location / flawed ones;
- ``critic/hallucination``: flags on fully correct solutions / fully correct solutions;
- ``critic/location_accuracy``: critiques whose location (a step, the answer line, or none)
  equals the gold critique's;
- ``critic/why``: flags on a truly wrong or missing step whose recomputed line is the right one;
- ``critic/line_auroc``: AUROC of the per-line P(wrong) against the per-line gold labels, with
  ``critic/line_auroc_low`` / ``_high`` (95% bootstrap over held-out solutions, each solution's
  lines resampled together) and its ``n``: ``critic/lines`` over ``critic/solutions``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from superalign.config import set_threads
from superalign.metrics import auroc_interval
from superalign.models.load import load_model
from superalign.models.sampling import sample
from superalign.overseers.critic import (
    Critic,
    Encoded,
    StepCritic,
    StepHead,
    critique_quality,
    encode_lines,
    gold_critique,
    line_labels,
    pack,
    save,
)
from superalign.runs import Run, atomic_write_text
from superalign.tasks import get_task, split_examples
from superalign.tasks.arithmetic import corrupt
from superalign.tasks.base import Example


@dataclass
class CriticConfig:
    """Train an arithmetic step critic (a process reward model) on gold per-step labels."""

    model: str = ""
    """Model to fine-tune into the critic (usually the policy): a ``load_model`` spec. Required.
    A path is fingerprinted into the cache key."""
    policy: str = ""
    """Model whose samples supply solutions with natural mistakes; empty: ``model``."""
    difficulties: list[int] = field(default_factory=lambda: [2])
    """Arithmetic levels of the problems (split evenly across them)."""
    n_train: int = 2000
    """Training solutions (each gives one labelled example per line)."""
    sampled_share: float = 0.5
    """Share of solutions sampled from ``policy`` at ``temperature``."""
    corrupted_share: float = 0.35
    """Share of solutions that are a gold one with one planted error; the rest are gold."""
    temperature: float = 1.5
    """Sampling temperature of ``policy`` (above 1: more mistakes to learn from)."""
    sample_max_new_tokens: int = 48
    """Generation limit of the sampled solutions."""
    epochs: float = 3.0
    """Passes over the solutions (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0: use ``epochs``."""
    batch_size: int = 32
    """Solutions per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate of the LM (AdamW, linear warm-up then linear decay to 0)."""
    head_lr: float = 1e-2
    """Peak learning rate of the linear head (same schedule)."""
    lm_coef: float = 0.5
    """Weight of the next-token loss on the batch's gold solutions, which keeps the LM able to
    recompute a step (the critique's "why"); 0: off."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    max_length: int = 128
    """Token limit of problem + solution (longer rows are cut; lines past it go unscored)."""
    threshold: float = 0.5
    """The trained critic flags a line when its P(wrong) exceeds this (saved with it)."""
    seed: int = 0
    """Seeds problems, sources, samples, planted errors, batch order and the held-out set."""
    log_every: int = 10
    """Optimizer steps between ``loss/*`` lines."""
    checkpoint_every: int = 200
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_n: int = 200
    """Held-out test solutions (same mix of sources) scored before and after training."""
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
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in (0, 1), not {getattr(self, name)}")
        if self.lm_coef < 0:
            raise ConfigError(f"lm_coef must be >= 0, not {self.lm_coef}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), not {self.threshold}")
        shares = (self.sampled_share, self.corrupted_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ConfigError(
                f"sampled_share and corrupted_share must be >= 0 and sum to at most 1, "
                f"not {self.sampled_share} and {self.corrupted_share}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, not {self.temperature}")
        if not self.difficulties:
            raise ConfigError("difficulties must name at least one level, e.g. [2]")

    def total_steps(self) -> int:
        """Optimizer steps of the run."""
        per_epoch = math.ceil(self.n_train / self.batch_size)
        return self.max_steps or max(1, math.ceil(self.epochs * per_epoch))


class Solutions(NamedTuple):
    """Solutions to critique, with their source (``sampled``, ``corrupted`` or ``gold``)."""

    examples: list[Example]
    completions: list[str]
    sources: list[str]


def solutions(cfg: CriticConfig, policy: Any, tokenizer: Any, split: str, n: int) -> Solutions:
    """``n`` problems of ``split`` with a solution each, from the mix of sources in ``cfg``."""
    task = get_task("arithmetic")
    examples = split_examples(task, split, n, cfg.difficulties, cfg.seed)
    rng = random.Random(f"critic:{split}:{cfg.seed}")
    sources = []
    for _ in examples:
        u = rng.random()
        sampled = u < cfg.sampled_share
        corrupted = cfg.sampled_share <= u < cfg.sampled_share + cfg.corrupted_share
        sources.append("sampled" if sampled else "corrupted" if corrupted else "gold")
    picked = [ex.prompt for ex, s in zip(examples, sources) if s == "sampled"]
    drawn = iter(
        sample(
            policy,
            tokenizer,
            picked,
            temperature=cfg.temperature,
            max_new_tokens=cfg.sample_max_new_tokens,
            seed=cfg.seed,
        ).texts
        if picked
        else []
    )
    completions = [
        next(drawn) if s == "sampled" else corrupt(ex, rng) if s == "corrupted" else ex.solution
        for ex, s in zip(examples, sources)
    ]
    return Solutions(examples, completions, sources)


class Row(NamedTuple):
    """A training solution: its tokens and lines (cut to ``max_length``), the gold label of each
    kept line (True = wrong), and whether it is a gold solution (next-token loss)."""

    enc: Encoded
    labels: list[bool]
    gold: bool


def encode_rows(cfg: CriticConfig, tokenizer: Any, data: Solutions) -> list[Row]:
    rows = []
    for ex, c, src in zip(*data):
        enc = encode_lines(tokenizer, ex.prompt, c, cfg.max_length)
        rows.append(Row(enc, line_labels(ex, c)[: len(enc.ends)], src == "gold"))
    return rows


def losses(net: StepHead, rows: list[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary cross-entropy of the lines' P(wrong), next-token loss on the gold solutions'
    tokens)."""
    b = pack([r.enc for r in rows], pad_id)
    logits, lm_logits = net(b)  # [B, L], [B, T, V]
    targets = torch.zeros(b.line_mask.shape)
    lm_mask = torch.zeros(b.ids.shape, dtype=torch.bool)
    for i, r in enumerate(rows):
        targets[i, : len(r.labels)] = torch.tensor(r.labels, dtype=torch.float)
        if r.gold and r.enc.starts:
            lm_mask[i, r.enc.starts[0] : len(r.enc.ids)] = True  # the solution's tokens
    step = F.binary_cross_entropy_with_logits(logits[b.line_mask], targets[b.line_mask])
    target = lm_mask[:, 1:]  # predict token t+1 from tokens <= t
    if not target.any():
        return step, step.new_zeros(())
    return step, F.cross_entropy(lm_logits[:, :-1][target].float(), b.ids[:, 1:][target])


def batch_order(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step``: epochs of a fresh permutation each, seeded by
    ``seed`` and the epoch (so a resumed run draws the same batches)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return perm[k * batch_size : (k + 1) * batch_size]


def _quality_metrics(critic: StepCritic, held: Solutions, suffix: str) -> dict[str, float]:
    prompts = [ex.prompt for ex in held.examples]
    crits = critic.critique(prompts, held.completions)
    q = critique_quality(crits, held.examples, held.completions)
    names = ("precision", "recall", "hallucination", "location_accuracy", "why")
    out = {f"critic/{k}{suffix}": getattr(q, k) for k in names}
    probs = critic.line_probs(prompts, held.completions)
    labels = [line_labels(ex, c) for ex, c in zip(held.examples, held.completions)]
    ys = [y for row in labels for y in row]
    ps = [p for row in probs for p in row]
    solution = [i for i, row in enumerate(labels) for _ in row]  # lines of one solution: a group
    est = auroc_interval([-p for p in ps], [float(not y) for y in ys], groups=solution)
    out[f"critic/line_auroc{suffix}"] = est.value
    out[f"critic/line_auroc_low{suffix}"] = est.low
    out[f"critic/line_auroc_high{suffix}"] = est.high
    out[f"critic/lines{suffix}"] = est.n
    out[f"critic/solutions{suffix}"] = est.n_groups
    return out


def train(cfg: CriticConfig, run: Run, net: StepHead, rows: list[Row], pad: int) -> int:
    """AdamW on the rows, resuming from the run's checkpoint; returns the steps done."""
    total = cfg.total_steps()
    opt = torch.optim.AdamW(
        [
            {"params": net.lm.parameters(), "lr": cfg.lr},
            {"params": net.head.parameters(), "lr": cfg.head_lr},
        ],
        weight_decay=0.0,
    )

    def schedule(t: int) -> float:
        if t < cfg.warmup_steps:
            return (t + 1) / (cfg.warmup_steps + 1)
        return max(0.0, (total - t) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = 0
    state = run.load_checkpoint()
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
    net.train()
    sums, n = {"loss/train": 0.0, "loss/step": 0.0, "loss/lm": 0.0}, 0
    for t in range(start, total):
        batch = [rows[i] for i in batch_order(len(rows), cfg.batch_size, t, cfg.seed)]
        step_loss, lm_loss = losses(net, batch, pad)
        loss = step_loss + cfg.lm_coef * lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        for k, v in zip(sums, (loss, step_loss, lm_loss)):
            sums[k] += v.item()
        done, n = t + 1, n + 1
        if done % cfg.log_every == 0 or done == total:
            lr = sched.get_last_lr()[0]
            run.log(done, {**{k: v / n for k, v in sums.items()}, "optim/lr": lr})
            sums, n = dict.fromkeys(sums, 0.0), 0
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "step": done}
            run.save_checkpoint({**state, "sched": sched.state_dict()}, done)
    net.eval()
    return total


def run(cfg: CriticConfig, run: Run) -> dict[str, Any]:
    """Build the labelled solutions, evaluate, train, evaluate again, save ``model/``."""
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task = get_task("arithmetic")
    bad = [d for d in cfg.difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(f"difficulties {bad} do not exist; arithmetic has {task.difficulties}")
    lm, tokenizer, info = load_model(cfg.model)
    policy, policy_tok, policy_info = (
        load_model(cfg.policy) if cfg.policy else (lm, tokenizer, info)
    )
    lm.eval()
    train_set = solutions(cfg, policy, policy_tok, "train", cfg.n_train)
    held = solutions(cfg, policy, policy_tok, "test", cfg.eval_n)
    del policy
    rows = encode_rows(cfg, tokenizer, train_set)
    critic = Critic(StepHead(lm), tokenizer, cfg.threshold, max_length=cfg.max_length, info=info)

    before = {k: v for r in run.metrics() if r["step"] == 0 for k, v in r.items() if "_before" in k}
    if not before:  # a resumed run keeps its own
        before = _quality_metrics(critic, held, "_before")
        run.log(0, before)
    steps = train(cfg, run, critic.net, rows, tokenizer.pad_token_id)
    after = _quality_metrics(critic, held, "")
    run.log(steps, after)

    crits = critic.critique([ex.prompt for ex in held.examples], held.completions)
    probs = critic.line_probs([ex.prompt for ex in held.examples], held.completions)
    lines = [
        json.dumps(
            {
                "prompt": ex.prompt,
                "completion": c,
                "source": s,
                "gold": task.grade(ex, c),
                "gold_critique": gold_critique(ex, c).text,
                "gold_step": gold_critique(ex, c).step,
                "critique": k.text,
                "step": k.step,
                "line_probs": [round(p, 4) for p in pr],
            }
        )
        for ex, c, s, k, pr in zip(held.examples, held.completions, held.sources, crits, probs)
    ]
    atomic_write_text(run.path("critiques.jsonl"), "\n".join(lines) + "\n")
    save(critic, run.path("model"))
    metrics = run.metrics()
    first = next((r for r in metrics if "loss/step" in r), {})
    last = next((r for r in reversed(metrics) if "loss/step" in r), {})
    flawed = sum(gold_critique(ex, c).step is not None for ex, c in zip(*train_set[:2]))
    return {
        "model": info,
        "policy": policy_info,
        "kind": "step_classifier",
        "n_train": len(rows),
        "train_flawed_share": flawed / len(rows),
        "steps": steps,
        **{f"{k}_first": first.get(k) for k in ("loss/step", "loss/lm")},
        **{f"{k}_final": last.get(k) for k in ("loss/step", "loss/lm")},
        **before,
        **after,
        "model_dir": "model",
    }
