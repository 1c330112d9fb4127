"""``superalign bench`` (= ``make bench``): the performance figures, printed as one table.

Every timed row is measured beside a reference timed in the same process and run, and reported
as a ratio to it, so the figures compare across machines:

- **generation**: completion tokens per second of :func:`superalign.models.sampling.sample`
  (temperature 1, per-token log-probs recorded) against Hugging Face ``model.generate`` sampling
  the same prompts with the same model (ratio = ours / HF, higher is better);
- **RL step**: one optimizer step of the ``rl`` stage's TRL GRPO trainer against the bare
  PyTorch GRPO step of :func:`bare_grpo_step` (ratio = TRL / bare, target <= 1.3;
  ``bench/rl_step.py`` prints the same comparison alone);
- **demo**: ``superalign demo`` end to end in a subprocess, into a fresh runs folder, its wall
  time against the 10-minute budget and its peak resident memory (``--quick`` skips it).

Medians over ``--repeats`` interleaved repetitions after one warm-up. Figures, never timed
assertions. Imports of torch and the stages happen inside the functions, so the CLI stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

DEMO_BUDGET_S = 600.0
RL_TARGET = 1.3


class BenchRow(NamedTuple):
    """One line of the table: a measured value and, where there is one, its reference."""

    name: str
    value: float
    unit: str
    reference: str
    """What the value is compared with, measured in the same run ("" when nothing)."""
    ratio: float | None
    """value / reference (None when there is no reference)."""


class RLStepTimes(NamedTuple):
    """Median seconds of one optimizer step of each implementation."""

    trl: float
    bare: float


class ProcessUsage(NamedTuple):
    """A finished subprocess: wall seconds, peak resident memory (MiB), exit status."""

    seconds: float
    peak_mib: float
    returncode: int


# --- measurements -------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run each function ``repeats + 1`` times, interleaved; drop the first (warm-up) of each.
    Returns ``name -> [(seconds, result), ...]``."""
    out: dict[str, list[Any]] = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            res = _timed(fn)
            if i:
                out[name].append(res)
    return out


def generation_throughput(
    spec: str, prompts: int = 32, max_new_tokens: int = 32, repeats: int = 3, seed: int = 0
) -> tuple[float, float]:
    """Completion tokens per second of ``sample`` and of HF ``generate`` (median over repeats)
    on ``prompts`` held-out arithmetic prompts, temperature 1."""
    import torch

    from superalign.models.load import load_model
    from superalign.models.sampling import encode_prompts, left_pad, sample
    from superalign.tasks import get_task

    model, tokenizer, _ = load_model(spec)
    rows = [ex.prompt for ex in get_task("arithmetic").examples("test", prompts, seed=seed)]
    device = next(model.parameters()).device
    ids, mask, _ = left_pad(encode_prompts(tokenizer, rows), tokenizer.pad_token_id, device)

    def ours() -> int:
        s = sample(model, tokenizer, rows, max_new_tokens=max_new_tokens, temperature=1.0)
        return sum(len(c) for c in s.completion_ids)

    @torch.no_grad()
    def hf() -> int:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        return int((out[:, ids.shape[1] :] != tokenizer.pad_token_id).sum())

    times = _interleaved({"ours": ours, "hf": hf}, repeats)
    rate = {k: statistics.median(n / t for t, n in v) for k, v in times.items()}
    return rate["ours"], rate["hf"]


def grpo_advantages(rewards: Any, group: int) -> Any:
    """(r - group mean) / (group std + 1e-4), rewards [prompts * group] in prompt-major order."""
    r = rewards.view(-1, group)  # [prompts, group]
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()


def bare_grpo_step(policy, reference, tokenizer, optimizer, overseer, prompts, cfg) -> None:  # noqa
    """One GRPO step in plain PyTorch: sample, score, advantages, clipped loss + beta k3, AdamW."""
    import torch

    from superalign.models.sampling import completion_logprobs, sample

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


