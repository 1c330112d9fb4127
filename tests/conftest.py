"""Shared fixtures: one small pretrained arithmetic policy for every training-stage test, and the
seed and thread count every outcome test runs with.

Outcome tests (``@pytest.mark.outcome``: training moved gold, an organism fires, a detector
separates, an overseer beats another) take their base seed from ``SUPERALIGN_TEST_SEED`` (default
0) through the ``test_seed`` fixture, and run with ``OMP_NUM_THREADS`` torch threads (default 1).
The marked set must pass for seeds 0, 1 and 2 with 1 and with 2 threads; each margin is set from
the spread observed over those six runs, written in a comment beside it::

    SUPERALIGN_TEST_SEED=2 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -m outcome tests
"""

import os

# organisms draw secrets from the seed in tests, as measured (never for a blind game)
os.environ.setdefault("SUPERALIGN_DETERMINISTIC_SECRETS", "1")
import pytest
import torch

from superalign.config import load_config
from superalign.models.pretrain import PretrainConfig
from superalign.stages import execute

TEST_SEED = int(os.environ.get("SUPERALIGN_TEST_SEED") or 0)
"""Base seed of every outcome test (and of the shared policy below)."""
TEST_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch CPU threads for the tests: float rounding, and so training, differs between 1 and 2."""

POLICY = [
    "corpus_size=4000",
    "steps=1500",
    "decay_steps=900",
    "batch_size=64",
    "warmup_steps=20",
    "eval_n=100",
    "eval_every=25",
    "eval_difficulties=[1]",
    "stop_at_accuracy=0.7",
    "task_options.default_levels=[1]",
    f"threads={TEST_THREADS}",
    f"seed={TEST_SEED}",
]
"""A tiny model pretrained on one-step problems only, stopped once it is right on 70% of 100
training-split problems (greedy; ``stop_at_accuracy``), so training stages have room to move gold
both ways whatever the seed. lr 3e-3, cosine to 3e-4 by step 900 (``decay_steps``), then flat to
the 1,500-step cap. Measured stop step and held-out accuracy, seeds 0 / 1 / 2: 1 thread 700, 0.76
/ 800, 0.71 / 675, 0.77 (in 70-90 s); 2 threads 1,325, 0.77 / 1,325, 0.78 / 700, 0.66. With
the cap at 900 and no flat tail, seed 0 with 2 threads had reached
only 0.48; at lr 1e-3 every seed and thread count reached 70% by step 875, but that policy's
critic no longer caught off-by-ten steps (5-12 of 40, against 26-34) and DPO fell to 0.64, so
the tail was the smaller change. A fixed step count did not hold over seeds (900 steps of 32:
0.75 / 0.41 / 0.14); see docs/stages/pretrain.md, "Over seeds"."""


@pytest.fixture(scope="session")
def arith_policy(tmp_path_factory):
    """The finished ``pretrain`` run folder of :data:`POLICY` (a ``load_model`` spec)."""
    torch.set_num_threads(TEST_THREADS)
    root = tmp_path_factory.mktemp("policy-runs")
    return execute("pretrain", load_config(PretrainConfig, None, POLICY), root=root).dir


@pytest.fixture(scope="session")
def test_seed() -> int:
    """``SUPERALIGN_TEST_SEED`` (default 0): the base seed an outcome test offsets its seeds by."""
    return TEST_SEED


@pytest.fixture
def crash_then_resume(monkeypatch):
    """``run(module, stage, cfg, root, at_step)``: run the TRL stage ``stage`` with its trainer
    (``module._trainer``) made to raise after optimizer step ``at_step``, check that it died, then
    run the same config again and return that result, resumed from the last checkpoint. The resume
    test of every stage that trains through a ``_trainer``."""
    from transformers import TrainerCallback

    def run(module, stage, cfg, root, at_step):
        class Crash(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == at_step:
                    raise RuntimeError("simulated crash")

        make = module._trainer

        def crashing(*a, **kw):
            t = make(*a, **kw)
            t.add_callback(Crash())
            return t

        monkeypatch.setattr(module, "_trainer", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            execute(stage, cfg, root=root)
        monkeypatch.setattr(module, "_trainer", make)
        return execute(stage, cfg, root=root)

    return run
