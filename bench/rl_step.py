"""Benchmark: one RL optimizer step of the ``rl`` stage's trainer (TRL GRPO) against a bare
PyTorch GRPO step, same model, same batch, same process.

Both steps: sample ``prompts x generations`` completions (temperature 1, at most
``max_new_tokens``), score them with the gold overseer, form group-normalised advantages, compute
reference log-probs, and take one AdamW step on the clipped-ratio loss plus ``beta`` times the
per-token k3 KL to the frozen reference. The bare step
(:func:`superalign.bench.bare_grpo_step`) samples with :func:`superalign.models.sampling.sample`
and differentiates :func:`superalign.models.sampling.completion_logprobs`; the TRL step is
``trainer.training_step`` + ``optimizer.step`` of the trainer the stage builds
(``superalign.train.rl._trainer``), generation with ``model.generate`` included.

Target: TRL's step at most 1.3x the bare step. Prints the median over ``repeats`` steps of each
(interleaved, after one warm-up step each) and the ratio; a figure, not a timed assertion.
``superalign bench`` prints the same comparison as one row of its table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rl_step.py [MODEL] [--threads 1] [--repeats 5]

MODEL is a ``load_model`` spec (default: ``$SUPERALIGN_BENCH_MODEL``, else a tiny arithmetic
model pretrained here in ~1 min).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from superalign.bench import RL_TARGET, rl_step_times, tiny_model


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
        spec = a.model or tiny_model(tmp, a.threads)
        t = rl_step_times(spec, a.prompts, a.generations, a.max_new_tokens, a.repeats, a.threads)
    print(
        f"one GRPO step: {a.prompts} prompts x {a.generations} generations, "
        f"<= {a.max_new_tokens} new tokens, {a.threads} thread(s), median of {a.repeats}"
    )
    print(f"{'implementation':<36}{'seconds':>10}")
    print(f"{'TRL GRPOTrainer (stage rl)':<36}{t.trl:>10.3f}")
    print(f"{'bare PyTorch (superalign.bench)':<36}{t.bare:>10.3f}")
    print(f"ratio TRL / bare: {t.trl / t.bare:.2f} (target <= {RL_TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