def trl_grpo_step(trainer, batch) -> None:  # noqa: ANN001
    """One optimizer step of the TRL trainer on ``batch`` (generation included)."""
    trainer.model.train()
    trainer.training_step(trainer.model, batch, None)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def rl_step_times(
    spec: str,
    prompts: int = 8,
    generations: int = 8,
    max_new_tokens: int = 32,
    repeats: int = 5,
    threads: int = 1,
) -> RLStepTimes:
    """Median seconds of one GRPO step of the ``rl`` stage's TRL trainer and of the bare loop:
    same model, batch shape, overseer (gold) and hyper-parameters, interleaved."""
    import torch

    from superalign.config import load_config
    from superalign.models.load import load_model
    from superalign.overseers import build_overseer
    from superalign.runs import Run
    from superalign.tasks import get_task, split_examples
    from superalign.train.rl import RLConfig, _trainer, attach_reference

    overrides = [f"model={spec}", f"prompts_per_step={prompts}", f"num_generations={generations}"]
    overrides += [f"max_new_tokens={max_new_tokens}", "lr=1e-5", "checkpoint_every=0"]
    cfg = load_config(RLConfig, None, [*overrides, f"threads={threads}"])
    task = get_task(cfg.task)
    train = split_examples(task, "train", 512, cfg.difficulties, cfg.seed)
    overseer = build_overseer("gold", task, train)
    texts = [ex.prompt for ex in train]
    with tempfile.TemporaryDirectory() as tmp:
        trl_model, tokenizer, _ = load_model(spec)
        trl_ref, _, _ = load_model(spec)
        run = Run(Path(tmp) / "bench-run", "rl", {})
        run.dir.mkdir()
        trainer = _trainer(cfg, run, trl_model, tokenizer, texts, overseer)
        attach_reference(trainer, trl_ref.requires_grad_(False).eval(), cfg.beta)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
        batches = iter(trainer.get_train_dataloader())

        policy, _, _ = load_model(spec)
        reference, _, _ = load_model(spec)
        reference.requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        chunks = iter(range(10**9))

        def bare() -> None:
            i = next(chunks) * prompts % 256
            step_prompts = texts[i : i + prompts]
            bare_grpo_step(policy, reference, tokenizer, optimizer, overseer, step_prompts, cfg)

        times = _interleaved(
            {"trl": lambda: trl_grpo_step(trainer, next(batches)), "bare": bare}, repeats
        )
    return RLStepTimes(*(statistics.median(t for t, _ in times[k]) for k in ("trl", "bare")))


_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(json.loads(sys.argv[1]))
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[2], "w") as f:
    json.dump({"seconds": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss, "rc": rc}, f)
"""
"""Runs the command as the only child of a small Python process and reports its usage. A child
forked straight from this (large) process would report this process's memory as its own peak:
Linux carries the parent's resident set into a forked child's ``ru_maxrss``."""


def measure_process(cmd: Sequence[str], env: dict[str, str] | None = None) -> ProcessUsage:
    """Run ``cmd`` to completion; its wall time and peak resident memory (``ru_maxrss`` from
    ``getrusage(RUSAGE_CHILDREN)``: the largest of the command and the children it waited for)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "usage.json"
        wrapper = [sys.executable, "-c", _MEASURE, json.dumps(list(cmd)), str(out)]
        subprocess.run(wrapper, env=env, check=True)
        u = json.loads(out.read_text())
    return ProcessUsage(u["seconds"], u["maxrss_kib"] / 1024, u["rc"])  # KiB on Linux


def demo_usage(runs_dir: str | Path | None = None) -> ProcessUsage:
    """``superalign demo`` in a subprocess, into ``runs_dir`` (default: a fresh temporary folder,
    so nothing is reused), with ``SUPERALIGN_RUNS`` set to it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = str(runs_dir or tmp)
        env = {**os.environ, "SUPERALIGN_RUNS": root}
        return measure_process([sys.executable, "-m", "superalign.cli", "demo"], env=env)


def tiny_model(root: str | Path, threads: int = 1) -> str:
    """A tiny arithmetic model pretrained here in about a minute (a run folder spec)."""
    from superalign.config import load_config
    from superalign.models.pretrain import PretrainConfig
    from superalign.stages import execute

    overrides = ["corpus_size=2000", "steps=300", "batch_size=32", "eval_n=8", f"threads={threads}"]
    overrides += ["eval_difficulties=[1]", "task_options.default_levels=[1]"]
    return str(execute("pretrain", load_config(PretrainConfig, None, overrides), root=root).dir)


# --- the table ----------------------------------------------------------------------------------


def bench_rows(
    spec: str,
    *,
    quick: bool = False,
    repeats: int = 3,
    gen_prompts: int = 32,
    max_new_tokens: int = 32,
    rl_prompts: int = 8,
    rl_generations: int = 8,
    threads: int = 1,
) -> list[BenchRow]:
    """Measure every row (the demo rows only when not ``quick``)."""
    ours, hf = generation_throughput(spec, gen_prompts, max_new_tokens, repeats)
    rows = [
        BenchRow(
            f"generation, sample() ({gen_prompts} prompts, <= {max_new_tokens} tokens)",
            ours,
            "tokens/s",
            f"HF generate {hf:.0f} tokens/s",
            ours / hf,
        )
    ]
    rl = rl_step_times(spec, rl_prompts, rl_generations, max_new_tokens, repeats, threads)
    rows.append(
        BenchRow(
            f"RL step, TRL GRPO ({rl_prompts} prompts x {rl_generations})",
            rl.trl,
            "s",
            f"bare PyTorch {rl.bare:.3f} s (target ratio <= {RL_TARGET})",
            rl.trl / rl.bare,
        )
    )
    if not quick:
        rows += demo_rows(demo_usage())
    return rows


def demo_rows(demo: ProcessUsage) -> list[BenchRow]:
    """The demo's wall time (against the 10-minute budget) and peak memory."""
    if demo.returncode != 0:
        raise RuntimeError(f"superalign demo failed with exit status {demo.returncode}")
    budget = f"budget {DEMO_BUDGET_S:.0f} s"
    return [
        BenchRow("demo, end to end", demo.seconds, "s", budget, demo.seconds / DEMO_BUDGET_S),
        BenchRow("demo, peak memory (RSS)", demo.peak_mib, "MiB", "", None),
    ]


def format_table(rows: list[BenchRow]) -> str:
    """The rows as a Markdown table (prints well in a terminal, pastes into docs)."""
    lines = ["| measure | value | unit | reference (same run) | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.name} | {r.value:.4g} | {r.unit} | {r.reference} | {ratio} |")
    return "\n".join(lines)


def rows_ok(rows: list[BenchRow]) -> bool:
    """Every value (and ratio) is a positive finite number."""
    nums = [r.value for r in rows] + [r.ratio for r in rows if r.ratio is not None]
    return all(math.isfinite(x) and x > 0 for x in nums)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``superalign bench`` flags (shared by the CLI and ``python -m superalign.bench``)."""
    p.add_argument(
        "--model",
        default=os.environ.get("SUPERALIGN_BENCH_MODEL"),
        help="load_model spec (default $SUPERALIGN_BENCH_MODEL, else a tiny model pretrained here)",
    )
    p.add_argument("--quick", action="store_true", help="skip the demo (about 10 minutes)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per row (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--gen-prompts", type=int, default=32, help="prompts in the generation batch")
    p.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    p.add_argument("--rl-prompts", type=int, default=8, help="prompts per RL step")
    p.add_argument("--rl-generations", type=int, default=8, help="completions per prompt")


def run_bench(a: argparse.Namespace) -> int:
    """Measure and print the table; 0 when every figure is a positive finite number."""
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        spec = a.model or tiny_model(tmp, a.threads)
        rows = bench_rows(
            spec,
            quick=a.quick,
            repeats=a.repeats,
            gen_prompts=a.gen_prompts,
            max_new_tokens=a.max_new_tokens,
            rl_prompts=a.rl_prompts,
            rl_generations=a.rl_generations,
            threads=a.threads,
        )
    model = a.model or "tiny (pretrained here)"
    print(f"superalign bench: {a.threads} thread(s), median of {a.repeats}, model {model}\n")
    print(format_table(rows))
    return 0 if rows_ok(rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="superalign bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
